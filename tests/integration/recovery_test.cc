// What a client sees while servers stop, crash and come back: nothing but a wait. Data and
// namespace survive every kind of stop; open files stay open; two mounts see each other's
// completed changes; a process waiting on an absent server can be interrupted.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "rpc/server_link.h"
#include "rpc/transport.h"
#include "tests/integration/cluster.h"

namespace cairn::test {
namespace {

std::string slurp(const std::string& path) {
  return readWhole(path);
}

// Builds a small tree of every kind of object and checks it.
void makeTree(const std::string& root) {
  ASSERT_EQ(mkdir((root + "/dir").c_str(), 0750), 0);
  writeWhole(root + "/dir/small", "small file");
  writeWhole(root + "/dir/big", pattern(3 << 20, 7));
  ASSERT_EQ(symlink("dir/small", (root + "/link").c_str()), 0);
  ASSERT_EQ(link((root + "/dir/small").c_str(), (root + "/hard").c_str()), 0);
  ASSERT_EQ(setxattr((root + "/dir").c_str(), "user.k", "v", 1, 0), 0);
  ASSERT_EQ(mkfifo((root + "/fifo").c_str(), 0600), 0);
}

void checkTree(const std::string& root) {
  EXPECT_EQ(slurp(root + "/dir/small"), "small file");
  EXPECT_TRUE(slurp(root + "/dir/big") == pattern(3 << 20, 7));
  EXPECT_EQ(slurp(root + "/link"), "small file");
  struct stat st;
  ASSERT_EQ(stat((root + "/hard").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 2u);
  ASSERT_EQ(stat((root + "/dir").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFDIR | 0750);
  char v[8] = {};
  EXPECT_EQ(getxattr((root + "/dir").c_str(), "user.k", v, sizeof(v)), 1);
  ASSERT_EQ(lstat((root + "/fifo").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
}

TEST(Recovery, EverythingSurvivesCleanAndCrashRestarts) {
  TestCluster cluster;
  auto mnt = cluster.mount();
  makeTree(mnt);
  struct stat before;
  ASSERT_EQ(stat((mnt + "/dir/big").c_str(), &before), 0);

  cluster.stopAll();  // SIGTERM: clean
  cluster.startAll();
  checkTree(mnt);  // the same mount reconnected on its own
  struct stat after;
  ASSERT_EQ(stat((mnt + "/dir/big").c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);  // inode numbers are persistent

  for (int i = cluster.serverCount() - 1; i >= 0; --i) cluster.stopServer(i, SIGKILL);
  cluster.startAll();
  checkTree(mnt);
  checkTree(cluster.mount());  // and a fresh mount sees the same
  EXPECT_NE(cluster.status(0).find("\"instance\":3"), std::string::npos);
}

// A host crash can leave LMDB's file as it was at its last sync: what an fsync made durable
// since then is in the write-ahead log, and a restart applies it. Played by putting every
// target's data.mdb back to a copy taken before the updates, keeping the log beside it.
TEST(Recovery, WhatAnFsyncMadeDurableSurvivesAHostCrashThatLostLmdbsLatestPages) {
  TestCluster cluster;
  auto mnt = cluster.mount();
  writeWhole(mnt + "/f", "before");
  {
    int fd = open((mnt + "/f").c_str(), O_RDONLY);
    ASSERT_EQ(fsync(fd), 0);
    close(fd);
  }
  // Stopped while their files are copied, so that no checkpoint runs in between: the log must
  // still hold everything after the copies when the servers go down.
  for (int i = 0; i < cluster.serverCount(); ++i) cluster.signalServer(i, SIGSTOP);
  for (int i = 0; i < cluster.serverCount(); ++i) {
    auto earlier = cluster.dir() + "/earlier" + std::to_string(i);
    ASSERT_EQ(mkdir(earlier.c_str(), 0700), 0);
    auto copy = run({"/usr/bin/mdb_copy", cluster.targetDir(i), earlier});
    ASSERT_EQ(copy.status, 0) << copy.err;
  }
  for (int i = 0; i < cluster.serverCount(); ++i) cluster.signalServer(i, SIGCONT);

  int fd = open((mnt + "/f").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "after!", 6, 0), 6);
  ASSERT_EQ(fsync(fd), 0);
  close(fd);
  writeWhole(mnt + "/new", "created after the copies");
  fd = open((mnt + "/new").c_str(), O_RDONLY);
  ASSERT_EQ(fsync(fd), 0);
  close(fd);

  for (int i = cluster.serverCount() - 1; i >= 0; --i) cluster.stopServer(i, SIGKILL);
  for (int i = 0; i < cluster.serverCount(); ++i) {
    auto earlier = cluster.dir() + "/earlier" + std::to_string(i);
    ASSERT_EQ(rename((earlier + "/data.mdb").c_str(), (cluster.targetDir(i) + "/data.mdb").c_str()),
              0);
  }
  cluster.startAll();
  // The metadata server (the create, the sizes) and the data server the bytes went to.
  int replayed = 0;
  for (int i = 0; i < cluster.serverCount(); ++i) {
    if (contains(cluster.serverLog(i), "transactions LMDB lacked")) ++replayed;
  }
  EXPECT_TRUE(contains(cluster.serverLog(0), "transactions LMDB lacked")) << cluster.serverLog(0);
  EXPECT_GE(replayed, 2);
  // Read past every cache: from a fresh mount.
  auto fresh = cluster.mount();
  EXPECT_EQ(slurp(fresh + "/f"), "after!");
  EXPECT_EQ(slurp(fresh + "/new"), "created after the copies");
  EXPECT_EQ(slurp(mnt + "/f"), "after!");
}

TEST(Recovery, RestartRefusedAfterUncleanStopByAnotherVersion) {
  TestCluster cluster;
  cluster.stopServer(0, SIGKILL);
  EXPECT_FALSE(cluster.startServer(0, {"--version-override", "9.9.9"}));
  EXPECT_TRUE(cluster.startServer(0, {"--version-override", "9.9.9", "--force"}));
  cluster.stopServer(0, SIGTERM);
  // After a clean stop any version may start.
  EXPECT_TRUE(cluster.startServer(0));
}

TEST(Recovery, ApplicationsOnlyWaitWhileServersAreDown) {
  TestCluster cluster;
  auto mnt = cluster.mount();
  writeWhole(mnt + "/f", "x");
  int fd = open((mnt + "/f").c_str(), O_RDWR | O_APPEND);
  ASSERT_GE(fd, 0);

  cluster.stopServer(0, SIGKILL);
  cluster.stopServer(1, SIGKILL);
  cluster.stopServer(2, SIGKILL);
  std::atomic<int> errors{0}, done{0};
  std::thread worker([&] {
    for (int i = 0; i < 20; ++i) {
      struct stat st;
      if (stat((mnt + "/f").c_str(), &st) != 0) ++errors;
      if (write(fd, "y", 1) != 1) ++errors;
      ++done;
    }
  });
  usleep(500 * 1000);
  EXPECT_EQ(done.load(), 0);  // parked, not failed
  cluster.startAll();
  worker.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(done.load(), 20);
  close(fd);
  EXPECT_EQ(slurp(mnt + "/f"), "x" + std::string(20, 'y'));
}

TEST(Recovery, AFrozenServerIsWaitedForAndNothingIsAppliedTwice) {
  TestCluster cluster;
  auto mnt = cluster.mount();
  writeWhole(mnt + "/log", "");
  int fd = open((mnt + "/log").c_str(), O_WRONLY | O_APPEND);
  ASSERT_GE(fd, 0);
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0}, appends{0};
  std::thread worker([&] {
    while (!stop) {
      struct stat st;
      if (stat((mnt + "/log").c_str(), &st) != 0) ++errors;
      if (write(fd, "r", 1) != 1) {
        ++errors;
      } else {
        ++appends;
      }
    }
  });
  usleep(300 * 1000);
  // Frozen well past the ping timeout: the client gives the connection up and reconnects
  // (into the frozen server's backlog) until it answers again.
  cluster.signalServer(0, SIGSTOP);
  usleep(11 * 1000 * 1000);
  cluster.signalServer(0, SIGCONT);
  int before = appends;
  bool moved = waitFor([&] { return appends > before + 50; }, 20000);
  stop = true;
  // A worker stuck on the mount is freed by killing the mount (its call fails), so that the
  // test can end cleanly either way.
  if (!moved) cluster.killMount(0);
  worker.join();
  close(fd);
  ASSERT_TRUE(moved) << "the mount did not resume after the server did";
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(readWhole(mnt + "/log").size(), size_t(appends.load()));
}

// A client's link to one server (by default the metadata server), made in this process (no
// mount): what its requests are, and when they go, is the test's.
struct TestLink {
  TestLink(const TestCluster& cluster, kj::StringPtr hostName, kj::byte uuidSeed, int server = 0)
      : io(kj::setupAsyncIo()),
        transport(rawCredentials.empty()
                      ? Transport::plaintext(io)
                      : Transport::tls(io, rawCredentials.c_str(), Peer::Role::CLIENT)) {
    LinkIdentity identity;
    identity.uuid = kj::heapArray<kj::byte>(16);
    for (auto i : kj::indices(identity.uuid)) identity.uuid[i] = kj::byte(uuidSeed + i);
    identity.hostName = kj::str(hostName);
    auto addresses = kj::heapArrayBuilder<kj::String>(1);
    addresses.add(kj::str(cluster.address(server)));
    link = kj::heap<ServerLink>(transport->network(), io.provider->getTimer(),
                                kj::str("server", server), addresses.finish(), identity);
    link->start();
  }
  kj::Timer& timer() { return io.provider->getTimer(); }
  void sleep(kj::Duration d) { timer().afterDelay(d).wait(io.waitScope); }
  kj::Promise<ServerLink::MetaResponse> mkdir(kj::String name) {
    return link->meta(
        [name = kj::mv(name)](rpc::MetaRequest::Builder b) {
          auto m = b.initMkdir();
          m.setParent(1);
          m.setName(name.asBytes());
          m.setMode(0755);
        },
        true);
  }

  kj::AsyncIoContext io;
  kj::Own<Transport> transport;
  kj::Own<ServerLink> link;  // destroyed before the transport it connects through
};

// Updates a client has on their way when its connection is cut are sent again once it is back,
// in the order they were made: the server applies them so (the application was told of some
// already, answered ahead, in that order). The RPC system rejects the lost calls in the order of
// its own question numbers, which it reuses; with a window of updates always on their way those
// are a rotation of the requests' order, and resends that followed them were applied out of
// order. Each update is a mkdir; its reply's transaction number is when it was applied.
TEST(Recovery, UpdatesCutOffAreSentAgainInTheOrderTheyWereMade) {
  TestCluster cluster;
  TestLink client(cluster, "resend-order-test", 0x5a);
  auto& io = client.io;

  // Where the window stands in the question numbers when the server freezes varies with the
  // round (a rotation by 0 would keep the order by chance).
  for (int freezeAt : {40, 43, 46}) {
    SCOPED_TRACE("frozen after " + std::to_string(freezeAt) + " replies");
    constexpr int TOTAL = 72, WINDOW = 8;
    std::vector<uint64_t> appliedAs(TOTAL, 0);
    std::vector<bool> cutOff(TOTAL, false);  // on its way when the connection was cut
    int made = 0, answered = 0;
    bool frozen = false;
    kj::Function<kj::Promise<void>()> next = [&]() -> kj::Promise<void> {
      if (made == TOTAL) return kj::READY_NOW;
      int i = made++;
      return client.mkdir(kj::str("r", freezeAt, "-", i))
          .then([&, i](ServerLink::MetaResponse&& resp) {
            EXPECT_EQ(resp.getReply().getError(), 0) << "mkdir " << i;
            appliedAs[i] = resp.getReply().getTransno();
            if (++answered == freezeAt) {
              // Everything on its way from here stays there: the server reads nothing more.
              frozen = true;
              cluster.signalServer(0, SIGSTOP);
            }
            return next();
          });
    };
    kj::Vector<kj::Promise<void>> chains;
    for (int k = 0; k < WINDOW; ++k) chains.add(next());
    auto all = kj::joinPromises(chains.releaseAsArray());
    auto& timer = io.provider->getTimer();
    // Once the window is full behind the frozen server: cut, then let the server go on.
    while (!frozen || made - answered < WINDOW) {
      timer.afterDelay(5 * kj::MILLISECONDS).wait(io.waitScope);
    }
    timer.afterDelay(100 * kj::MILLISECONDS).wait(io.waitScope);
    for (int i = answered; i < made; ++i) cutOff[i] = appliedAs[i] == 0;
    cutConnections(getpid(), cluster.metaAddress());
    timer.afterDelay(200 * kj::MILLISECONDS).wait(io.waitScope);
    cluster.signalServer(0, SIGCONT);
    all.wait(io.waitScope);

    int resent = 0;
    for (int i = 0; i < TOTAL; ++i) resent += cutOff[i];
    EXPECT_EQ(resent, WINDOW);
    for (int i = 1; i < TOTAL; ++i) {
      EXPECT_LT(appliedAs[i - 1], appliedAs[i])
          << i - 1 << (cutOff[i - 1] ? " (cut off)" : "") << " applied after " << i
          << (cutOff[i] ? " (cut off)" : "");
    }
  }
}

// A request over what a server reads (its 16 MiB limit on a message) is never sent: it would
// drop every connection it went out on, and wait for good. It fails at once, and the link
// goes on.
TEST(Recovery, ARequestTooLargeForTheServerFailsAtOnce) {
  TestCluster cluster;
  TestLink client(cluster, "too-large-request-test", 0x4b);
  ASSERT_EQ(client.mkdir(kj::str("before")).wait(client.io.waitScope).getReply().getError(), 0);
  auto generation = client.link->generation();
  auto failed = client.mkdir(kj::heapString(17 << 20))
                    .then([](ServerLink::MetaResponse&&) { return kj::str("answered"); },
                          [](kj::Exception&& e) { return kj::str(e.getDescription()); })
                    .exclusiveJoin(client.timer().afterDelay(10 * kj::SECONDS).then([]() {
                      return kj::str("no answer in 10 s");
                    }))
                    .wait(client.io.waitScope);
  EXPECT_TRUE(strstr(failed.cStr(), "too large for a server to read") != nullptr) << failed.cStr();
  EXPECT_EQ(client.link->generation(), generation) << "no connection was lost";
  EXPECT_EQ(client.mkdir(kj::str("after")).wait(client.io.waitScope).getReply().getError(), 0);
}

// A request the server cannot read for another reason makes its RPC system drop the
// connection, and the link sends it again on the next one: it waits, as requests wait out
// every lost connection. Here, a writeMany of 600 pieces referenced where they lie, each a
// message segment of its own: the server reads no message of 512 segments or more (a bug of
// that kind once made 40 reconnects a second, and a line of log each, for as long as the mount
// lived). What must not happen is a tight loop: connections lost right after they were made
// back off, and a request made after the bad one was given up gets through.
TEST(Recovery, ARequestTheServerCannotReadIsNotResentInATightLoop) {
  TestCluster cluster;
  TestLink client(cluster, "unreadable-request-test", 0x3c, 1);  // data0
  auto statfs = [&]() {
    return client.link->data([](rpc::DataRequest::Builder b) { b.setStatfs(); }, false);
  };
  ASSERT_EQ(statfs().wait(client.io.waitScope).getReply().getError(), 0);
  auto before = client.link->generation();

  auto bytes = kj::heapArray<capnp::word>(600);
  auto build = [&bytes](rpc::DataRequest::Builder b) {
    auto orphanage = capnp::Orphanage::getForMessageContaining(b);
    auto pieces = b.initWriteMany(bytes.size());
    for (auto i : kj::indices(bytes)) {
      pieces[i].setObjectId(1);
      pieces[i].setOffset(i * sizeof(capnp::word));
      pieces[i].adoptData(orphanage.referenceExternalData(
          capnp::Data::Reader(reinterpret_cast<const kj::byte*>(&bytes[i]), sizeof(capnp::word))));
    }
  };
  bool answered = false;
  auto unreadable = client.link->data(build, true)
                        .then([&](ServerLink::DataResponse&&) { answered = true; },
                              [&](kj::Exception&&) { answered = true; })
                        .eagerlyEvaluate(nullptr);
  client.sleep(6 * kj::SECONDS);
  EXPECT_FALSE(answered) << "the request waits, as requests wait out lost connections";
  // Connects and losses each bump the generation. Without the backoff: 206 connects.
  auto connects = (client.link->generation() - before) / 2;
  EXPECT_GE(connects, 3u) << "the request was sent again on new connections";
  EXPECT_LE(connects, 15u) << "reconnects back off";

  // The application gives up (a signal): the next request gets through.
  unreadable = nullptr;
  auto after =
      statfs()
          .exclusiveJoin(
              client.timer().afterDelay(15 * kj::SECONDS).then([]() -> ServerLink::DataResponse {
                KJ_FAIL_REQUIRE("no answer in 15 s");
              }))
          .wait(client.io.waitScope);
  EXPECT_EQ(after.getReply().getError(), 0);
}

TEST(Recovery, UnlinkedOpenFileSurvivesRestartAndIsFreedAtLastClose) {
  TestCluster::Options options;
  options.metaArgs = {"--recovery-window", "1"};
  TestCluster cluster(options);
  auto mnt = cluster.mount();
  writeWhole(mnt + "/ghost", pattern(1 << 20, 3));
  int fd = open((mnt + "/ghost").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(unlink((mnt + "/ghost").c_str()), 0);
  uint64_t chunksWith =
      jsonNumber(cluster.status(1), "chunks") + jsonNumber(cluster.status(2), "chunks");
  EXPECT_GT(chunksWith, 0u);

  cluster.stopServer(0, SIGKILL);
  cluster.startServer(0);
  usleep(1500 * 1000);  // past the recovery window: the replayed open keeps the orphan
  std::string buf(1 << 20, '\0');
  ASSERT_EQ(pread(fd, buf.data(), buf.size(), 0), ssize_t(buf.size()));
  EXPECT_TRUE(buf == pattern(1 << 20, 3));
  EXPECT_EQ(jsonNumber(cluster.status(0), "orphans"), 1u);
  close(fd);
  EXPECT_TRUE(waitFor([&] { return jsonNumber(cluster.status(0), "orphans") == 0; }, 5000));
  EXPECT_TRUE(waitFor(
      [&] {
        return jsonNumber(cluster.status(1), "chunks") + jsonNumber(cluster.status(2), "chunks") ==
               0;
      },
      5000));
}

TEST(Recovery, OrphanOfAVanishedClientIsFreed) {
  TestCluster::Options options;
  options.metaArgs = {"--disconnect-grace", "1"};
  TestCluster cluster(options);
  auto mnt = cluster.mount();
  auto other = cluster.mount();
  writeWhole(mnt + "/ghost", "data");
  // A process holds the file open through the first mount; the other mount unlinks it.
  pid_t holder = fork();
  if (holder == 0) {
    int fd = open((mnt + "/ghost").c_str(), O_RDONLY);
    pause();
    _exit(fd >= 0 ? 0 : 1);
  }
  ASSERT_TRUE(waitFor([&] { return jsonNumber(cluster.status(0), "openFiles") == 1; }, 5000));
  ASSERT_EQ(unlink((other + "/ghost").c_str()), 0);
  EXPECT_EQ(jsonNumber(cluster.status(0), "orphans"), 1u);
  // The first client vanishes (its daemon killed, as a crashed host would): after the grace
  // period the server closes what it had open and frees the orphan.
  cluster.killMount(0);
  kill(holder, SIGKILL);
  waitpid(holder, nullptr, 0);
  EXPECT_TRUE(waitFor([&] { return jsonNumber(cluster.status(0), "orphans") == 0; }, 8000));
  EXPECT_TRUE(waitFor(
      [&] {
        return jsonNumber(cluster.status(1), "chunks") + jsonNumber(cluster.status(2), "chunks") ==
               0;
      },
      8000));
  // Its session is gone too: one client left.
  EXPECT_TRUE(waitFor(
      [&] {
        auto st = cluster.status(0);
        size_t n = 0;
        for (size_t at = 0; (at = st.find("\"uuid\"", at)) != std::string::npos; ++at) ++n;
        return n == 1;
      },
      8000));
  // The other client carries on.
  writeWhole(other + "/after", "fine");
  EXPECT_EQ(slurp(other + "/after"), "fine");
}

TEST(Recovery, TwoMountsSeeEachOthersChanges) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  writeWhole(a + "/shared", "v1");
  EXPECT_EQ(slurp(b + "/shared"), "v1");
  writeWhole(b + "/shared", "version two");
  EXPECT_EQ(slurp(a + "/shared"), "version two");
  ASSERT_EQ(chmod((a + "/shared").c_str(), 0600), 0);
  struct stat st;
  ASSERT_EQ(stat((b + "/shared").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_EQ(rename((b + "/shared").c_str(), (b + "/moved").c_str()), 0);
  EXPECT_EQ(stat((a + "/shared").c_str(), &st), -1);
  EXPECT_EQ(slurp(a + "/moved"), "version two");
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0755), 0);
  EXPECT_EQ(stat((b + "/d").c_str(), &st), 0);
  ASSERT_EQ(unlink((a + "/moved").c_str()), 0);
  EXPECT_EQ(stat((b + "/moved").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);
  // A reader that has the file open sees a later write after the writer's write() returned.
  writeWhole(a + "/live", std::string(8192, 'a'));
  int rfd = open((b + "/live").c_str(), O_RDONLY | O_DIRECT);
  ASSERT_GE(rfd, 0);
  int wfd = open((a + "/live").c_str(), O_WRONLY);
  ASSERT_EQ(pwrite(wfd, "BBBB", 4, 4096), 4);
  void* mem = nullptr;
  ASSERT_EQ(posix_memalign(&mem, 4096, 8192), 0);
  ASSERT_EQ(pread(rfd, mem, 8192, 0), 8192);
  EXPECT_EQ(std::string(static_cast<char*>(mem) + 4096, 4), "BBBB");
  free(mem);
  close(wfd);
  close(rfd);
}

TEST(Recovery, WaitingProcessesCanBeInterruptedAndKilled) {
  TestCluster cluster;
  auto mnt = cluster.mount();
  writeWhole(mnt + "/f", "x");
  cluster.stopServer(0, SIGKILL);

  // A caught signal (no SA_RESTART) ends the wait with EINTR; SIGKILL ends it at once.
  auto statF = [&] {
    struct stat st;
    return stat((mnt + "/f").c_str(), &st);
  };
  EXPECT_TRUE(blockedCallEndsWith(SIGUSR1, statF));
  EXPECT_TRUE(blockedCallEndsWith(SIGKILL, statF));

  // The mount lives on.
  cluster.startServer(0);
  EXPECT_EQ(slurp(mnt + "/f"), "x");
}

}  // namespace
}  // namespace cairn::test
