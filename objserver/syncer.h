// Group commit. Transactions commit without fsync (a reply means "survives a crash of this
// process"); this thread makes them survive a host crash, one mdb_env_sync for everything
// committed so far, every `interval` or at once when someone waits (fsync on a client). Many
// waiters share one sync.
#pragma once

#include <kj/async.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>

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

private:
  void run();

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
  std::thread thread_;
};

}  // namespace cairn
