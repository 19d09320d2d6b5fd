// Failover pairs with real servers and real mounts: two cairn-server processes reach one target
// directory; one serves and the other stands by. Multiple-mount protection (the owner lock and
// the heartbeat record) keeps the second out while the first lives, lets it in at once when the
// first dies or fails over, makes it wait out a heartbeat written on another kernel, and makes a
// server that was asked to give the target up stop serving at its next beat. Clients follow the
// target to whichever server serves it, with their open files, and see no error.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>

#include "tests/integration/cluster.h"

namespace cairn::test {
namespace {

TestCluster::Options pairs(int dataServers = 1) {
  TestCluster::Options o;
  o.dataServers = dataServers;
  o.failover = true;
  return o;
}

// Appends `data` through `fd` and checks it reached the file (fsync: committed on the server).
void appendSynced(int fd, const std::string& data) {
  ASSERT_EQ(write(fd, data.data(), data.size()), ssize_t(data.size())) << strerror(errno);
  ASSERT_EQ(fsync(fd), 0) << strerror(errno);
}

std::string readAll(int fd) {
  struct stat st;
  EXPECT_EQ(fstat(fd, &st), 0);
  std::string out(size_t(st.st_size), '\0');
  EXPECT_EQ(pread(fd, out.data(), out.size(), 0), ssize_t(out.size())) << strerror(errno);
  return out;
}

// One serves, the other stands by and refuses sessions; a third process without a partner is
// refused outright: two servers never have one target open.
TEST(Failover, OneServesAndTheOtherStandsBy) {
  TestCluster cluster(pairs());
  EXPECT_EQ(cluster.serving(0), 0);
  auto standby = cluster.status(cluster.partner(0));
  EXPECT_TRUE(contains(standby, "\"state\":\"standby\"")) << standby;
  EXPECT_TRUE(contains(standby, "\"partner\":\"" + cluster.address(0) + "\"")) << standby;
  // The metadata target gives clients both addresses of the data target's pair.
  auto meta = cluster.status(0);
  EXPECT_TRUE(contains(meta, cluster.address(1))) << meta;
  EXPECT_TRUE(contains(meta, cluster.address(cluster.partner(1)))) << meta;

  auto r = run({serverBin(), "serve", "--dir", cluster.targetDir(0), "--kind", "meta"});
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.err, "served by another process")) << r.err;

  // The mount reaches the target through its list of addresses.
  auto m = cluster.mount();
  writeWhole(m + "/f", "hello");
  EXPECT_EQ(readWhole(m + "/f"), "hello");
}

// kill -9 of the serving server: the kernel releases its owner lock and the standby takes the
// target over at once; the client replays what the dead server may have lost, its open files
// stay open, and the same descriptors go on working, for the metadata and the data target.
TEST(Failover, KillOfTheActiveServerIsInvisibleToApplications) {
  TestCluster cluster(pairs());
  auto m = cluster.mount();
  int fd = open((m + "/log").c_str(), O_CREAT | O_RDWR | O_APPEND, 0644);
  ASSERT_GE(fd, 0);
  std::string expected;
  for (int round = 0; round < 2; ++round) {
    for (int server : {0, 1}) {
      auto part = pattern(100000 + round * 1000 + server, round * 2 + server);
      appendSynced(fd, part);
      expected += part;
      int active = cluster.serving(server);
      ASSERT_GE(active, 0);
      EXPECT_EQ(cluster.stopServer(active, SIGKILL), 128 + SIGKILL);
      // Writes and opens go on while the partner takes over.
      auto more = pattern(5000, 100 + round);
      appendSynced(fd, more);
      expected += more;
      writeWhole(m + "/after-" + std::to_string(round) + "-" + std::to_string(server), more);
      EXPECT_EQ(cluster.serving(server), cluster.partner(active));
      // The killed one comes back as the standby.
      ASSERT_TRUE(cluster.startServer(active));
      EXPECT_TRUE(contains(cluster.status(active), "\"state\":\"standby\""));
    }
  }
  EXPECT_TRUE(readAll(fd) == expected);
  close(fd);
  EXPECT_TRUE(readWhole(m + "/log") == expected);
  EXPECT_FALSE(contains(readWhole(cluster.mountLog(0)), "evicted"));
}

