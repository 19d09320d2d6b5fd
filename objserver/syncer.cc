#include "objserver/syncer.h"

#include <spdlog/spdlog.h>

namespace cairn {

Syncer::Syncer(Target& target, std::chrono::milliseconds interval)
    : target_(target),
      interval_(interval),
      lastSynced_(target.lastCommitted()),
      waiterThread_([this] { serveWaiters(); }),
      checkpointThread_([this] { checkpoint(); }) {}

Syncer::~Syncer() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  waiterThread_.join();
  checkpointThread_.join();
}

kj::Promise<void> Syncer::syncNow() {
  uint64_t want = target_.lastCommitted();
  if (lastSynced_.load() >= want) return kj::READY_NOW;
  auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    waiters_.push_back(Waiter{want, kj::mv(paf.fulfiller)});
  }
  wake_.notify_all();
  return kj::mv(paf.promise);
}

kj::Promise<void> Syncer::checkpointNow() {
  auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    checkpointWaiters_.push_back(kj::mv(paf.fulfiller));
  }
  wake_.notify_all();
  return kj::mv(paf.promise);
}

bool Syncer::run(const char* what, void (store::Env::*sync)()) {
  try {
    (target_.env().*sync)();
    return true;
  } catch (std::exception& e) {
    spdlog::error("{} of target {} failed: {}", what, target_.dir().cStr(), e.what());
  } catch (kj::Exception& e) {
    spdlog::error("{} of target {} failed: {}", what, target_.dir().cStr(),
                  e.getDescription().cStr());
  }
  return false;
}

void Syncer::published(uint64_t through) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (through > lastSynced_.load()) lastSynced_.store(through);
  uint64_t synced = lastSynced_.load();
  while (!waiters_.empty() && waiters_.front().transno <= synced) {
    waiters_.front().fulfiller->fulfill();
    waiters_.pop_front();
  }
}

void Syncer::serveWaiters() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait(lock, [this] { return stop_ || !waiters_.empty(); });
    if (stop_) break;
    // Everything committed before this point is in LMDB and in the log (commits append to the
    // log before they report themselves committed).
    uint64_t through = target_.lastCommitted();
    lock.unlock();
    bool done = run("sync", &store::Env::syncCommitted);
    if (done) published(through);
    lock.lock();
    // A failed sync (a dying disk) is tried again, but not in a tight loop.
    if (!done) wake_.wait_for(lock, interval_, [this] { return stop_; });
  }
}

void Syncer::checkpoint() {
  uint64_t checkpointed = target_.lastCommitted();  // the target synced itself when it opened
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, interval_, [this] { return stop_ || !checkpointWaiters_.empty(); });
    if (stop_) break;
    // Those who asked before this one began; a failed checkpoint lets them go on all the same
    // (what they wait for is room, which the next update will look for again).
    decltype(checkpointWaiters_) asked;
    asked.swap(checkpointWaiters_);
    uint64_t through = target_.lastCommitted();
    if (through != checkpointed) {
      lock.unlock();
      if (run("checkpoint", &store::Env::sync)) {
        checkpointed = through;
        published(through);
      }
      lock.lock();
    }
    for (auto& fulfiller : asked) fulfiller->fulfill();
  }
}

}  // namespace cairn
