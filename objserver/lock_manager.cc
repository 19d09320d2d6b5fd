#include "objserver/lock_manager.h"

#include <malloc.h>

#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <string>

#include "rpc/lock_names.h"

namespace cairn {

bool compatible(LockMode a, LockMode b) {
  // The classic matrix (VMS, Lustre): rows and columns NL, CR, CW, PR, PW, EX.
  static constexpr bool table[6][6] = {
      {true, true, true, true, true, true},       // NL
      {true, true, true, true, true, false},      // CR
      {true, true, true, false, false, false},    // CW
      {true, true, false, true, false, false},    // PR
      {true, true, false, false, false, false},   // PW
      {true, false, false, false, false, false},  // EX
  };
  return table[static_cast<int>(a)][static_cast<int>(b)];
}

kj::StringPtr modeName(LockMode mode) {
  static const kj::StringPtr names[] = {"NL", "CR", "CW", "PR", "PW", "EX"};
  return names[static_cast<int>(mode)];
}

std::string describe(const LockSpec& spec) {
  std::string out = modeName(spec.mode).cStr();
  if (spec.resource.type == RES_INODE) {
    static const std::pair<uint64_t, const char*> bits[] = {{BIT_LOOKUP, "lookup"},
                                                            {BIT_ATTR, "attr"},
                                                            {BIT_LAYOUT, "layout"},
                                                            {BIT_XATTR, "xattr"},
                                                            {BIT_DATA, "data"}};
    const char* sep = " ";
    for (auto& [bit, name] : bits) {
      if (spec.bits & bit) {
        out += fmt::format("{}{}", sep, name);
        sep = "+";
      }
    }
    return out + fmt::format(" on inode {}", spec.resource.id);
  }
  if (spec.resource.type == RES_OBJECT) {
    return out + fmt::format(" on object {} [{}, {}]", spec.resource.id, spec.start, spec.end);
  }
  return out + fmt::format(" on resource {}:{}", spec.resource.type, spec.resource.id);
}

bool conflicts(const LockSpec& a, const LockSpec& b) {
  return a.resource == b.resource && !compatible(a.mode, b.mode) && (a.bits & b.bits) != 0 &&
         a.start <= b.end && b.start <= a.end;
}

LockManager::LockManager(kj::Timer& timer, kj::Duration callbackTimeout,
                         kj::Function<kj::Promise<void>(LockOwner&)> evict,
                         kj::Duration prolongLimit)
    : timer_(timer),
      callbackTimeout_(callbackTimeout),
      evict_(kj::mv(evict)),
      prolongLimit_(prolongLimit),
      tasks_(errorHandler_) {}

LockManager::~LockManager() noexcept(false) {}

bool LockManager::blocks(const Lock& granted, const Lock& wanted) const {
  if (granted.owner == wanted.onBehalfOf || granted.id == wanted.replaces) return false;
  if (granted.heldOver && granted.owner == wanted.owner) return false;
  if (!conflicts(granted.spec, wanted.spec)) return false;
  // Another update's lock, held while that update waits for our client's lock: our client's
  // update goes first (the client gives its lock back only once it is done).
  return !(granted.group != 0 && waitsOnOwner(granted, wanted.onBehalfOf));
}

// Whether `lock` waits, or belongs to an update that waits, on a lock `owner` holds. A request
// on a client's behalf does not queue behind such a one: the client may need the request done
// to give its lock back (dirty pages written back, directory operations it already answered),
// and the waiter would wait forever.
bool LockManager::waitsOnOwner(const Lock& lock, const LockOwner* owner) const {
  if (owner == nullptr) return false;
  if (lock.group == 0) return !lock.granted && waitsOnOwnerHere(lock, owner);
  auto group = groups_.find(lock.group);
  if (group == groups_.end()) return false;
  for (const Lock* l : group->second) {
    if (!l->granted && waitsOnOwnerHere(*l, owner)) return true;
  }
  return false;
}

bool LockManager::waitsOnOwnerHere(const Lock& waiter, const LockOwner* owner) const {
  auto found = resources_.find(waiter.spec.resource);
  if (found == resources_.end()) return false;
  for (const Lock* g : found->second.granted) {
    if (g->owner == owner && conflicts(g->spec, waiter.spec)) return true;
  }
  return false;
}

kj::Own<LockManager::Lock> LockManager::newLock(LockOwner& owner, const LockSpec& spec) {
  auto lock = kj::heap<Lock>();
  lock->id = nextId_++;
  lock->owner = &owner;
  lock->spec = spec;
  return lock;
}

bool LockManager::admit(LockOwner& owner) {
  auto& count = perOwner_[&owner];
  if (count >= MAX_PER_OWNER) return false;
  ++count;
  return true;
}

kj::Promise<uint64_t> LockManager::enqueue(LockOwner& owner, LockSpec spec,
                                           const LockOwner* onBehalfOf, uint64_t group,
                                           uint64_t replaces) {
  KJ_REQUIRE(static_cast<int>(spec.mode) <= static_cast<int>(LockMode::EX), "bad lock mode");
  KJ_REQUIRE(spec.start <= spec.end, "bad lock extent", spec.start, spec.end);
  auto old = locks_.find(replaces);
  if (old == locks_.end()) {
    replaces = 0;  // called back and cancelled meanwhile: nothing left to replace
  } else {
    KJ_REQUIRE(old->second->owner == &owner && old->second->spec.resource == spec.resource,
               "a lock can only replace its owner's lock on the same resource", replaces);
  }
  if (!admit(owner)) {
    kj::throwFatalException(KJ_EXCEPTION(OVERLOADED, "too many locks for one client",
                                         owner.ownerName(), MAX_PER_OWNER));
  }
  auto lock = newLock(owner, spec);
  uint64_t id = lock->id;
  lock->onBehalfOf = onBehalfOf;
  lock->group = group;
  lock->replaces = replaces;
  auto paf = kj::newPromiseAndFulfiller<uint64_t>();
  lock->waiter = kj::mv(paf.fulfiller);
  resources_[spec.resource].waiting.push_back(lock.get());
  if (group != 0) groups_[group].push_back(lock.get());
  Lock& added = *lock;
  locks_.emplace(id, kj::mv(lock));
  process(spec.resource);
  if (group != 0 && !added.granted) {
    // The update now waits: requests of a client it waits on may pass the locks it holds.
    std::vector<ResourceId> others;
    for (Lock* l : groups_[group]) {
      if (l->granted) others.push_back(l->spec.resource);
    }
    for (auto& rid : others) process(rid);
  }
  // A request withdrawn before its grant (the client went away, or gave up) leaves the queue.
  return paf.promise.attach(kj::defer([this, id]() {
    auto it = locks_.find(id);
    if (it != locks_.end() && !it->second->granted) remove(id);
  }));
}

kj::Maybe<uint64_t> LockManager::tryGrant(LockOwner& owner, LockSpec spec) {
  KJ_REQUIRE(static_cast<int>(spec.mode) <= static_cast<int>(LockMode::EX), "bad lock mode");
  KJ_REQUIRE(spec.start <= spec.end, "bad lock extent", spec.start, spec.end);
  auto found = resources_.find(spec.resource);
  if (found != resources_.end()) {
    for (Lock* g : found->second.granted) {
      // Asked again for what it holds (it cannot tell which of a reply's inodes it covers
      // already): the same lock, not a second one. Not one taken on its own behalf for a read:
      // that one may have passed an update under way (waitsOnOwner), and what it covered may
      // change as soon as the read is answered.
      if (g->owner == &owner && g->onBehalfOf == nullptr && !g->blockingSent &&
          g->spec.mode == spec.mode && g->spec.bits == spec.bits && g->spec.start == spec.start &&
          g->spec.end == spec.end) {
        return g->id;
      }
    }
    for (Lock* g : found->second.granted) {
      if (conflicts(g->spec, spec)) return nullptr;
    }
    for (Lock* w : found->second.waiting) {
      if (conflicts(w->spec, spec)) return nullptr;
    }
  }
  if (!admit(owner)) return nullptr;
  auto lock = newLock(owner, spec);
  uint64_t id = lock->id;
  lock->granted = true;
  resources_[spec.resource].granted.push_back(lock.get());
  locks_.emplace(id, kj::mv(lock));
  return id;
}

bool LockManager::heldByOthers(const LockSpec& spec, const LockOwner& owner) const {
  auto found = resources_.find(spec.resource);
  if (found == resources_.end()) return false;
  for (Lock* g : found->second.granted) {
    if (g->owner != &owner && conflicts(g->spec, spec)) return true;
  }
  return false;
}

void LockManager::cancel(LockOwner& owner, uint64_t lockId) {
  auto it = locks_.find(lockId);
  if (it == locks_.end()) return;
  KJ_REQUIRE(it->second->owner == &owner, "a lock can only be cancelled by its owner", lockId);
  remove(lockId);
}

namespace {
// Every mode `to` conflicts with, `from` conflicts with too.
bool weakerOrEqual(LockMode to, LockMode from) {
  for (int m = 0; m <= static_cast<int>(LockMode::EX); ++m) {
    auto other = static_cast<LockMode>(m);
    if (!compatible(to, other) && compatible(from, other)) return false;
  }
  return true;
}
}  // namespace

void LockManager::convert(LockOwner& owner, uint64_t lockId, LockMode mode) {
  KJ_REQUIRE(static_cast<int>(mode) <= static_cast<int>(LockMode::EX), "bad lock mode");
  auto it = locks_.find(lockId);
  if (it == locks_.end()) return;
  Lock& lock = *it->second;
  KJ_REQUIRE(lock.owner == &owner, "a lock can only be converted by its owner", lockId);
  KJ_REQUIRE(lock.granted, "only a granted lock can be converted", lockId);
  KJ_REQUIRE(weakerOrEqual(mode, lock.spec.mode), "a conversion may only downgrade", lockId,
             modeName(lock.spec.mode), modeName(mode));
  if (mode == lock.spec.mode) return;
  lock.spec.mode = mode;
  // An answer to a callback, or not: either way the callback is settled. Waiters it no longer
  // blocks go ahead; if it still blocks one, its owner is asked again (and must cancel).
  lock.blockingSent = false;
  lock.deadline = nullptr;
  process(lock.spec.resource);
}

void LockManager::dropAll(LockOwner& owner) {
  evicting_.erase(&owner);
  std::vector<uint64_t> ids;
  for (auto& [id, lock] : locks_) {
    if (lock->owner == &owner) ids.push_back(id);
  }
  for (uint64_t id : ids) remove(id);
  // Many locks gone (clients with large caches left): give the memory back. glibc keeps freed
  // small blocks for reuse, so a server's RSS would otherwise stay at its peak for good.
  droppedSinceTrim_ += ids.size();
  if (droppedSinceTrim_ >= 100000) {
    droppedSinceTrim_ = 0;
    malloc_trim(0);
  }
}

size_t LockManager::holdOver(LockOwner& owner, uint32_t dropType) {
  std::vector<uint64_t> drop;
  size_t kept = 0;
  for (auto& [id, lock] : locks_) {
    if (lock->owner != &owner) continue;
    if (!lock->granted || lock->spec.resource.type == dropType) {
      drop.push_back(id);
    } else {
      lock->heldOver = true;
      ++kept;
    }
  }
  for (uint64_t id : drop) remove(id);
  return kept;
}

void LockManager::releaseHeldOver(LockOwner& owner) {
  std::vector<uint64_t> ids;
  for (auto& [id, lock] : locks_) {
    if (lock->owner == &owner && lock->heldOver) ids.push_back(id);
  }
  for (uint64_t id : ids) remove(id);
}

size_t LockManager::forget(const ResourceId& id, const LockOwner* told) {
  auto found = resources_.find(id);
  if (found == resources_.end()) return 0;
  std::vector<std::pair<LockOwner*, uint64_t>> dropped;
  for (Lock* g : found->second.granted) {
    if (g->onBehalfOf == nullptr) dropped.emplace_back(g->owner, g->id);
  }
  for (auto& [owner, lockId] : dropped) remove(lockId);
  forgotten_ += dropped.size();
  // Told after all are gone: a cancel in answer (from an older client) is of an id nobody knows.
  for (auto& [owner, lockId] : dropped) {
    if (owner != told) owner->forgotten(lockId);
  }
  return dropped.size();
}

void LockManager::remove(uint64_t lockId) {
  auto it = locks_.find(lockId);
  if (it == locks_.end()) return;
  auto own = kj::mv(it->second);
  locks_.erase(it);
  auto counted = perOwner_.find(own->owner);
  if (counted != perOwner_.end() && --counted->second == 0) perOwner_.erase(counted);
  ResourceId rid = own->spec.resource;
  auto& res = resources_[rid];
  res.granted.erase(std::remove(res.granted.begin(), res.granted.end(), own.get()),
                    res.granted.end());
  res.waiting.erase(std::remove(res.waiting.begin(), res.waiting.end(), own.get()),
                    res.waiting.end());
  if (own->group != 0) {
    auto group = groups_.find(own->group);
    if (group != groups_.end()) {
      auto& members = group->second;
      members.erase(std::remove(members.begin(), members.end(), own.get()), members.end());
      if (members.empty()) groups_.erase(group);
    }
  }
  KJ_IF_MAYBE (w, own->waiter) {
    // Withdrawn while waiting: whoever still waits on it learns why.
    if ((*w)->isWaiting()) (*w)->reject(KJ_EXCEPTION(DISCONNECTED, "lock request dropped"));
  }
  if (res.granted.empty() && res.waiting.empty()) {
    resources_.erase(rid);
  } else {
    process(rid);
  }
}

void LockManager::process(const ResourceId& rid) {
  auto found = resources_.find(rid);
  if (found == resources_.end()) return;
  auto& res = found->second;
  std::vector<Lock*> grantNow;
  std::vector<Lock*> ahead;  // earlier waiters still waiting
  for (Lock* w : res.waiting) {
    bool blocked = false;
    for (Lock* g : res.granted) {
      if (blocks(*g, *w)) {
        blocked = true;
        if (!g->blockingSent) callBack(*g);
      }
    }
    for (Lock* e : ahead) {
      if (conflicts(w->spec, e->spec) && !waitsOnOwner(*e, w->onBehalfOf)) blocked = true;
    }
    if (blocked) {
      ahead.push_back(w);
    } else {
      grantNow.push_back(w);
      res.granted.push_back(w);
    }
  }
  std::vector<uint64_t> replaced;
  for (Lock* g : grantNow) {
    res.waiting.erase(std::find(res.waiting.begin(), res.waiting.end(), g));
    g->granted = true;
    KJ_IF_MAYBE (w, g->waiter) {
      (*w)->fulfill(kj::cp(g->id));
    }
    g->waiter = nullptr;
    if (g->replaces != 0) replaced.push_back(g->replaces);
  }
  // A lock granted now may already be in someone's way (a later waiter it conflicts with).
  if (!grantNow.empty() && !res.waiting.empty()) {
    for (Lock* w : res.waiting) {
      for (Lock* g : res.granted) {
        if (blocks(*g, *w) && !g->blockingSent) callBack(*g);
      }
    }
  }
  // An upgrade's old lock goes last: removing it processes this resource again.
  for (uint64_t id : replaced) remove(id);
}

void LockManager::callBack(Lock& holder) {
  holder.blockingSent = true;
  if (!holder.owner->evictable()) return;
  holder.calledBackAt = timer_.now();
  if (holder.heldOver) {
    // Its owner forgot it: nobody to ask. It goes with the owner's recovery, or at the deadline.
    armDeadline(holder, callbackTimeout_);
    return;
  }
  ++callbacks_;
  holder.owner->blocking(holder.id, callbackTimeout_);
  armDeadline(holder, callbackTimeout_);
}

void LockManager::armDeadline(Lock& holder, kj::Duration in) {
  uint64_t id = holder.id;
  // The eviction runs as its own event: it destroys the lock, and with it this timer.
  holder.deadline =
      timer_.afterDelay(in)
          .then([this, id]() { tasks_.add(kj::evalLater([this, id]() { expired(id); })); })
          .eagerlyEvaluate(nullptr);
}

bool LockManager::prolong(LockOwner& owner, uint64_t lockId) {
  auto it = locks_.find(lockId);
  if (it == locks_.end()) return false;
  Lock& lock = *it->second;
  if (lock.owner != &owner || !lock.granted || !lock.blockingSent) return false;
  auto limit = lock.calledBackAt + prolongLimit_;
  auto now = timer_.now();
  if (now >= limit) return false;
  ++prolonged_;
  armDeadline(lock, kj::min(callbackTimeout_, limit - now));
  return true;
}

void LockManager::expired(uint64_t id) {
  auto it = locks_.find(id);
  if (it == locks_.end()) return;
  LockOwner& owner = *it->second->owner;
  if (it->second->heldOver) {
    // Its owner came back and is still writing back what the lock covered: that is late, but
    // the owner holds nothing it could cancel, and its session is not at fault.
    spdlog::warn(
        "{} has not recovered within {} ms of a callback for lock {} held over its "
        "reconnect: dropping it",
        owner.ownerName().cStr(), (timer_.now() - it->second->calledBackAt) / kj::MILLISECONDS, id);
    remove(id);
    return;
  }
  if (!evicting_.insert(&owner).second) return;  // another of its locks expired first
  ++evictions_;
  // Since the callback: longer than the timeout if the owner asked for more time.
  // What it held and who waited for it: enough to follow a chain of waits across clients.
  Lock& lock = *it->second;
  std::string waiters;
  auto res = resources_.find(lock.spec.resource);
  if (res != resources_.end()) {
    // The first few, in the order they came: a busy resource may have thousands.
    constexpr size_t NAMED = 4;
    auto& waiting = res->second.waiting;
    for (size_t i = 0; i < std::min(waiting.size(), NAMED); ++i) {
      Lock* w = waiting[i];
      waiters += fmt::format("{}{} ({}{})", waiters.empty() ? "" : ", ", describe(w->spec),
                             w->owner->ownerName().cStr(),
                             w->onBehalfOf != nullptr
                                 ? fmt::format(" for {}", w->onBehalfOf->ownerName().cStr())
                                 : std::string());
    }
    if (waiting.size() > NAMED) waiters += fmt::format(" and {} more", waiting.size() - NAMED);
  }
  spdlog::warn("{} did not cancel lock {} ({}) within {} ms: evicting it; waiting for it: {}",
               owner.ownerName().cStr(), id, describe(lock.spec),
               (timer_.now() - lock.calledBackAt) / kj::MILLISECONDS,
               waiters.empty() ? "nobody" : waiters);
  // Its locks go once it is fenced (the eviction ends its session, which drops them); whatever
  // is left then goes too, unless the owner went meanwhile (dropAll took it off the list).
  LockOwner* evicted = &owner;
  tasks_.add(evict_(owner).then([this, evicted]() {
    if (evicting_.count(evicted) > 0) dropAll(*evicted);
  }));
}

void LockManager::ErrorHandler::taskFailed(kj::Exception&& e) {
  spdlog::error("lock manager: {}", e.getDescription().cStr());
}

LockManager::Stats LockManager::stats() const {
  Stats s;
  for (auto& [id, lock] : locks_) {
    if (lock->heldOver) ++s.heldOver;
    if (lock->granted) {
      ++s.granted;
    } else {
      ++s.waiting;
    }
  }
  s.callbacks = callbacks_;
  s.evictions = evictions_;
  s.prolonged = prolonged_;
  s.forgotten = forgotten_;
  return s;
}

size_t LockManager::heldBy(const LockOwner& owner) const {
  size_t n = 0;
  for (auto& [id, lock] : locks_) {
    if (lock->owner == &owner && lock->granted) ++n;
  }
  return n;
}

}  // namespace cairn
