// Controlled shutdown, upgrade and recovery (Simplified Interoperation), with real servers and
// real mounts: the active-server lock's callback makes every client write back and let go before
// a server stops; clients that cannot take part are evicted and told so; open files, unlinked
// open files and application locks survive; a new version refuses an unclean target unless
// forced; processes waiting on a stopped server can be interrupted or killed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

#include <atomic>
#include <filesystem>
#include <regex>
#include <sstream>
#include <string>
#include <thread>

#include "rpc/cairn.capnp.h"
#include "tests/integration/cluster.h"
#include "tests/integration/raw_session.h"

namespace cairn::test {
namespace {

TestCluster::Options quickLocks() {
  TestCluster::Options o;
  o.dataServers = 2;
  o.metaArgs = {"--lock-timeout", "2"};
  o.dataArgs = {"--lock-timeout", "2"};
  return o;
}

// Whether child `pid` exited with status 0 within `ms`. Bounded, so that a failure cannot hang
// the suite: one still waiting then is killed (a kill ends a wait in FUSE). `status` as reaped.
bool exitedCleanly(pid_t pid, int& status, int ms) {
  bool ended = waitFor([&] { return waitpid(pid, &status, WNOHANG) == pid; }, ms);
  if (!ended) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  return ended && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Point 6: before the metadata server stops, a client writes back everything it holds for it —
// queued writes and a shared mapping's dirty pages — and drops what it cached. The client is
// killed right after the shutdown, so whatever another mount reads afterwards must have been
// written back during it.
TEST(Shutdown, ClientsWriteBackEverythingBeforeTheServerStops) {
  TestCluster cluster(quickLocks());
  auto a = cluster.mount();
  auto b = cluster.mount();
  writeWhole(a + "/mapped", std::string(8192, 'm'));
  int fd = open((a + "/queued").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  auto data = pattern(3 << 20, 11);
  ASSERT_EQ(write(fd, data.data(), data.size()), ssize_t(data.size()));  // write-behind
  int mfd = open((a + "/mapped").c_str(), O_RDWR);
  ASSERT_GE(mfd, 0);
  auto* map = static_cast<char*>(mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0));
  ASSERT_NE(map, MAP_FAILED);
  memcpy(map + 4096, "DIRTY PAGE", 10);  // dirty in the kernel's page cache only

  RunResult ctl;
  EXPECT_EQ(cluster.shutdownServer(0, &ctl), 0);
  EXPECT_TRUE(contains(ctl.out, "shut down cleanly")) << ctl.out;
  auto log = readWhole(cluster.log(0));
  EXPECT_TRUE(contains(log, "every client ready")) << log;
  EXPECT_TRUE(contains(log, "marked clean")) << log;
  EXPECT_FALSE(contains(log, "evicting")) << log;
  cluster.killMount(0);  // nothing more can come from client A
  munmap(map, 8192);
  close(mfd);
  close(fd);

  ASSERT_TRUE(cluster.startServer(0));
  EXPECT_TRUE(contains(cluster.status(0), "previous shutdown was clean"));
  EXPECT_TRUE(readWhole(b + "/queued") == data);
  EXPECT_EQ(readWhole(b + "/mapped").substr(4096, 10), "DIRTY PAGE");
}

// Point 5: open files stay open across a controlled restart of every server — including one
// unlinked while open — and the same descriptors go on working; no completed write is lost.
TEST(Shutdown, OpenFilesStayOpenAcrossControlledRestarts) {
  TestCluster::Options options = quickLocks();
  options.metaArgs.push_back("--recovery-window");
  options.metaArgs.push_back("1");
  TestCluster cluster(options);
  auto mnt = cluster.mount();
  int fd = open((mnt + "/kept").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  writeWhole(mnt + "/ghost", pattern(1 << 20, 5));
  int ghost = open((mnt + "/ghost").c_str(), O_RDWR);
  ASSERT_GE(ghost, 0);
  ASSERT_EQ(unlink((mnt + "/ghost").c_str()), 0);
  std::string expect;
  for (int round = 0; round < 3; ++round) {
    std::string piece = "round " + std::to_string(round) + "\n";
    ASSERT_EQ(write(fd, piece.data(), piece.size()), ssize_t(piece.size()));
    expect += piece;
    // Every server in turn, through `cairnctl shutdown` (the data servers) and SIGTERM (meta).
    for (int s = cluster.serverCount() - 1; s >= 0; --s) {
      if (s == 0) {
        EXPECT_EQ(cluster.stopServer(0, SIGTERM), 0);
      } else {
        EXPECT_EQ(cluster.shutdownServer(s), 0);
      }
      ASSERT_TRUE(cluster.startServer(s));
    }
  }
  usleep(1500 * 1000);  // past the recovery window: the replayed open keeps the orphan
  std::string back(expect.size(), '\0');
  ASSERT_EQ(pread(fd, back.data(), back.size(), 0), ssize_t(back.size()));
  EXPECT_EQ(back, expect);
  std::string buf(1 << 20, '\0');
  ASSERT_EQ(pread(ghost, buf.data(), buf.size(), 0), ssize_t(buf.size()));
  EXPECT_TRUE(buf == pattern(1 << 20, 5));
  ASSERT_EQ(pwrite(ghost, "still here", 10, 0), 10);
  EXPECT_EQ(jsonNumber(cluster.status(0), "orphans"), 1u);
  EXPECT_EQ(close(ghost), 0);
  EXPECT_TRUE(waitFor([&] { return jsonNumber(cluster.status(0), "orphans") == 0; }, 5000));
  EXPECT_EQ(close(fd), 0);
  EXPECT_EQ(readWhole(mnt + "/kept"), expect);
  EXPECT_FALSE(contains(cluster.mountLog(0), "evicted"));
}

// Application locks are taken again after the metadata server restarts (controlled or not):
// another client still cannot take a conflicting one, and can once they are released.
TEST(Shutdown, ApplicationLocksSurviveRestarts) {
  TestCluster cluster(quickLocks());
  auto a = cluster.mount();
  auto b = cluster.mount();
  writeWhole(a + "/locked", "x");
  int fd = open((a + "/locked").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 100;
  ASSERT_EQ(fcntl(fd, F_SETLK, &fl), 0);
  int ffd = open((a + "/locked").c_str(), O_RDONLY);
  ASSERT_GE(ffd, 0);
  ASSERT_EQ(flock(ffd, LOCK_EX | LOCK_NB), 0);

  auto tryOther = [&](short type) {
    // In a child: record locks belong to the process.
    pid_t child = fork();
    if (child == 0) {
      int other = open((b + "/locked").c_str(), O_RDWR);
      struct flock want {};
      want.l_type = type;
      want.l_whence = SEEK_SET;
      want.l_start = 50;
      want.l_len = 10;
      int rc = fcntl(other, F_SETLK, &want);
      int frc = flock(other, LOCK_EX | LOCK_NB);
      _exit((rc == 0 ? 1 : 0) | (frc == 0 ? 2 : 0));
    }
    int status = 0;
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  EXPECT_EQ(tryOther(F_WRLCK), 0);  // both refused
  EXPECT_EQ(cluster.stopServer(0, SIGTERM), 0);
  ASSERT_TRUE(cluster.startServer(0));
  EXPECT_EQ(tryOther(F_WRLCK), 0) << "a lock was lost in a controlled restart";
  cluster.stopServer(0, SIGKILL);
  ASSERT_TRUE(cluster.startServer(0));
  EXPECT_EQ(tryOther(F_RDLCK), 0) << "a lock was lost in a crash restart";
  EXPECT_TRUE(contains(cluster.mountLog(0), "application locks taken again"));
  close(ffd);  // the flock goes with its last descriptor
  fl.l_type = F_UNLCK;
  ASSERT_EQ(fcntl(fd, F_SETLK, &fl), 0);
  EXPECT_EQ(tryOther(F_WRLCK), 3);  // both granted now
  close(fd);
}

// A client session that never answers a blocking callback.
class Deaf final : public rpc::LockCallback::Server {
  kj::Promise<void> blocking(BlockingContext) override { return kj::READY_NOW; }
};
RawSession deafClient(kj::AsyncIoContext& io, const std::string& address, kj::byte uuidByte) {
  return connectRaw(io, address, uuidByte, kj::heap<Deaf>());
}

// A client that ignores the callback is evicted after the lock timeout and the shutdown
// completes; while it is under way, a newcomer is told "shutting down, retry" (OVERLOADED),
// which a mount retries and never passes to an application.
TEST(Shutdown, AClientThatIgnoresTheCallbackIsEvictedAndNewcomersWait) {
  TestCluster cluster(quickLocks());
  auto mnt = cluster.mount();
  writeWhole(mnt + "/f", "before");
  auto io = kj::setupAsyncIo();
  auto deaf = deafClient(io, cluster.metaAddress(), 7);
  EXPECT_NE(deaf.serverLock, 0u);

  pid_t ctl = fork();
  if (ctl == 0) {
    execl(ctlBin().c_str(), "cairnctl", "--server", cluster.metaAddress().c_str(), "shutdown",
          nullptr);
    _exit(127);
  }
  ASSERT_TRUE(waitFor([&] { return contains(cluster.status(0), "\"state\":\"draining\""); }, 5000));
  try {
    auto late = deafClient(io, cluster.metaAddress(), 8);
    ADD_FAILURE() << "a client was let in during a shutdown";
  } catch (kj::Exception& e) {
    EXPECT_EQ(e.getType(), kj::Exception::Type::OVERLOADED);
    EXPECT_TRUE(contains(e.getDescription().cStr(), "shutting down")) << e.getDescription().cStr();
  }
  int status = 0;
  ASSERT_TRUE(waitFor([&] { return waitpid(ctl, &status, WNOHANG) == ctl; }, 15000));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(cluster.stopServer(0, SIGTERM), 0);  // already gone: its exit status
  auto log = readWhole(cluster.log(0));
  EXPECT_TRUE(contains(log, "evicting client 07070707")) << log;

  ASSERT_TRUE(cluster.startServer(0));
  auto back = deafClient(io, cluster.metaAddress(), 7);
  EXPECT_TRUE(back.evicted);
  // The well-behaved mount was not evicted and carries on.
  EXPECT_EQ(readWhole(mnt + "/f"), "before");
  writeWhole(mnt + "/g", "after");
  EXPECT_EQ(readWhole(mnt + "/g"), "after");
  EXPECT_FALSE(contains(cluster.mountLog(0), "evicted"));
}

// A server that dies in the middle of a controlled shutdown (here: killed while a client holds
// it up) did not shut down cleanly, and `cairnctl shutdown` must not say it did: a script that
// upgrades servers one by one relies on that answer.
TEST(Shutdown, AShutdownCutShortByACrashIsReportedAsAFailure) {
  TestCluster::Options options;
  options.metaArgs = {"--lock-timeout", "60"};  // the deaf client holds the shutdown up
  TestCluster cluster(options);
  auto io = kj::setupAsyncIo();
  auto deaf = deafClient(io, cluster.metaAddress(), 9);
  EXPECT_NE(deaf.serverLock, 0u);
  int err[2];
  ASSERT_EQ(pipe(err), 0);
  pid_t ctl = fork();
  if (ctl == 0) {
    dup2(err[1], 2);
    execl(ctlBin().c_str(), "cairnctl", "--server", cluster.metaAddress().c_str(), "shutdown",
          nullptr);
    _exit(127);
  }
  close(err[1]);
  ASSERT_TRUE(waitFor([&] { return contains(cluster.status(0), "\"state\":\"draining\""); }, 5000));
  cluster.signalServer(0, SIGKILL);
  int status = 0;
  ASSERT_TRUE(waitFor([&] { return waitpid(ctl, &status, WNOHANG) == ctl; }, 15000));
  std::string said(4096, '\0');
  ssize_t n = read(err[0], said.data(), said.size());
  said.resize(n > 0 ? size_t(n) : 0);
  close(err[0]);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  EXPECT_TRUE(contains(said, "stopped some other way")) << said;
}

// Interop: a peer of a release before the active-server lock (it does not announce the feature)
// is never sent its callback: it gets no PR, and a shutdown does not wait on it.
TEST(Shutdown, APeerWithoutTheFeatureGetsNoServerLock) {
  TestCluster cluster(quickLocks());
  auto io = kj::setupAsyncIo();
  auto old = connectRaw(io, cluster.metaAddress(), 9, kj::heap<Deaf>(),
                        features::BASE | features::CACHING_LOCKS);
  EXPECT_EQ(old.serverLock, 0u);
  RunResult ctl;
  EXPECT_EQ(cluster.shutdownServer(0, &ctl), 0);
  auto log = readWhole(cluster.log(0));
  EXPECT_FALSE(contains(log, "evicting client 09090909")) << log;
  EXPECT_TRUE(contains(log, "marked clean")) << log;
}

// A file held open by a child process with "new" written to it and queued behind on mount
// `mnt` (the child is not this process: it forks helpers such as ss and cairnctl while a mount
// is stopped, and a forked copy of a descriptor there would wait on that mount to close).
// `fsync()` has the child call fsync, which must fail with EIO; `finish()` has it read, which
// must fail with EIO, and is true if everything did.
struct DirtyHolder {
  explicit DirtyHolder(const std::string& file) { start(file); }
  void start(const std::string& file) {
    ASSERT_EQ(pipe(to), 0);
    ASSERT_EQ(pipe(from), 0);
    pid = fork();
    if (pid == 0) {
      int fd = open(file.c_str(), O_RDWR);
      char go = pwrite(fd, "new", 3, 0) == 3 ? 'w' : 'x';
      if (write(from[1], &go, 1) != 1 || read(to[0], &go, 1) != 1) _exit(2);
      if (go == 's' && (::fsync(fd) != -1 || errno != EIO)) _exit(3);
      if (go == 's' && read(to[0], &go, 1) != 1) _exit(2);
      char c;
      _exit(pread(fd, &c, 1, 0) == -1 && errno == EIO ? 0 : 1);
    }
    char ready = 0;
    ASSERT_EQ(read(from[0], &ready, 1), 1);
    ASSERT_EQ(ready, 'w') << "the holder could not write";
  }
  ~DirtyHolder() {
    if (pid > 0 && waitpid(pid, nullptr, WNOHANG) == 0) kill(pid, SIGKILL);
    for (int fd : {to[0], to[1], from[0], from[1]}) {
      if (fd >= 0) close(fd);
    }
  }
  void fsync() { ASSERT_EQ(write(to[1], "s", 1), 1); }
  bool finish() {
    if (write(to[1], "g", 1) != 1) return false;
    int status = 0;
    if (!waitFor([&] { return waitpid(pid, &status, WNOHANG) == pid; }, 10000)) return false;
    pid = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ADD_FAILURE() << "the open file did not fail with EIO (holder's status "
                    << WEXITSTATUS(status) << ")";
      return false;
    }
    return true;
  }
  int to[2] = {-1, -1}, from[2] = {-1, -1};
  pid_t pid = -1;
};

// Stops mount 0 and cuts its connections to `server`, once that server has seen it go.
void stopAndCutOff(TestCluster& cluster, int server) {
  cluster.signalMount(0, SIGSTOP);
  cutConnections(cluster.mountPid(0), cluster.address(server));
  ASSERT_TRUE(waitFor(
      [&] { return contains(readWhole(cluster.log(server)), "disconnected; keeping its locks"); },
      5000));
}

// Point 7: a client whose connection was cut (and that stays away) while the server shut
// down missed the callback with dirty data in hand: it is evicted, and told so when it comes
// back. Its open files then fail with EIO; the mount itself works on. What it had written
// under the locks it lost never lands, whether it was still queued when the client learned of
// the eviction or already on its way to the server that evicted it (`fsyncWhileAway`: an fsync
// that reached the client while it was stopped sends it before the link has reconnected).
void cutOffDuringShutdown(int server, const std::string& told, bool fsyncWhileAway = false) {
  TestCluster cluster(quickLocks());
  auto a = cluster.mount();
  auto b = cluster.mount();
  writeWhole(a + "/f", "old");
  DirtyHolder holder(a + "/f");
  stopAndCutOff(cluster, server);
  // Waits in the kernel for the stopped client, which takes the write out of its queue first
  // thing when it runs again.
  if (fsyncWhileAway) holder.fsync();
  EXPECT_EQ(cluster.shutdownServer(server), 0);
  EXPECT_TRUE(
      contains(readWhole(cluster.log(server)), "disconnected during a controlled shutdown"));
  ASSERT_TRUE(cluster.startServer(server));
  cluster.signalMount(0, SIGCONT);

  ASSERT_TRUE(waitFor([&] { return contains(cluster.mountLog(0), told); }, 10000))
      << cluster.mountLog(0);
  EXPECT_TRUE(holder.finish());
  writeWhole(a + "/g", "mount works");
  EXPECT_EQ(readWhole(a + "/g"), "mount works");
  EXPECT_EQ(readWhole(b + "/g"), "mount works");
  // The holder's close flushed the file (after its descriptor failed): nothing was sent.
  EXPECT_EQ(readWhole(b + "/f"), "old") << "a write made under a lock the eviction took landed";
}

TEST(Shutdown, AClientCutOffDuringTheShutdownIsEvictedOnReturn) {
  cutOffDuringShutdown(0, "evicted by the metadata server");
}

// The same for a data server: the files with stripes there fail, the mount carries on.
TEST(Shutdown, AClientCutOffFromADataServerDuringItsShutdownIsEvictedOnReturn) {
  cutOffDuringShutdown(1, "evicted by data target 0");
}

TEST(Shutdown, WritesOnTheirWayToADataServerThatEvictedTheClientAreNotSent) {
  cutOffDuringShutdown(1, "evicted by data target 0", true);
}

// An eviction the client's connection survives (an administrator's here; the lock manager's
// timeout ends the same way) is told to the client at once: it drops what it wrote under the
// locks it lost instead of sending it on until its next request to the metadata server.
TEST(Shutdown, AClientEvictedOnALiveConnectionIsToldAtOnce) {
  TestCluster cluster(quickLocks());
  auto a = cluster.mount();
  writeWhole(a + "/f", "old");
  DirtyHolder holder(a + "/f");
  auto status = cluster.status(0);
  auto at = status.find("\"uuid\":\"");
  ASSERT_NE(at, std::string::npos) << status;
  auto evicted = run({ctlBin(), "--server", cluster.metaAddress(), "--timeout", "5", "evict",
                      status.substr(at + 8, 32)});
  ASSERT_EQ(evicted.status, 0) << evicted.out << evicted.err;
  ASSERT_TRUE(waitFor(
      [&] { return contains(cluster.mountLog(0), "evicted by the metadata server"); }, 10000))
      << cluster.mountLog(0);
  EXPECT_TRUE(holder.finish());
  auto b = cluster.mount();
  EXPECT_EQ(readWhole(b + "/f"), "old") << "a write made under a lock the eviction took landed";
}

// The data servers do not see the DATA locks: a batch leaves for them only while the metadata
// server that holds the lock is known to be there. One sent while the client cannot reach it
// waits for its return, and fails once the client learns that the server evicted it meanwhile.
TEST(Shutdown, WritesWaitForTheMetadataServerAndFailIfItEvictedTheClient) {
  TestCluster cluster(quickLocks());
  auto a = cluster.mount();
  auto b = cluster.mount();
  writeWhole(a + "/f", "old");
  DirtyHolder holder(a + "/f");
  stopAndCutOff(cluster, 0);
  EXPECT_EQ(cluster.shutdownServer(0), 0);
  EXPECT_TRUE(contains(readWhole(cluster.log(0)), "disconnected during a controlled shutdown"));
  cluster.signalMount(0, SIGCONT);
  ASSERT_TRUE(waitFor([&] { return contains(cluster.mountLog(0), "link meta: lost"); }, 5000))
      << cluster.mountLog(0);
  // The data servers are there; the metadata server is not.
  holder.fsync();
  // Time for a batch that did not wait to reach a data server (and land there).
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ASSERT_TRUE(cluster.startServer(0));
  ASSERT_TRUE(waitFor(
      [&] { return contains(cluster.mountLog(0), "evicted by the metadata server"); }, 10000))
      << cluster.mountLog(0);
  EXPECT_TRUE(holder.finish());
  EXPECT_EQ(readWhole(b + "/f"), "old") << "a write made under a lock the eviction took landed";
}

// A data server the metadata server fenced a client off (for not giving a lock back) tells the
// client at its next connect there, which can come after the client has learned of its eviction
// from the metadata server and gone on in a new session: a client whose host was cut off, back
// on the network, reaches whichever server answers first. What it wrote since, under the new
// session's locks, must not fail for an eviction of the old one (tools_vanish saw a new file
// fail with EIO that way). The data servers are stopped while the client learns of its
// eviction, so that their word comes last.
TEST(Shutdown, AFenceOfASessionTheClientHasLeftFailsNothingWrittenSince) {
  TestCluster cluster(quickLocks());
  auto a = cluster.mount();
  auto b = cluster.mount();
  writeWhole(a + "/f", "old");
  DirtyHolder holder(a + "/f");
  cluster.signalMount(0, SIGSTOP);
  // Waits for the lock a holds: after the lock timeout, a is fenced off both data targets, then
  // evicted.
  EXPECT_EQ(readWhole(b + "/f"), "old");
  auto metaLog = readWhole(cluster.log(0));
  ASSERT_TRUE(contains(metaLog, "fenced off data target 0")) << metaLog;
  ASSERT_TRUE(contains(metaLog, "fenced off data target 1")) << metaLog;
  cluster.signalServer(1, SIGSTOP);
  cluster.signalServer(2, SIGSTOP);
  bool dataStopped = true;
  KJ_DEFER(if (dataStopped) {
    cluster.signalServer(1, SIGCONT);
    cluster.signalServer(2, SIGCONT);
  });
  cluster.signalMount(0, SIGCONT);
  ASSERT_TRUE(waitFor(
      [&] { return contains(cluster.mountLog(0), "evicted by the metadata server"); }, 10000))
      << cluster.mountLog(0);
  // What it had queued for them can only fail: its recovery does not wait on them for it.
  ASSERT_TRUE(waitFor(
      [&] {
        auto log = cluster.mountLog(0);
        auto told = log.find("evicted by the metadata server");
        return log.find("link meta: active", told) != std::string::npos;
      },
      3000))
      << cluster.mountLog(0);
  EXPECT_FALSE(contains(cluster.mountLog(0), "still had writes queued")) << cluster.mountLog(0);

  // A new file, written in the new session and still open: its data is queued for the stopped
  // data servers. Written by a child process, as its fsync waits for them.
  int written[2], go[2];
  ASSERT_EQ(pipe(written), 0);
  ASSERT_EQ(pipe(go), 0);
  pid_t writer = fork();
  ASSERT_GE(writer, 0);
  if (writer == 0) {
    char byte = 0, back[11];
    int fd = open((a + "/g").c_str(), O_CREAT | O_RDWR, 0644);
    if (fd < 0 || write(fd, "new session", 11) != 11) _exit(10);
    if (write(written[1], &byte, 1) != 1 || read(go[0], &byte, 1) != 1) _exit(11);
    if (fsync(fd) != 0) _exit(20 + errno % 100);
    if (pread(fd, back, sizeof back, 0) != 11 || memcmp(back, "new session", 11) != 0) _exit(12);
    _exit(close(fd) == 0 ? 0 : 13);
  }
  close(written[1]);
  close(go[0]);
  KJ_DEFER({
    close(written[0]);
    close(go[1]);
  });
  char byte = 0;
  ASSERT_EQ(read(written[0], &byte, 1), 1);
  cluster.signalServer(1, SIGCONT);
  cluster.signalServer(2, SIGCONT);
  dataStopped = false;
  ASSERT_TRUE(waitFor(
      [&] {
        auto log = cluster.mountLog(0);
        return contains(log, "evicted by data target 0") &&
               contains(log, "evicted by data target 1");
      },
      15000))
      << cluster.mountLog(0);
  ASSERT_EQ(write(go[1], &byte, 1), 1);
  int status = 0;
  EXPECT_TRUE(exitedCleanly(writer, status, 15000))
      << "writer: " << status << " (20 + errno: the fsync failed)";
  EXPECT_EQ(readWhole(b + "/g"), "new session") << cluster.mountLog(0);
  EXPECT_TRUE(contains(cluster.mountLog(0), "which we have left")) << cluster.mountLog(0);
  // What was queued in the old session is still lost.
  EXPECT_TRUE(holder.finish());
  EXPECT_EQ(readWhole(b + "/f"), "old") << "a write made under a lock the eviction took landed";
}

// Point 4: an unclean stop followed by another version is refused with a message that says
// what --force does; with --force the old clients are evicted when they come back, cleanly:
// their open files fail with EIO, the mount works on.
TEST(Shutdown, NewVersionAfterUncleanStopIsRefusedUnlessForced) {
  TestCluster cluster(quickLocks());
  auto mnt = cluster.mount();
  writeWhole(mnt + "/f", "data");
  int fd = open((mnt + "/f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  cluster.stopServer(0, SIGKILL);
  EXPECT_FALSE(cluster.startServer(0, {"--version-override", "9.9.9"}));
  auto refused = readWhole(cluster.log(0));
  EXPECT_TRUE(contains(refused, "did not shut down cleanly")) << refused;
  EXPECT_TRUE(contains(refused, "--force")) << refused;
  ASSERT_TRUE(cluster.startServer(0, {"--version-override", "9.9.9", "--force"}));
  ASSERT_TRUE(
      waitFor([&] { return contains(cluster.mountLog(0), "evicted by the metadata"); }, 10000))
      << cluster.mountLog(0);
  char c;
  EXPECT_EQ(pread(fd, &c, 1, 0), -1);
  EXPECT_EQ(errno, EIO);
  close(fd);
  EXPECT_EQ(readWhole(mnt + "/f"), "data");
  writeWhole(mnt + "/g", "new");
  EXPECT_EQ(readWhole(mnt + "/g"), "new");
  EXPECT_TRUE(contains(cluster.status(0), "\"version\":\"9.9.9\""));
}

// The same for a data server that lost updates it had answered: its disk went back to an
// earlier state (restored from an older copy; a host crash loses unsynced ones the same way),
// and it came back as another version with --force, which refuses replays. The client sees its
// disk ends before updates it had answered: the files with stripes there fail with EIO. The
// mount works on.
TEST(Shutdown, ADataServerThatLostAnsweredUpdatesFailsTheFilesWithStripesThere) {
  TestCluster cluster(quickLocks());
  auto mnt = cluster.mount();
  writeWhole(mnt + "/f", "before");
  {
    int sync = open((mnt + "/f").c_str(), O_RDONLY);
    ASSERT_EQ(fsync(sync), 0);  // on the data servers' disks
    close(sync);
  }
  auto earlier = cluster.dir() + "/earlier";
  ASSERT_EQ(mkdir(earlier.c_str(), 0700), 0);
  auto copy = run({"/usr/bin/mdb_copy", cluster.targetDir(1), earlier});
  ASSERT_EQ(copy.status, 0) << copy.err;

  int fd = open((mnt + "/f").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "after!", 6, 0), 6);
  // Synced, so the link keeps no copy for replay (the syncer might have done so anyway within
  // its 100 ms): only comparing the new instance's disk with what it had answered tells the
  // update is gone.
  ASSERT_EQ(fsync(fd), 0);
  // Direct reads, past the kernel's pages.
  int direct = open((mnt + "/f").c_str(), O_RDONLY | O_DIRECT);
  ASSERT_GE(direct, 0);
  alignas(4096) static char buf[4096];
  ASSERT_EQ(pread(direct, buf, sizeof buf, 0), 6);
  ASSERT_EQ(std::string(buf, 6), "after!");
  // A read on its way when the server goes: it is sent again to the new one, and fails
  // rather than return "before".
  cluster.signalServer(1, SIGSTOP);
  std::atomic<ssize_t> inFlight{0};
  std::atomic<int> inFlightErrno{0};
  std::thread reader([&] {
    alignas(4096) static char mine[4096];
    inFlight = pread(direct, mine, sizeof mine, 0);
    inFlightErrno = errno;
  });
  usleep(100 * 1000);
  cluster.stopServer(1, SIGKILL);
  // The whole directory goes back: LMDB's file and its write-ahead log.
  ASSERT_EQ(rename((earlier + "/data.mdb").c_str(), (cluster.targetDir(1) + "/data.mdb").c_str()),
            0);
  for (auto& e : std::filesystem::directory_iterator(cluster.targetDir(1))) {
    if (e.path().filename().string().rfind("wal.", 0) == 0) std::filesystem::remove(e.path());
  }
  ASSERT_TRUE(cluster.startServer(1, {"--version-override", "9.9.9", "--force"}));
  reader.join();
  EXPECT_EQ(inFlight, -1);
  EXPECT_EQ(inFlightErrno, EIO);
  EXPECT_TRUE(
      contains(cluster.mountLog(0), "updates the server had answered are lost with the eviction"))
      << cluster.mountLog(0);
  EXPECT_TRUE(contains(cluster.mountLog(0), "evicted by data target 0: 2 open files"))
      << cluster.mountLog(0);
  EXPECT_EQ(pread(direct, buf, sizeof buf, 0), -1);
  EXPECT_EQ(pwrite(fd, "x", 1, 0), -1);
  EXPECT_EQ(errno, EIO);
  close(direct);
  close(fd);
  writeWhole(mnt + "/g", "mount works");
  EXPECT_EQ(readWhole(mnt + "/g"), "mount works");
}

// Point 9: a process blocked on a server that has shut down (the gate closed before its
// request was formatted) returns EINTR on a caught signal and dies at once on SIGKILL; the
// mount lives on.
TEST(Shutdown, ProcessesBlockedOnAStoppedServerCanBeInterruptedAndKilled) {
  TestCluster cluster(quickLocks());
  auto mnt = cluster.mount();
  writeWhole(mnt + "/f", "x");
  EXPECT_EQ(cluster.shutdownServer(0), 0);

  EXPECT_TRUE(blockedCallEndsWith(SIGINT, [&] { return mkdir((mnt + "/d").c_str(), 0755); }));
  EXPECT_TRUE(blockedCallEndsWith(SIGKILL, [&] {
    struct stat st;
    return stat((mnt + "/f").c_str(), &st);
  }));

  ASSERT_TRUE(cluster.startServer(0));
  EXPECT_EQ(readWhole(mnt + "/f"), "x");
  struct stat st;
  EXPECT_EQ(stat((mnt + "/d").c_str(), &st), -1);  // the interrupted mkdir was never sent
}

// A client whose write-back cannot finish (here: part of it is for another data server, which is
// stopped) lets go of a draining server within that server's lock timeout, as its callback
// gives it, instead of being evicted: what it still had to write goes later, and the
// application sees no error. (Letting go after a fixed 5 s, the mount was evicted by a server
// with a 3 s timeout in a loaded CI run of tools/faults, and a file got EIO.)
TEST(Shutdown, ASlowWriteBackLetsGoWithinTheServersLockTimeout) {
  TestCluster cluster(quickLocks());  // lock timeout 2 s
  auto a = cluster.mount();
  auto data = pattern(8 << 20, 43);
  // The file is written and synced by a child process: a descriptor of it in this one would be
  // closed (and flushed, which waits for the stopped server) in every process forked from here.
  int written[2], go[2];
  ASSERT_EQ(pipe(written), 0);
  ASSERT_EQ(pipe(go), 0);
  pid_t writer = fork();
  ASSERT_GE(writer, 0);
  if (writer == 0) {
    char byte = 0;
    int fd = open((a + "/f").c_str(), O_CREAT | O_RDWR, 0644);
    // Stripes on both data targets, in the kernel's page cache for now.
    if (fd < 0 || write(fd, data.data(), data.size()) != ssize_t(data.size())) _exit(10);
    if (write(written[1], &byte, 1) != 1 || read(go[0], &byte, 1) != 1) _exit(11);
    // The pages go to the mount, whose writes to data target 0 then wait for it.
    if (fsync(fd) != 0) _exit(20 + errno % 100);
    _exit(close(fd) == 0 ? 0 : 12);
  }
  close(written[1]);
  close(go[0]);
  char byte = 0;
  ASSERT_EQ(read(written[0], &byte, 1), 1);
  cluster.signalServer(1, SIGSTOP);
  ASSERT_EQ(write(go[1], &byte, 1), 1);
  usleep(300 * 1000);
  int status = 0;
  EXPECT_EQ(waitpid(writer, &status, WNOHANG), 0) << "the fsync did not wait for the server";

  RunResult ctl;
  EXPECT_EQ(cluster.shutdownServer(2, &ctl), 0) << ctl.out << ctl.err;
  auto log = readWhole(cluster.log(2));
  EXPECT_FALSE(contains(log, "evicting")) << log;
  // The fsync's writes may still be on their way into the mount's queue (behind a look at the
  // stopped server's room) when the drain starts: then there is nothing slow to write back,
  // which a loaded CI run once showed ("0 files written back"). Only the eviction is checked.
  bool slow = !contains(cluster.mountLog(0), "data target 1 shutting down: 0 files");
  if (slow) {
    EXPECT_TRUE(contains(cluster.mountLog(0), "letting go anyway")) << cluster.mountLog(0);
  }
  EXPECT_TRUE(cluster.startServer(2));
  cluster.signalServer(1, SIGCONT);
  EXPECT_TRUE(exitedCleanly(writer, status, 30000))
      << "writer: " << status << " (20 + errno: the fsync failed)";
  close(written[0]);
  close(go[1]);

  auto b = cluster.mount();
  EXPECT_TRUE(readWhole(b + "/f") == data);
  EXPECT_FALSE(contains(cluster.mountLog(0), "evicted")) << cluster.mountLog(0);
}
}  // namespace
}  // namespace cairn::test
