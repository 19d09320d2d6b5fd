// Directory operations answered before the server did (asynchronous unlink and rmdir). While
// this client holds PW on a directory's lookup bit, nobody else can change or read its names
// without calling that lock back, so an unlink of a name it has cached (or an rmdir of a
// directory it knows empty) is answered from the cache and the RPC goes behind, many at a time,
// the way write-behind sends writes. This file keeps the count of those in flight per inode (the
// directory and the one removed), so that
//   - any later request of ours about either waits until they are answered (the server sees
//     them in the order the application made them),
//   - the directory's lock goes back only once they are (whoever called it back sees them done),
//   - fsync of the directory, the unmount and a handover wait for all of them.
// An operation the server refuses after the application was told it succeeded (a full server,
// an eviction) is counted and reported at the directory's next fsync, as a failed write-behind
// batch is at the file's.
//
// This file keeps the books; the client sends the requests (Client::removeBehind).
#pragma once

#include <kj/async.h>
#include <kj/vector.h>

#include <cstdint>
#include <initializer_list>
#include <set>
#include <unordered_map>
#include <vector>

namespace cairn {

class AsyncDirops {
public:
  // Beyond this many in flight a removal waits for its reply as usual: a bound on the memory
  // and the server work one client can have outstanding.
  static constexpr size_t MAX_IN_FLIGHT = 1024;

  bool full() const { return ops_.size() >= MAX_IN_FLIGHT; }
  size_t inFlight() const { return ops_.size(); }
  bool pending(uint64_t ino) const { return byInode_.count(ino) > 0; }
  // Whether an operation touching `ino` numbered above `op` is in flight: one answered after it,
  // whose effect the caches already show and `op`'s reply does not.
  bool later(uint64_t ino, uint64_t op) const;

  // One operation touching these inodes is on its way; returns its number (increasing).
  uint64_t begin(std::initializer_list<uint64_t> inos);
  // It was answered: `error` 0, or the errno the server gave after we had answered success.
  void end(uint64_t op, std::initializer_list<uint64_t> inos, int error);
  // The number the next operation will get: what began before "now".
  uint64_t next() const { return next_; }
  // Resolves once nothing touching `ino` is in flight (at once if nothing is).
  kj::Promise<void> settled(uint64_t ino);
  // Resolves once no operation touching `ino` numbered below `op` is in flight: those that
  // began before, not those that come after (no waiting for ever behind a stream of them).
  kj::Promise<void> settledBefore(uint64_t ino, uint64_t op);
  // Resolves once nothing at all is in flight.
  kj::Promise<void> settledAll();
  // Resolves once no operation numbered below `op` is in flight, whatever it touches: for a
  // request about a name no longer cached, whose inode (a directory with unlinks on their way
  // in it?) is not known.
  kj::Promise<void> settledAllBefore(uint64_t op);
  // The first error since the last call (0 if none), for fsync of a directory to report.
  int takeError();
  uint64_t answered() const { return answered_; }  // operations answered ahead, ever
  uint64_t failed() const { return failed_; }      // of those, refused by the server

private:
  struct Waiter {
    uint64_t below;  // wait for the operations numbered below this (~0: for all)
    kj::Own<kj::PromiseFulfiller<void>> fulfiller;
  };
  std::unordered_map<uint64_t, std::set<uint64_t>> byInode_;  // ino -> operations in flight
  std::unordered_multimap<uint64_t, Waiter> waiters_;
  std::set<uint64_t> ops_;             // every operation in flight
  std::vector<Waiter> beforeWaiters_;  // of settledAllBefore (and settledAll)
  uint64_t next_ = 1;
  int error_ = 0;
  uint64_t answered_ = 0;
  uint64_t failed_ = 0;
};

}  // namespace cairn
