// The lock manager alone: compatibility, bits and extents, grant order, blocking callbacks,
// eviction of an owner that does not cancel, withdrawn requests.
#include <gtest/gtest.h>

#include <kj/async-io.h>
#include <kj/debug.h>

#include <vector>

#include "objserver/lock_manager.h"

namespace cairn {
namespace {

struct Owner : public LockOwner {
  explicit Owner(const char* n) : name(n) {}
  void blocking(uint64_t id, kj::Duration) override { asked.push_back(id); }
  void forgotten(uint64_t id) override { gone.push_back(id); }
  kj::StringPtr ownerName() const override { return name; }
  kj::StringPtr name;
  std::vector<uint64_t> asked;
  std::vector<uint64_t> gone;
};

LockSpec spec(LockMode mode, uint64_t bits = ~uint64_t(0), uint64_t start = 0,
              uint64_t end = ~uint64_t(0)) {
  LockSpec s;
  s.resource = ResourceId{RES_INODE, 42};
  s.mode = mode;
  s.bits = bits;
  s.start = start;
  s.end = end;
  return s;
}

class Locks : public ::testing::Test {
protected:
  ~Locks() noexcept override {}
  Locks()
      : io(kj::setupAsyncIo()),
        manager(io.provider->getTimer(), 200 * kj::MILLISECONDS,
                [this](LockOwner& o) { return evict(o); }) {}
  // An eviction: done at once, or once `fenced` is fulfilled if the test set it up.
  kj::Promise<void> evict(LockOwner& o) {
    evicted.push_back(&o);
    KJ_IF_MAYBE (f, fencing) {
      auto p = kj::mv(*f);
      fencing = nullptr;
      return kj::mv(p);
    }
    return kj::READY_NOW;
  }
  // Lets queued events run.
  void settle() { io.provider->getTimer().afterDelay(1 * kj::MILLISECONDS).wait(io.waitScope); }
  bool granted(kj::Promise<uint64_t>& p) { return p.poll(io.waitScope); }

