// The caching locks a client holds on one server, and what happens when the server wants one
// back. Every attribute, directory entry and page the client (or its kernel) caches is covered
// by one of these; the server's blocking callback lands here, the covered state is dropped
// (`revoke`: the client's own caches at once, the kernel's through the notifier thread, dirty
// pages written back first), and only then is the lock cancelled.
//
// A lock covers one bit of one inode (lookup, attributes or data), in PR, or in PW for the data
// of a file this client has open for writing. Most arrive granted with a reply (the request's
// intent); data locks are also taken on their own, waiting if need be. The cache is bounded: past
// `maxLocks`, or when idle for `maxIdle`, locks are given back the same way as when the server
// asks.
#pragma once

#include <kj/async.h>
#include <kj/function.h>
#include <kj/timer.h>

#include <cstdint>
#include <map>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "rpc/cairn.capnp.h"
#include "rpc/server_link.h"

namespace cairn {

class LockCache {
public:
  // Drops what a lock on (ino, bit) covers; the lock is cancelled once the promise resolves.
  // `destroyed`: our own update destroyed the inode, through this kernel (see giveBackInode).
  using Revoke = kj::Function<kj::Promise<void>(uint64_t ino, uint64_t bit, bool destroyed)>;
  struct Limits {
    size_t maxLocks = 60000;  // the server refuses a client more than 100,000
    kj::Duration maxIdle = 600 * kj::SECONDS;
  };

  LockCache(ServerLink& link, kj::Timer& timer, Revoke revoke, Limits limits);
  ~LockCache() noexcept(false);
  KJ_DISALLOW_COPY(LockCache);

  // What to give the server at connect.
  rpc::LockCallback::Client callback();
  // Whether a PW lock on (ino, bit) that the server calls back covers nothing dirty (no writer
  // open, nothing queued): then it is downgraded to PR instead of given back.
  void setDowngradable(kj::Function<bool(uint64_t ino, uint64_t bit)> downgradable) {
    downgradable_ = kj::mv(downgradable);
  }
  // Whether a give-back is now waiting on servers (our requests to them are on their way or
  // parked at a gate): then, and only then, the server is asked for more time. A give-back
  // stuck on anything else still ends in an eviction after the lock timeout, which is what
  // breaks a cycle through the kernel (a page drop waiting on a READ that waits on a lock).
  void setHeldUp(kj::Function<bool()> heldUp) { heldUp_ = kj::mv(heldUp); }

  // The id of the lock held on (ino, bit), 0 if none; counts as a use.
  uint64_t held(uint64_t ino, uint64_t bit);
  // Its mode, if one is held.
  kj::Maybe<rpc::LockMode> heldMode(uint64_t ino, uint64_t bit);
  // True while a lock on (ino, bit) is being given back.
  bool revoking(uint64_t ino, uint64_t bit) const;
  // Someone used what a lock being given back covers (a read that could not wait for a new
  // lock without deadlocking the revocation): drop it all once more before cancelling.
  void usedWhileRevoking(uint64_t ino, uint64_t bit);
  // Our own update destroyed the inode: its locks go back (what they covered is dropped first,
  // as always; Revoke is told the inode is gone).
  void giveBackInode(uint64_t ino);
  // A PW held on (ino, bit) becomes PR (features::LOCK_CONVERT), keeping what it covers: the
  // caller has nothing dirty under it any more. Counted as PR here from now on, so nothing is
  // done under it as PW while the conversion is on its way; it leaves with flushConverts().
  // False if nothing was converted (no PW held, or a server without the feature).
  bool downgrade(uint64_t ino, uint64_t bit);
  void flushConverts();
  // A lock on the inode was called back lately (seconds ago): another client wants what it
  // covers.
  bool contended(uint64_t ino) const;
  // Locks that came with a reply.
  void granted(capnp::List<rpc::GrantedLock>::Reader locks);
  // Takes a lock on (ino, bit), waiting while the server calls back conflicting ones (a PR of
  // our own that PW replaces among them).
  kj::Promise<void> acquire(uint64_t ino, uint64_t bit, rpc::LockMode mode);
  // Our PR on (ino, bit) becomes PW in place (features::ASYNC_DIROPS): what it covers stays
  // cached while the server calls the other holders back, and the PR goes when the PW is
  // granted. Without a PR held it is acquire(PW). Resolves once granted; if the PR was called
  // back meanwhile, the PW goes back too and nothing is held.
  kj::Promise<void> upgrade(uint64_t ino, uint64_t bit);
  // A controlled shutdown of the server: every lock goes back, what it covered dropped first
  // (dirty data written back). Resolves once the cancels have left.
  kj::Promise<void> giveBackAll();
  // The connection is gone; the server holds our locks over until our recovery is done, then
  // drops them. Everything they covered is revoked (the caller's caches), nothing is cancelled.
  void forgetAll();