// `cairnctl failover`, on either server of a pair: the active one shuts down in a controlled
// way (clients write back and let go) and stays up as the standby; the partner takes over.
TEST(Failover, ControlledFailoverBothWays) {
  TestCluster cluster(pairs());
  auto m = cluster.mount();
  int fd = open((m + "/f").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  auto data = pattern(3 << 20, 7);
  // Not fsynced: write-behind data goes back during the failover's drain.
  ASSERT_EQ(write(fd, data.data(), data.size()), ssize_t(data.size()));
  for (int server : {0, 1}) {
    // From the active server...
    auto r = run({ctlBin(), "--server", cluster.address(server), "failover"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_TRUE(contains(r.out, "failed over to " + cluster.address(cluster.partner(server))))
        << r.out;
    EXPECT_EQ(cluster.serving(server), cluster.partner(server));
    auto log = readWhole(cluster.log(server));
    EXPECT_TRUE(contains(log, "marked clean")) << log;
    EXPECT_TRUE(contains(log, "standing by")) << log;
    EXPECT_TRUE(contains(cluster.status(cluster.partner(server)), "previous shutdown was clean"));
    // ...and back, asked of the standby.
    r = run({ctlBin(), "--server", cluster.address(server), "failover"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(cluster.serving(server), server);
  }
  EXPECT_EQ(pwrite(fd, "XY", 2, 10), 2);
  data.replace(10, 2, "XY");
  EXPECT_TRUE(readAll(fd) == data);
  close(fd);
  EXPECT_TRUE(readWhole(m + "/f") == data);
  EXPECT_FALSE(contains(readWhole(cluster.mountLog(0)), "evicted"));
}

// A heartbeat record written on another kernel (a partner on another host, where the owner lock
// may not reach): the standby waits while its sequence moves, and takes over once it has stood
// still for three intervals. The record says 500 ms (it is written every 50 ms): with 100 ms,
// the test failed 2 runs in 19 under the sanitizers, the standby no longer standing by, most
// likely because this writer was held up for three of those intervals.
TEST(Failover, StandbyWaitsOutAHeartbeatFromAnotherHost) {
  TestCluster cluster(pairs());
  int standby = cluster.partner(0);
  EXPECT_EQ(cluster.stopServer(standby), 0);
  EXPECT_EQ(cluster.stopServer(0, SIGKILL), 128 + SIGKILL);

  std::atomic<bool> beating{true};
  std::string path = cluster.targetDir(0) + "/heartbeat";
  std::thread otherHost([&] {
    int fd = open(path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    for (uint64_t seq = 1000; beating; ++seq) {
      char slot[256] = {};
      snprintf(slot, sizeof(slot), "heartbeat %llu active other-boot-id 1 500 10.0.0.9:1\n",
               static_cast<unsigned long long>(seq));
      EXPECT_EQ(pwrite(fd, slot, sizeof(slot), 0), ssize_t(sizeof(slot)));
      usleep(50 * 1000);
    }
    close(fd);
  });
  ASSERT_TRUE(cluster.startServer(standby));
  usleep(1500 * 1000);
  EXPECT_TRUE(contains(cluster.status(standby), "\"state\":\"standby\""));
  beating = false;
  otherHost.join();
  EXPECT_TRUE(waitFor([&] { return cluster.serving(0) == standby; }, 15000));
  EXPECT_TRUE(contains(cluster.status(standby), "unclean stop, same version"));
}

// A server that hangs (SIGSTOP) while clients need the target: they come asking the standby,
// which cannot reach its partner and fences it through the heartbeat record's takeover request.
// The owner lock still keeps the standby out while the hung process lives; when it wakes up, it
// reads the request at its next beat and stops serving at once (what it commits until then is
// still under its lock, and resends find its reply records); the standby takes over and the
// application's call, blocked meanwhile, completes without error.
TEST(Failover, AHungServerThatWakesUpStopsServing) {
  auto options = pairs();
  options.metaArgs = {"--failover-timeout", "1"};
  TestCluster cluster(options);
  auto m = cluster.mount();
  writeWhole(m + "/before", "before");
  cluster.signalServer(0, SIGSTOP);
  std::atomic<bool> done{false};
  std::string got;
  std::thread app([&] {
    writeWhole(m + "/during", "during the hang");
    got = readWhole(m + "/before");
    done = true;
  });
  int standby = cluster.partner(0);
  EXPECT_TRUE(waitFor([&] { return contains(readWhole(cluster.log(standby)), "fencing"); }, 30000));
  EXPECT_FALSE(done);
  EXPECT_TRUE(contains(cluster.status(standby), "\"state\":\"standby\""));  // lock still held
  cluster.signalServer(0, SIGCONT);
  app.join();
  EXPECT_EQ(got, "before");
  EXPECT_EQ(readWhole(m + "/during"), "during the hang");
  EXPECT_TRUE(waitFor([&] { return cluster.serving(0) == standby; }, 5000));
  auto log = readWhole(cluster.log(0));
  EXPECT_TRUE(contains(log, "stopped serving at once: takeover requested")) << log;
  // (It stands by in a new life: not answering for a moment after the log line.)
  // (Failed about once in 20–50 runs on a loaded machine until session 24: Cap'n Proto let go of
  // the client's service after the serving context was gone, the service's destructor used that
  // context — the log said "keeping its locks 94528 s" — and the process stopped answering.
  // ServerContext::Presence; the failure output keeps the server's log.)
  RunResult last;
  EXPECT_TRUE(waitFor(
      [&] {
        last =
            run({ctlBin(), "--server", cluster.address(0), "--timeout", "2", "status", "--json"});
        return last.status == 0 && contains(last.out, "\"state\":\"standby\"");
      },
      5000))
      << "status " << last.status << ": " << last.out << last.err << "\n--- server 0's log:\n"
      << readWhole(cluster.log(0));
  EXPECT_FALSE(contains(readWhole(cluster.mountLog(0)), "evicted"));
}

}  // namespace
}  // namespace cairn::test