  kj::AsyncIoContext io;
  LockManager manager;
  std::vector<LockOwner*> evicted;
  kj::Maybe<kj::Promise<void>> fencing;
  Owner a{"a"}, b{"b"}, c{"c"};
};

TEST(LockModes, CompatibilityMatrixIsSymmetricAndClassic) {
  using M = LockMode;
  const M all[] = {M::NL, M::CR, M::CW, M::PR, M::PW, M::EX};
  for (M x : all) {
    for (M y : all) EXPECT_EQ(compatible(x, y), compatible(y, x));
    EXPECT_TRUE(compatible(M::NL, x));
  }
  EXPECT_TRUE(compatible(M::PR, M::PR));
  EXPECT_FALSE(compatible(M::PR, M::PW));
  EXPECT_TRUE(compatible(M::CW, M::CW));
  EXPECT_FALSE(compatible(M::CW, M::PR));
  EXPECT_TRUE(compatible(M::CR, M::PW));
  EXPECT_FALSE(compatible(M::EX, M::CR));
}

TEST(LockModes, BitsAndExtentsSeparateLocks) {
  EXPECT_TRUE(conflicts(spec(LockMode::PR), spec(LockMode::EX)));
  EXPECT_FALSE(conflicts(spec(LockMode::PR, BIT_LOOKUP), spec(LockMode::EX, BIT_ATTR)));
  EXPECT_FALSE(
      conflicts(spec(LockMode::PW, ~0ull, 0, 4095), spec(LockMode::PW, ~0ull, 4096, 8191)));
  EXPECT_TRUE(conflicts(spec(LockMode::PW, ~0ull, 0, 4096), spec(LockMode::PW, ~0ull, 4096, 8191)));
  auto other = spec(LockMode::EX);
  other.resource.id = 43;
  EXPECT_FALSE(conflicts(spec(LockMode::EX), other));
}

// What the logs say of a lock (an eviction names the lock and its waiters).
TEST(LockModes, LocksAreDescribedByModeBitsAndResource) {
  EXPECT_EQ(describe(spec(LockMode::PR, BIT_LOOKUP | BIT_ATTR)), "PR lookup+attr on inode 42");
  EXPECT_EQ(describe(spec(LockMode::EX, BIT_DATA)), "EX data on inode 42");
  auto object = spec(LockMode::PW, ~0ull, 0, 4095);
  object.resource.type = RES_OBJECT;
  EXPECT_EQ(describe(object), "PW on object 42 [0, 4095]");
}

TEST_F(Locks, ReadersShareAWriterWaitsForThemToCancel) {
  auto r1 = manager.enqueue(a, spec(LockMode::PR));
  auto r2 = manager.enqueue(b, spec(LockMode::PR));
  ASSERT_TRUE(granted(r1));
  ASSERT_TRUE(granted(r2));
  uint64_t id1 = r1.wait(io.waitScope), id2 = r2.wait(io.waitScope);
  auto w = manager.enqueue(c, spec(LockMode::PW));
  EXPECT_FALSE(granted(w));
  EXPECT_EQ(a.asked, std::vector<uint64_t>{id1});
  EXPECT_EQ(b.asked, std::vector<uint64_t>{id2});
  EXPECT_EQ(manager.stats().callbacks, 2u);
  manager.cancel(a, id1);
  EXPECT_FALSE(granted(w));
  manager.cancel(b, id2);
  EXPECT_TRUE(granted(w));
  EXPECT_EQ(manager.stats().granted, 1u);
}

TEST_F(Locks, RequestsDoNotOvertakeAnEarlierConflictingOne) {
  auto r = manager.enqueue(a, spec(LockMode::PR));
  uint64_t rid = r.wait(io.waitScope);
  auto w = manager.enqueue(b, spec(LockMode::EX));
  auto r2 = manager.enqueue(c, spec(LockMode::PR));  // compatible with a, but behind b
  EXPECT_FALSE(granted(w));
  EXPECT_FALSE(granted(r2));
  manager.cancel(a, rid);
  EXPECT_TRUE(granted(w));
  EXPECT_FALSE(granted(r2));
  // The writer now stands in the reader's way, so it was asked to cancel as well.
  EXPECT_EQ(b.asked.size(), 1u);
  manager.cancel(b, w.wait(io.waitScope));
  EXPECT_TRUE(granted(r2));
}

TEST_F(Locks, DisjointBitsAndExtentsAreGrantedTogether) {
  auto x = manager.enqueue(a, spec(LockMode::EX, BIT_ATTR));
  auto y = manager.enqueue(b, spec(LockMode::EX, BIT_LOOKUP));
  EXPECT_TRUE(granted(x));
  EXPECT_TRUE(granted(y));
  auto d1 = manager.enqueue(a, spec(LockMode::PW, BIT_LAYOUT, 0, 1 << 20));
  auto d2 = manager.enqueue(b, spec(LockMode::PW, BIT_LAYOUT, (1 << 20) + 1, 2 << 20));
  EXPECT_TRUE(granted(d1));
  EXPECT_TRUE(granted(d2));
  EXPECT_TRUE(a.asked.empty() && b.asked.empty());
}

// An owner that does not cancel is fenced off before its locks go: while the fencing is under
// way (the data targets ending its sessions) the waiter still waits, and the owner is evicted
// once, however many of its locks expire.
TEST_F(Locks, AnEvictedOwnersLocksStayUntilItIsFenced) {
  auto fence = kj::newPromiseAndFulfiller<void>();
  fencing = kj::mv(fence.promise);
  manager.enqueue(a, spec(LockMode::PW, BIT_ATTR)).wait(io.waitScope);
  manager.enqueue(a, spec(LockMode::PW, BIT_DATA)).wait(io.waitScope);
  auto w = manager.enqueue(b, spec(LockMode::EX));
  io.provider->getTimer().afterDelay(500 * kj::MILLISECONDS).wait(io.waitScope);
  ASSERT_EQ(evicted.size(), 1u);  // both locks expired; one eviction
  EXPECT_EQ(manager.stats().evictions, 1u);
  EXPECT_FALSE(granted(w));
  EXPECT_EQ(manager.heldBy(a), 2u);
  fence.fulfiller->fulfill();
  EXPECT_TRUE(granted(w));
  EXPECT_EQ(manager.heldBy(a), 0u);
}

// A destroyed inode: the locks on it go at once, their owners are told but not waited for nor
// evicted, and a server update's lock on it stays with the update.
TEST_F(Locks, ADestroyedResourceForgetsItsLocksWithoutWaitingForTheirOwners) {
  uint64_t ra = manager.enqueue(a, spec(LockMode::PR, BIT_DATA)).wait(io.waitScope);
  uint64_t rb = manager.enqueue(b, spec(LockMode::PR, BIT_ATTR)).wait(io.waitScope);
  uint64_t update = manager.enqueue(c, spec(LockMode::EX, BIT_LOOKUP), &a).wait(io.waitScope);
  auto elsewhere = spec(LockMode::PR, BIT_DATA);
  elsewhere.resource.id = 43;
  uint64_t kept = manager.enqueue(a, elsewhere).wait(io.waitScope);
  auto writer = manager.enqueue(b, spec(LockMode::PW, BIT_DATA));
  EXPECT_FALSE(granted(writer));
  ASSERT_EQ(a.asked, std::vector<uint64_t>{ra});  // called back for the writer

  EXPECT_EQ(manager.forget(ResourceId{RES_INODE, 42}, &b), 2u);
  // a is told; b, who destroyed it, knows.
  EXPECT_EQ(a.gone, std::vector<uint64_t>{ra});
  EXPECT_EQ(a.asked, std::vector<uint64_t>{ra});
  EXPECT_TRUE(b.gone.empty() && b.asked.empty());
  EXPECT_TRUE(granted(writer));  // nothing left in its way
  EXPECT_EQ(manager.stats().forgotten, 2u);
  EXPECT_EQ(manager.heldBy(a), 1u);  // the lock on another resource
  EXPECT_EQ(manager.heldBy(c), 1u);  // the update's

  // Past the callback timeout nobody is evicted, and the owners' cancels in answer are of ids
  // nobody knows.
  io.provider->getTimer().afterDelay(400 * kj::MILLISECONDS).wait(io.waitScope);
  EXPECT_TRUE(evicted.empty());
  manager.cancel(a, ra);
  manager.cancel(b, rb);
  EXPECT_EQ(manager.heldBy(a), 1u);
  manager.cancel(a, kept);
  manager.cancel(c, update);
  EXPECT_EQ(manager.forget(ResourceId{RES_INODE, 44}), 0u);  // nothing held there
}

TEST_F(Locks, AnOwnerThatDoesNotCancelIsEvictedAndOthersProceed) {
  auto stuck = manager.enqueue(a, spec(LockMode::PW, BIT_ATTR));
  stuck.wait(io.waitScope);
  auto second = manager.enqueue(a, spec(LockMode::PR, BIT_XATTR));
  second.wait(io.waitScope);
  auto w = manager.enqueue(b, spec(LockMode::EX));
  EXPECT_FALSE(granted(w));
  // Nobody cancels: after the callback timeout the owner is evicted, all its locks go.
  uint64_t id = w.wait(io.waitScope);
  EXPECT_GT(id, 0u);
  ASSERT_EQ(evicted.size(), 1u);
  EXPECT_EQ(evicted[0], &a);
  EXPECT_EQ(manager.heldBy(a), 0u);
  EXPECT_EQ(manager.stats().evictions, 1u);
  // A late cancel from the evicted owner is harmless.
  manager.cancel(a, 1);
}

// An owner that reconnected (its client forgot its locks) still holds them over: a conflicting
// request waits, the owner is not asked (it would not know the id), its own new requests pass,
// and everything goes when its recovery is done. Its waiting requests and the dropped type go at
// once.
TEST_F(Locks, LocksHeldOverAReconnectKeepOthersOutUntilReleased) {
  auto held = manager.enqueue(a, spec(LockMode::PW, BIT_ATTR));
  held.wait(io.waitScope);
  auto server = spec(LockMode::PR);
  server.resource = ResourceId{RES_SERVER, 0};
  manager.enqueue(a, server).wait(io.waitScope);
  auto blocker = manager.enqueue(b, spec(LockMode::EX, BIT_XATTR));
  blocker.wait(io.waitScope);
  auto stillWaiting = manager.enqueue(a, spec(LockMode::PR, BIT_XATTR));
  EXPECT_FALSE(granted(stillWaiting));

  EXPECT_EQ(manager.holdOver(a, RES_SERVER), 1u);
  EXPECT_EQ(manager.heldBy(a), 1u);
  EXPECT_EQ(manager.stats().heldOver, 1u);
  EXPECT_THROW(stillWaiting.wait(io.waitScope), kj::Exception);  // withdrawn

  auto own = manager.enqueue(a, spec(LockMode::PW, BIT_ATTR));
  ASSERT_TRUE(granted(own));
  uint64_t ownId = own.wait(io.waitScope);
  auto other = manager.enqueue(c, spec(LockMode::PR, BIT_ATTR));
  settle();
  EXPECT_FALSE(granted(other));
  EXPECT_EQ(a.asked, std::vector<uint64_t>{ownId});  // only for the lock it knows

  manager.releaseHeldOver(a);
  EXPECT_EQ(manager.stats().heldOver, 0u);
  EXPECT_FALSE(granted(other));  // a's new lock is still in the way
  manager.cancel(a, ownId);
  EXPECT_TRUE(granted(other));
  EXPECT_TRUE(evicted.empty());
}

// A held-over lock someone waits for goes when the callback timeout runs out, as a lock that is
// not cancelled would; but its owner came back, so it is not evicted for it.
TEST_F(Locks, AHeldOverLockGoesAtTheTimeoutWithoutAnEviction) {
  auto held = manager.enqueue(a, spec(LockMode::PW));
  uint64_t id = held.wait(io.waitScope);
  EXPECT_EQ(manager.holdOver(a, RES_SERVER), 1u);
  auto w = manager.enqueue(b, spec(LockMode::PR));
  EXPECT_FALSE(granted(w));
  EXPECT_GT(w.wait(io.waitScope), id);  // after the 200 ms timeout
  EXPECT_TRUE(evicted.empty());
  EXPECT_EQ(manager.stats().evictions, 0u);
  EXPECT_EQ(manager.heldBy(a), 0u);
}

// The server's own lock, held by an update that waits on a client, is in the way of another
// update: it has no deadline (the client's has), so the server is never evicted.
TEST_F(Locks, AnOwnerThatCannotBeEvictedIsNeverTimedOut) {
  struct ServerOwner : Owner {
    ServerOwner() : Owner("server") {}
    bool evictable() const override { return false; }
  } server;
  auto held = manager.enqueue(server, spec(LockMode::EX, BIT_ATTR));
  uint64_t id = held.wait(io.waitScope);
  auto other = manager.enqueue(server, spec(LockMode::EX, BIT_ATTR));
  auto client = manager.enqueue(a, spec(LockMode::PR, BIT_ATTR));
  io.provider->getTimer().afterDelay(600 * kj::MILLISECONDS).wait(io.waitScope);
  EXPECT_TRUE(evicted.empty());
  EXPECT_TRUE(server.asked.empty());
  EXPECT_FALSE(granted(other));
  EXPECT_EQ(manager.stats().evictions, 0u);
  manager.cancel(server, id);
  EXPECT_TRUE(granted(other));
  EXPECT_FALSE(granted(client));
}

// An owner whose give-back waits on something it does not control asks for more time: its
// timeout starts again at each request, up to the limit counted from the callback.
TEST_F(Locks, AProlongedLockOutlivesTheTimeoutButNotTheLimit) {
  LockManager limited(
      io.provider->getTimer(), 200 * kj::MILLISECONDS, [this](LockOwner& o) { return evict(o); },
      700 * kj::MILLISECONDS);
  uint64_t held = limited.enqueue(a, spec(LockMode::PW)).wait(io.waitScope);
  EXPECT_FALSE(limited.prolong(a, held));  // not called back: nothing to prolong
  auto w = limited.enqueue(b, spec(LockMode::PR));
  settle();
  ASSERT_EQ(a.asked.size(), 1u);
  EXPECT_FALSE(limited.prolong(b, held));  // only the owner asks
  EXPECT_FALSE(limited.prolong(a, 999));   // unknown ids are ignored
  auto started = io.provider->getTimer().now();
  // Asked every 100 ms: no eviction at 200 ms, nor later, until the limit.
  while (evicted.empty()) {
    // Granted only by the eviction, whose timer the poll itself may run (late on a loaded
    // machine: the limit can pass between the loop's check and this poll).
    bool grantedNow = granted(w);
    EXPECT_TRUE(!grantedNow || !evicted.empty());
    if (grantedNow) break;
    bool more = limited.prolong(a, held);
    io.provider->getTimer().afterDelay(100 * kj::MILLISECONDS).wait(io.waitScope);
    if (!more) break;
  }
  w.wait(io.waitScope);
  auto waited = io.provider->getTimer().now() - started;
  EXPECT_GE(waited, 600 * kj::MILLISECONDS);
  EXPECT_LT(waited, 2000 * kj::MILLISECONDS);
  ASSERT_EQ(evicted.size(), 1u);
  EXPECT_EQ(evicted[0], &a);
  EXPECT_GE(limited.stats().prolonged, 5u);
}

// Asking for more time and then giving the lock back: no eviction.
TEST_F(Locks, AProlongedLockCancelledInTimeEvictsNobody) {
  uint64_t held = manager.enqueue(a, spec(LockMode::PW)).wait(io.waitScope);
  auto w = manager.enqueue(b, spec(LockMode::PR));
  settle();
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(manager.prolong(a, held));
    io.provider->getTimer().afterDelay(100 * kj::MILLISECONDS).wait(io.waitScope);
  }
  EXPECT_FALSE(granted(w));  // 400 ms: twice the timeout
  manager.cancel(a, held);
  EXPECT_GT(w.wait(io.waitScope), 0u);
  EXPECT_TRUE(evicted.empty());
}

TEST_F(Locks, WithdrawnRequestsLeaveTheQueue) {
  auto r = manager.enqueue(a, spec(LockMode::EX));
  uint64_t rid = r.wait(io.waitScope);
  {
    auto gaveUp = manager.enqueue(b, spec(LockMode::EX));
    EXPECT_FALSE(granted(gaveUp));
  }  // dropped: withdrawn
  EXPECT_EQ(manager.stats().waiting, 0u);
  auto next = manager.enqueue(c, spec(LockMode::EX));
  manager.cancel(a, rid);
  EXPECT_TRUE(granted(next));
}

TEST_F(Locks, DropAllReleasesEverything) {
  auto x = manager.enqueue(a, spec(LockMode::EX, BIT_ATTR));
  auto y = manager.enqueue(a, spec(LockMode::EX, BIT_LOOKUP));
  x.wait(io.waitScope);
  y.wait(io.waitScope);
  auto w = manager.enqueue(b, spec(LockMode::PR));
  manager.dropAll(a);
  EXPECT_TRUE(granted(w));
  EXPECT_EQ(manager.stats().granted, 1u);
}

TEST_F(Locks, OnlyTheOwnerCancels) {
  auto x = manager.enqueue(a, spec(LockMode::EX));
  uint64_t id = x.wait(io.waitScope);
  EXPECT_ANY_THROW(manager.cancel(b, id));
  EXPECT_EQ(manager.stats().granted, 1u);
}

// A writer done writing converts its PW to PR: a reader waiting for it is granted at once and
// shares it; the converted lock still conflicts with a new writer.
TEST_F(Locks, ADowngradedLockLetsCompatibleWaitersIn) {
  auto w = manager.enqueue(a, spec(LockMode::PW));
  uint64_t id = w.wait(io.waitScope);
  auto r = manager.enqueue(b, spec(LockMode::PR));
  EXPECT_FALSE(granted(r));
  EXPECT_EQ(a.asked, std::vector<uint64_t>{id});
  manager.convert(a, id, LockMode::PR);
  EXPECT_TRUE(granted(r));
  EXPECT_EQ(manager.stats().granted, 2u);
  // A new writer waits for both readers (the converted lock and the one it let in).
  auto w2 = manager.enqueue(c, spec(LockMode::PW));
  EXPECT_FALSE(granted(w2));
  uint64_t rid = r.wait(io.waitScope);
  EXPECT_EQ(b.asked, std::vector<uint64_t>{rid});
  manager.cancel(a, id);
  manager.cancel(b, rid);
  EXPECT_TRUE(granted(w2));
  uint64_t id2 = w2.wait(io.waitScope);
  // Converted before anyone asked: a reader is not called back for, it just shares.
  manager.convert(c, id2, LockMode::PR);
  auto r2 = manager.enqueue(a, spec(LockMode::PR));
  EXPECT_TRUE(granted(r2));
  EXPECT_EQ(c.asked, std::vector<uint64_t>{});
}

// A downgrade that answers a callback but leaves a writer still waiting: the owner is asked
// again (and must cancel); one that leaves nobody waiting settles the callback — no eviction.
TEST_F(Locks, ADowngradeThatDoesNotSatisfyTheWaiterIsCalledBackAgain) {
  auto w = manager.enqueue(a, spec(LockMode::PW));
  uint64_t id = w.wait(io.waitScope);
  auto writer = manager.enqueue(c, spec(LockMode::PW));
  EXPECT_EQ(a.asked, std::vector<uint64_t>{id});
  manager.convert(a, id, LockMode::PR);
  EXPECT_FALSE(granted(writer));
  EXPECT_EQ(a.asked, (std::vector<uint64_t>{id, id}));
  manager.cancel(a, id);
  EXPECT_TRUE(granted(writer));
  uint64_t wid = writer.wait(io.waitScope);
  auto reader = manager.enqueue(b, spec(LockMode::PR));
  EXPECT_EQ(c.asked, std::vector<uint64_t>{wid});
  manager.convert(c, wid, LockMode::PR);
  EXPECT_TRUE(granted(reader));
  io.provider->getTimer().afterDelay(400 * kj::MILLISECONDS).wait(io.waitScope);
  EXPECT_TRUE(evicted.empty());  // the callback's timeout was settled by the downgrade
  EXPECT_EQ(manager.stats().granted, 2u);
}

TEST_F(Locks, OnlyDowngradesOfOwnGrantedLocksAreAccepted) {
  auto w = manager.enqueue(a, spec(LockMode::PR));
  uint64_t id = w.wait(io.waitScope);
  EXPECT_ANY_THROW(manager.convert(a, id, LockMode::PW));  // an upgrade
  EXPECT_ANY_THROW(manager.convert(a, id, LockMode::EX));
  EXPECT_ANY_THROW(manager.convert(b, id, LockMode::PR));  // not b's
  auto waiting = manager.enqueue(b, spec(LockMode::EX));
  EXPECT_FALSE(granted(waiting));
  EXPECT_ANY_THROW(manager.convert(b, id + 1, LockMode::NL));  // not granted yet
  manager.convert(a, id + 100, LockMode::PR);                  // unknown: ignored
  manager.convert(a, id, LockMode::PR);                        // the same mode: nothing
  manager.convert(a, id, LockMode::NL);                        // NL conflicts with nothing
  EXPECT_TRUE(granted(waiting));
}

TEST_F(Locks, OneClientCannotHoldUnboundedLocks) {
  std::vector<kj::Promise<uint64_t>> held;
  for (size_t i = 0; i < LockManager::MAX_PER_OWNER; ++i) {
    auto s = spec(LockMode::PR);
    s.resource.id = i;
    held.push_back(manager.enqueue(a, s));
  }
  try {
    manager.enqueue(a, spec(LockMode::PR));
    ADD_FAILURE() << "lock past the limit granted";
  } catch (kj::Exception& e) {
    EXPECT_EQ(e.getType(), kj::Exception::Type::OVERLOADED);
  }
  EXPECT_NO_THROW(manager.enqueue(b, spec(LockMode::PR)));  // others are not affected
  manager.dropAll(a);
  EXPECT_NO_THROW(manager.enqueue(a, spec(LockMode::PR)));
}

TEST_F(Locks, BadRequestsAreRefused) {
  auto s = spec(LockMode::EX, ~0ull, 10, 5);
  EXPECT_ANY_THROW(manager.enqueue(a, s));
}

TEST_F(Locks, TryGrantNeverWaitsAndRespectsTheQueue) {
  // Free: granted at once.
  auto first = manager.tryGrant(a, spec(LockMode::PR, BIT_ATTR));
  ASSERT_TRUE(first != nullptr);
  // A compatible one too, and a conflicting one on other bits.
  EXPECT_TRUE(manager.tryGrant(b, spec(LockMode::PR, BIT_ATTR)) != nullptr);
  EXPECT_TRUE(manager.tryGrant(b, spec(LockMode::PR, BIT_LOOKUP)) != nullptr);
  // An update waits for the readers: nobody may start caching behind its back, and no
  // callback was sent for a refused try.
  auto writer = manager.enqueue(c, spec(LockMode::EX, BIT_ATTR));
  EXPECT_FALSE(granted(writer));
  EXPECT_TRUE(manager.tryGrant(c, spec(LockMode::PR, BIT_ATTR)) == nullptr);
  EXPECT_EQ(a.asked.size(), 1u);
  // Once the readers cancel, the writer has it, and a try still fails while it holds it.
  manager.cancel(a, KJ_ASSERT_NONNULL(first));
  for (uint64_t id : b.asked) manager.cancel(b, id);
  ASSERT_TRUE(granted(writer));
  EXPECT_TRUE(manager.tryGrant(a, spec(LockMode::PR, BIT_ATTR)) == nullptr);
  // Other bits are not the writer's: another reader is welcome there.
  EXPECT_TRUE(manager.tryGrant(a, spec(LockMode::PR, BIT_LOOKUP)) != nullptr);
}

TEST_F(Locks, OnBehalfOfSkipsTheRequestersOwnLocks) {
  Owner server{"server"};
  auto mine = manager.tryGrant(a, spec(LockMode::PR, BIT_ATTR));
  auto theirs = manager.tryGrant(b, spec(LockMode::PR, BIT_ATTR));
  ASSERT_TRUE(mine != nullptr && theirs != nullptr);
  // The server's lock for a's update waits only for b, and only b is called back.
  auto update = manager.enqueue(server, spec(LockMode::EX, BIT_ATTR), &a);
  EXPECT_FALSE(granted(update));
  EXPECT_TRUE(a.asked.empty());
  ASSERT_EQ(b.asked.size(), 1u);
  manager.cancel(b, b.asked[0]);
  ASSERT_TRUE(granted(update));
  EXPECT_EQ(manager.heldBy(a), 1u);  // a still holds its lock: it refreshes its cache itself
}

TEST_F(Locks, AWriteBackDuringARevocationDoesNotQueueBehindTheRevoker) {
  Owner server{"server"};
  // a caches pages; b's update waits for a to give them back.
  ASSERT_TRUE(manager.tryGrant(a, spec(LockMode::PR, BIT_DATA)) != nullptr);
  auto bUpdate = manager.enqueue(server, spec(LockMode::EX, BIT_DATA | BIT_ATTR), &b);
  EXPECT_FALSE(granted(bUpdate));
  ASSERT_EQ(a.asked.size(), 1u);
  // While giving back, a writes dirty pages back: its update must not wait behind b's.
  auto aUpdate = manager.enqueue(server, spec(LockMode::EX, BIT_DATA | BIT_ATTR), &a);
  ASSERT_TRUE(granted(aUpdate));
  manager.cancel(server, aUpdate.wait(io.waitScope));
  EXPECT_FALSE(granted(bUpdate));
  manager.cancel(a, a.asked[0]);
  EXPECT_TRUE(granted(bUpdate));
}

LockSpec on(uint64_t ino, LockSpec s) {
  s.resource.id = ino;
  return s;
}

// b's update (child 7, then directory 9, in inode order) holds the child while it waits for a's
// PW on the directory; a gives that back only once its own unlink of the child is done. a's
// unlink must pass b's update on both, whichever of them started waiting first.
TEST_F(Locks, AnUpdateWaitingOnAClientLetsThatClientsUpdatesPassItsLocks) {
  Owner server{"server"};
  ASSERT_TRUE(manager.tryGrant(a, on(9, spec(LockMode::PW, BIT_LOOKUP))) != nullptr);
  uint64_t bGroup = manager.newGroup(), aGroup = manager.newGroup();
  auto bChild =
      manager.enqueue(server, on(7, spec(LockMode::EX, BIT_ATTR | BIT_LOOKUP)), &b, bGroup);
  ASSERT_TRUE(granted(bChild));
  // a's unlink reaches the child before b's update waits on anything: it queues...
  auto aChild =
      manager.enqueue(server, on(7, spec(LockMode::EX, BIT_ATTR | BIT_LOOKUP)), &a, aGroup);
  EXPECT_FALSE(granted(aChild));
  // ...until b's update waits for a's directory lock.
  auto bDir = manager.enqueue(server, on(9, spec(LockMode::EX, BIT_ATTR | BIT_LOOKUP)), &b, bGroup);
  EXPECT_FALSE(granted(bDir));
  ASSERT_EQ(a.asked.size(), 1u);
  ASSERT_TRUE(granted(aChild));
  auto aDir = manager.enqueue(server, on(9, spec(LockMode::EX, BIT_ATTR | BIT_LOOKUP)), &a, aGroup);
  ASSERT_TRUE(granted(aDir));
  // a's unlink is done; then a gives its directory lock back, and b's update goes on.
  manager.cancel(server, aChild.wait(io.waitScope));
  manager.cancel(server, aDir.wait(io.waitScope));
  EXPECT_FALSE(granted(bDir));
  manager.cancel(a, a.asked[0]);
  EXPECT_TRUE(granted(bDir));
  // A third client's update does not pass b's: it does not wait on c.
  auto cChild =
      manager.enqueue(server, on(7, spec(LockMode::EX, BIT_ATTR)), &c, manager.newGroup());
  EXPECT_FALSE(granted(cChild));
  manager.cancel(server, bChild.wait(io.waitScope));
  EXPECT_TRUE(granted(cChild));
}

// The cycle seen with two mounts: b caches directory 9's names (PR lookup); a holds PW on its
// attributes. a's rename waits for b's PR, which b gives back once its kernel has dropped the
// names, which waits for b's lookup in that directory, whose read waits for a's PW on the
// attributes. Queued behind the rename's EX (lookup and attributes), that read would wait for
// b itself; taken on b's own behalf it passes the rename and waits only for a.
TEST_F(Locks, AReadOnAClientsBehalfPassesAnUpdateWaitingForThatClient) {
  Owner server{"server"};
  ASSERT_TRUE(manager.tryGrant(b, on(9, spec(LockMode::PR, BIT_LOOKUP))) != nullptr);
  ASSERT_TRUE(manager.tryGrant(a, on(9, spec(LockMode::PW, BIT_ATTR))) != nullptr);
  auto rename = manager.enqueue(server, on(9, spec(LockMode::EX, BIT_LOOKUP | BIT_ATTR)), &a,
                                manager.newGroup());
  EXPECT_FALSE(granted(rename));
  ASSERT_EQ(b.asked.size(), 1u);
  // Not on b's behalf (as before): a is called back, but the read stays queued behind the
  // rename, so behind b's own give-back.
  auto queued = manager.enqueue(b, on(9, spec(LockMode::PR, BIT_ATTR)));
  auto read = manager.enqueue(b, on(9, spec(LockMode::PR, BIT_ATTR)), &b);
  EXPECT_FALSE(granted(queued));
  EXPECT_FALSE(granted(read));
  ASSERT_EQ(a.asked.size(), 1u);
  manager.cancel(a, a.asked[0]);
  // On b's behalf, the read goes on once a's PW is back.
  ASSERT_TRUE(granted(read));
  EXPECT_FALSE(granted(queued));
  EXPECT_FALSE(granted(rename));
  // Then b's read is answered (its lock goes), b's kernel is done, b gives its PR back.
  manager.cancel(b, read.wait(io.waitScope));
  manager.cancel(b, b.asked[0]);
  ASSERT_TRUE(granted(rename));
  EXPECT_FALSE(granted(queued));  // the read queued the old way comes after the rename
  manager.cancel(server, rename.wait(io.waitScope));
  EXPECT_TRUE(granted(queued));
}

// An update holds EX on directory 9 and waits for b's lock on a child, 7. b's read in the
// directory passes it on b's behalf and reads the names as they are before the update; but
// that read's lock is not b's to cache them under: the update changes them once b gives the
// child back, and calls nothing back for a lock that came after its own.
TEST_F(Locks, ALockTakenForAReadIsNotHandedOutAsACachingLock) {
  Owner server{"server"};
  ASSERT_TRUE(manager.tryGrant(b, on(7, spec(LockMode::PR, BIT_ATTR))) != nullptr);
  uint64_t group = manager.newGroup();
  auto dir = manager.enqueue(server, on(9, spec(LockMode::EX, BIT_LOOKUP | BIT_ATTR)), &a, group);
  ASSERT_TRUE(granted(dir));
  auto child = manager.enqueue(server, on(7, spec(LockMode::EX, BIT_ATTR)), &a, group);
  EXPECT_FALSE(granted(child));
  auto read = manager.enqueue(b, on(9, spec(LockMode::PR, BIT_LOOKUP)), &b);
  ASSERT_TRUE(granted(read));
  EXPECT_TRUE(manager.tryGrant(b, on(9, spec(LockMode::PR, BIT_LOOKUP))) == nullptr);
  manager.cancel(b, read.wait(io.waitScope));
  // Once the update is done, the directory's names can be cached again.
  manager.cancel(b, b.asked.at(0));
  ASSERT_TRUE(granted(child));
  manager.cancel(server, dir.wait(io.waitScope));
  manager.cancel(server, child.wait(io.waitScope));
  EXPECT_TRUE(manager.tryGrant(b, on(9, spec(LockMode::PR, BIT_LOOKUP))) != nullptr);
}

TEST_F(Locks, AnUpgradeReplacesTheOwnersLockWithoutCallingItBack) {
  auto mine = manager.tryGrant(a, spec(LockMode::PR, BIT_LOOKUP));
  ASSERT_TRUE(manager.tryGrant(b, spec(LockMode::PR, BIT_LOOKUP)) != nullptr);
  uint64_t old = KJ_ASSERT_NONNULL(mine);
  auto upgrade = manager.enqueue(a, spec(LockMode::PW, BIT_LOOKUP), nullptr, 0, old);
  EXPECT_FALSE(granted(upgrade));
  EXPECT_TRUE(a.asked.empty());  // a keeps its PR (and what it caches) while it waits
  ASSERT_EQ(b.asked.size(), 1u);
  EXPECT_EQ(manager.heldBy(a), 1u);
  manager.cancel(b, b.asked[0]);
  ASSERT_TRUE(granted(upgrade));
  EXPECT_EQ(manager.heldBy(a), 1u);  // the PW, and the PR is gone
  EXPECT_NE(upgrade.wait(io.waitScope), old);
  manager.cancel(a, old);  // a's cancel of the old id, crossing the grant, is ignored
  EXPECT_EQ(manager.heldBy(a), 1u);
  // Replacing a lock that is gone is a plain request; replacing someone else's is refused.
  auto again = manager.enqueue(a, spec(LockMode::PW, BIT_ATTR), nullptr, 0, old);
  EXPECT_TRUE(granted(again));
  auto theirs = manager.tryGrant(b, on(5, spec(LockMode::PR, BIT_LOOKUP)));
  EXPECT_ANY_THROW(manager.enqueue(a, on(5, spec(LockMode::PW, BIT_LOOKUP)), nullptr, 0,
                                   KJ_ASSERT_NONNULL(theirs)));
}

}  // namespace
}  // namespace cairn
