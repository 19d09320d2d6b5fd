// Coherence of the client caches across clients: two mounts of one filesystem, each caching
// attributes, names and pages under the metadata server's locks. Whatever one client completed,
// the other sees at once, including what its kernel had cached; and caching really happens
// (repeated stat and re-reads cost no requests).
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/cluster.h"

namespace cairn::test {
namespace {

void writeAll(const std::string& path, const std::string& data, int flags = O_TRUNC) {
  int fd = open(path.c_str(), O_CREAT | O_WRONLY | flags, 0644);
  ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
  ASSERT_EQ(write(fd, data.data(), data.size()), ssize_t(data.size()));
  ASSERT_EQ(close(fd), 0);
}

std::string preadAll(int fd, size_t max = 1 << 20) {
  std::string out(max, '\0');
  ssize_t n = pread(fd, out.data(), max, 0);
  if (n < 0) return "<" + std::string(strerror(errno)) + ">";
  out.resize(size_t(n));
  return out;
}

struct stat statOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path << ": " << strerror(errno);
  return st;
}

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// The data requests a mount sent so far (reads, on every data target).
uint64_t dataReads(const std::string& mnt) {
  return mountGauge(mnt, "cairn_client_requests_total{link=\"data0\",kind=\"data.read\"}", false) +
         mountGauge(mnt, "cairn_client_requests_total{link=\"data1\",kind=\"data.read\"}", false);
}

class Coherence : public TwoClients {
protected:
  static void SetUpTestSuite() {
    TestCluster::Options options;
    options.metaArgs = {"--lock-timeout", "2"};
    startClients(options);
  }
  void SetUp() override {
    TwoClients::SetUp();
    ASSERT_EQ(mkdir(a(""), 0755), 0);
  }
  void TearDown() override {
    if (HasFailure()) cluster_->dumpLogs();
  }
  // A path in this test's directory, through mount A or B.
  std::string pa(const std::string& rel) { return *a_ + name_ + "/" + rel; }
  std::string pb(const std::string& rel) { return *b_ + name_ + "/" + rel; }
  const char* a(const std::string& rel) {
    held_ = rel.empty() ? *a_ + name_ : pa(rel);
    return held_.c_str();
  }
  uint64_t rpcs(const std::string& kind) { return jsonNumber(cluster_->status(0), kind); }
  // What the mounts send in the background (access times, releases of closed files, the tail of
  // what they answered ahead) has reached every server: no server's request count moved in
  // 200 ms. (A fixed pause was not enough on a loaded machine.) Status calls are not counted.
  void quiet() {
    auto total = [&]() {
      uint64_t n = 0;
      for (int s = 0; s < 3; ++s) n += jsonNumber(cluster_->status(s), "rpcCount");
      return n;
    };
    uint64_t last = total();
    for (int i = 0; i < 50; ++i) {
      usleep(200 * 1000);
      uint64_t now = total();
      if (now == last) return;
      last = now;
    }
    ADD_FAILURE() << "the servers never went quiet";
  }

