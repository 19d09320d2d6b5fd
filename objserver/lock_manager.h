// The lock manager of one server: every piece of server state a client caches is covered by a
// lock from here (and, later, the active-server lock of a controlled shutdown is one more
// resource). Transport-free: owners are told through LockOwner, the RPC layer adapts.
//
// A resource is (type, id). A lock holds it in one of six modes with the usual compatibility
// matrix; inode locks carry bits (lookup, attributes, layout, ...) and data locks a byte extent,
// and locks on disjoint bits or extents never conflict. Requests are granted in arrival order
// (a request never overtakes an earlier conflicting one, so writers do not starve). When a
// request waits on granted locks, their owners get one blocking callback each; an owner that has
// not cancelled within the callback timeout is evicted, so one dead or stuck client never hangs
// the others.
//
// A server update takes its locks one after another in inode order (a group). A group that waits
// on a client's cached lock holds the locks it already has; that client's own updates, which it
// must finish before it can give its lock back (asynchronous directory operations), pass those
// locks and the group's waiting requests instead of deadlocking behind them. The server's locks
// only call caches back (the update's transaction decides), so two updates sharing one is safe.
#pragma once

#include <kj/async.h>
#include <kj/function.h>
#include <kj/string.h>
#include <kj/time.h>
#include <kj/timer.h>

#include <cstdint>

#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "rpc/lock_names.h"

namespace cairn {

enum class LockMode : uint8_t { NL, CR, CW, PR, PW, EX };
bool compatible(LockMode a, LockMode b);
kj::StringPtr modeName(LockMode mode);

struct ResourceId {
  uint32_t type = 0;
  uint64_t id = 0;
  bool operator<(const ResourceId& o) const {
    return type < o.type || (type == o.type && id < o.id);
  }
  bool operator==(const ResourceId& o) const { return type == o.type && id == o.id; }
};

struct LockSpec {
  ResourceId resource;
  LockMode mode = LockMode::NL;
  uint64_t bits = ~uint64_t(0);
  uint64_t start = 0;
  uint64_t end = ~uint64_t(0);  // inclusive
};
bool conflicts(const LockSpec& a, const LockSpec& b);
// "PR lookup+attr on inode 12", for logs.
std::string describe(const LockSpec& spec);

// Who holds locks: one client session.
class LockOwner {
public:
  virtual ~LockOwner() noexcept(false) = default;
  // A lock this owner holds is wanted by someone else: write back and cancel it within
  // `timeout` (or ask for more time: LockManager::prolong).
  virtual void blocking(uint64_t lockId, kj::Duration timeout) = 0;
  // A lock this owner held was dropped with its resource (forget): drop what it covers.
  virtual void forgotten(uint64_t lockId) = 0;
  virtual kj::StringPtr ownerName() const = 0;
  // Whether a callback gives this owner a deadline, past which it is evicted. The server's own
  // locks have none: it holds them for one update (or its shutdown), and what that waits for is
  // clients' locks, whose deadlines bound the wait.
  virtual bool evictable() const { return true; }
};

class LockManager {
public:
  // `evict` is called once for an owner that did not cancel in time: it fences the owner off
  // what its locks covered (elsewhere: the data targets its writes go to) and ends its session,
  // which calls dropAll(). Its locks stay, and whoever waits for them waits, until the promise
  // resolves; then what is left of them goes. `prolongLimit`: how long after its callback a
  // lock may still be given back by an owner that keeps asking for more time.
  LockManager(kj::Timer& timer, kj::Duration callbackTimeout,
              kj::Function<kj::Promise<void>(LockOwner&)> evict,
              kj::Duration prolongLimit = 60 * kj::SECONDS);
  ~LockManager() noexcept(false);

  // Whatever a client claims, it holds or waits for at most this many locks (OVERLOADED past
  // it), so no client can grow the server without bound.
  static constexpr size_t MAX_PER_OWNER = 100000;
  KJ_DISALLOW_COPY(LockManager);

