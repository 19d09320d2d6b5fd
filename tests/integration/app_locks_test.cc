// Application locks across clients: fcntl record locks and flock through two mounts of one
// filesystem (two clients), with waits, wake-ups, signals and process exit.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "tests/integration/cluster.h"

namespace cairn::test {
namespace {

int setlk(int fd, short type, off_t start, off_t len, bool wait = false) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  return fcntl(fd, wait ? F_SETLKW : F_SETLK, &fl) == 0 ? 0 : errno;
}

class AppLocks : public TwoClients {
protected:
  static void SetUpTestSuite() { startClients(); }
  void SetUp() override {
    TwoClients::SetUp();
    int fd = open((*a_ + name_).c_str(), O_CREAT | O_RDWR, 0666);
    ASSERT_GE(fd, 0);
    close(fd);
    fa = open((*a_ + name_).c_str(), O_RDWR);
    fb = open((*b_ + name_).c_str(), O_RDWR);
    ASSERT_GE(fa, 0);
    ASSERT_GE(fb, 0);
  }
  void TearDown() override {
    close(fa);
    close(fb);
  }
  std::string inB() { return *b_ + name_; }

  int fa = -1, fb = -1;
};

TEST_F(AppLocks, RecordLocksExcludeOtherClients) {
  ASSERT_EQ(setlk(fa, F_WRLCK, 0, 100), 0);
  EXPECT_EQ(setlk(fb, F_WRLCK, 50, 10), EAGAIN);
  EXPECT_EQ(setlk(fb, F_RDLCK, 99, 1), EAGAIN);
  EXPECT_EQ(setlk(fb, F_WRLCK, 100, 100), 0);  // adjacent, not overlapping
  struct flock q {};
  q.l_type = F_WRLCK;
  q.l_whence = SEEK_SET;
  q.l_start = 10;
  q.l_len = 5;
  ASSERT_EQ(fcntl(fb, F_GETLK, &q), 0);
  EXPECT_EQ(q.l_type, F_WRLCK);
  EXPECT_EQ(q.l_start, 0);
  EXPECT_EQ(q.l_len, 100);
  EXPECT_EQ(q.l_pid, getpid());
  // Readers share.
  ASSERT_EQ(setlk(fa, F_RDLCK, 0, 100), 0);  // a converts its own lock
  EXPECT_EQ(setlk(fb, F_RDLCK, 0, 50), 0);
  EXPECT_EQ(setlk(fb, F_WRLCK, 0, 50), EAGAIN);
  ASSERT_EQ(setlk(fa, F_UNLCK, 0, 0), 0);
  EXPECT_EQ(setlk(fb, F_WRLCK, 0, 50), 0);
}

TEST_F(AppLocks, UnlockingPartOfARangeSplitsIt) {
  ASSERT_EQ(setlk(fa, F_WRLCK, 0, 100), 0);
  ASSERT_EQ(setlk(fa, F_UNLCK, 40, 20), 0);
  EXPECT_EQ(setlk(fb, F_WRLCK, 45, 10), 0);
  EXPECT_EQ(setlk(fb, F_WRLCK, 10, 10), EAGAIN);
  EXPECT_EQ(setlk(fb, F_WRLCK, 70, 10), EAGAIN);
}

TEST_F(AppLocks, AWaiterIsWokenByTheUnlock) {
  ASSERT_EQ(setlk(fa, F_WRLCK, 0, 0), 0);
  pid_t child = fork();
  if (child == 0) {
    int fd = open(inB().c_str(), O_RDWR);
    auto t0 = std::chrono::steady_clock::now();
    int rc = setlk(fd, F_WRLCK, 0, 0, true);
    auto waited = std::chrono::steady_clock::now() - t0;
    _exit(rc == 0 && waited > std::chrono::milliseconds(200) ? 0 : 1);
  }
  usleep(400 * 1000);
  ASSERT_EQ(setlk(fa, F_UNLCK, 0, 0), 0);
  int status = 0;
  ASSERT_TRUE(waitFor([&] { return waitpid(child, &status, WNOHANG) == child; }, 10000));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  // The child exited holding its lock: exit closed its descriptors, which released it.
  EXPECT_TRUE(waitFor([&] { return setlk(fa, F_WRLCK, 0, 0) == 0; }, 3000));
}

TEST_F(AppLocks, AWaitEndsWithEINTROnASignal) {
  ASSERT_EQ(setlk(fa, F_WRLCK, 0, 0), 0);
  pid_t child = fork();
  if (child == 0) {
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    sigaction(SIGUSR1, &sa, nullptr);
    int fd = open(inB().c_str(), O_RDWR);
    _exit(setlk(fd, F_WRLCK, 0, 0, true) == EINTR ? 0 : 1);
  }
  usleep(400 * 1000);
  kill(child, SIGUSR1);
  int status = 0;
  ASSERT_TRUE(waitFor([&] { return waitpid(child, &status, WNOHANG) == child; }, 5000));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  // The withdrawn wait left nothing behind: after unlocking, the lock is free for anyone.
  ASSERT_EQ(setlk(fa, F_UNLCK, 0, 0), 0);
  EXPECT_EQ(setlk(fb, F_WRLCK, 0, 0), 0);
}

TEST_F(AppLocks, FlockExcludesAcrossClientsAndGoesAtClose) {
  ASSERT_EQ(flock(fa, LOCK_EX), 0);
  EXPECT_EQ(flock(fb, LOCK_EX | LOCK_NB) == 0 ? 0 : errno, EWOULDBLOCK);
  EXPECT_EQ(flock(fb, LOCK_SH | LOCK_NB) == 0 ? 0 : errno, EWOULDBLOCK);
  // flock and fcntl locks do not interact (as on Linux).
  EXPECT_EQ(setlk(fb, F_WRLCK, 0, 0), 0);
  close(fa);
  fa = open((*a_ + name_).c_str(), O_RDWR);
  EXPECT_TRUE(waitFor([&] { return flock(fb, LOCK_EX | LOCK_NB) == 0; }, 3000));
  EXPECT_EQ(flock(fa, LOCK_SH | LOCK_NB) == 0 ? 0 : errno, EWOULDBLOCK);
  ASSERT_EQ(flock(fb, LOCK_UN), 0);
  EXPECT_EQ(flock(fa, LOCK_SH | LOCK_NB), 0);
}

}  // namespace
}  // namespace cairn::test
