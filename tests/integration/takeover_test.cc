// Client upgrade without unmounting (fusefs/handover.h): `cairn-mount --takeover MOUNTPOINT`
// takes a live mount over from the process serving it. The mount stays mounted; applications
// keep their open files, their unwritten data and their locks; the servers see the same client.
// A takeover that cannot happen leaves the mount with the process it had.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "tests/integration/cluster.h"

namespace cairn::test {
namespace {

// Starts `cairn-mount --takeover` and waits until the process it replaces has exited.
std::unique_ptr<Child> takeOver(const std::string& mnt, const std::string& errPath,
                                const std::function<bool()>& previousGone) {
  auto next =
      std::make_unique<Child>(std::vector<std::string>{mountBin(), "--takeover", mnt}, errPath);
  EXPECT_TRUE(waitFor(previousGone, 10000)) << readWhole(errPath);
  return next;
}

bool lockedElsewhere(const std::string& path, off_t start, off_t len) {
  int fd = open(path.c_str(), O_RDWR);
  if (fd < 0) return false;
  struct flock probe {};
  probe.l_type = F_WRLCK;
  probe.l_whence = SEEK_SET;
  probe.l_start = start;
  probe.l_len = len;
  bool locked = fcntl(fd, F_GETLK, &probe) == 0 && probe.l_type != F_UNLCK;
  close(fd);
  return locked;
}

TEST(Takeover, ANewProcessTakesTheMountOverWithItsOpenFilesAndLocks) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  int fd = open((a + "/data").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  auto data = pattern(3 << 20, 21);
  // Not fsynced: queued behind in the process that hands over.
  ASSERT_EQ(write(fd, data.data(), data.size()), ssize_t(data.size()));
  struct flock lock {};
  lock.l_type = F_WRLCK;
  lock.l_whence = SEEK_SET;
  lock.l_start = 0;
  lock.l_len = 100;
  ASSERT_EQ(fcntl(fd, F_SETLK, &lock), 0);
  mkdir((a + "/dir").c_str(), 0755);
  int dir = open((a + "/dir").c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(dir, 0);

  pid_t first = cluster.mountPid(0);
  auto second = takeOver(a, cluster.dir() + "/takeover1.err", [&] {
    return kill(first, 0) != 0 ||
           readWhole("/proc/" + std::to_string(first) + "/stat").find(") Z") != std::string::npos;
  });
  EXPECT_TRUE(isMounted(a));
  EXPECT_TRUE(second->alive());
  // The same descriptors, the data written before, the lock, the directory.
  EXPECT_EQ(pwrite(fd, "XYZ", 3, 10), 3);
  data.replace(10, 3, "XYZ");
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, off_t(data.size()));
  EXPECT_TRUE(lockedElsewhere(b + "/data", 0, 100));
  EXPECT_EQ(fchmod(dir, 0700), 0);
  // New work through the mount, and seen by the other client.
  writeWhole(a + "/dir/new", "made after the takeover");
  EXPECT_EQ(readWhole(b + "/dir/new"), "made after the takeover");
  EXPECT_TRUE(readWhole(b + "/data") == data);

  // And once more, from the process that took over.
  pid_t secondPid = second->pid();
  auto third = takeOver(a, cluster.dir() + "/takeover2.err", [&] { return !second->alive(); });
  EXPECT_TRUE(third->alive());
  EXPECT_NE(secondPid, third->pid());
  EXPECT_EQ(pwrite(fd, "Q", 1, 0), 1);
  data[0] = 'Q';
  EXPECT_TRUE(lockedElsewhere(b + "/data", 0, 100));
  // (Read through the other mount: closing a descriptor of the file here would drop the lock.)
  EXPECT_TRUE(readWhole(b + "/data") == data);
  lock.l_type = F_UNLCK;
  EXPECT_EQ(fcntl(fd, F_SETLK, &lock), 0);
  EXPECT_FALSE(lockedElsewhere(b + "/data", 0, 100));
  close(dir);
  close(fd);
  auto log = cluster.mountLog(0);
  EXPECT_TRUE(contains(log, "took over")) << log;
  EXPECT_FALSE(contains(log, "evicted")) << log;

  // SIGTERM to the process that took over unmounts, as for the one that mounted.
  EXPECT_EQ(third->stop(SIGTERM), 0);
  EXPECT_TRUE(waitFor([&] { return !isMounted(a); }, 5000));
}

TEST(Takeover, ATakeoverThatCannotHappenLeavesTheMountAlone) {
  TestCluster cluster;
  auto a = cluster.mount();
  writeWhole(a + "/f", "still here");
  // Nothing mounted there.
  auto r = run({mountBin(), "--takeover", cluster.dir()});
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.err, "no cairn-mount to take over")) << r.err;
  // A server away: the running process refuses (it could not settle), and carries on.
  EXPECT_EQ(cluster.stopServer(1, SIGKILL), 128 + SIGKILL);
  r = run({mountBin(), "--takeover", a});
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.err, "refused")) << r.err;
  ASSERT_TRUE(cluster.startServer(1));
  EXPECT_EQ(readWhole(a + "/f"), "still here");
  writeWhole(a + "/g", "and working");
  EXPECT_EQ(readWhole(a + "/g"), "and working");
  EXPECT_TRUE(waitFor([&] { return kill(cluster.mountPid(0), 0) == 0; }, 100));
}

}  // namespace
}  // namespace cairn::test
