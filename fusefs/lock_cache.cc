#include "fusefs/lock_cache.h"

#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <vector>

#include "rpc/feature_flags.h"
#include "rpc/lock_names.h"

namespace cairn {

namespace {
// A read or write that used the covered state during a revocation makes the revocation drop it
// again; after this many passes the lock goes anyway (and the covered state once more after).
constexpr unsigned MAX_PASSES = 3;
constexpr kj::Duration SWEEP_INTERVAL = 10 * kj::SECONDS;
// Inodes remembered as wanted elsewhere (a callback came for one of their locks): a bound, past
// which the record starts again.
constexpr size_t MAX_CONTENDED = 4096;
// How long such a callback counts: long enough that two clients working in one directory do
// not pass its PW back and forth at every call, short enough that a directory another client
// looked into once is not left to synchronous creates and unlinks for good.
constexpr kj::Duration CONTENDED_FOR = 5 * kj::SECONDS;
// More time is asked for three times per lock timeout, but not more often than this.
constexpr kj::Duration MIN_PROLONG_EVERY = 10 * kj::MILLISECONDS;
// A give-back taking longer is logged (once): a server restarting takes a few seconds.
constexpr kj::Duration SLOW_GIVE_BACK = 10 * kj::SECONDS;
}  // namespace

class LockCache::Callback final : public rpc::LockCallback::Server {
public:
  explicit Callback(kj::Own<Handle> handle) : handle_(kj::mv(handle)) {}
  kj::Promise<void> blocking(BlockingContext context) override {
    // Answered at once: the server waits for the cancel, not for this reply.
    auto params = context.getParams();
    if (handle_->cache != nullptr) {
      if (params.getGone()) {
        handle_->cache->forgotten(params.getLockId());
      } else {
        handle_->cache->blocking(params.getLockId(), params.getTimeoutMs() * kj::MILLISECONDS);
      }
    }
    return kj::READY_NOW;
  }
  kj::Promise<void> share(ShareContext context) override {
    if (handle_->cache != nullptr) handle_->cache->setShare(context.getParams().getMaxLocks());
    return kj::READY_NOW;
  }

private:
  kj::Own<Handle> handle_;
};

LockCache::LockCache(ServerLink& link, kj::Timer& timer, Revoke revoke, Limits limits)
    : link_(link),
      timer_(timer),
      revoke_(kj::mv(revoke)),
      limits_(limits),
      configured_(limits.maxLocks),
      handle_(kj::refcounted<Handle>()),
      tasks_(errorHandler_) {
  handle_->cache = this;
  sweeper_ = sweepLoop().eagerlyEvaluate(nullptr);
}

LockCache::~LockCache() noexcept(false) {
  handle_->cache = nullptr;
}

void LockCache::ErrorHandler::taskFailed(kj::Exception&& e) {
  spdlog::warn("lock cache: {}", e.getDescription().cStr());
}

rpc::LockCallback::Client LockCache::callback() {
  return kj::heap<Callback>(kj::addRef(*handle_));
}

uint64_t LockCache::held(uint64_t ino, uint64_t bit) {
  auto it = held_.find(Key(ino, bit));
  if (it == held_.end()) return 0;
  it->second.lastUsed = timer_.now();
  return it->second.id;
}

kj::Maybe<rpc::LockMode> LockCache::heldMode(uint64_t ino, uint64_t bit) {
  auto it = held_.find(Key(ino, bit));
  if (it == held_.end()) return nullptr;
  it->second.lastUsed = timer_.now();
  return it->second.mode;
}

bool LockCache::revoking(uint64_t ino, uint64_t bit) const {
  return revoking_.count(Key(ino, bit)) > 0;
}

void LockCache::usedWhileRevoking(uint64_t ino, uint64_t bit) {
  auto it = revoking_.find(Key(ino, bit));
  if (it != revoking_.end()) it->second.usedAgain = true;
}

void LockCache::granted(capnp::List<rpc::GrantedLock>::Reader locks) {
  for (auto l : locks) add(l.getIno(), l.getBits(), l.getLockId(), l.getMode());
  trim();
}

void LockCache::add(uint64_t ino, uint64_t bit, uint64_t id, rpc::LockMode mode) {
  // Called back before we saw it granted: it was cancelled then, and covers nothing.
  if (early_.erase(id) > 0) return;
  Key key(ino, bit);
  auto it = held_.find(key);
  if (it != held_.end() && it->second.id == id) {
    it->second.lastUsed = timer_.now();  // granted again: the server hands out the same lock
    return;
  }
  if (it != held_.end() || revoking_.count(key) > 0) {
    cancel(id, link_.generation());  // a second lock on the same thing
    return;
  }
  held_.emplace(key, Held{id, mode, link_.generation(), timer_.now()});
  byId_.emplace(id, key);
}

void LockCache::blocking(uint64_t id, kj::Duration timeout) {
  ++callbacks_;
  auto it = byId_.find(id);
  if (it == byId_.end()) {
    // Being given back already (asked again after a downgrade that did not satisfy the
    // waiter): its cancel is on its way.
    for (auto& [key, r] : revoking_) {
      if (r.id == id) return;
    }
    // Not seen yet (the reply granting it is still on its way): give it back now and ignore
    // the grant when it comes. Ids the link never knew only make the server ignore a cancel.
    if (early_.size() < 100000) early_.insert(id);
    cancel(id, link_.generation());
    return;
  }
  Key key = it->second;
  if (contended_.size() >= MAX_CONTENDED) contended_.clear();
  contended_.insert_or_assign(key.first, timer_.now());
  auto held = held_.find(key);
  if (held != held_.end() && held->second.mode == rpc::LockMode::PW) {
    KJ_IF_MAYBE (clean, downgradable_) {
      if ((*clean)(key.first, key.second)) {
        // Nothing is dirty under it: as PR it keeps what it covers, and a reader waiting for
        // it is let in at once. A writer waiting is not: the server then asks again, and the
        // lock goes back as usual.
        if (downgrade(key.first, key.second)) {
          flushConverts();
          return;
        }
      }
    }
  }
  giveBack(key);
  // The give-back may wait on a server that is away (queued writes for a data server that
  // restarts): the server is asked for more time before its timeout runs out.
  auto r = revoking_.find(key);
  if (r != revoking_.end() && timeout > 0 * kj::SECONDS &&
      (link_.peerFeatures() & features::LOCK_PROLONG)) {
    r->second.timeout = timeout;
    if (!prolonging_) {
      prolonging_ = true;
      tasks_.add(prolongLoop(kj::max(timeout / 3, MIN_PROLONG_EVERY)));
    }
  }
}

void LockCache::forgotten(uint64_t id) {
  ++forgotten_;
  auto it = byId_.find(id);
  if (it == byId_.end()) {
    for (auto& [key, r] : revoking_) {
      if (r.id == id) {
        r.gone = true;  // being given back already: no cancel needed
        return;
      }
    }
    // Or not seen yet: the grant, when it comes, is ignored.
    if (early_.size() < 100000) early_.insert(id);
    return;
  }
  Key key = it->second;
  // Not given back as a callback is: a clean PW is not kept as PR, and no cancel is sent.
  tasks_.add(release(key, true));
}

kj::Promise<void> LockCache::prolongLoop(kj::Duration every) {
  return timer_.afterDelay(every).then([this, every]() -> kj::Promise<void> {
    // Locks of the current connection only: the server dropped the others at reconnect.
    kj::Vector<uint64_t> ids;
    kj::Duration shortest = every * 3;
    for (auto& [key, r] : revoking_) {
      if (r.timeout > 0 * kj::SECONDS && r.generation == link_.generation()) {
        ids.add(r.id);
        shortest = kj::min(shortest, r.timeout);
      }
    }
    if (ids.size() == 0) {
      prolonging_ = false;
      return kj::READY_NOW;
    }
    bool heldUp = false;
    KJ_IF_MAYBE (f, heldUp_) {
      heldUp = (*f)();
    }
    // A give-back this slow waits on something (a server away, the kernel): say which lock.
    auto now = timer_.now();
    for (auto& [key, r] : revoking_) {
      if (r.timeout > 0 * kj::SECONDS && !r.reported && now - r.since >= SLOW_GIVE_BACK) {
        r.reported = true;
        spdlog::warn(
            "lock cache: giving back lock {} (inode {}, bit {}) has taken {} ms{}", r.id, key.first,
            key.second, (now - r.since) / kj::MILLISECONDS,
            heldUp ? "; the servers are busy with our requests: asking for more time" : "");
      }
    }
    KJ_IF_MAYBE (session, heldUp ? link_.currentLocks() : nullptr) {
      auto req = session->prolongRequest();
      auto list = req.initLockIds(ids.size());
      for (auto i : kj::indices(ids)) list.set(i, ids[i]);
      sendAside(req.send().ignoreResult(), link_.generation());
      prolongs_ += ids.size();
    }
    return prolongLoop(kj::max(shortest / 3, MIN_PROLONG_EVERY));
  });
}

// Stops using the lock at once (nothing new is cached under it), drops what it covered, then
// cancels it.
void LockCache::giveBack(Key key) {
  tasks_.add(release(key));
}

kj::Promise<void> LockCache::release(Key key, bool gone, bool destroyed) {
  auto it = held_.find(key);
  if (it == held_.end()) return kj::READY_NOW;
  Revoking r{it->second.id, it->second.generation};
  r.since = timer_.now();
  r.gone = gone;
  r.destroyed = destroyed;
  byId_.erase(it->second.id);
  held_.erase(it);
  revoking_.emplace(key, r);
  return dropCovered(key, 1).then([this, key]() -> kj::Promise<void> {
    auto it = revoking_.find(key);
    if (it == revoking_.end()) return kj::READY_NOW;
    bool usedAgain = it->second.usedAgain;
    bool destroyed = it->second.destroyed;
    if (!it->second.gone) cancel(it->second.id, it->second.generation);
    revoking_.erase(it);
    if (usedAgain) return revoke_(key.first, key.second, destroyed);
    return kj::READY_NOW;
  });
}

kj::Promise<void> LockCache::giveBackAll() {
  std::vector<Key> keys;
  for (auto& [key, h] : held_) keys.push_back(key);
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(keys.size());
  for (auto& key : keys) parts.add(release(key));
  size_t n = keys.size();
  return kj::joinPromises(parts.finish()).then([this, n]() {
    // The cancels leave now, ahead of anything the caller sends next on this connection.
    flushCancels();
    if (n > 0) spdlog::info("lock cache: gave back all {} cached locks", n);
  });
}

void LockCache::giveBackInode(uint64_t ino) {
  for (uint64_t bit : {BIT_LOOKUP, BIT_ATTR, BIT_DATA}) {
    if (held_.count(Key(ino, bit)) > 0) tasks_.add(release(Key(ino, bit), false, true));
  }
}

bool LockCache::downgrade(uint64_t ino, uint64_t bit) {
  auto it = held_.find(Key(ino, bit));
  if (it == held_.end() || it->second.mode != rpc::LockMode::PW) return false;
  if (!(link_.peerFeatures() & features::LOCK_CONVERT)) return false;
  if (it->second.generation != link_.generation()) return false;
  it->second.mode = rpc::LockMode::PR;
  ++downgrades_;
  // Until it lands the server counts the lock as PW, which only makes others wait, as before.
  if (converts_.empty()) convertGeneration_ = link_.generation();
  converts_.add(it->second.id);
  return true;
}

bool LockCache::contended(uint64_t ino) const {
  auto it = contended_.find(ino);
  return it != contended_.end() && timer_.now() - it->second < CONTENDED_FOR;
}

void LockCache::flushConverts() {
  auto ids = converts_.releaseAsArray();
  if (ids.size() == 0 || convertGeneration_ != link_.generation()) return;
  KJ_IF_MAYBE (session, link_.currentLocks()) {
    auto req = session->convertManyRequest();
    auto list = req.initLockIds(ids.size());
    for (auto i : kj::indices(ids)) list.set(i, ids[i]);
    req.setMode(rpc::LockMode::PR);
    sendAside(req.send().ignoreResult(), convertGeneration_);
  }
}

void LockCache::sendAside(kj::Promise<void> sent, uint64_t generation) {
  tasks_.add(sent.catch_([this, generation](kj::Exception&& e) {
    // A lost connection drops the locks anyway; the link reconnects.
    if (e.getType() != kj::Exception::Type::DISCONNECTED) kj::throwFatalException(kj::mv(e));
    link_.disconnected(generation, e.getDescription());
  }));
}

kj::Promise<void> LockCache::dropCovered(Key key, unsigned pass) {
  auto it = revoking_.find(key);
  bool destroyed = it != revoking_.end() && it->second.destroyed;
  return revoke_(key.first, key.second, destroyed).then([this, key, pass]() -> kj::Promise<void> {
    auto it = revoking_.find(key);
    if (it == revoking_.end() || !it->second.usedAgain || pass >= MAX_PASSES) {
      return kj::READY_NOW;
    }
    it->second.usedAgain = false;
    return dropCovered(key, pass + 1);
  });
}

void LockCache::cancel(uint64_t id, uint64_t generation) {
  if (generation != link_.generation()) return;  // the server dropped it at reconnect
  if (cancels_.empty()) {
    cancelGeneration_ = generation;
    tasks_.add(kj::evalLater([this]() { flushCancels(); }));
  }
  cancels_.add(id);
}

// Cancels collected in one turn of the event loop leave as one message.
void LockCache::flushCancels() {
  auto ids = cancels_.releaseAsArray();
  if (ids.size() == 0 || cancelGeneration_ != link_.generation()) return;
  KJ_IF_MAYBE (session, link_.currentLocks()) {
    auto req = session->cancelManyRequest();
    auto list = req.initLockIds(ids.size());
    for (auto i : kj::indices(ids)) list.set(i, ids[i]);
    sendAside(req.send().ignoreResult(), cancelGeneration_);
  }
}

kj::Promise<void> LockCache::acquire(uint64_t ino, uint64_t bit, rpc::LockMode mode) {
  KJ_IF_MAYBE (m, heldMode(ino, bit)) {
    if (*m == mode || *m == rpc::LockMode::PW) return kj::READY_NOW;
  }
  return request(ino, bit, mode, 0);
}

kj::Promise<void> LockCache::upgrade(uint64_t ino, uint64_t bit) {
  auto it = held_.find(Key(ino, bit));
  if (it == held_.end() || it->second.mode == rpc::LockMode::PW) {
    return acquire(ino, bit, rpc::LockMode::PW);
  }
  return request(ino, bit, rpc::LockMode::PW, it->second.id);
}

// One request on the wire per (ino, bit, mode): later askers join it.
kj::Promise<void> LockCache::request(uint64_t ino, uint64_t bit, rpc::LockMode mode,
                                     uint64_t replaces) {
  auto key = std::make_pair(Key(ino, bit), mode);
  auto found = acquiring_.find(key);
  if (found != acquiring_.end()) return found->second.addBranch();
  auto forked = enqueue(ino, bit, mode, replaces)
                    .attach(kj::defer([this, key]() { acquiring_.erase(key); }))
                    .fork();
  auto branch = forked.addBranch();
  acquiring_.emplace(key, kj::mv(forked));
  return branch;
}

void LockCache::replaced(uint64_t ino, uint64_t bit, uint64_t id, uint64_t old) {
  Key key(ino, bit);
  auto it = held_.find(key);
  bool ours = it != held_.end() && it->second.id == old;
  if (early_.erase(id) > 0) {
    // The PW was called back before we saw it granted (and is cancelled): the PR it replaced
    // is gone on the server too, so what it covered goes.
    if (ours) giveBack(key);
    return;
  }
  if (!ours) {
    // The PR was called back while we waited: the PW covers nothing cached, and goes back too.
    cancel(id, link_.generation());
    return;
  }
  byId_.erase(old);
  it->second = Held{id, rpc::LockMode::PW, link_.generation(), timer_.now()};
  byId_.emplace(id, key);
}

kj::Promise<void> LockCache::enqueue(uint64_t ino, uint64_t bit, rpc::LockMode mode,
                                     uint64_t replaces) {
  auto generation = kj::heap<uint64_t>(0);
  auto& sent = *generation;
  return link_.locks()
      .then([this, ino, bit, mode, replaces, &sent](rpc::LockSession::Client session) {
        uint64_t generation = link_.generation();
        sent = generation;
        auto req = session.enqueueRequest();
        auto r = req.initRequest();
        r.setType(RES_INODE);
        r.setId(ino);
        r.setMode(mode);
        r.setBits(bit);
        r.setReplaces(replaces);
        return req.send().then([this, ino, bit, mode, replaces, generation](auto&& reply) {
          if (generation != link_.generation()) return;  // granted by a connection since lost
          if (replaces != 0) {
            replaced(ino, bit, reply.getLockId(), replaces);
          } else {
            add(ino, bit, reply.getLockId(), mode);
          }
          trim();
        });
      })
      .catch_([this, ino, bit, mode, replaces, &sent](kj::Exception&& e) -> kj::Promise<void> {
        // The connection went while we waited, or the server ended our session: reconnect,
        // and ask again there (an upgrade has nothing left to replace: the server dropped it).
        if (e.getType() != kj::Exception::Type::DISCONNECTED) return kj::mv(e);
        link_.disconnected(sent, e.getDescription());
        if (replaces != 0) return kj::READY_NOW;
        return timer_.afterDelay(10 * kj::MILLISECONDS).then([this, ino, bit, mode]() {
          return enqueue(ino, bit, mode);
        });
      })
      .attach(kj::mv(generation));
}

void LockCache::forgetAll() {
  std::vector<Key> keys;
  for (auto& [key, h] : held_) keys.push_back(key);
  held_.clear();
  byId_.clear();
  early_.clear();
  cancels_.clear();
  converts_.clear();
  // Revocations under way finish dropping; their cancels are skipped (old generation).
  for (auto& key : keys) tasks_.add(revoke_(key.first, key.second, false));
  if (!keys.empty())
    spdlog::info("lock cache: connection lost, {} cached locks dropped", keys.size());
}

void LockCache::setShare(size_t share) {
  size_t bound = kj::max(kj::min(configured_, share), size_t(1));
  if (bound == limits_.maxLocks) return;
  spdlog::info(
      "lock cache: the server asks for at most {} locks (this mount's own bound: {}); "
      "{} held",
      share, configured_, held_.size());
  limits_.maxLocks = bound;
  trim();
}

// Past the bound, the least recently used locks go back, a tenth of the bound at a time so that
// a stream of new locks does not turn into one give-back per grant.
void LockCache::trim() {
  if (held_.size() <= limits_.maxLocks) return;
  std::vector<std::pair<kj::TimePoint, Key>> order;
  order.reserve(held_.size());
  for (auto& [key, h] : held_) order.emplace_back(h.lastUsed, key);
  size_t excess = held_.size() - limits_.maxLocks + limits_.maxLocks / 10;
  excess = std::min(excess, order.size());
  std::partial_sort(order.begin(), order.begin() + excess, order.end(),
                    [](auto& a, auto& b) { return a.first < b.first; });
  for (size_t i = 0; i < excess; ++i) giveBack(order[i].second);
}

kj::Promise<void> LockCache::sweepLoop() {
  return timer_.afterDelay(SWEEP_INTERVAL).then([this]() {
    auto now = timer_.now();
    std::vector<Key> idle;
    for (auto& [key, h] : held_) {
      if (now - h.lastUsed > limits_.maxIdle) idle.push_back(key);
    }
    for (auto& key : idle) giveBack(key);
    return sweepLoop();
  });
}

}  // namespace cairn