  std::string held_;
};

TEST_F(Coherence, RepeatedStatAndRereadsCostNoRequests) {
  writeAll(pa("f"), std::string(100000, 'x'));
  statOf(pb("f"));
  int fd = open(pb("f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(preadAll(fd).size(), 100000u);
  quiet();  // the access-time update of that first read is sent in the background
  std::string statusBefore = cluster_->status(0);
  uint64_t metaBefore = jsonNumber(statusBefore, "rpcCount");
  uint64_t dataBefore =
      jsonNumber(cluster_->status(1), "rpcCount") + jsonNumber(cluster_->status(2), "rpcCount");
  for (int i = 0; i < 50; ++i) {
    statOf(pb("f"));
    ASSERT_EQ(preadAll(fd).size(), 100000u);
  }
  // The status calls themselves are not requests of a client.
  std::string statusAfter = cluster_->status(0);
  EXPECT_EQ(jsonNumber(statusAfter, "rpcCount"), metaBefore) << statusBefore << "\n" << statusAfter;
  EXPECT_EQ(
      jsonNumber(cluster_->status(1), "rpcCount") + jsonNumber(cluster_->status(2), "rpcCount"),
      dataBefore);
  close(fd);
}

TEST_F(Coherence, AWriteIsSeenByTheOtherClientsNextRead) {
  writeAll(pa("f"), "old contents");
  int fb = open(pb("f").c_str(), O_RDONLY);
  ASSERT_GE(fb, 0);
  ASSERT_EQ(preadAll(fb), "old contents");  // now in B's page cache
  for (int round = 0; round < 20; ++round) {
    std::string data = "round " + std::to_string(round) + std::string(size_t(round * 1000), 'r');
    int fa = open(pa("f").c_str(), O_WRONLY);
    ASSERT_GE(fa, 0);
    ASSERT_EQ(pwrite(fa, data.data(), data.size(), 0), ssize_t(data.size()));
    // write() returned: B sees it, through its open descriptor and through a new one.
    std::string seen = preadAll(fb);
    ASSERT_EQ(seen.substr(0, data.size()), data) << "round " << round;
    ASSERT_EQ(readWhole(pb("f")).substr(0, data.size()), data);
    close(fa);
  }
  close(fb);
}

TEST_F(Coherence, WhatWasReadAheadFollowsWritesElsewhere) {
  constexpr size_t MiB = 1 << 20;
  writeAll(pa("big"), std::string(8 * MiB, 'a'));
  int fb = open(pb("big").c_str(), O_RDONLY);
  ASSERT_GE(fb, 0);
  std::string buf(MiB, '\0');
  // Two sequential reads: B fetches the next megabytes ahead.
  ASSERT_EQ(read(fb, buf.data(), MiB), ssize_t(MiB));
  ASSERT_EQ(read(fb, buf.data(), MiB), ssize_t(MiB));
  int fa = open(pa("big").c_str(), O_WRONLY);
  ASSERT_GE(fa, 0);
  std::string b(MiB, 'b');
  ASSERT_EQ(pwrite(fa, b.data(), b.size(), 4 * MiB), ssize_t(MiB));
  close(fa);
  for (size_t at = 2 * MiB; at < 8 * MiB; at += MiB) {
    ASSERT_EQ(read(fb, buf.data(), MiB), ssize_t(MiB));
    char want = at == 4 * MiB ? 'b' : 'a';
    ASSERT_EQ(buf, std::string(MiB, want)) << "at " << at;
  }
  close(fb);
}

// Writes a client queued behind (not yet sent, the descriptor still open) are seen elsewhere:
// a stat calls the writer's attribute lock back, a read its data lock.
TEST_F(Coherence, WritesQueuedBehindAreSeenByStatAndRead) {
  int fa = open(pa("wb").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fa, 0);
  std::string first(300000, 'q');
  ASSERT_EQ(write(fa, first.data(), first.size()), ssize_t(first.size()));
  struct stat mine;
  ASSERT_EQ(fstat(fa, &mine), 0);
  EXPECT_EQ(mine.st_size, 300000);
  EXPECT_EQ(statOf(pb("wb")).st_size, 300000);
  ASSERT_EQ(write(fa, "tail", 4), 4);
  EXPECT_TRUE(readWhole(pb("wb")) == first + "tail");
  // A listing sees the size too.
  ASSERT_EQ(write(fa, "more", 4), 4);
  auto ls = run({"/bin/ls", "-l", pb("wb")});
  EXPECT_NE(ls.out.find(" 300008 "), std::string::npos) << ls.out;
  ASSERT_EQ(close(fa), 0);
  EXPECT_EQ(statOf(pb("wb")).st_size, 300008);
}

// Flush-behind and setattr-behind: close, chmod, chown and utimes of a file this client writes
// behind do not wait for the servers (the data and the changes go in the background), yet the
// other client sees all of it at its next access, in the order it was made.
TEST_F(Coherence, CloseAndAttributeChangesGoBehindAndAreSeenElsewhere) {
  // The first close waits (the client has not looked at the targets' room yet).
  writeAll(pa("warm"), "x");
  sleep(1);
  std::string data = pattern(3 << 20, 7);
  int fd = open(pa("behind").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, data.data(), data.size()), ssize_t(data.size()));
  timespec times[2] = {{UTIME_OMIT, 0}, {1234567890, 0}};
  // The data servers hang: the writes cannot land, and close does not wait for them.
  cluster_->signalServer(1, SIGSTOP);
  cluster_->signalServer(2, SIGSTOP);
  bool returned;
  {
    Background closing([&] {
      EXPECT_EQ(futimens(fd, times), 0);
      EXPECT_EQ(fchmod(fd, 0640), 0);
      EXPECT_EQ(fchown(fd, 123, 456), 0);
      struct stat mine;
      EXPECT_EQ(fstat(fd, &mine), 0);
      EXPECT_EQ(mine.st_mode & 07777, 0640u);
      EXPECT_EQ(mine.st_uid, 123u);
      EXPECT_EQ(mine.st_mtim.tv_sec, 1234567890);
      EXPECT_EQ(mine.st_size, ssize_t(data.size()));
      EXPECT_EQ(close(fd), 0);
    });
    returned = closing.doneWithin(3000);
    cluster_->signalServer(1, SIGCONT);
    cluster_->signalServer(2, SIGCONT);
  }
  EXPECT_TRUE(returned) << "close or a setattr waited for the data servers";
  // The other client's access calls the locks back: everything lands first, in order (the
  // times set after the writes stay).
  EXPECT_TRUE(readWhole(pb("behind")) == data);
  auto st = statOf(pb("behind"));
  EXPECT_EQ(st.st_size, ssize_t(data.size()));
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(st.st_uid, 123u);
  EXPECT_EQ(st.st_gid, 456u);
  EXPECT_EQ(st.st_mtim.tv_sec, 1234567890);
  // A write after a queued change comes after it: the time it sets is the write's.
  fd = open(pa("behind").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "z", 1, 0), 1);
  ASSERT_EQ(fchmod(fd, 0600), 0);
  ASSERT_EQ(futimens(fd, times), 0);
  ASSERT_EQ(pwrite(fd, "y", 1, 1), 1);
  ASSERT_EQ(close(fd), 0);
  st = statOf(pb("behind"));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_GT(st.st_mtim.tv_sec, 1234567890);
  EXPECT_EQ(readWhole(pb("behind")).substr(0, 3), "zy" + data.substr(2, 1));
}

// What tar does to each file (write it, then restore its times, mode and owner) costs one
// metadata update after the create, not two: the batch's `wrote` (size, mtime) goes in the
// setattr of the changes queued after its writes, and nothing of either is lost.
TEST_F(Coherence, AFileWrittenThenChangedTakesOneUpdateForBoth) {
  const std::string wrote = "cairn_client_requests_total{link=\"meta\",kind=\"meta.wrote\"}";
  const std::string setattr = "cairn_client_requests_total{link=\"meta\",kind=\"meta.setattr\"}";
  writeAll(pa("warm"), "x");
  sleep(1);  // the first close waits for the targets' room; the rest go behind
  uint64_t wroteBefore = mountGauge(*a_, wrote, false);
  uint64_t setattrBefore = mountGauge(*a_, setattr, false);
  uint64_t batchedBefore = mountGauge(*a_, "cairn_client_batched_updates_total");
  constexpr int FILES = 20;
  timespec times[2] = {{UTIME_OMIT, 0}, {1234567890, 0}};
  for (int i = 0; i < FILES; ++i) {
    std::string data = pattern(10000 + i, i);
    int fd = open(pa("f" + std::to_string(i)).c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, data.data(), data.size()), ssize_t(data.size()));
    ASSERT_EQ(futimens(fd, times), 0);
    ASSERT_EQ(fchown(fd, 123, 456), 0);
    ASSERT_EQ(fchmod(fd, 0644), 0);
    ASSERT_EQ(close(fd), 0);
  }
  // The other client's looks call the locks back: everything lands first.
  for (int i = 0; i < FILES; ++i) {
    std::string name = "f" + std::to_string(i);
    EXPECT_TRUE(readWhole(pb(name)) == pattern(10000 + i, i)) << name;
    auto st = statOf(pb(name));
    EXPECT_EQ(st.st_size, 10000 + i) << name;
    EXPECT_EQ(st.st_mode & 07777, 0644u) << name;
    EXPECT_EQ(st.st_uid, 123u) << name;
    EXPECT_EQ(st.st_gid, 456u) << name;
    EXPECT_EQ(st.st_mtim.tv_sec, 1234567890) << name;  // set after the writes: it stays
  }
  // Each file's changes go in one setattr, or a few if the machine is slow enough that one
  // left before the next was made; never a `wrote` of its own. A setattr goes alone or in a
  // batch (with other files' and with creates answered ahead).
  EXPECT_EQ(mountGauge(*a_, wrote, false) - wroteBefore, 0u);
  uint64_t updates = mountGauge(*a_, setattr, false) - setattrBefore +
                     mountGauge(*a_, "cairn_client_batched_updates_total") - batchedBefore;
  EXPECT_GE(updates, uint64_t(FILES));
  EXPECT_LE(updates, uint64_t(4 * FILES));
}

