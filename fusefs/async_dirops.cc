#include "fusefs/async_dirops.h"

#include <algorithm>

namespace cairn {

uint64_t AsyncDirops::begin(std::initializer_list<uint64_t> inos) {
  uint64_t op = next_++;
  for (uint64_t ino : inos) byInode_[ino].insert(op);
  ops_.insert(op);
  ++answered_;
  return op;
}

void AsyncDirops::end(uint64_t op, std::initializer_list<uint64_t> inos, int error) {
  if (error != 0) {
    ++failed_;
    if (error_ == 0) error_ = error;
  }
  for (uint64_t ino : inos) {
    auto it = byInode_.find(ino);
    if (it == byInode_.end()) continue;
    it->second.erase(op);
    // What every waiter of this inode may now go on with: nothing left, or only later ones.
    uint64_t oldest = it->second.empty() ? ~uint64_t(0) : *it->second.begin();
    if (it->second.empty()) byInode_.erase(it);
    auto range = waiters_.equal_range(ino);
    for (auto w = range.first; w != range.second;) {
      bool done =
          oldest == ~uint64_t(0) || (w->second.below != ~uint64_t(0) && oldest >= w->second.below);
      if (done) {
        w->second.fulfiller->fulfill();
        w = waiters_.erase(w);
      } else {
        ++w;
      }
    }
  }
  ops_.erase(op);
  uint64_t oldest = ops_.empty() ? ~uint64_t(0) : *ops_.begin();
  auto ready = [oldest](Waiter& w) {
    if (oldest < w.below) return false;
    w.fulfiller->fulfill();
    return true;
  };
  beforeWaiters_.erase(std::remove_if(beforeWaiters_.begin(), beforeWaiters_.end(), ready),
                       beforeWaiters_.end());
}

bool AsyncDirops::later(uint64_t ino, uint64_t op) const {
  auto it = byInode_.find(ino);
  return it != byInode_.end() && *it->second.rbegin() > op;
}

kj::Promise<void> AsyncDirops::settled(uint64_t ino) {
  return settledBefore(ino, ~uint64_t(0));
}

kj::Promise<void> AsyncDirops::settledBefore(uint64_t ino, uint64_t op) {
  auto it = byInode_.find(ino);
  if (it == byInode_.end() || (op != ~uint64_t(0) && *it->second.begin() >= op)) {
    return kj::READY_NOW;
  }
  auto paf = kj::newPromiseAndFulfiller<void>();
  waiters_.emplace(ino, Waiter{op, kj::mv(paf.fulfiller)});
  return kj::mv(paf.promise);
}

kj::Promise<void> AsyncDirops::settledAll() {
  return settledAllBefore(~uint64_t(0));
}

kj::Promise<void> AsyncDirops::settledAllBefore(uint64_t op) {
  if (ops_.empty() || *ops_.begin() >= op) return kj::READY_NOW;
  auto paf = kj::newPromiseAndFulfiller<void>();
  beforeWaiters_.push_back(Waiter{op, kj::mv(paf.fulfiller)});
  return kj::mv(paf.promise);
}

int AsyncDirops::takeError() {
  int e = error_;
  error_ = 0;
  return e;
}

}  // namespace cairn
