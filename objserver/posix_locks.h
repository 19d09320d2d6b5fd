// POSIX record locks (fcntl F_SETLK/F_SETLKW/F_GETLK) and BSD flock() locks across clients, kept
// by the metadata server. This is the lock manager's policy for application locks: unlike the
// cache locks of LockManager, they belong to a process-level owner (the kernel's lock owner on
// one client), a new lock replaces and splits the owner's own overlapping ranges, and only
// other owners conflict. They live in memory: a client re-takes them after a server restart.
#pragma once

#include <kj/async.h>

#include <cstdint>
#include <list>
#include <map>
#include <string>
#include <vector>

namespace cairn {

struct PosixLock {
  enum Type : uint32_t { READ = 0, WRITE = 1, UNLOCK = 2 };
  Type type = READ;
  uint64_t start = 0;
  uint64_t end = ~uint64_t(0);  // inclusive; the maximum means "to the end of the file"
  uint32_t pid = 0;
};

class PosixLocks {
public:
  // Per client, held plus waiting (ENOLCK past it), so no client grows the server unbounded.
  static constexpr size_t MAX_PER_CLIENT = 100000;

  // Who: a client session and the kernel's lock owner there. Space: 0 fcntl, 1 flock (the
  // two kinds never interact, as on Linux).
  struct Owner {
    std::string client;
    uint64_t owner = 0;
    bool operator==(const Owner& o) const { return client == o.client && owner == o.owner; }
  };

  // Applies a lock or an unlock. With wait, resolves once it could be applied (dropping the
  // promise withdraws the request); without, a conflict is FsError(EAGAIN).
  kj::Promise<void> set(uint64_t ino, uint32_t space, Owner owner, PosixLock lock, bool wait);
  // The first lock of another owner that would block `lock`, if any (F_GETLK).
  kj::Maybe<PosixLock> test(uint64_t ino, uint32_t space, const Owner& owner,
                            const PosixLock& lock);
  // Releases all of an owner's locks on an inode (close), or all of a client's (eviction).
  void releaseOwner(uint64_t ino, uint32_t space, const Owner& owner);
  void releaseClient(const std::string& client);
  size_t count() const;

private:
  struct Held {
    Owner owner;
    PosixLock lock;
  };
  struct Waiter {
    uint64_t id;
    Owner owner;
    PosixLock lock;
    kj::Own<kj::PromiseFulfiller<void>> fulfiller;
  };
  struct File {
    std::vector<Held> held;
    std::list<Waiter> waiting;
  };
  using Key = std::pair<uint64_t, uint32_t>;  // ino, space

  kj::Maybe<const Held&> conflict(const File& f, const Owner& owner, const PosixLock& lock) const;
  void apply(File& f, const Owner& owner, const PosixLock& lock);
  void wake(const Key& key);

  size_t countFor(const std::string& client) const;
  void adjust(const std::string& client, size_t before, size_t after);
  std::map<Key, File> files_;
  std::map<std::string, size_t> perClient_;  // held + waiting
  uint64_t nextWaiter_ = 1;
};

}  // namespace cairn
