// Group commit. Transactions commit without fsync (a reply means "survives a crash of this
// process"); the syncer makes them survive a host crash. Two threads: one serves those who wait
// (fsync on a client), many waiters sharing each sync, through the target's write-ahead log when
// it can (one sequential fdatasync); the other checkpoints every `interval`: an mdb_env_sync of
// everything committed so far, which lets the log's older segments go.
#pragma once

#include <kj/async.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "objserver/target.h"

namespace cairn {

class Syncer {
public:
  Syncer(Target& target, std::chrono::milliseconds interval);
  ~Syncer();
  KJ_DISALLOW_COPY(Syncer);

  // Every transaction up to this number is on disk.
  uint64_t lastSynced() const { return lastSynced_.load(); }
  // Resolves once everything committed before the call is on disk.
  kj::Promise<void> syncNow();
  // Resolves once a checkpoint that began after the call is done (at once if nothing was
  // committed since the last one): the pages its snapshot held are LMDB's to take again.
  kj::Promise<void> checkpointNow();

private:
  void serveWaiters();
  void checkpoint();
  // Runs one sync of either kind; true if it succeeded.
  bool run(const char* what, void (store::Env::*sync)());
  void published(uint64_t through);

  Target& target_;
  std::chrono::milliseconds interval_;
  std::atomic<uint64_t> lastSynced_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  struct Waiter {
    uint64_t transno;
    kj::Own<kj::CrossThreadPromiseFulfiller<void>> fulfiller;
  };
  std::deque<Waiter> waiters_;  // guarded by mutex_
  std::vector<kj::Own<kj::CrossThreadPromiseFulfiller<void>>> checkpointWaiters_;  // likewise
  std::thread waiterThread_;
  std::thread checkpointThread_;
};

}  // namespace cairn