// What write-behind sends after each file's data (its size, times, owner and mode) goes several
// files to a request (features::BATCH_ATTRS). Made deterministic with the metadata server
// stopped while the files are written: their creates answered ahead wait, and with them every
// file's data and update; when the server goes on, the updates come due together.
TEST_F(Coherence, FilesWrittenInARowSendTheirUpdatesInBatches) {
  const std::string setattr = "cairn_client_requests_total{link=\"meta\",kind=\"meta.setattr\"}";
  // The directory's PW and inode numbers set aside: later creates are answered here.
  for (int i = 0; i < 3; ++i) writeAll(pa("warm" + std::to_string(i)), "x");
  sleep(1);  // the first close waits for the targets' room; the rest go behind
  uint64_t setattrBefore = mountGauge(*a_, setattr, false);
  uint64_t batchedBefore = mountGauge(*a_, "cairn_client_batched_updates_total");
  constexpr int FILES = 30;
  timespec times[2] = {{UTIME_OMIT, 0}, {1234567890, 0}};
  cluster_->signalServer(0, SIGSTOP);
  for (int i = 0; i < FILES; ++i) {
    std::string data = pattern(3000 + i, i);
    int fd = open(pa("f" + std::to_string(i)).c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
    EXPECT_GE(fd, 0) << strerror(errno);
    EXPECT_EQ(write(fd, data.data(), data.size()), ssize_t(data.size()));
    EXPECT_EQ(futimens(fd, times), 0);
    EXPECT_EQ(fchmod(fd, 0640), 0);
    EXPECT_EQ(close(fd), 0);
  }
  cluster_->signalServer(0, SIGCONT);
  for (int i = 0; i < FILES; ++i) {
    std::string name = "f" + std::to_string(i);
    EXPECT_TRUE(readWhole(pb(name)) == pattern(3000 + i, i)) << name;
    auto st = statOf(pb(name));
    EXPECT_EQ(st.st_size, 3000 + i) << name;
    EXPECT_EQ(st.st_mode & 07777, 0640u) << name;
    EXPECT_EQ(st.st_mtim.tv_sec, 1234567890) << name;
  }
  // Creates and setattrs, FILES of each: nearly all in batches, few setattrs alone.
  uint64_t alone = mountGauge(*a_, setattr, false) - setattrBefore;
  EXPECT_LE(alone, uint64_t(FILES / 3));
  EXPECT_GE(mountGauge(*a_, "cairn_client_batched_updates_total") - batchedBefore,
            uint64_t(2 * FILES - FILES / 3 - 2));
}

// Small files written one after another: their data goes to each data target several files to
// a writeMany (DataBatch) instead of a request each, and every byte lands. The data servers are
// stopped while the files are written, so that what queues meanwhile leaves in few batches
// however fast this machine is.
TEST_F(Coherence, SmallFilesWrittenInARowGoToTheDataTargetsInBatches) {
  auto dataWrites = [&] {
    uint64_t n = 0;
    for (std::string link : {"data0", "data1"}) {
      for (std::string kind : {"data.write", "data.writeMany"}) {
        n += mountGauge(
            *a_, "cairn_client_requests_total{link=\"" + link + "\",kind=\"" + kind + "\"}", false);
      }
    }
    return n;
  };
  for (int i = 0; i < 3; ++i) writeAll(pa("warm" + std::to_string(i)), "x");
  sleep(1);  // the first close waits for the targets' room; the rest go behind
  uint64_t before = dataWrites();
  uint64_t batchedBefore = mountGauge(*a_, "cairn_client_batched_writes_total");
  constexpr int FILES = 40;
  cluster_->signalServer(1, SIGSTOP);
  cluster_->signalServer(2, SIGSTOP);
  for (int i = 0; i < FILES; ++i) writeAll(pa("s" + std::to_string(i)), pattern(2000 + 97 * i, i));
  // A file's data leaves once its create (answered ahead) is applied: with every create applied,
  // all of it queues behind the stopped targets. (On a slow machine — the suites under the
  // sanitizers — creates still on their way let their files' data trickle out after the
  // targets came back, in more requests.)
  EXPECT_TRUE(
      waitFor([&] { return mountGauge(*a_, "cairn_client_dirops_in_flight") == 0; }, 30000));
  cluster_->signalServer(1, SIGCONT);
  cluster_->signalServer(2, SIGCONT);
  // All sent before B reads: B's reads call A's locks back, and a give-back hurries what is
  // still gathering (on a slow machine that would split the batches this test counts).
  ASSERT_TRUE(waitFor([&] { return mountGauge(*a_, "cairn_client_dirty_bytes") == 0; }, 30000));
  for (int i = 0; i < FILES; ++i) {
    std::string name = "s" + std::to_string(i);
    EXPECT_TRUE(readWhole(pb(name)) == pattern(2000 + 97 * i, i)) << name;
  }
  // Two requests a target may be on their way while the rest gather: far fewer than FILES.
  uint64_t sent = dataWrites() - before;
  EXPECT_LE(sent, uint64_t(FILES / 4)) << "the files' writes were not batched";
  EXPECT_GE(mountGauge(*a_, "cairn_client_batched_writes_total") - batchedBefore,
            uint64_t(FILES - FILES / 4));
}

// A small file's bytes are on one data target: its fsync asks that target to sync, not the other
// target, which has on disk every update of ours it answered. The metadata server's sync rides
// on the file's size: the `wrote` is answered once on disk (MetaRequest.syncAfter), with no
// `sync` request after it. Then nothing of ours is kept for replay anywhere.
TEST_F(Coherence, AnFsyncAsksOnlyTheServersHoldingUpdatesOfOursNotYetOnDisk) {
  auto syncs = [&](const std::string& link) {
    return mountGauge(*a_,
                      "cairn_client_requests_total{link=\"" + link + "\",kind=\"" +
                          (link == "meta" ? "meta" : "data") + ".sync\"}",
                      false);
  };
  auto fsyncNew = [&](const std::string& name) {
    int fd = open(pa(name).c_str(), O_CREAT | O_WRONLY, 0644);
    ASSERT_GE(fd, 0);
    std::string data(4096, 'f');
    ASSERT_EQ(write(fd, data.data(), data.size()), ssize_t(data.size()));
    ASSERT_EQ(fsync(fd), 0);
    ASSERT_EQ(close(fd), 0);
  };
  // Whatever earlier tests left on its way lands, and the first fsync syncs it.
  ASSERT_TRUE(waitFor([&] { return mountGauge(*a_, "cairn_client_dirty_bytes") == 0; }, 30000));
  fsyncNew("first");
  uint64_t meta = syncs("meta"), data0 = syncs("data0"), data1 = syncs("data1");
  fsyncNew("second");
  EXPECT_EQ(syncs("meta") - meta, 0u);
  EXPECT_EQ(syncs("data0") - data0 + syncs("data1") - data1, 1u);
  for (auto link : {"meta", "data0", "data1"}) {
    EXPECT_EQ(mountGauge(*a_, std::string("cairn_client_replay_kept_bytes{link=\"") + link + "\"}"),
              0u)
        << link;
  }
  EXPECT_EQ(readWhole(pb("second")), std::string(4096, 'f'));
}

// A large file's fsync: of the batches its write-behind still has queued or on their way, only
// the last asks its targets to sync (and its size to be answered on disk); a sync for each
// 4 MiB batch would cost more than the round trip it saves. The data servers are stopped while
// the file is written, so that all of it is still to send when the fsync comes.
TEST_F(Coherence, ALargeFilesFsyncSyncsEachTargetOnceNotEachBatch) {
  auto dataSyncs = [&] {
    return mountGauge(*a_, "cairn_client_requests_total{link=\"data0\",kind=\"data.sync\"}",
                      false) +
           mountGauge(*a_, "cairn_client_requests_total{link=\"data1\",kind=\"data.sync\"}", false);
  };
  int fd = open(pa("large").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fsync(fd), 0);  // the create landed: the file's data may leave at once
  uint64_t before = dataSyncs();
  cluster_->signalServer(1, SIGSTOP);
  cluster_->signalServer(2, SIGSTOP);
  constexpr size_t MIB = 1 << 20, FILE_MIB = 32;
  std::string data = pattern(FILE_MIB * MIB, 37);
  bool written = true;
  for (size_t off = 0; off < data.size() && written; off += MIB) {
    written = pwrite(fd, data.data() + off, MIB, off_t(off)) == ssize_t(MIB);
  }
  int synced = -1;
  {
    Background syncing([&] { synced = fsync(fd); });
    usleep(200 * 1000);
    cluster_->signalServer(1, SIGCONT);
    cluster_->signalServer(2, SIGCONT);
    EXPECT_TRUE(syncing.doneWithin(30000));
  }
  ASSERT_TRUE(written);
  EXPECT_EQ(synced, 0);
  ASSERT_EQ(close(fd), 0);
  // Each target syncs at most once (the last batch's, or the fsync's own after it), not once
  // for each of the 8 batches.
  EXPECT_LE(dataSyncs() - before, 2u);
  EXPECT_TRUE(readWhole(pb("large")) == data);
}

// A writer called back while the data servers its queued writes are for are away (a restart,
// a failover, a stall): its give-back waits for them, for longer than the lock timeout, and it
// asks the metadata server for more time instead of being evicted and losing writes it had
// answered. The reader waits, then sees them.
TEST_F(Coherence, AWriterWaitingOnAbsentDataServersKeepsItsLocks) {
  writeAll(pa("f"), "before");
  uint64_t evictions = rpcs("evictions");
  int fd = open(pa("f").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  cluster_->signalServer(1, SIGSTOP);
  cluster_->signalServer(2, SIGSTOP);
  ASSERT_EQ(pwrite(fd, "after!", 6, 0), 6);  // answered at once, queued behind
  std::string seen;
  bool early;
  {
    Background reading([&] { seen = readWhole(pb("f")); });  // calls A's locks back
    early = reading.doneWithin(5000);                        // 2.5 lock timeouts
    cluster_->signalServer(1, SIGCONT);
    cluster_->signalServer(2, SIGCONT);
  }
  EXPECT_FALSE(early) << "the reader did not wait for the writer's queued write";
  EXPECT_EQ(seen, "after!");
  EXPECT_EQ(rpcs("evictions"), evictions);
  EXPECT_EQ(close(fd), 0);
  EXPECT_EQ(readWhole(pa("f")), "after!");
}

// The same with the data servers killed and started again only after 2.5 lock timeouts: the
// writer's batch waits at the links' gates, then goes to the new instances; nothing it had
// answered is lost, and it is never evicted. The writer is a process of its own: a test process
// holding a descriptor with queued writes would hang starting the servers again (the fork's
// child closes its copy, and that close waits for the queued writes).
TEST(CoherenceRestart, AWriterWaitingOnRestartingDataServersKeepsItsLocks) {
  TestCluster::Options options;
  options.metaArgs = {"--lock-timeout", "2"};
  TestCluster cluster(options);
  std::string ma = cluster.mount(), mb = cluster.mount();
  writeAll(ma + "/f", "before");
  int toWriter[2], fromWriter[2];
  ASSERT_EQ(pipe(toWriter), 0);
  ASSERT_EQ(pipe(fromWriter), 0);
  std::string path = ma + "/f";  // the child only makes system calls: no allocation after fork
  pid_t writer = fork();
  if (writer == 0) {
    // Each step reports its result (0: done); a command on the pipe starts the next.
    auto step = [&](bool ok) {
      char r = ok ? 0 : char(errno);
      char c;
      if (write(fromWriter[1], &r, 1) != 1 || !ok) _exit(1);
      if (read(toWriter[0], &c, 1) != 1) _exit(2);
    };
    int fd = open(path.c_str(), O_WRONLY);
    step(fd >= 0);
    step(pwrite(fd, "after!", 6, 0) == 6);  // answered at once, queued behind
    step(close(fd) == 0);
    _exit(0);
  }
  ASSERT_GT(writer, 0);
  auto next = [&]() -> int {
    char r = -1;
    if (read(fromWriter[0], &r, 1) != 1) return -1;
    return r;
  };
  auto go = [&] {
    char c = 0;
    EXPECT_EQ(write(toWriter[1], &c, 1), 1);
  };
  std::string seen;
  bool early = true;
  if (next() == 0) {  // open
    cluster.stopServer(1, SIGKILL);
    cluster.stopServer(2, SIGKILL);
    go();
    EXPECT_EQ(next(), 0);                                      // pwrite
    Background reading([&] { seen = readWhole(mb + "/f"); });  // calls A's locks back
    early = reading.doneWithin(5000);
    EXPECT_TRUE(cluster.startServer(1));
    EXPECT_TRUE(cluster.startServer(2));
  }
  go();
  EXPECT_EQ(next(), 0);  // close
  go();
  int status = -1;
  EXPECT_EQ(waitpid(writer, &status, 0), writer);
  EXPECT_FALSE(early) << "the reader did not wait for the writer's queued write";
  EXPECT_EQ(seen, "after!");
  EXPECT_EQ(jsonNumber(cluster.status(0), "evictions"), 0u);
  EXPECT_EQ(readWhole(ma + "/f"), "after!");
  EXPECT_GT(mountGauge(ma, "cairn_client_lock_prolongs_total"), 0u);
}

TEST_F(Coherence, SizeAndTimesAreSeenAtOnce) {
  writeAll(pa("f"), "12345");
  auto before = statOf(pb("f"));
  EXPECT_EQ(before.st_size, 5);
  sleep(1);  // mtime has a second's resolution to compare with
  writeAll(pa("f"), "678", O_APPEND);
  auto after = statOf(pb("f"));
  EXPECT_EQ(after.st_size, 8);
  EXPECT_GT(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
  ASSERT_EQ(chmod(pa("f").c_str(), 0600), 0);
  EXPECT_EQ(statOf(pb("f")).st_mode & 07777, 0600u);
  ASSERT_EQ(truncate(pa("f").c_str(), 2), 0);
  EXPECT_EQ(statOf(pb("f")).st_size, 2);
}

TEST_F(Coherence, NamespaceChangesReachCachedNames) {
  writeAll(pa("one"), "1");
  // B lists the directory and looks names up: it now knows every name in it.
  EXPECT_EQ(statOf(pb("one")).st_size, 1);
  EXPECT_FALSE(exists(pb("two")));
  EXPECT_FALSE(exists(pb("three")));
  writeAll(pa("two"), "22");
  EXPECT_EQ(statOf(pb("two")).st_size, 2) << "a name created on A is unknown on B";
  ASSERT_EQ(unlink(pa("one").c_str()), 0);
  EXPECT_FALSE(exists(pb("one"))) << "a name removed on A still exists on B";
  ASSERT_EQ(rename(pa("two").c_str(), pa("three").c_str()), 0);
  EXPECT_FALSE(exists(pb("two")));
  EXPECT_EQ(readWhole(pb("three")), "22");
  ASSERT_EQ(mkdir(pa("sub").c_str(), 0755), 0);
  EXPECT_TRUE(S_ISDIR(statOf(pb("sub")).st_mode));
  ASSERT_EQ(rename(pa("three").c_str(), pa("sub/moved").c_str()), 0);
  EXPECT_EQ(readWhole(pb("sub/moved")), "22");
  EXPECT_FALSE(exists(pb("three")));
  ASSERT_EQ(rmdir(pa("sub").c_str()), -1);  // not empty
  ASSERT_EQ(unlink(pa("sub/moved").c_str()), 0);
  ASSERT_EQ(rmdir(pa("sub").c_str()), 0);
  EXPECT_FALSE(exists(pb("sub")));
}

TEST_F(Coherence, ExtendedAttributesAreSeenAtOnce) {
  writeAll(pa("f"), "x");
  char buf[64];
  // B learns the file has none, then A adds one, changes it, removes it.
  EXPECT_EQ(getxattr(pb("f").c_str(), "user.k", buf, sizeof(buf)), -1);
  EXPECT_EQ(errno, ENODATA);
  ASSERT_EQ(setxattr(pa("f").c_str(), "user.k", "v1", 2, 0), 0);
  ASSERT_EQ(getxattr(pb("f").c_str(), "user.k", buf, sizeof(buf)), 2);
  EXPECT_EQ(std::string(buf, 2), "v1");
  ASSERT_EQ(setxattr(pa("f").c_str(), "user.k", "v22", 3, 0), 0);
  ASSERT_EQ(getxattr(pb("f").c_str(), "user.k", buf, sizeof(buf)), 3);
  EXPECT_EQ(std::string(buf, 3), "v22");
  ASSERT_EQ(removexattr(pa("f").c_str(), "user.k"), 0);
  EXPECT_EQ(getxattr(pb("f").c_str(), "user.k", buf, sizeof(buf)), -1);
  // And a client's own changes, through its own cache.
  ASSERT_EQ(setxattr(pb("f").c_str(), "user.mine", "m", 1, 0), 0);
  ASSERT_EQ(getxattr(pb("f").c_str(), "user.mine", buf, sizeof(buf)), 1);
  ASSERT_EQ(getxattr(pa("f").c_str(), "user.mine", buf, sizeof(buf)), 1);
}

TEST_F(Coherence, ACachedLookupFollowsARenameOverIt) {
  writeAll(pa("x"), "the first x");
  writeAll(pa("y"), "the second");
  EXPECT_EQ(readWhole(pb("x")), "the first x");
  auto old = statOf(pb("x"));
  ASSERT_EQ(rename(pa("y").c_str(), pa("x").c_str()), 0);
  EXPECT_EQ(readWhole(pb("x")), "the second");
  EXPECT_NE(statOf(pb("x")).st_ino, old.st_ino);
  EXPECT_FALSE(exists(pb("y")));
}

// The name B's kernel keeps for "x" must follow every rename over it, also while B is busy
// looking names of the directory up (lookups in flight when the callback comes).
TEST_F(Coherence, EveryRenameOverACachedNameIsSeen) {
  std::atomic<bool> stop{false};
  std::thread looker([&] {
    while (!stop) {
      struct stat st;
      stat(pb("x").c_str(), &st);
      stat(pb("other").c_str(), &st);
    }
  });
  for (int i = 0; i < 300; ++i) {
    std::string content = "version " + std::to_string(i);
    writeAll(pa("tmp"), content);
    ASSERT_EQ(rename(pa("tmp").c_str(), pa("x").c_str()), 0);
    std::string seen = readWhole(pb("x"));
    if (seen != content) {
      stop = true;
      looker.join();
      FAIL() << "after rename " << i << " B read '" << seen << "'";
    }
  }
  stop = true;
  looker.join();
}

// B's kernel drops a name only once nothing of B's is under way in that directory; if a
// request there waits a long time (here a listing, whose buffer is a mapped page that must be
// read from stopped data servers), B gives the name back by having its kernel check every
// name again instead, and A's rename over the name does not wait for that request.
TEST_F(Coherence, ARenameDoesNotWaitForTheOtherClientsSlowRequestInThatDirectory) {
  writeAll(pa("data"), std::string(64 * 1024, 'd'));
  writeAll(pa("x"), "");
  writeAll(pa("y"), "");
  auto y = statOf(pa("y"));
  uint64_t evictions = rpcs("evictions");
  statOf(pb("x"));  // B's kernel keeps the name, under B's lock on the directory's names
  int dir = open(pb("").c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(dir, 0) << strerror(errno);
  int data = open(pb("data").c_str(), O_RDWR);
  ASSERT_GE(data, 0) << strerror(errno);
  void* map = mmap(nullptr, 64 * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE, data, 0);
  ASSERT_NE(map, MAP_FAILED) << strerror(errno);
  // The listing holds the directory's lock in B's kernel while its copy into the mapped
  // buffer waits for the page, which only the stopped data servers can give.
  cluster_->signalServer(1, SIGSTOP);
  cluster_->signalServer(2, SIGSTOP);
  struct Resume {
    TestCluster& cluster;
    ~Resume() {
      cluster.signalServer(1, SIGCONT);
      cluster.signalServer(2, SIGCONT);
    }
  } resume{*cluster_};
  std::atomic<bool> listed{false};
  std::thread lister([&] {
    syscall(SYS_getdents64, dir, map, 64 * 1024);
    listed = true;
  });
  usleep(500 * 1000);
  EXPECT_FALSE(listed.load()) << "the listing did not wait for the mapped page";
  std::atomic<bool> renamed{false};
  std::thread renamer([&] {
    EXPECT_EQ(rename(pa("y").c_str(), pa("x").c_str()), 0) << strerror(errno);
    renamed = true;
  });
  // Well before the server gives up on B's lock (60 s while B asks for more time).
  bool done = waitFor([&] { return renamed.load(); }, 20000);
  EXPECT_TRUE(done) << "A's rename waited for B's listing";
  EXPECT_FALSE(listed.load());
  cluster_->signalServer(1, SIGCONT);
  cluster_->signalServer(2, SIGCONT);
  renamer.join();
  lister.join();
  munmap(map, 64 * 1024);
  close(data);
  close(dir);
  EXPECT_EQ(statOf(pb("x")).st_ino, y.st_ino);
  EXPECT_FALSE(exists(pb("y")));
  EXPECT_GE(mountGauge(*b_, "cairn_client_kernel_slow_name_drops_total"), 1u);
  EXPECT_EQ(rpcs("evictions"), evictions);
}

// A's kernel keeps the name its own rename made; B's removal of that name must reach it.
TEST_F(Coherence, ANameMadeByOurOwnRenameFollowsChangesElsewhere) {
  writeAll(pa("old"), "moved");
  EXPECT_EQ(readWhole(pa("old")), "moved");
  ASSERT_EQ(rename(pa("old").c_str(), pa("new").c_str()), 0);
  EXPECT_EQ(readWhole(pa("new")), "moved");
  // Past the time a lookup counts as in flight: only the names A tracks are dropped then.
  sleep(3);
  ASSERT_EQ(unlink(pb("new").c_str()), 0);
  EXPECT_FALSE(exists(pa("new")));
  writeAll(pb("new"), "again");
  EXPECT_EQ(readWhole(pa("new")), "again");
}

TEST_F(Coherence, ListingsFollowChanges) {
  for (int i = 0; i < 30; ++i) writeAll(pa("n" + std::to_string(i)), "");
  auto names = [&]() {
    std::set<std::string> out;
    auto r = run({"/bin/ls", "-1", *b_ + name_});
    size_t start = 0;
    for (size_t i = 0; i <= r.out.size(); ++i) {
      if (i == r.out.size() || r.out[i] == '\n') {
        if (i > start) out.insert(r.out.substr(start, i - start));
        start = i + 1;
      }
    }
    return out;
  };
  EXPECT_EQ(names().size(), 30u);
  ASSERT_EQ(unlink(pa("n3").c_str()), 0);
  writeAll(pa("extra"), "");
  auto now = names();
  EXPECT_EQ(now.size(), 30u);
  EXPECT_EQ(now.count("n3"), 0u);
  EXPECT_EQ(now.count("extra"), 1u);
  EXPECT_TRUE(exists(pb("extra")));
  EXPECT_FALSE(exists(pb("n3")));
}

// What a directory listing says: each name with its inode number and, past the listing, the
// mode a stat of it finds.
struct Listed {
  uint64_t ino;
  mode_t mode;
};
std::map<std::string, Listed> listing(const std::string& dir) {
  std::map<std::string, Listed> out;
  DIR* d = opendir(dir.c_str());
  EXPECT_NE(d, nullptr) << dir << ": " << strerror(errno);
  if (d == nullptr) return out;
  while (struct dirent* e = readdir(d)) out[e->d_name] = Listed{e->d_ino, 0};
  closedir(d);
  for (auto& [name, l] : out) {
    if (name != "." && name != "..") l.mode = statOf(dir + "/" + name).st_mode;
  }
  return out;
}

// A client lists a directory again from what it kept under the directory's lock: no request
// at all, even once the kernel forgot it (a `find` after the kernel dropped its caches). The
// listing still follows every change, made elsewhere or by itself: names, attributes, and the
// ".." of a directory moved to another parent.
TEST_F(Coherence, AListingRepeatedCostsNoRequestAndFollowsChanges) {
  for (int i = 0; i < 30; ++i) writeAll(pa("n" + std::to_string(i)), "");
  ASSERT_EQ(mkdir(a("sub"), 0755), 0);
  ASSERT_EQ(mkdir(a("other"), 0755), 0);
  auto dir = *b_ + name_;
  EXPECT_EQ(listing(dir).size(), 34u);  // with "." and ".."
  quiet();                              // access-time updates go in the background
  uint64_t before = rpcs("rpcCount");
  uint64_t hits = mountGauge(*b_, "cairn_client_listing_hits_total");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(listing(dir).size(), 34u);
  EXPECT_EQ(rpcs("rpcCount"), before);
  EXPECT_GE(mountGauge(*b_, "cairn_client_listing_hits_total"), hits + 5);

  ASSERT_EQ(chmod(pa("n1").c_str(), 0600), 0);
  ASSERT_EQ(unlink(pa("n2").c_str()), 0);
  writeAll(pa("new"), "");
  auto now = listing(dir);
  EXPECT_EQ(now.size(), 34u);
  EXPECT_EQ(now["n1"].mode, S_IFREG | 0600u);
  EXPECT_EQ(now.count("n2"), 0u);
  EXPECT_EQ(now.count("new"), 1u);

  // ".." of a directory B moved itself, then of one A moved back.
  EXPECT_EQ(listing(dir + "/sub")[".."].ino, statOf(dir).st_ino);
  ASSERT_EQ(rename((dir + "/sub").c_str(), (dir + "/other/sub").c_str()), 0);
  EXPECT_EQ(listing(dir + "/other/sub")[".."].ino, statOf(dir + "/other").st_ino);
  ASSERT_EQ(rename(pa("other/sub").c_str(), pa("sub").c_str()), 0);
  EXPECT_EQ(listing(dir + "/sub")[".."].ino, statOf(dir).st_ino);
}

// The same for a directory of several server batches (2,048 entries each): kept whole.
TEST_F(Coherence, ALargeListingRepeatedCostsNoRequest) {
  for (int i = 0; i < 2500; ++i) {
    int fd = creat(pa("f" + std::to_string(i)).c_str(), 0644);
    ASSERT_GE(fd, 0);
    close(fd);
  }
  auto dir = *b_ + name_;
  auto count = [&]() {
    size_t n = 0;
    DIR* d = opendir(dir.c_str());
    EXPECT_NE(d, nullptr);
    while (readdir(d) != nullptr) ++n;
    closedir(d);
    return n;
  };
  // A's creates answered ahead all applied first (its directory's fsync waits for them): one
  // still on its way when B first looks would call back B's lock on the directory's attributes
  // after B took it, and B's next look would ask again.
  int fd = open(a(""), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fsync(fd), 0);
  close(fd);
  EXPECT_EQ(count(), 2502u);
  quiet();  // releases of the files closed, queued behind their creates answered ahead
  uint64_t before = rpcs("rpcCount");
  EXPECT_EQ(count(), 2502u);
  EXPECT_EQ(count(), 2502u);
  EXPECT_EQ(rpcs("rpcCount"), before);
  ASSERT_EQ(unlink(pa("f2400").c_str()), 0);
  ASSERT_EQ(unlink(pa("f7").c_str()), 0);
  writeAll(pa("g"), "");
  std::set<std::string> names;
  DIR* d = opendir(dir.c_str());
  ASSERT_NE(d, nullptr);
  while (struct dirent* e = readdir(d)) names.insert(e->d_name);
  closedir(d);
  EXPECT_EQ(names.size(), 2501u);
  EXPECT_EQ(names.count("f2400") + names.count("f7"), 0u);
  EXPECT_EQ(names.count("g"), 1u);
}

TEST_F(Coherence, AppendsFromTwoClientsNeverOverwriteEachOther) {
  writeAll(pa("log"), "");
  constexpr int PER_CLIENT = 200;
  constexpr size_t RECORD = 64;
  auto appender = [](std::string path, char tag) {
    int fd = open(path.c_str(), O_WRONLY | O_APPEND);
    if (fd < 0) return;
    for (int i = 0; i < PER_CLIENT; ++i) {
      std::string rec(RECORD, tag);
      auto num = std::to_string(i);
      rec.replace(1, num.size(), num);
      rec[RECORD - 1] = '\n';
      if (write(fd, rec.data(), rec.size()) != ssize_t(rec.size())) break;
    }
    close(fd);
  };
  std::thread ta(appender, pa("log"), 'A');
  std::thread tb(appender, pb("log"), 'B');
  ta.join();
  tb.join();
  std::string all = readWhole(pa("log"));
  ASSERT_EQ(all.size(), 2 * PER_CLIENT * RECORD);
  std::set<std::string> seen;
  for (size_t off = 0; off < all.size(); off += RECORD) {
    std::string rec = all.substr(off, RECORD);
    ASSERT_TRUE(rec[0] == 'A' || rec[0] == 'B') << "torn record at " << off;
    ASSERT_EQ(rec[RECORD - 1], '\n');
    ASSERT_EQ(rec.find_first_not_of(std::string(1, rec[0]) + "0123456789", 1), RECORD - 1);
    seen.insert(rec);
  }
  EXPECT_EQ(seen.size(), size_t(2 * PER_CLIENT));  // every record once, none overwritten
  EXPECT_EQ(readWhole(pb("log")), all);
}

// One client rewrites files in place while the other reads them back, both flat out: the
// reader's kernel drops pages (its data locks called back) while its own read-ahead waits for
// a lock the writer's updates hold up. Once this ended in an eviction (an attribute lock's
// give-back queued behind a page drop that waited on such a READ); now neither side sees an
// error, nobody is evicted, and the reader ends with the writer's last version.
TEST_F(Coherence, ARewriterAndAReaderOfTheSameFilesBothKeepGoing) {
  constexpr int FILES = 8;
  constexpr size_t SIZE = 1 << 20;
  auto version = [](int v) { return std::string(SIZE, char('a' + v % 26)); };
  for (int i = 0; i < FILES; ++i) writeAll(pa("f" + std::to_string(i)), version(0));
  uint64_t evictionsBefore = rpcs("evictions");
  std::atomic<bool> stop{false};
  std::atomic<int> writeErrors{0}, readErrors{0}, reads{0};
  std::vector<int> last(FILES, 0);
  std::thread writer([&]() {
    for (int round = 1; !stop; ++round) {
      for (int i = 0; i < FILES && !stop; ++i) {
        int fd = open(pa("f" + std::to_string(i)).c_str(), O_RDWR);
        auto data = version(round);
        if (fd < 0 || pwrite(fd, data.data(), SIZE, 0) != ssize_t(SIZE)) ++writeErrors;
        if (fd >= 0 && close(fd) != 0) ++writeErrors;
        last[i] = round;
      }
    }
  });
  std::thread reader([&]() {
    for (int i = 0; !stop; ++i) {
      int fd = open(pb("f" + std::to_string(i % FILES)).c_str(), O_RDONLY);
      if (fd < 0 || preadAll(fd).size() != SIZE) ++readErrors;
      if (fd >= 0) close(fd);
      ++reads;
    }
  });
  std::this_thread::sleep_for(std::chrono::seconds(5));
  stop = true;
  writer.join();
  reader.join();
  EXPECT_EQ(writeErrors, 0);
  EXPECT_EQ(readErrors, 0);
  EXPECT_GT(reads, FILES);
  EXPECT_EQ(rpcs("evictions"), evictionsBefore);
  for (int i = 0; i < FILES; ++i) {
    EXPECT_EQ(readWhole(pb("f" + std::to_string(i))), version(last[i])) << "file " << i;
  }
}

TEST_F(Coherence, TruncateOnOneClientReachesTheOthersCachedPages) {
  writeAll(pa("f"), std::string(200000, 'z'));
  int fb = open(pb("f").c_str(), O_RDONLY);
  ASSERT_GE(fb, 0);
  ASSERT_EQ(preadAll(fb).size(), 200000u);
  ASSERT_EQ(truncate(pa("f").c_str(), 10), 0);
  EXPECT_EQ(preadAll(fb), std::string(10, 'z'));
  ASSERT_EQ(truncate(pa("f").c_str(), 4096), 0);
  EXPECT_EQ(preadAll(fb), std::string(10, 'z') + std::string(4086, '\0'));
  close(fb);
}

TEST_F(Coherence, AnMmapReaderSeesTheOtherClientsWrites) {
  writeAll(pa("m"), std::string(8192, 'a'));
  int fb = open(pb("m").c_str(), O_RDONLY);
  ASSERT_GE(fb, 0);
  void* map = mmap(nullptr, 8192, PROT_READ, MAP_SHARED, fb, 0);
  ASSERT_NE(map, MAP_FAILED);
  auto* bytes = static_cast<const volatile char*>(map);
  ASSERT_EQ(bytes[0], 'a');
  ASSERT_EQ(bytes[5000], 'a');
  int fa = open(pa("m").c_str(), O_WRONLY);
  ASSERT_GE(fa, 0);
  ASSERT_EQ(pwrite(fa, "B", 1, 0), 1);
  ASSERT_EQ(pwrite(fa, "C", 1, 5000), 1);
  EXPECT_EQ(bytes[0], 'B');
  EXPECT_EQ(bytes[5000], 'C');
  close(fa);
  munmap(map, 8192);
  close(fb);
}

// A writer that closed its file answers a reader's callback by turning its PW into PR: the
// reader shares the lock and the writer keeps the pages it cached (no re-read). A file that
// other clients want is downgraded as soon as its writer closes it: the reader then does not
// call the writer back at all. The next write takes the lock back and the reader sees it.
TEST_F(Coherence, AClosedWritersLockIsSharedWithReaders) {
  std::string data = pattern(256 << 10, 7);
  uint64_t openBefore = mountGauge(*a_, "cairn_client_open_files");
  writeAll(pa("f"), data);
  ASSERT_EQ(readWhole(pa("f")), data);
  // The kernel sends a close's RELEASE without waiting for it: until the mount has it, the
  // file still has a writer there, and its lock goes back whole (once in a loaded CI run).
  ASSERT_TRUE(
      waitFor([&] { return mountGauge(*a_, "cairn_client_open_files") == openBefore; }, 5000));
  uint64_t readsA = dataReads(*a_);
  uint64_t downgrades = mountGauge(*a_, "cairn_client_lock_downgrades_total");
  ASSERT_EQ(readWhole(pb("f")), data);
  EXPECT_GT(mountGauge(*a_, "cairn_client_lock_downgrades_total"), downgrades);
  ASSERT_EQ(readWhole(pa("f")), data);
  EXPECT_EQ(dataReads(*a_), readsA) << "the writer's pages were called back";

  std::string again = pattern(256 << 10, 8);
  downgrades = mountGauge(*a_, "cairn_client_lock_downgrades_total");
  writeAll(pa("f"), again);
  // Wanted elsewhere before: downgraded once released, with no reader asking.
  ASSERT_TRUE(waitFor(
      [&] { return mountGauge(*a_, "cairn_client_lock_downgrades_total") > downgrades; }, 5000));
  uint64_t callbacks = mountGauge(*a_, "cairn_client_lock_callbacks_total");
  // O_NOATIME: an access time set by the read would be an update, which calls the attribute
  // lock back whatever its mode.
  int fd = open(pb("f").c_str(), O_RDONLY | O_NOATIME);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(preadAll(fd), again);
  close(fd);
  EXPECT_EQ(mountGauge(*a_, "cairn_client_lock_callbacks_total"), callbacks);
  EXPECT_EQ(readWhole(pa("f")), again);
}

TEST_F(Coherence, SharedWritableMmapIsWrittenBackBeforeTheOtherClientReads) {
  writeAll(pa("w"), std::string(4096, '.'));
  int fa = open(pa("w").c_str(), O_RDWR);
  ASSERT_GE(fa, 0);
  void* map = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fa, 0);
  ASSERT_NE(map, MAP_FAILED);
  memcpy(map, "dirty page", 10);  // no msync: the page is dirty in A's kernel
  // B's read calls A's lock back; A writes the page back before giving it up.
  EXPECT_EQ(readWhole(pb("w")).substr(0, 10), "dirty page");
  munmap(map, 4096);
  close(fa);
}

// Files another client removes take A's locks on them along: the server drops them when it
// destroys the inodes and tells A, rather than leaving them to A's lock cache bound.
TEST_F(Coherence, LocksOnFilesRemovedElsewhereGoWithThem) {
  constexpr int FILES = 50;
  std::string held = "cairn_client_locks_held";
  uint64_t before = mountGauge(*a_, held);
  ASSERT_EQ(mkdir(a("d"), 0755), 0);
  for (int i = 0; i < FILES; ++i) writeAll(pa("d/f" + std::to_string(i)), std::to_string(i));
  for (int i = 0; i < FILES; ++i) {
    ASSERT_EQ(readWhole(pa("d/f" + std::to_string(i))), std::to_string(i));
  }
  uint64_t cached = mountGauge(*a_, held);
  ASSERT_GE(cached, before + FILES);  // at least the data lock of each file
  ASSERT_EQ(run({"/bin/rm", "-rf", pb("d")}).status, 0);
  // A may keep the test directory's; nothing of the removed tree.
  EXPECT_TRUE(waitFor([&] { return mountGauge(*a_, held) <= before + 2; }, 5000))
      << before << " before, " << cached << " cached, " << mountGauge(*a_, held) << " now";
  EXPECT_FALSE(exists(pa("d/f0")));
  EXPECT_FALSE(exists(pa("d")));
}

// A client allowed few locks gives the least recently used back as it goes, and stays coherent.
TEST_F(Coherence, ABoundedLockCacheStaysBoundedAndCoherent) {
  TestCluster cluster;
  std::string small = cluster.mount("lock_limit=40");
  for (int i = 0; i < 200; ++i) writeAll(small + "/f" + std::to_string(i), std::to_string(i));
  ASSERT_EQ(run({"/bin/ls", "-l", small}).status, 0);
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 200; ++i) {
      ASSERT_EQ(readWhole(small + "/f" + std::to_string(i)), std::to_string(i)) << i;
    }
  }
  // The only client: its locks on the server are a few past the bound at most (until the
  // next trim), and it did cache.
  uint64_t locks = jsonNumber(cluster.status(0), "locks");
  EXPECT_LE(locks, 60u);
  EXPECT_GE(locks, 20u);
  std::string other = cluster.mount();
  writeAll(other + "/f7", "changed");
  EXPECT_EQ(readWhole(small + "/f7"), "changed");
  ASSERT_EQ(unlink((other + "/f8").c_str()), 0);
  EXPECT_FALSE(exists(small + "/f8"));
}

// The metadata server's lock budget is shared out among the clients connected: a second mount
// halves the first one's share, which gives back its least recently used locks down to it and
// stays coherent; once the second goes, the share grows back.
TEST_F(Coherence, TheServersLockBudgetIsSharedAmongItsClients) {
  TestCluster::Options options;
  options.metaArgs = {"--lock-budget", "2200"};
  TestCluster cluster(options);
  std::string a = cluster.mount();
  EXPECT_TRUE(waitFor([&] { return mountGauge(a, "cairn_client_lock_bound") == 2200; }, 5000));
  constexpr int FILES = 1500;
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0755), 0);
  for (int i = 0; i < FILES; ++i) writeAll(a + "/d/f" + std::to_string(i), std::to_string(i));
  ASSERT_EQ(run({"/bin/ls", "-l", a + "/d"}).status, 0);
  ASSERT_GT(mountGauge(a, "cairn_client_locks_held"), 1200u);  // more than half the budget

  std::string b = cluster.mount();
  EXPECT_TRUE(waitFor([&] { return mountGauge(a, "cairn_client_lock_bound") == 1100; }, 5000));
  EXPECT_TRUE(waitFor([&] { return mountGauge(a, "cairn_client_locks_held") <= 1100; }, 5000))
      << mountGauge(a, "cairn_client_locks_held");
  // What the server holds for a follows (the give-backs have reached it).
  EXPECT_TRUE(waitFor(
      [&] {
        uint64_t total = jsonNumber(cluster.status(0), "locksGranted");
        return total <= 1100 + mountGauge(b, "cairn_client_locks_held") + 50;
      },
      5000));
  EXPECT_TRUE(contains(cluster.serverLog(0), "a share of 1100 locks each"));
  // Coherent through it: b changes and removes what a had cached, a reads it all again.
  writeAll(b + "/d/f7", "changed");
  ASSERT_EQ(unlink((b + "/d/f8").c_str()), 0);
  EXPECT_EQ(readWhole(a + "/d/f7"), "changed");
  EXPECT_FALSE(exists(a + "/d/f8"));
  for (int i = 0; i < FILES; i += 97) {
    if (i == 7 || i == 8) continue;
    EXPECT_EQ(readWhole(a + "/d/f" + std::to_string(i)), std::to_string(i)) << i;
  }

  cluster.unmount(b);
  EXPECT_TRUE(waitFor([&] { return mountGauge(a, "cairn_client_lock_bound") == 2200; }, 5000));
}

