#include "objserver/syncer.h"

#include <spdlog/spdlog.h>

namespace cairn {

Syncer::Syncer(Target& target, std::chrono::milliseconds interval)
    : target_(target),
      interval_(interval),
      lastSynced_(target.lastCommitted()),
      thread_([this] { run(); }) {}

Syncer::~Syncer() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

kj::Promise<void> Syncer::syncNow() {
  uint64_t want = target_.lastCommitted();
  if (lastSynced_.load() >= want) return kj::READY_NOW;
  auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    waiters_.push_back(Waiter{want, kj::mv(paf.fulfiller)});
  }
  wake_.notify_one();
  return kj::mv(paf.promise);
}

void Syncer::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, interval_, [this] { return stop_ || !waiters_.empty(); });
    if (stop_) break;
    uint64_t through = target_.lastCommitted();
    if (through == lastSynced_.load() && waiters_.empty()) continue;
    lock.unlock();
    try {
      target_.env().sync();
      lastSynced_.store(through);
    } catch (std::exception& e) {
      spdlog::error("sync of target {} failed: {}", target_.dir().cStr(), e.what());
    } catch (kj::Exception& e) {
      spdlog::error("sync of target {} failed: {}", target_.dir().cStr(),
                    e.getDescription().cStr());
    }
    lock.lock();
    uint64_t synced = lastSynced_.load();
    while (!waiters_.empty() && waiters_.front().transno <= synced) {
      waiters_.front().fulfiller->fulfill();
      waiters_.pop_front();
    }
  }
}

}  // namespace cairn
