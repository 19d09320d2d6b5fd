// The lock manager of one server: every piece of server state a client caches is covered by a
// lock from here (and, later, the active-server lock of a controlled shutdown is one more
// resource). Transport-free: owners are told through LockOwner, the RPC layer adapts.
//
// A resource is (type, id). A lock holds it in one of six modes with the usual compatibility
// matrix; inode locks carry bits (lookup, attributes, layout, ...) and data locks a byte extent,
// and locks on disjoint bits or extents never conflict. Requests are granted in arrival order
// (a request never overtakes an earlier conflicting one, so writers do not starve). When a
// request waits on granted locks, their owners get one blocking callback each; an owner that has
// not cancelled within the callback timeout is evicted, so one dead or stuck client never hangs
// the others.
#pragma once

#include <kj/async.h>
#include <kj/function.h>
#include <kj/string.h>
#include <kj/time.h>
#include <kj/timer.h>

#include <cstdint>
#include <deque>
#include <map>
#include <unordered_map>
#include <vector>

namespace cairn {

enum class LockMode : uint8_t { NL, CR, CW, PR, PW, EX };
bool compatible(LockMode a, LockMode b);
kj::StringPtr modeName(LockMode mode);

struct ResourceId {
  uint32_t type = 0;
  uint64_t id = 0;
  bool operator<(const ResourceId& o) const {
    return type < o.type || (type == o.type && id < o.id);
  }
  bool operator==(const ResourceId& o) const { return type == o.type && id == o.id; }
};

// Resource types.
constexpr uint32_t RES_INODE = 1;   // metadata target: an inode (bits below)
constexpr uint32_t RES_OBJECT = 2;  // data target: a file object (byte extents)
constexpr uint32_t RES_SERVER = 3;  // the active-server lock

// Inode bits: what of an inode a lock covers.
constexpr uint64_t BIT_LOOKUP = 1;  // the names leading to it, and its directory entries
constexpr uint64_t BIT_ATTR = 2;    // attributes
constexpr uint64_t BIT_LAYOUT = 4;  // layout
constexpr uint64_t BIT_XATTR = 8;   // extended attributes

struct LockSpec {
  ResourceId resource;
  LockMode mode = LockMode::NL;
  uint64_t bits = ~uint64_t(0);
  uint64_t start = 0;
  uint64_t end = ~uint64_t(0);  // inclusive
};
bool conflicts(const LockSpec& a, const LockSpec& b);

// Who holds locks: one client session.
class LockOwner {
public:
  virtual ~LockOwner() noexcept(false) = default;
  // A lock this owner holds is wanted by someone else: write back and cancel it.
  virtual void blocking(uint64_t lockId) = 0;
  virtual kj::StringPtr ownerName() const = 0;
};

class LockManager {
public:
  // `evict` is called for an owner that did not cancel in time; it must end the owner's
  // session, which calls dropAll().
  LockManager(kj::Timer& timer, kj::Duration callbackTimeout, kj::Function<void(LockOwner&)> evict);
  ~LockManager() noexcept(false);

  // Whatever a client claims, it holds or waits for at most this many locks (OVERLOADED past
  // it), so no client can grow the server without bound.
  static constexpr size_t MAX_PER_OWNER = 100000;
  KJ_DISALLOW_COPY(LockManager);

  // Resolves with the lock's id once granted. Dropping the promise before then withdraws it.
  kj::Promise<uint64_t> enqueue(LockOwner& owner, LockSpec spec);
  // Releases a granted lock. An unknown id (already cancelled, or dropped) is not an error:
  // cancels race with evictions and resends.
  void cancel(LockOwner& owner, uint64_t lockId);
  // Drops every lock and request of an owner (eviction, or a client gone for good).
  void dropAll(LockOwner& owner);

  struct Stats {
    uint64_t granted = 0;
    uint64_t waiting = 0;
    uint64_t callbacks = 0;  // blocking callbacks sent, ever
    uint64_t evictions = 0;  // owners evicted for not cancelling, ever
  };
  Stats stats() const;
  size_t heldBy(const LockOwner& owner) const;

private:
  struct Lock {
    uint64_t id;
    LockOwner* owner;
    LockSpec spec;
    bool granted = false;
    bool blockingSent = false;
    kj::Maybe<kj::Own<kj::PromiseFulfiller<uint64_t>>> waiter;
    kj::Promise<void> deadline = nullptr;
  };
  struct Resource {
    std::vector<Lock*> granted;
    std::deque<Lock*> waiting;
  };

  void process(const ResourceId& id);
  void remove(uint64_t lockId);
  void callBack(Lock& holder);
  void expired(uint64_t lockId);

  class ErrorHandler : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&& e) override;
  };

  kj::Timer& timer_;
  kj::Duration callbackTimeout_;
  kj::Function<void(LockOwner&)> evict_;
  std::map<ResourceId, Resource> resources_;
  std::unordered_map<uint64_t, kj::Own<Lock>> locks_;
  std::unordered_map<const LockOwner*, size_t> perOwner_;
  uint64_t nextId_ = 1;
  uint64_t callbacks_ = 0;
  uint64_t evictions_ = 0;
  ErrorHandler errorHandler_;
  kj::TaskSet tasks_;  // declared last: destroyed first, before the locks it refers to
};

}  // namespace cairn