// A client allowed few names caches no more of them, nor lets its kernel keep more, however
// large the directories it lists; what it answers past the bound comes from the server.
TEST_F(Coherence, ABoundedNameCacheStaysBoundedAndCoherent) {
  TestCluster cluster;
  std::string small = cluster.mount("name_limit=50");
  constexpr int FILES = 300;
  ASSERT_EQ(mkdir((small + "/d").c_str(), 0755), 0);
  for (int i = 0; i < FILES; ++i) writeAll(small + "/d/f" + std::to_string(i), std::to_string(i));
  for (int round = 0; round < 2; ++round) {
    ASSERT_EQ(run({"/bin/ls", "-l", small + "/d"}).status, 0);
    for (int i = 0; i < FILES; ++i) {
      ASSERT_EQ(readWhole(small + "/d/f" + std::to_string(i)), std::to_string(i)) << i;
    }
    EXPECT_FALSE(exists(small + "/d/none"));
  }
  uint64_t names = mountGauge(small, "cairn_client_cached_names");
  uint64_t kernel = mountGauge(small, "cairn_client_kernel_names");
  EXPECT_LE(names, 50u);
  EXPECT_LE(kernel, 50u);
  EXPECT_GT(names, 0u);  // it did cache, up to the bound
  // Names past the bound are not "known absent": another client's changes show.
  std::string other = cluster.mount();
  writeAll(other + "/d/new", "new");
  ASSERT_EQ(unlink((other + "/d/f299").c_str()), 0);
  ASSERT_EQ(rename((other + "/d/f0").c_str(), (other + "/d/g0").c_str()), 0);
  EXPECT_EQ(readWhole(small + "/d/new"), "new");
  EXPECT_FALSE(exists(small + "/d/f299"));
  EXPECT_FALSE(exists(small + "/d/f0"));
  EXPECT_EQ(readWhole(small + "/d/g0"), "0");
  EXPECT_EQ(run({"/bin/sh", "-c", "ls " + small + "/d | wc -l"}).out, std::to_string(FILES) + "\n");
}