  size_t size() const { return held_.size(); }
  // The server's share of its lock budget for us (LockCallback.share): the bound becomes the
  // smaller of it and our own, and what is held beyond it goes back, least recently used first.
  void setShare(size_t share);
  size_t bound() const { return limits_.maxLocks; }
  uint64_t callbacks() const { return callbacks_; }
  uint64_t forgotten() const { return forgotten_; }
  uint64_t downgrades() const { return downgrades_; }
  uint64_t prolongs() const { return prolongs_; }

private:
  using Key = std::pair<uint64_t, uint64_t>;  // ino, bit
  struct Held {
    uint64_t id;
    rpc::LockMode mode;
    uint64_t generation;  // of the link when granted: ids mean nothing across connections
    kj::TimePoint lastUsed;
  };
  struct Revoking {
    uint64_t id;
    uint64_t generation;
    bool usedAgain = false;
    bool gone = false;                       // dropped by the server already: nothing to cancel
    bool destroyed = false;                  // by our own update (giveBackInode)
    kj::Duration timeout = 0 * kj::SECONDS;  // the server's, if it called the lock back
    kj::TimePoint since = kj::origin<kj::TimePoint>();
    bool reported = false;  // logged as slow
  };
  class Callback;

  void add(uint64_t ino, uint64_t bit, uint64_t id, rpc::LockMode mode);
  kj::Promise<void> request(uint64_t ino, uint64_t bit, rpc::LockMode mode, uint64_t replaces);
  kj::Promise<void> enqueue(uint64_t ino, uint64_t bit, rpc::LockMode mode, uint64_t replaces = 0);
  void replaced(uint64_t ino, uint64_t bit, uint64_t id, uint64_t old);
  void blocking(uint64_t id, kj::Duration timeout);
  // The server dropped the lock with the inode it covered (destroyed by another client).
  void forgotten(uint64_t id);
  // While locks called back are still being given back, asks the server for more time, a few
  // times per timeout (features::LOCK_PROLONG).
  kj::Promise<void> prolongLoop(kj::Duration every);
  void giveBack(Key key);
  kj::Promise<void> release(Key key, bool gone = false, bool destroyed = false);
  kj::Promise<void> dropCovered(Key key, unsigned pass);
  void cancel(uint64_t id, uint64_t generation);
  void flushCancels();
  // A message on the lock session that nobody waits for (cancels, conversions), sent on the
  // connection of `generation`.
  void sendAside(kj::Promise<void> sent, uint64_t generation);
  void trim();
  kj::Promise<void> sweepLoop();

  ServerLink& link_;
  kj::Timer& timer_;
  Revoke revoke_;
  Limits limits_;      // maxLocks: the smaller of ours and the server's share
  size_t configured_;  // our own maxLocks
  std::map<Key, Held> held_;
  std::unordered_map<uint64_t, Key> byId_;
  std::map<Key, Revoking> revoking_;
  std::set<uint64_t> early_;  // called back before the reply granting it was seen
  std::map<std::pair<Key, rpc::LockMode>, kj::ForkedPromise<void>> acquiring_;
  kj::Vector<uint64_t> cancels_;                           // to send, batched
  kj::Vector<uint64_t> converts_;                          // downgrades to send
  std::unordered_map<uint64_t, kj::TimePoint> contended_;  // when a callback came
  kj::Maybe<kj::Function<bool(uint64_t, uint64_t)>> downgradable_;
  kj::Maybe<kj::Function<bool()>> heldUp_;
  uint64_t convertGeneration_ = 0;
  uint64_t cancelGeneration_ = 0;
  uint64_t callbacks_ = 0;
  uint64_t forgotten_ = 0;   // locks the server dropped with their inodes
  uint64_t downgrades_ = 0;  // conversions sent
  uint64_t prolongs_ = 0;    // locks for which more time was asked
  bool prolonging_ = false;  // prolongLoop() runs
  // The callback capability may outlive the cache (the connection holds it): it reaches the
  // cache through this, which the cache clears when it goes.
  struct Handle : public kj::Refcounted {
    LockCache* cache;
  };
  kj::Own<Handle> handle_;
  class ErrorHandler : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&& e) override;
  };
  ErrorHandler errorHandler_;
  kj::TaskSet tasks_;
  kj::Promise<void> sweeper_ = nullptr;
};

}  // namespace cairn
