// Prometheus /metrics of a real server: request counts and latency histograms by kind, data
// bytes, locks, state and recovery, in the text exposition format.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "tests/integration/cluster.h"

namespace cairn::test {
namespace {

TEST(Metrics, ServersExposeRequestsLatencyLocksAndState) {
  TestCluster::Options options;
  options.dataServers = 1;
  options.metaArgs = {"--metrics", "127.0.0.1:0"};
  options.dataArgs = {"--metrics", "127.0.0.1:0", "--poll-us", "100"};
  TestCluster cluster(options);
  auto mnt = cluster.mount();
  writeWhole(mnt + "/f", std::string(100000, 'x'));
  EXPECT_EQ(readWhole(mnt + "/f").size(), 100000u);

  auto meta = metricsAddress(cluster, 0);
  ASSERT_FALSE(meta.empty()) << cluster.status(0);
  auto text = httpGet(meta, "/metrics");
  ASSERT_EQ(text.rfind("HTTP/1.1 200", 0), 0u) << text;
  EXPECT_NE(text.find("# TYPE cairn_request_duration_seconds histogram"), std::string::npos);
  EXPECT_GE(metricValue(text, "cairn_requests_total{kind=\"meta.create\"}"), 1);
  double creates = metricValue(text, "cairn_request_duration_seconds_count{kind=\"meta.create\"}");
  EXPECT_GE(creates, 1);
  EXPECT_EQ(
      metricValue(text, "cairn_request_duration_seconds_bucket{kind=\"meta.create\",le=\"+Inf\"}"),
      creates);
  // Measured, not the event loop's idea of the time (which stands still within one turn).
  EXPECT_GT(metricValue(text, "cairn_request_duration_seconds_sum{kind=\"meta.create\"}"), 0);
  EXPECT_EQ(metricValue(text, "cairn_server_state{state=\"serving\"}"), 1);
  // A map far from full never waits for a checkpoint to give room back.
  EXPECT_EQ(metricValue(text, "cairn_room_checkpoints_total"), 0);
  EXPECT_EQ(metricValue(text, "cairn_clients_connected"), 1);
  EXPECT_GE(metricValue(text, "cairn_locks_granted"),
            1);  // at least the client's active-server lock
  EXPECT_GT(metricValue(text, "cairn_lmdb_map_used_bytes"), 0);

  auto data = httpGet(metricsAddress(cluster, 1), "/metrics");
  EXPECT_GE(metricValue(data, "cairn_data_bytes_in_total"), 100000);
  EXPECT_NE(data.find("kind=\"data\""), std::string::npos);
  // Servers sleep when idle unless told to look for work first (--poll-us, as the data server).
  EXPECT_EQ(metricValue(text, "cairn_server_poll_spins_total"), 0);
  EXPECT_GT(metricValue(data, "cairn_server_poll_sleeps_total"), 0);
  EXPECT_LE(metricValue(data, "cairn_server_poll_window_seconds"), 100e-6);
  EXPECT_EQ(httpGet(meta, "/other").rfind("HTTP/1.1 404", 0), 0u);
}

// A truncate or destroy of a large object goes in steps, each a transaction of its own, so that
// the target serves other requests in between; what the truncate keeps is intact, and nothing
// of the object is left after the destroy.
TEST(Metrics, LargeRemovalsGoInStepsAndLeaveNothing) {
  TestCluster::Options options;
  options.dataServers = 1;
  options.dataArgs = {"--metrics", "127.0.0.1:0"};
  TestCluster cluster(options);
  auto mnt = cluster.mount();
  auto steps = [&] {
    return metricValue(httpGet(metricsAddress(cluster, 1), "/metrics"),
                       "cairn_data_removal_steps_total");
  };
  auto chunks = [&] { return jsonNumber(cluster.status(1), "chunks"); };
  uint64_t before = chunks();
  ASSERT_EQ(steps(), 0);
  // 64 MiB: several thousand chunks of any size a target may be made with.
  std::string data(64 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = char(i % 251);
  int fd = open((mnt + "/big").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 0), ssize_t(data.size()));
  ASSERT_EQ(fsync(fd), 0);
  uint64_t written = chunks();
  ASSERT_GT(written, before + 1000);

  constexpr size_t KEPT = (32 << 20) + 123;
  ASSERT_EQ(ftruncate(fd, KEPT), 0);
  ASSERT_EQ(fsync(fd), 0);
  ASSERT_EQ(close(fd), 0);
  double truncated = steps();
  EXPECT_GE(truncated, 1);
  EXPECT_LT(chunks(), written);
  auto other = cluster.mount();  // reads what the target holds, not this client's cache
  EXPECT_TRUE(readWhole(other + "/big") == data.substr(0, KEPT));

  ASSERT_EQ(unlink((mnt + "/big").c_str()), 0);
  ASSERT_TRUE(waitFor([&] { return jsonNumber(cluster.status(0), "destroyQueue") == 0; }, 20000));
  EXPECT_EQ(chunks(), before);
  // What the truncate kept is more than a step too, with the default chunk (a page).
  EXPECT_GE(steps(), truncated + 1);
}

// A mount's own counters, read with `cairnctl --mount MNT stats` from its local socket.
TEST(Metrics, AMountExposesItsOwnCounters) {
  TestCluster cluster;
  auto mnt = cluster.mount();
  writeWhole(mnt + "/f", "counted");
  struct stat st;
  for (int i = 0; i < 10; ++i) ASSERT_EQ(stat((mnt + "/f").c_str(), &st), 0);
  auto r = run({ctlBin(), "--mount", mnt, "stats"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_GE(metricValue(r.out, "cairn_client_requests_total{link=\"meta\",kind=\"meta.create\"}"),
            1)
      << r.out;
  EXPECT_EQ(metricValue(r.out, "cairn_client_link_state{link=\"meta\",state=\"active\"}"), 1);
  EXPECT_GE(metricValue(r.out, "cairn_client_locks_held"), 1);
  EXPECT_GE(metricValue(r.out, "cairn_client_gate_waits_total{link=\"meta\"}"), 0);
  EXPECT_NE(r.out.find("cairn_client_dirty_bytes "), std::string::npos);
  // And, asked for, the same on a TCP port for a Prometheus server.
  int probe = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  ASSERT_EQ(bind(probe, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  ASSERT_EQ(getsockname(probe, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  auto address = "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
  close(probe);
  auto scraped = cluster.mount("metrics=" + address);
  writeWhole(scraped + "/g", "scraped");
  auto page = httpGet(address, "/metrics");
  EXPECT_NE(page.find("200"), std::string::npos) << page;
  EXPECT_GE(metricValue(page, "cairn_client_requests_total{link=\"meta\",kind=\"meta.create\"}"), 1)
      << page;
  // Another mount point has no counters: a clear error.
  auto none = run({ctlBin(), "--mount", cluster.dir(), "stats"});
  EXPECT_NE(none.status, 0);
}

// The mount's event loop looks for the next request a while before it sleeps (rpc/busy_poll.h):
// an application's requests that come within the window are taken while it looks; `-o poll_us=0`
// never looks. The application here pauses 100 µs between calls (its turnaround), so that the
// mount goes idle between them even when it is slow (a sanitizer build still works on the last
// request when the next one comes, and never goes idle at all without the pause). The window is
// 20 ms here, not the default 200 µs: with another test running on both CPUs the gaps between
// calls grow past 200 µs, and the window rightly shrinks to nothing.
TEST(Metrics, AMountLooksForTheNextRequestBeforeItSleepsUnlessToldNot) {
  TestCluster cluster;
  auto chmods = [](const std::string& mnt) {
    writeWhole(mnt + "/p", "polled");
    int fd = open((mnt + "/p").c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    for (int i = 0; i < 500; ++i) {
      ASSERT_EQ(fchmod(fd, (i & 1) ? 0600 : 0644), 0);
      auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
      while (std::chrono::steady_clock::now() < until) {}
    }
    close(fd);
  };
  auto polling = cluster.mount("poll_us=20000");
  chmods(polling);
  auto r = run({ctlBin(), "--mount", polling, "stats"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_GE(metricValue(r.out, "cairn_client_poll_caught_total"), 1) << r.out;
  EXPECT_GE(metricValue(r.out, "cairn_client_poll_spins_total"),
            metricValue(r.out, "cairn_client_poll_caught_total"));
  EXPECT_LE(metricValue(r.out, "cairn_client_poll_window_seconds"), 20000e-6);

  auto sleeping = cluster.mount("poll_us=0");
  chmods(sleeping);
  r = run({ctlBin(), "--mount", sleeping, "stats"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(metricValue(r.out, "cairn_client_poll_spins_total"), 0) << r.out;
  EXPECT_GT(metricValue(r.out, "cairn_client_poll_sleeps_total"), 0);
  EXPECT_EQ(metricValue(r.out, "cairn_client_poll_window_seconds"), 0);
}

}  // namespace
}  // namespace cairn::test
