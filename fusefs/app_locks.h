// The application locks (fcntl record locks, flock) this client holds, as the metadata server
// granted them. The server keeps them in memory only, so after it restarts the client takes each
// of them again (lock replay) before it lets applications go on: a lock a process was granted is
// a completed operation and must not be lost.
//
// The ranges follow the server's rule: a new lock or unlock of an owner replaces whatever of its
// own ranges it overlaps, splitting them at its ends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>
#include <vector>

namespace cairn {

class AppLocks {
public:
  static constexpr uint32_t UNLOCK = 2;
  struct Range {
    uint64_t start = 0;
    uint64_t end = 0;   // inclusive
    uint32_t type = 0;  // 0 read, 1 write
    uint32_t pid = 0;
  };
  using Key = std::tuple<uint64_t, uint64_t, uint32_t>;  // ino, owner, space

  // A lock (or unlock) the server applied.
  void set(const Key& key, const Range& range);
  // close: all of the owner's locks on the file went.
  void release(const Key& key) { held_.erase(key); }
  bool holds(const Key& key) const { return held_.count(key) > 0; }
  void clear() { held_.clear(); }
  size_t size() const;
  const std::map<Key, std::vector<Range>>& all() const { return held_; }

private:
  std::map<Key, std::vector<Range>> held_;
};

}  // namespace cairn
