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
  ops.begin({5, 100});  // an unlink in directory 5 of file 100
  ops.begin({5, 101});
  auto dir = ops.settled(5);
  auto file = ops.settled(100);
  auto other = ops.settled(6);
  auto all = ops.settledAll();
  EXPECT_TRUE(other.poll(waitScope));
  EXPECT_FALSE(dir.poll(waitScope));
  EXPECT_TRUE(ops.pending(101));
  ops.end({5, 100}, 0);
  EXPECT_TRUE(file.poll(waitScope));
  EXPECT_FALSE(dir.poll(waitScope));
  EXPECT_FALSE(all.poll(waitScope));
  ops.end({5, 101}, 0);
  EXPECT_TRUE(dir.poll(waitScope));
  EXPECT_TRUE(all.poll(waitScope));
  EXPECT_FALSE(ops.pending(5));
  EXPECT_EQ(ops.inFlight(), 0u);
  EXPECT_EQ(ops.answered(), 2u);
}

TEST_F(Dirops, TheFirstErrorIsReportedOnce) {
  ops.begin({5, 100});
  ops.begin({5, 101});
  ops.end({5, 100}, ENOSPC);
  ops.end({5, 101}, EIO);
  EXPECT_EQ(ops.failed(), 2u);
  EXPECT_EQ(ops.takeError(), ENOSPC);
  EXPECT_EQ(ops.takeError(), 0);
}

TEST_F(Dirops, TheNumberInFlightIsBounded) {
  for (size_t i = 0; i < AsyncDirops::MAX_IN_FLIGHT; i++) {
    EXPECT_FALSE(ops.full());
    ops.begin({5, 1000 + i});
  }
  EXPECT_TRUE(ops.full());
  ops.end({5, 1000}, 0);
  EXPECT_FALSE(ops.full());
}

}  // namespace
}  // namespace cairn
