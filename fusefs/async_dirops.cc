#include "fusefs/async_dirops.h"

namespace cairn {

void AsyncDirops::begin(std::initializer_list<uint64_t> inos) {
  for (uint64_t ino : inos) ++counts_[ino];
  ++inFlight_;
  ++answered_;
}

void AsyncDirops::end(std::initializer_list<uint64_t> inos, int error) {
  if (error != 0) {
    ++failed_;
    if (error_ == 0) error_ = error;
  }
  for (uint64_t ino : inos) {
    auto it = counts_.find(ino);
    if (it == counts_.end() || --it->second > 0) continue;
    counts_.erase(it);
    auto range = waiters_.equal_range(ino);
    for (auto w = range.first; w != range.second; ++w) w->second->fulfill();
    waiters_.erase(range.first, range.second);
  }
  if (--inFlight_ == 0) {
    for (auto& w : allWaiters_) w->fulfill();
    allWaiters_.clear();
  }
}

kj::Promise<void> AsyncDirops::settled(uint64_t ino) {
  if (!pending(ino)) return kj::READY_NOW;
  auto paf = kj::newPromiseAndFulfiller<void>();
  waiters_.emplace(ino, kj::mv(paf.fulfiller));
  return kj::mv(paf.promise);
}

kj::Promise<void> AsyncDirops::settledAll() {
  if (inFlight_ == 0) return kj::READY_NOW;
  auto paf = kj::newPromiseAndFulfiller<void>();
  allWaiters_.add(kj::mv(paf.fulfiller));
  return kj::mv(paf.promise);
}

int AsyncDirops::takeError() {
  int e = error_;
  error_ = 0;
  return e;
}

}  // namespace cairn