  // Resolves with the lock's id once granted. Dropping the promise before then withdraws it.
  // A lock taken `onBehalfOf` a client (the server's own, for that client's update; or the
  // client's own, held while the server answers its read) does not wait for, nor call back,
  // that client's locks: the client keeps its caches right itself. Nor does it queue behind a
  // request that waits for one of them (waitsOnOwner). Such locks last as long as the request
  // they serve, and forget() leaves them to it.
  // `group` (from newGroup(), 0 for none) names the update the lock is one of.
  // `replaces`: the id of a lock the owner holds on the same resource, which does not stand in
  // the way of this one and goes when it is granted (an upgrade that keeps what the old lock
  // covered cached meanwhile); unknown ids (already called back and cancelled) are ignored.
  kj::Promise<uint64_t> enqueue(LockOwner& owner, LockSpec spec,
                                const LockOwner* onBehalfOf = nullptr, uint64_t group = 0,
                                uint64_t replaces = 0);
  uint64_t newGroup() { return nextGroup_++; }
  // Grants at once if nothing granted or waiting conflicts, else returns null and changes
  // nothing: how a reply carries a caching lock without ever making a read wait.
  kj::Maybe<uint64_t> tryGrant(LockOwner& owner, LockSpec spec);
  // Whether another owner than `owner` holds a lock that conflicts with `spec`.
  bool heldByOthers(const LockSpec& spec, const LockOwner& owner) const;
  // Releases a granted lock. An unknown id (already cancelled, or dropped) is not an error:
  // cancels race with evictions and resends.
  void cancel(LockOwner& owner, uint64_t lockId);
  // Downgrades a granted lock to `mode`, which must conflict with nothing the old mode did not
  // (so nothing granted can start to conflict); waiters it no longer blocks are granted. An
  // unknown id is not an error, as for cancel.
  void convert(LockOwner& owner, uint64_t lockId, LockMode mode);
  // The owner of a lock called back is still giving it back, held up by something it does not
  // control (its write-back waits for a data server that is away): its timeout starts again,
  // but never runs past `prolongLimit` after the callback, so an owner that never finishes is
  // still evicted. False (nothing changed) for an unknown id, another owner's lock, a lock not
  // called back, or one at its limit. A stopped or dead owner cannot ask: it goes as before.
  bool prolong(LockOwner& owner, uint64_t lockId);
  // Drops every lock and request of an owner (eviction, or a client gone for good).
  void dropAll(LockOwner& owner);
  // The owner connected again, having forgotten its locks with its old connection (a client
  // drops what it cached then), but it may still send writes it made under them. Its granted
  // locks stay, so that others wait for those writes; but they are no longer its to give back:
  // never called back (it would not know their ids), never in the way of its own new requests,
  // and gone at releaseHeldOver (its recovery is done) or when a callback's timeout runs out,
  // without an eviction. Its waiting requests and its locks of type `dropType` go now. Returns
  // how many locks are held over.
  size_t holdOver(LockOwner& owner, uint32_t dropType);
  void releaseHeldOver(LockOwner& owner);
  // The resource is gone for good (a destroyed inode: its number is never given out again), so
  // what owners cache under it can never go stale: their granted locks are dropped at once,
  // without waiting for their cancels, and each owner but `told` (which knows already) is told
  // (LockOwner::forgotten) so that it drops what they covered. Locks a server update holds
  // (taken on behalf of a client) stay with it. Returns how many were dropped.
  size_t forget(const ResourceId& id, const LockOwner* told = nullptr);

  struct Stats {
    uint64_t granted = 0;
    uint64_t waiting = 0;
    uint64_t callbacks = 0;  // blocking callbacks sent, ever
    uint64_t evictions = 0;  // owners evicted for not cancelling, ever
    uint64_t prolonged = 0;  // timeouts restarted at their owner's request, ever
    uint64_t forgotten = 0;  // locks dropped with their resource, ever
    uint64_t heldOver = 0;   // locks of reconnected owners not yet released (holdOver)
  };
  Stats stats() const;
  size_t heldBy(const LockOwner& owner) const;

private:
  struct Lock {
    uint64_t id;
    LockOwner* owner;
    const LockOwner* onBehalfOf = nullptr;
    uint64_t group = 0;
    uint64_t replaces = 0;
    LockSpec spec;
    bool granted = false;
    bool blockingSent = false;
    bool heldOver = false;  // LockManager::holdOver
    kj::TimePoint calledBackAt = kj::origin<kj::TimePoint>();
    kj::Maybe<kj::Own<kj::PromiseFulfiller<uint64_t>>> waiter;
    kj::Promise<void> deadline = nullptr;
  };
  struct Resource {
    std::vector<Lock*> granted;
    std::vector<Lock*> waiting;  // in arrival order (a deque would cost 512 bytes a resource)
  };

  void process(const ResourceId& id);
  bool blocks(const Lock& granted, const Lock& wanted) const;
  bool waitsOnOwner(const Lock& lock, const LockOwner* owner) const;
  bool waitsOnOwnerHere(const Lock& waiter, const LockOwner* owner) const;
  bool admit(LockOwner& owner);
  kj::Own<Lock> newLock(LockOwner& owner, const LockSpec& spec);
  void remove(uint64_t lockId);
  void callBack(Lock& holder);
  void armDeadline(Lock& holder, kj::Duration in);
  void expired(uint64_t lockId);

  class ErrorHandler : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&& e) override;
  };

  kj::Timer& timer_;
  kj::Duration callbackTimeout_;
  kj::Function<kj::Promise<void>(LockOwner&)> evict_;
  std::unordered_set<LockOwner*> evicting_;  // owners whose eviction is under way
  kj::Duration prolongLimit_;
  std::map<ResourceId, Resource> resources_;
  std::unordered_map<uint64_t, kj::Own<Lock>> locks_;
  std::unordered_map<const LockOwner*, size_t> perOwner_;
  std::unordered_map<uint64_t, std::vector<Lock*>> groups_;  // an update's locks, by group
  uint64_t nextId_ = 1;
  uint64_t nextGroup_ = 1;
  uint64_t callbacks_ = 0;
  uint64_t evictions_ = 0;
  uint64_t prolonged_ = 0;
  uint64_t forgotten_ = 0;
  size_t droppedSinceTrim_ = 0;  // locks dropped with their owners since memory was trimmed
  ErrorHandler errorHandler_;
  kj::TaskSet tasks_;  // declared last: destroyed first, before the locks it refers to
};

}  // namespace cairn