// A client that stops answering (its daemon stopped, as a hung host would be) holds a lock
// another client needs: the other proceeds once the stuck one is evicted, and the stuck one,
// when it runs again, gets EIO on the file it had open and works normally otherwise.
TEST_F(Coherence, AStuckClientIsEvictedAndNobodyHangs) {
  TestCluster::Options options;
  options.metaArgs = {"--lock-timeout", "2"};
  TestCluster cluster(options);
  std::string ma = cluster.mount(), mb = cluster.mount();
  writeAll(ma + "/f", "before");
  int fa = open((ma + "/f").c_str(), O_RDONLY);
  ASSERT_GE(fa, 0);
  ASSERT_EQ(preadAll(fa), "before");  // A holds the file's locks
  cluster.signalMount(0, SIGSTOP);
  auto started = std::chrono::steady_clock::now();
  writeAll(mb + "/f", "after!");
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_LT(waited, 10.0);
  EXPECT_EQ(readWhole(mb + "/f"), "after!");
  // Before anything forks: a child closing its copy of `fa` would wait on the stopped daemon.
  cluster.signalMount(0, SIGCONT);
  EXPECT_EQ(jsonNumber(cluster.status(0), "evictions"), 1u);
  std::string old = preadAll(fa);
  EXPECT_TRUE(old == "<Input/output error>" || old == "after!") << old;
  close(fa);
  EXPECT_TRUE(waitFor([&] { return readWhole(ma + "/f") == "after!"; }, 10000));
}

// A client killed outright while holding locks and dirty pages: the others wait at most the
// lock timeout.
TEST_F(Coherence, AKilledClientDelaysOthersAtMostTheLockTimeout) {
  TestCluster::Options options;
  options.metaArgs = {"--lock-timeout", "2"};
  TestCluster cluster(options);
  std::string ma = cluster.mount(), mb = cluster.mount();
  writeAll(ma + "/f", std::string(4096, '.'));
  pid_t child = fork();
  if (child == 0) {
    // Dirties a page through a shared mapping and waits to be killed with its mount.
    int fd = open((ma + "/f").c_str(), O_RDWR);
    void* map = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) _exit(1);
    memcpy(map, "lost", 4);
    pause();
    _exit(0);
  }
  usleep(300 * 1000);
  cluster.killMount(0);
  auto started = std::chrono::steady_clock::now();
  writeAll(mb + "/f", "survivor");
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_LT(waited, 10.0);
  EXPECT_EQ(readWhole(mb + "/f").substr(0, 8), "survivor");
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
}

}  // namespace
}  // namespace cairn::test
