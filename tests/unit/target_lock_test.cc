// Multiple-mount protection: the owner lock and the heartbeat record (objserver/target_lock.h).
#include "objserver/target_lock.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <kj/debug.h>

#include <cstring>
#include <thread>

#include "tests/unit/temp_dir.h"

namespace cairn {
namespace {

constexpr kj::Duration INTERVAL = 20 * kj::MILLISECONDS;

// Waits up to a second for `pred`.
template <typename Pred>
bool eventually(Pred pred) {
  for (int i = 0; i < 100; ++i) {
    if (pred()) return true;
    usleep(10 * 1000);
  }
  return pred();
}

TEST(TargetLock, OnlyOneHolderAtATime) {
  TempDir dir;
  auto first = TargetLock::tryTake(dir.path().c_str(), "a:1");
  ASSERT_TRUE(first != nullptr);
  EXPECT_TRUE(TargetLock::tryTake(dir.path().c_str(), "b:2") == nullptr);
  try {
    TargetLock::take(dir.path().c_str(), "b:2");
    ADD_FAILURE() << "a second owner was let in";
  } catch (kj::Exception& e) {
    EXPECT_TRUE(strstr(e.getDescription().cStr(), "served by another process") != nullptr);
    EXPECT_TRUE(strstr(e.getDescription().cStr(), kj::str("owner pid ", getpid()).cStr()) !=
                nullptr)
        << e.getDescription().cStr();
  }
  first = nullptr;
  EXPECT_TRUE(TargetLock::tryTake(dir.path().c_str(), "b:2") != nullptr);
}

TEST(TargetLock, BeatsUntilReleased) {
  TempDir dir;
  auto lock = TargetLock::take(dir.path().c_str(), "a:1");
  EXPECT_TRUE(TargetLock::readHeartbeat(dir.path().c_str()) == nullptr);
  lock->startBeating(INTERVAL);
  auto first = KJ_ASSERT_NONNULL(TargetLock::readHeartbeat(dir.path().c_str()));
  EXPECT_EQ(first.state, Heartbeat::State::ACTIVE);
  EXPECT_EQ(first.bootId, TargetLock::bootId());
  EXPECT_EQ(first.pid, getpid());
  EXPECT_EQ(first.intervalMs, 20u);
  EXPECT_EQ(first.owner, "a:1");
  EXPECT_TRUE(eventually([&] {
    return KJ_ASSERT_NONNULL(TargetLock::readHeartbeat(dir.path().c_str())).sequence >=
           first.sequence + 3;
  }));
  EXPECT_TRUE(lock->lost() == nullptr);
  lock->release();
  auto last = KJ_ASSERT_NONNULL(TargetLock::readHeartbeat(dir.path().c_str()));
  EXPECT_EQ(last.state, Heartbeat::State::RELEASED);
  usleep(100 * 1000);
  EXPECT_EQ(KJ_ASSERT_NONNULL(TargetLock::readHeartbeat(dir.path().c_str())).sequence,
            last.sequence);
  // The next holder goes on counting.
  lock = nullptr;
  auto next = TargetLock::take(dir.path().c_str(), "b:2");
  next->startBeating(INTERVAL);
  EXPECT_GT(KJ_ASSERT_NONNULL(TargetLock::readHeartbeat(dir.path().c_str())).sequence,
            last.sequence);
}

TEST(TargetLock, ATakeoverRequestEndsServing) {
  TempDir dir;
  // A request made before this holder started does not count against it.
  TargetLock::requestTakeover(dir.path().c_str(), "old:9");
  auto lock = TargetLock::take(dir.path().c_str(), "a:1");
  lock->startBeating(INTERVAL);
  usleep(100 * 1000);
  EXPECT_TRUE(lock->lost() == nullptr);
  // Nor does one of its own.
  TargetLock::requestTakeover(dir.path().c_str(), "a:1");
  usleep(100 * 1000);
  EXPECT_TRUE(lock->lost() == nullptr);

  TargetLock::requestTakeover(dir.path().c_str(), "b:2");
  EXPECT_EQ(TargetLock::readTakeover(dir.path().c_str()).generation, 3u);
  EXPECT_TRUE(eventually([&] { return lock->lost() != nullptr; }));
  EXPECT_EQ(KJ_ASSERT_NONNULL(lock->lost()), "takeover requested by b:2");
  // Not one more beat once asked.
  auto seq = KJ_ASSERT_NONNULL(TargetLock::readHeartbeat(dir.path().c_str())).sequence;
  usleep(100 * 1000);
  EXPECT_EQ(KJ_ASSERT_NONNULL(TargetLock::readHeartbeat(dir.path().c_str())).sequence, seq);
}

// A heartbeat that moves on another kernel refuses a server without a partner.
TEST(TargetLock, ForeignHeartbeat) {
  TempDir dir;
  auto path = dir.path() + "/heartbeat";
  auto write = [&](uint64_t seq, const char* state) {
    int fd = open(path.c_str(), O_CREAT | O_WRONLY, 0600);
    ASSERT_GE(fd, 0);
    char slot[256] = {};
    snprintf(slot, sizeof(slot), "heartbeat %llu %s other-kernel 7 30 10.0.0.2:7000\n",
             static_cast<unsigned long long>(seq), state);
    ASSERT_EQ(pwrite(fd, slot, sizeof(slot), 0), ssize_t(sizeof(slot)));
    close(fd);
  };
  write(5, "active");
  // Standing still for three intervals: its writer is gone.
  EXPECT_NO_THROW(TargetLock::refuseForeignOwner(dir.path().c_str()));
  write(6, "released");
  EXPECT_NO_THROW(TargetLock::refuseForeignOwner(dir.path().c_str()));
  write(7, "active");
  std::thread other([&] {
    for (uint64_t seq = 8; seq < 20; ++seq) {
      usleep(10 * 1000);
      write(seq, "active");
    }
  });
  EXPECT_ANY_THROW(TargetLock::refuseForeignOwner(dir.path().c_str()));
  other.join();
  // A damaged record is no heartbeat.
  int fd = open(path.c_str(), O_WRONLY | O_TRUNC);
  ASSERT_EQ(::write(fd, "garbage", 7), 7);
  close(fd);
  EXPECT_TRUE(TargetLock::readHeartbeat(dir.path().c_str()) == nullptr);
  EXPECT_NO_THROW(TargetLock::refuseForeignOwner(dir.path().c_str()));
}

}  // namespace
}  // namespace cairn
