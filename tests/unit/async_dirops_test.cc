// The books of the directory operations a client answered ahead of the server: who waits for
// what, and the error reported afterwards.
#include <gtest/gtest.h>

#include <kj/async.h>

#include "fusefs/async_dirops.h"

namespace cairn {
namespace {

class Dirops : public ::testing::Test {
protected:
  ~Dirops() noexcept override {}
  kj::EventLoop loop;
  kj::WaitScope waitScope{loop};
  AsyncDirops ops;
};

TEST_F(Dirops, WaitersOfAnInodeGoOnceEveryOperationTouchingItIsAnswered) {
  auto idle = ops.settled(5);
  EXPECT_TRUE(idle.poll(waitScope));
  auto first = ops.begin({5, 100});  // an unlink in directory 5 of file 100
  auto second = ops.begin({5, 101});
  auto dir = ops.settled(5);
  auto file = ops.settled(100);
  auto other = ops.settled(6);
  auto all = ops.settledAll();
  EXPECT_TRUE(other.poll(waitScope));
  EXPECT_FALSE(dir.poll(waitScope));
  EXPECT_TRUE(ops.pending(101));
  ops.end(first, {5, 100}, 0);
  EXPECT_TRUE(file.poll(waitScope));
  EXPECT_FALSE(dir.poll(waitScope));
  EXPECT_FALSE(all.poll(waitScope));
  ops.end(second, {5, 101}, 0);
  EXPECT_TRUE(dir.poll(waitScope));
  EXPECT_TRUE(all.poll(waitScope));
  EXPECT_FALSE(ops.pending(5));
  EXPECT_EQ(ops.inFlight(), 0u);
  EXPECT_EQ(ops.answered(), 2u);
}

TEST_F(Dirops, TheFirstErrorIsReportedOnce) {
  auto a = ops.begin({5, 100});
  auto b = ops.begin({5, 101});
  ops.end(a, {5, 100}, ENOSPC);
  ops.end(b, {5, 101}, EIO);
  EXPECT_EQ(ops.failed(), 2u);
  EXPECT_EQ(ops.takeError(), ENOSPC);
  EXPECT_EQ(ops.takeError(), 0);
}

TEST_F(Dirops, TheNumberInFlightIsBounded) {
  uint64_t first = 0;
  for (size_t i = 0; i < AsyncDirops::MAX_IN_FLIGHT; i++) {
    EXPECT_FALSE(ops.full());
    uint64_t op = ops.begin({5, 1000 + i});
    if (i == 0) first = op;
  }
  EXPECT_TRUE(ops.full());
  ops.end(first, {5, 1000}, 0);
  EXPECT_FALSE(ops.full());
}

// An rmdir waits for the unlinks in its directory that began before it, though it counts on the
// directory itself; a request waits for those before it, not for a stream of later ones.
TEST_F(Dirops, SettledBeforeWaitsOnlyForEarlierOperations) {
  auto unlink = ops.begin({7, 200});  // in directory 7
  auto rmdir = ops.begin({5, 7});     // of directory 7, in 5
  auto earlier = ops.settledBefore(7, rmdir);
  auto everything = ops.settled(7);
  EXPECT_FALSE(earlier.poll(waitScope));
  ops.end(unlink, {7, 200}, 0);
  EXPECT_TRUE(earlier.poll(waitScope));
  EXPECT_FALSE(everything.poll(waitScope));
  auto later = ops.begin({5, 300});
  auto create = ops.settledBefore(5, later);  // a request that began before `later`
  ops.end(rmdir, {5, 7}, 0);
  EXPECT_TRUE(everything.poll(waitScope));
  EXPECT_TRUE(create.poll(waitScope));
  EXPECT_TRUE(ops.pending(5));
  ops.end(later, {5, 300}, 0);
}

// A removal of a name no longer cached cannot tell what it removes: it waits for every
// operation that began before it, whatever that touches, and for none that began after.
TEST_F(Dirops, SettledAllBeforeWaitsForEveryEarlierOperation) {
  EXPECT_TRUE(ops.settledAllBefore(ops.next()).poll(waitScope));
  auto inSub = ops.begin({7, 200});  // an unlink in directory 7
  auto inOther = ops.begin({9, 300});
  auto rmdir = ops.settledAllBefore(ops.next());  // of a name that may be directory 7
  auto later = ops.begin({5, 400});
  EXPECT_FALSE(rmdir.poll(waitScope));
  ops.end(inOther, {9, 300}, 0);
  EXPECT_FALSE(rmdir.poll(waitScope));
  ops.end(inSub, {7, 200}, 0);
  EXPECT_TRUE(rmdir.poll(waitScope));
  EXPECT_TRUE(ops.pending(5));
  ops.end(later, {5, 400}, 0);
}

// The reply of the first of two unlinks of one file's names (it had two links) must not bring
// back the link count the second took: later() says a later operation touches the inode.
TEST_F(Dirops, LaterNamesOperationsAnsweredAfterAGivenOne) {
  auto first = ops.begin({5, 100});
  EXPECT_FALSE(ops.later(100, first));
  EXPECT_FALSE(ops.later(6, first));
  auto second = ops.begin({5, 100});
  EXPECT_TRUE(ops.later(100, first));
  EXPECT_TRUE(ops.later(5, first));
  EXPECT_FALSE(ops.later(100, second));
  ops.end(first, {5, 100}, 0);
  EXPECT_FALSE(ops.later(100, second));
  auto other = ops.begin({5, 101});
  EXPECT_TRUE(ops.later(5, second));
  EXPECT_FALSE(ops.later(100, second));
  ops.end(second, {5, 100}, 0);
  ops.end(other, {5, 101}, 0);
  EXPECT_FALSE(ops.later(5, 0));
}

}  // namespace
}  // namespace cairn
