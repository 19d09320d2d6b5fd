// The busy poller: its window's policy, and the loop it drives (a real kj event loop, pipes and
// a second thread).
#include "rpc/busy_poll.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <kj/async-io.h>
#include <kj/debug.h>

#include <chrono>
#include <thread>

namespace cairn {
namespace {

constexpr kj::Duration US = kj::MICROSECONDS;

TEST(SpinWindow, LongSleepsShrinkItToNothing) {
  SpinWindow w(100 * US);
  EXPECT_EQ(w.current(), 100 * US);
  w.slept(5 * kj::MILLISECONDS);
  EXPECT_EQ(w.current(), 50 * US);
  w.slept(5 * kj::MILLISECONDS);
  w.slept(5 * kj::MILLISECONDS);
  EXPECT_EQ(w.current(), 12500 * kj::NANOSECONDS);
  w.slept(5 * kj::MILLISECONDS);  // below 10 µs: not worth spinning
  EXPECT_EQ(w.current(), 0 * US);
  w.slept(5 * kj::MILLISECONDS);
  EXPECT_EQ(w.current(), 0 * US);
}

TEST(SpinWindow, ShortSleepsGrowItBackToTheLimit) {
  SpinWindow w(100 * US);
  for (int i = 0; i < 6; ++i) w.slept(1 * kj::SECONDS);
  ASSERT_EQ(w.current(), 0 * US);
  w.slept(30 * US);  // a spin of 30 µs would have caught this
  EXPECT_EQ(w.current(), 10 * US);
  w.slept(30 * US);
  EXPECT_EQ(w.current(), 20 * US);
  w.slept(30 * US);
  w.slept(30 * US);
  EXPECT_EQ(w.current(), 80 * US);
  w.slept(30 * US);
  EXPECT_EQ(w.current(), 100 * US);  // never past the limit
  w.slept(30 * US);
  EXPECT_EQ(w.current(), 100 * US);
}

TEST(SpinWindow, AZeroLimitNeverSpins) {
  SpinWindow w(0 * US);
  EXPECT_EQ(w.current(), 0 * US);
  w.slept(1 * US);
  EXPECT_EQ(w.current(), 0 * US);
}

// A pipe whose reading end the loop watches; each byte read counts as work that arrived.
struct Pipe {
  int fds[2];
  Pipe() { KJ_SYSCALL(pipe2(fds, O_NONBLOCK | O_CLOEXEC)); }
  ~Pipe() {
    close(fds[0]);
    close(fds[1]);
  }
  void put() { KJ_SYSCALL(write(fds[1], "x", 1)); }
};

kj::Promise<int> readOne(kj::UnixEventPort::FdObserver& observer, int fd) {
  char c;
  ssize_t n = read(fd, &c, 1);
  if (n == 1) {
    BusyPoll::arrived();
    return 1;
  }
  return observer.whenBecomesReadable().then([&observer, fd]() { return readOne(observer, fd); });
}

TEST(BusyPoll, ReturnsThePromisesValueAndWithoutALimitNeverSpins) {
  auto io = kj::setupAsyncIo();
  BusyPoll busy(io.unixEventPort, io.waitScope, 0 * US);
  // Long enough that the timer has not fired by the first look, even in a slow (sanitized,
  // loaded) build: the loop must have slept at least once.
  EXPECT_EQ(busy.wait(io.provider->getTimer().afterDelay(50 * kj::MILLISECONDS).then([]() {
    return 42;
  })),
            42);
  EXPECT_EQ(busy.stats().spins, 0u);
  EXPECT_GE(busy.stats().sleeps, 1u);
}

TEST(BusyPoll, WorkThatArrivesWhileItSpinsIsTakenWithoutSleeping) {
  auto io = kj::setupAsyncIo();
  Pipe p;
  kj::UnixEventPort::FdObserver observer(io.unixEventPort, p.fds[0],
                                         kj::UnixEventPort::FdObserver::OBSERVE_READ);
  // A window far longer than the writer's delay: the byte comes while it spins.
  BusyPoll busy(io.unixEventPort, io.waitScope, 10 * kj::SECONDS);
  std::thread writer([&]() {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    p.put();
  });
  EXPECT_EQ(busy.wait(readOne(observer, p.fds[0])), 1);
  writer.join();
  EXPECT_EQ(busy.stats().sleeps, 0u);
  EXPECT_GE(busy.stats().caught, 1u);
}

TEST(BusyPoll, SparseWorkStopsTheSpinning) {
  auto io = kj::setupAsyncIo();
  BusyPoll busy(io.unixEventPort, io.waitScope, 100 * US);
  auto& timer = io.provider->getTimer();
  for (int i = 0; i < 8; ++i) busy.wait(timer.afterDelay(3 * kj::MILLISECONDS));
  EXPECT_EQ(busy.window(), 0 * US);
  // Spun only while the window shrank (100, 50, 25, 12.5 µs), then slept at once.
  EXPECT_LE(busy.stats().spins, 4u);
}

TEST(BusyPoll, WorkSentFromAnotherThreadWakesItsSleep) {
  // Another thread's work comes through the loop's Executor, which learns of it from the port's
  // answer to wait(): the poller must pass that on, or the work is never run.
  auto io = kj::setupAsyncIo();
  BusyPoll busy(io.unixEventPort, io.waitScope, 10 * US);
  auto& executor = kj::getCurrentThreadExecutor();
  auto paf = kj::newPromiseAndFulfiller<int>();
  std::thread sender([&]() {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // well into its sleep
    executor.executeSync([&]() { paf.fulfiller->fulfill(7); });
  });
  EXPECT_EQ(busy.wait(kj::mv(paf.promise)), 7);
  sender.join();
  EXPECT_GE(busy.stats().sleeps, 1u);
}

}  // namespace
}  // namespace cairn
