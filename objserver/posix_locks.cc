#include "objserver/posix_locks.h"

#include <kj/debug.h>

#include <algorithm>

#include "rpc/errors.h"

namespace cairn {

namespace {
bool overlap(const PosixLock& a, const PosixLock& b) {
  return a.start <= b.end && b.start <= a.end;
}
}  // namespace

kj::Maybe<const PosixLocks::Held&> PosixLocks::conflict(const File& f, const Owner& owner,
                                                        const PosixLock& lock) const {
  for (auto& h : f.held) {
    if (h.owner == owner || !overlap(h.lock, lock)) continue;
    if (h.lock.type == PosixLock::WRITE || lock.type == PosixLock::WRITE) return h;
  }
  return nullptr;
}

void PosixLocks::apply(File& f, const Owner& owner, const PosixLock& lock) {
  auto mine = [&](const std::vector<Held>& v) {
    size_t n = 0;
    for (auto& h : v) n += h.owner == owner;
    return n;
  };
  size_t before = mine(f.held);
  // The owner's own ranges under the new one are replaced; the parts outside it stay.
  std::vector<Held> kept;
  for (auto& h : f.held) {
    if (!(h.owner == owner) || !overlap(h.lock, lock)) {
      kept.push_back(h);
      continue;
    }
    if (h.lock.start < lock.start) {
      Held left = h;
      left.lock.end = lock.start - 1;
      kept.push_back(left);
    }
    if (h.lock.end > lock.end) {
      Held right = h;
      right.lock.start = lock.end + 1;
      kept.push_back(right);
    }
  }
  if (lock.type != PosixLock::UNLOCK) kept.push_back(Held{owner, lock});
  f.held = std::move(kept);
  adjust(owner.client, before, mine(f.held));
}

kj::Promise<void> PosixLocks::set(uint64_t ino, uint32_t space, Owner owner, PosixLock lock,
                                  bool wait) {
  KJ_REQUIRE(lock.start <= lock.end, "bad lock range", lock.start, lock.end);
  KJ_REQUIRE(lock.type <= PosixLock::UNLOCK, "bad lock type", static_cast<uint32_t>(lock.type));
  if (lock.type != PosixLock::UNLOCK) fsRequire(countFor(owner.client) < MAX_PER_CLIENT, ENOLCK);
  Key key{ino, space};
  auto& f = files_[key];
  if (lock.type == PosixLock::UNLOCK || conflict(f, owner, lock) == nullptr) {
    apply(f, owner, lock);
    wake(key);
    return kj::READY_NOW;
  }
  fsRequire(wait, EAGAIN);
  auto paf = kj::newPromiseAndFulfiller<void>();
  uint64_t id = nextWaiter_++;
  adjust(owner.client, 0, 1);
  f.waiting.push_back(Waiter{id, std::move(owner), lock, kj::mv(paf.fulfiller)});
  // A waiter whose caller gave up (a signal, a vanished client) leaves the queue.
  return paf.promise.attach(kj::defer([this, key, id]() {
    auto it = files_.find(key);
    if (it == files_.end()) return;
    it->second.waiting.remove_if([this, id](const Waiter& w) {
      if (w.id != id) return false;
      adjust(w.owner.client, 1, 0);
      return true;
    });
    if (it->second.held.empty() && it->second.waiting.empty()) files_.erase(it);
  }));
}

void PosixLocks::wake(const Key& key) {
  auto it = files_.find(key);
  if (it == files_.end()) return;
  auto& f = it->second;
  // Grant in arrival order whatever no longer conflicts.
  for (auto w = f.waiting.begin(); w != f.waiting.end();) {
    if (conflict(f, w->owner, w->lock) == nullptr) {
      adjust(w->owner.client, 1, 0);
      apply(f, w->owner, w->lock);
      w->fulfiller->fulfill();
      w = f.waiting.erase(w);
    } else {
      ++w;
    }
  }
  if (f.held.empty() && f.waiting.empty()) files_.erase(it);
}

kj::Maybe<PosixLock> PosixLocks::test(uint64_t ino, uint32_t space, const Owner& owner,
                                      const PosixLock& lock) {
  auto it = files_.find(Key{ino, space});
  if (it == files_.end()) return nullptr;
  KJ_IF_MAYBE (h, conflict(it->second, owner, lock)) {
    return h->lock;
  }
  return nullptr;
}

void PosixLocks::releaseOwner(uint64_t ino, uint32_t space, const Owner& owner) {
  Key key{ino, space};
  auto it = files_.find(key);
  if (it == files_.end()) return;
  auto& held = it->second.held;
  size_t before = held.size();
  held.erase(
      std::remove_if(held.begin(), held.end(), [&](const Held& h) { return h.owner == owner; }),
      held.end());
  adjust(owner.client, before - held.size(), 0);
  wake(key);
}

void PosixLocks::releaseClient(const std::string& client) {
  std::vector<Key> touched;
  for (auto& [key, f] : files_) {
    auto before = f.held.size();
    f.held.erase(std::remove_if(f.held.begin(), f.held.end(),
                                [&](const Held& h) { return h.owner.client == client; }),
                 f.held.end());
    if (f.held.size() != before) {
      adjust(client, before - f.held.size(), 0);
      touched.push_back(key);
    }
  }
  for (auto& key : touched) wake(key);
}

size_t PosixLocks::countFor(const std::string& client) const {
  auto it = perClient_.find(client);
  return it == perClient_.end() ? 0 : it->second;
}

void PosixLocks::adjust(const std::string& client, size_t before, size_t after) {
  auto& n = perClient_[client];
  n = n + after - before;
  if (n == 0) perClient_.erase(client);
}

size_t PosixLocks::count() const {
  size_t n = 0;
  for (auto& [key, f] : files_) n += f.held.size();
  return n;
}

}  // namespace cairn
