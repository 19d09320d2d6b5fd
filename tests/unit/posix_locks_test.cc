// Application lock rules on their own: owners, splitting, conflicts, waits, release.
#include <gtest/gtest.h>

#include <kj/async-io.h>
#include <kj/debug.h>

#include "objserver/posix_locks.h"
#include "rpc/errors.h"

namespace cairn {
namespace {

PosixLock lock(PosixLock::Type type, uint64_t start, uint64_t end) {
  PosixLock l;
  l.type = type;
  l.start = start;
  l.end = end;
  return l;
}

class Posix : public ::testing::Test {
protected:
  ~Posix() noexcept override {}
  int set(const PosixLocks::Owner& o, PosixLock l) {
    try {
      table.set(1, 0, o, l, false).wait(io.waitScope);
      return 0;
    } catch (FsError& e) {
      return e.err();
    }
  }
  kj::AsyncIoContext io = kj::setupAsyncIo();
  PosixLocks table;
  PosixLocks::Owner a{"client-a", 1}, a2{"client-a", 2}, b{"client-b", 1};
};

TEST_F(Posix, OnlyOtherOwnersConflict) {
  EXPECT_EQ(set(a, lock(PosixLock::WRITE, 0, 99)), 0);
  EXPECT_EQ(set(a, lock(PosixLock::WRITE, 50, 150)), 0);      // the owner's own: replaced
  EXPECT_EQ(set(a2, lock(PosixLock::READ, 10, 10)), EAGAIN);  // another owner on one client
  EXPECT_EQ(set(b, lock(PosixLock::READ, 151, 200)), 0);
  EXPECT_EQ(set(b, lock(PosixLock::READ, 150, 150)), EAGAIN);
  EXPECT_EQ(table.count(), 3u);
}

TEST_F(Posix, UnlockSplitsAndTestReportsTheConflict) {
  set(a, lock(PosixLock::WRITE, 0, 99));
  set(a, lock(PosixLock::UNLOCK, 40, 59));
  EXPECT_EQ(table.count(), 2u);
  EXPECT_EQ(set(b, lock(PosixLock::WRITE, 40, 59)), 0);
  auto c = KJ_ASSERT_NONNULL(table.test(1, 0, b, lock(PosixLock::READ, 30, 45)));
  EXPECT_EQ(c.start, 0u);
  EXPECT_EQ(c.end, 39u);
  EXPECT_TRUE(table.test(1, 0, a, lock(PosixLock::WRITE, 0, 10)) == nullptr);
  EXPECT_TRUE(table.test(1, 1, b, lock(PosixLock::WRITE, 0, 10)) == nullptr);  // flock space
}

TEST_F(Posix, WaitersAreGrantedInOrderWhenFree) {
  set(a, lock(PosixLock::WRITE, 0, 9));
  auto w1 = table.set(1, 0, b, lock(PosixLock::WRITE, 0, 9), true);
  auto w2 = table.set(1, 0, a2, lock(PosixLock::READ, 5, 5), true);
  EXPECT_FALSE(w1.poll(io.waitScope));
  table.releaseOwner(1, 0, a);
  EXPECT_TRUE(w1.poll(io.waitScope));
  EXPECT_FALSE(w2.poll(io.waitScope));  // now b's write lock is in the way
  table.releaseClient("client-b");
  EXPECT_TRUE(w2.poll(io.waitScope));
}

TEST_F(Posix, AWithdrawnWaiterLeavesNoTrace) {
  set(a, lock(PosixLock::WRITE, 0, 9));
  { auto w = table.set(1, 0, b, lock(PosixLock::WRITE, 0, 9), true); }
  table.releaseOwner(1, 0, a);
  EXPECT_EQ(table.count(), 0u);
  EXPECT_EQ(set(a2, lock(PosixLock::WRITE, 0, 9)), 0);
}

TEST_F(Posix, CountsPerClientFollowSplitsWaitsAndReleases) {
  set(a, lock(PosixLock::WRITE, 0, 99));
  set(a, lock(PosixLock::UNLOCK, 40, 59));  // split in two
  set(a2, lock(PosixLock::READ, 200, 300));
  EXPECT_EQ(table.count(), 3u);
  {
    auto w = table.set(1, 0, b, lock(PosixLock::WRITE, 0, 9), true);
    EXPECT_FALSE(w.poll(io.waitScope));
  }
  table.releaseClient("client-a");
  EXPECT_EQ(table.count(), 0u);
  // Everything was given back: the client can take the maximum again.
  for (size_t i = 0; i < 1000; ++i) {
    ASSERT_EQ(set(a, lock(PosixLock::WRITE, i * 10, i * 10 + 1)), 0);
  }
  EXPECT_EQ(table.count(), 1000u);
}

}  // namespace
}  // namespace cairn
