// Upgrade in place (Bootstrap.restart, `cairnctl restart`): the server checks the new binary,
// shuts down in a controlled way and becomes the new binary in the same process, on the same
// port; clients recover as after any controlled restart, their open files stay open. A binary
// that is not a cairn-server is refused before anything stops.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "tests/integration/cluster.h"

namespace cairn::test {
namespace {

TEST(Restart, InPlaceKeepsThePidThePortAndTheOpenFiles) {
  TestCluster::Options options;
  options.dataServers = 1;
  TestCluster cluster(options);
  auto m = cluster.mount();
  int fd = open((m + "/f").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  auto data = pattern(1 << 20, 3);
  ASSERT_EQ(write(fd, data.data(), data.size()), ssize_t(data.size()));

  for (int server : {1, 0}) {
    auto before = cluster.status(server);
    auto r = run({ctlBin(), "--server", cluster.address(server), "restart", "--bin", serverBin(),
                  "--version-override", "9.9.9-in-place"});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_TRUE(contains(r.out, "restarted as version 9.9.9-in-place")) << r.out;
    auto after = cluster.status(server);
    EXPECT_TRUE(contains(after, "\"version\":\"9.9.9-in-place\"")) << after;
    EXPECT_TRUE(contains(after, "previous shutdown was clean")) << after;
    EXPECT_EQ(jsonNumber(after, "instance"), jsonNumber(before, "instance") + 1);
    auto log = readWhole(cluster.log(server));
    EXPECT_TRUE(contains(log, "restarting as " + serverBin())) << log;
    EXPECT_TRUE(contains(log, "--listen=" + cluster.address(server))) << log;
  }
  // One process all along: the pid the test started still answers on the same address.
  EXPECT_EQ(pwrite(fd, "abc", 3, 100), 3);
  data.replace(100, 3, "abc");
  EXPECT_TRUE(readWhole(m + "/f") == data);
  close(fd);
  EXPECT_EQ(cluster.stopServer(0), 0);  // SIGTERM to the pid started first: clean exit
}

TEST(Restart, ABinaryThatIsNotACairnServerIsRefused) {
  TestCluster::Options options;
  options.dataServers = 1;
  TestCluster cluster(options);
  // A copy of the real binary that anyone may change is refused too.
  auto loose = cluster.dir() + "/loose-cairn-server";
  ASSERT_EQ(run({"/bin/cp", serverBin(), loose}).status, 0);
  ASSERT_EQ(chmod(loose.c_str(), 0777), 0);
  auto r0 = run({ctlBin(), "--server", cluster.address(0), "restart", "--bin", loose});
  EXPECT_NE(r0.status, 0);
  EXPECT_TRUE(contains(r0.err, "can be changed by other users")) << r0.err;
  for (auto bad : {"/bin/true", "/nonexistent/cairn-server", "relative/cairn-server"}) {
    auto r = run({ctlBin(), "--server", cluster.address(0), "restart", "--bin", bad});
    EXPECT_NE(r.status, 0) << bad;
    EXPECT_FALSE(r.err.empty()) << bad;
  }
  EXPECT_TRUE(contains(cluster.status(0), "\"state\":\"serving\""));
  EXPECT_EQ(jsonNumber(cluster.status(0), "instance"), 1u);
}

}  // namespace
}  // namespace cairn::test
