// Asynchronous create, unlink and rmdir (fusefs/async_dirops.h): a client holding PW on a
// directory's names answers creates of names it knows free, unlinks of names it has cached, and
// rmdirs of directories it knows empty, without waiting for the metadata server. What an
// application was told still holds everywhere: another client sees the names made or gone at
// once, a crash of the server loses none of them, an rmdir's request waits for the unlinks in
// its directory, and an eviction drops what the server never applied.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "rpc/time_order.h"
#include "tests/integration/cluster.h"

namespace cairn::test {
namespace {

uint64_t ahead(const std::string& mnt) {
  return mountGauge(mnt, "cairn_client_unlinks_ahead_total", false);
}

// Operations answered ahead that the server refused or never applied.
uint64_t failedAhead(const std::string& mnt) {
  return mountGauge(mnt, "cairn_client_dirops_ahead_failed_total", false);
}

uint64_t createdAhead(const std::string& mnt) {
  return mountGauge(mnt, "cairn_client_creates_ahead_total", false);
}

// Creates DIR/c0, c1, ... until one is answered ahead (the first ones wait for the server while
// the directory's PW and the inode numbers are on their way); returns the next index.
int createUntilAhead(const std::string& mnt, const std::string& dir, int n) {
  uint64_t before = createdAhead(mnt);
  for (int i = 0; i < n; ++i) {
    int fd = creat((dir + "/c" + std::to_string(i)).c_str(), 0644);
    EXPECT_GE(fd, 0) << strerror(errno);
    close(fd);
    if (createdAhead(mnt) > before) return i + 1;
  }
  ADD_FAILURE() << "no create was answered ahead";
  return n;
}

void makeFiles(const std::string& dir, int n) {
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0) << dir << ": " << strerror(errno);
  for (int i = 0; i < n; ++i) {
    int fd = creat((dir + "/f" + std::to_string(i)).c_str(), 0644);
    ASSERT_GE(fd, 0) << strerror(errno);
    close(fd);
  }
}

std::set<std::string> names(const std::string& dir) {
  std::set<std::string> out;
  DIR* d = opendir(dir.c_str());
  EXPECT_NE(d, nullptr) << dir << ": " << strerror(errno);
  if (d == nullptr) return out;
  while (struct dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.insert(n);
  }
  closedir(d);
  return out;
}

// fsync of a directory: 0, or the errno it failed with (-1 if it could not be opened).
int syncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return -1;
  int err = fsync(fd) == 0 ? 0 : errno;
  close(fd);
  return err;
}

// The names of an open directory, read from its start.
std::set<std::string> namesAt(int fd) {
  std::set<std::string> out;
  DIR* d = fdopendir(dup(fd));
  EXPECT_NE(d, nullptr) << strerror(errno);
  if (d == nullptr) return out;
  rewinddir(d);
  while (struct dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.insert(n);
  }
  closedir(d);
  return out;
}

// Through mount W, makes DIR with files f0..f(n-1) and x, x with the lowest inode number of
// them (made first, then moved in), and has client C cache x's attributes: an unlink of x then
// waits on the server for C before it locks DIR. (W answers nothing ahead: the client that
// unlinks then takes PW on DIR from locks nobody else wanted, and C's PR stays on x.)
void makeHeldUpFile(const std::string& w, const std::string& c, const std::string& dir, int n) {
  writeWhole(w + dir + "-x", "");
  makeFiles(w + dir, n);
  ASSERT_EQ(rename((w + dir + "-x").c_str(), (w + dir + "/x").c_str()), 0);
  struct stat st;
  ASSERT_EQ(stat((c + dir + "/x").c_str(), &st), 0);
}

// Unlinks f<from>, f<from+1>, ... until one is answered ahead (the first ones wait for the
// server while the directory's PW is on its way); returns the next index.
int unlinkUntilAhead(const std::string& mnt, const std::string& dir, int n, int from = 0) {
  uint64_t before = ahead(mnt);
  for (int i = from; i < n; ++i) {
    EXPECT_EQ(unlink((dir + "/f" + std::to_string(i)).c_str()), 0) << strerror(errno);
    if (ahead(mnt) > before) return i + 1;
  }
  ADD_FAILURE() << "no unlink was answered ahead";
  return n;
}

// With the metadata server stopped, runs op(i) for i in [from, to) in a thread of its own: every
// one must be answered at once, and succeed. Then `meanwhile`, and the server dies with the
// requests unread (kill -9) and comes back; the directory's fsync waits for their replies.
void answeredWhileTheServerHangsThenCrash(TestCluster& cluster, const std::string& dir, int from,
                                          int to, const std::function<bool(int)>& op,
                                          const std::function<void()>& meanwhile) {
  cluster.signalServer(0, SIGSTOP);
  std::atomic<bool> done{false};
  std::atomic<int> failed{0};
  std::thread app([&] {
    for (int i = from; i < to; ++i) {
      if (!op(i)) ++failed;
    }
    done = true;
  });
  // Answered with the server stopped: the mount did not wait for it.
  bool answered = waitFor([&] { return done.load(); }, 10000);
  EXPECT_TRUE(answered);
  meanwhile();
  // The server dies with the requests unread; the client sends them again to the new one.
  cluster.stopServer(0, SIGKILL);
  app.join();
  EXPECT_EQ(failed.load(), 0);
  ASSERT_TRUE(cluster.startServer(0));
  EXPECT_EQ(syncDir(dir), 0);  // waits for their replies
}

TEST(AsyncUnlink, AnotherClientSeesUnlinksAnsweredAheadAtOnce) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  const int n = 300;
  makeFiles(a + "/d", n);
  int next = unlinkUntilAhead(a, a + "/d", n);
  uint64_t before = ahead(a);
  for (int i = next; i < n - 1; ++i) {
    ASSERT_EQ(unlink((a + "/d/f" + std::to_string(i)).c_str()), 0) << strerror(errno);
  }
  // Right after the last unlink returned: B's listing calls A's lock back, which waits for them.
  auto left = names(b + "/d");
  EXPECT_EQ(left, std::set<std::string>{"f" + std::to_string(n - 1)});
  EXPECT_GE(ahead(a), before + (n - 1 - next) / 2);
  // B makes a name A unlinked; A sees it (its lock went back).
  int fd = open((b + "/d/f5").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
  EXPECT_GE(fd, 0) << strerror(errno);
  close(fd);
  struct stat st;
  EXPECT_EQ(stat((a + "/d/f5").c_str(), &st), 0);
  EXPECT_EQ(failedAhead(a), 0u);
}

// Once another client looked into a directory, A leaves its PW there alone for a while (no
// back and forth at every call), and then takes it again: the unlinks are answered ahead anew.
TEST(AsyncUnlink, ADirectoryAnotherClientLookedIntoIsAnsweredAheadAgainLater) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  const int n = 300;
  makeFiles(a + "/d", n);
  int next = unlinkUntilAhead(a, a + "/d", n);
  EXPECT_EQ(names(b + "/d").size(), size_t(n - next));  // calls A's PW back
  uint64_t before = ahead(a);
  for (int i = next; i < next + 20; ++i) {
    ASSERT_EQ(unlink((a + "/d/f" + std::to_string(i)).c_str()), 0) << strerror(errno);
  }
  EXPECT_EQ(ahead(a), before);  // contended: each unlink waited for the server
  std::this_thread::sleep_for(std::chrono::seconds(6));
  next = unlinkUntilAhead(a, a + "/d", n, next + 20);
  EXPECT_EQ(names(b + "/d").size(), size_t(n - next));
  EXPECT_EQ(failedAhead(a), 0u);
}

// Mounts A and B, C (mount 2, to be stopped) and W, on a cluster whose lock timeout is 2 s,
// with /d made by makeHeldUpFile: A's unlink of /d/x will be held up on the server by C.
struct HeldUpDirectory {
  static TestCluster::Options options() {
    TestCluster::Options o;
    o.metaArgs = {"--lock-timeout", "2"};
    return o;
  }
  TestCluster cluster{options()};
  std::string a = cluster.mount(), b = cluster.mount(), c = cluster.mount(),
              w = cluster.mount("no_async_dirops");
  HeldUpDirectory() { makeHeldUpFile(w, c, "/d", 20); }
};

// C's callback for the unlink of x is out; A's for the listing must come well after it, or A's
// own lock timeout (its give-back waits for that unlink, which waits for C's eviction) runs
// out with C's, and A is evicted too (told at once, it drops what it answered ahead).
void waitPastC() {
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
}

// A's unlink of a file a hung client C caches is held up on the server (C is called back, and
// evicted after the lock timeout) before it locks the directory (the file's inode number is the
// lower one: it was made first and moved in). B's listing meanwhile must not show the file A
// was told is gone: the listing calls A's PW back, which waits for the unlink.
TEST(AsyncUnlink, AListingElsewhereWaitsForAnUnlinkHeldUpOnTheServer) {
  HeldUpDirectory held;
  auto& cluster = held.cluster;
  const std::string &a = held.a, &b = held.b;
  // Listed through a descriptor opened now: no path walk later, nothing but the listing.
  int dfd = open((b + "/d").c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(dfd, 0) << strerror(errno);
  int next = unlinkUntilAhead(a, a + "/d", 10);
  cluster.signalMount(2, SIGSTOP);
  uint64_t before = ahead(a);
  ASSERT_EQ(unlink((a + "/d/x").c_str()), 0) << strerror(errno);
  EXPECT_EQ(ahead(a), before + 1);
  waitPastC();
  std::set<std::string> expected;
  for (int i = next; i < 20; ++i) expected.insert("f" + std::to_string(i));
  EXPECT_EQ(namesAt(dfd), expected);
  close(dfd);
  cluster.signalMount(2, SIGCONT);
}

// The same hold-up, and A goes on unlinking while B's listing calls its PW back: those unlinks
// wait for the server (a stream of them answered ahead would keep the lock from going back).
// The lock stops counting as held when the callback comes, though its give-back waits.
TEST(AsyncUnlink, NothingIsAnsweredAheadWhileTheDirectorysLockIsCalledBack) {
  HeldUpDirectory held;
  auto& cluster = held.cluster;
  const std::string &a = held.a, &b = held.b;
  int next = unlinkUntilAhead(a, a + "/d", 10);
  cluster.signalMount(2, SIGSTOP);
  ASSERT_EQ(unlink((a + "/d/x").c_str()), 0) << strerror(errno);
  waitPastC();
  std::set<std::string> listed;
  std::thread lister([&] { listed = names(b + "/d"); });
  // Time for the callback to reach A; its PW waits for the unlink of x (C is evicted after 2 s).
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  uint64_t before = ahead(a);
  EXPECT_EQ(unlink((a + "/d/f" + std::to_string(next)).c_str()), 0) << strerror(errno);
  EXPECT_EQ(ahead(a), before);
  lister.join();
  EXPECT_EQ(listed.count("x"), 0u);
  cluster.signalMount(2, SIGCONT);
  EXPECT_EQ(names(a + "/d").count("f" + std::to_string(next)), 0u);
  EXPECT_EQ(failedAhead(a), 0u);
}

// The same hold-up: A's rmdir of the directory it emptied is answered at once, and its request
// leaves only once the unlinks in the directory are answered (else: "not empty").
TEST(AsyncUnlink, ARemovedDirectoryWaitsForTheUnlinksInIt) {
  TestCluster::Options options;
  options.metaArgs = {"--lock-timeout", "2"};
  TestCluster cluster(options);
  auto a = cluster.mount();
  auto c = cluster.mount();
  auto w = cluster.mount("no_async_dirops");
  makeFiles(w + "/top", 5);
  makeHeldUpFile(w, c, "/top/d", 10);
  // A lists it: the names it then removes leave it known empty.
  EXPECT_EQ(names(a + "/top/d").size(), 11u);
  struct stat st;
  int next = unlinkUntilAhead(a, a + "/top/d", 10);
  // PW on top too; the unlinks there call C's locks on top back (C keeps only x's attributes,
  // or the rmdir below would wait for C too).
  int nextTop = unlinkUntilAhead(a, a + "/top", 5);
  cluster.signalMount(1, SIGSTOP);
  for (int i = next; i < 10; ++i) {
    ASSERT_EQ(unlink((a + "/top/d/f" + std::to_string(i)).c_str()), 0) << strerror(errno);
  }
  uint64_t before = ahead(a);
  ASSERT_EQ(unlink((a + "/top/d/x").c_str()), 0) << strerror(errno);
  EXPECT_EQ(ahead(a), before + 1);
  // Emptied under A's locks: answered ahead too, and sent once the unlinks in it are answered.
  EXPECT_EQ(rmdir((a + "/top/d").c_str()), 0) << strerror(errno);
  EXPECT_EQ(ahead(a), before + 2);
  EXPECT_NE(stat((a + "/top/d").c_str(), &st), 0);
  EXPECT_EQ(syncDir(a + "/top"), 0);  // after C's eviction lets the unlink through
  cluster.signalMount(1, SIGCONT);
  EXPECT_EQ(failedAhead(a), 0u);
  std::set<std::string> left;
  for (int i = nextTop; i < 5; ++i) left.insert("f" + std::to_string(i));
  auto b = cluster.mount();
  EXPECT_EQ(names(b + "/top"), left);
}

TEST(AsyncUnlink, UnlinksAnsweredWhileTheServerHangsSurviveItsCrash) {
  TestCluster::Options options;
  options.metaArgs = {"--recovery-window", "5"};
  TestCluster cluster(options);
  auto a = cluster.mount();
  const int n = 100;
  makeFiles(a + "/d", n);
  int next = unlinkUntilAhead(a, a + "/d", n);
  ASSERT_NO_FATAL_FAILURE(answeredWhileTheServerHangsThenCrash(
      cluster, a + "/d", next, n,
      [&](int i) { return unlink((a + "/d/f" + std::to_string(i)).c_str()) == 0; },
      [&] {
        struct stat st;
        EXPECT_NE(stat((a + "/d/f" + std::to_string(n - 1)).c_str(), &st), 0);
      }));
  auto b = cluster.mount();
  EXPECT_TRUE(names(b + "/d").empty());
  EXPECT_EQ(failedAhead(a), 0u);
}

// A file open here and unlinked ahead when the server dies: recovery re-opens it before the
// unlink is sent again (and does not wait for it), so the descriptor goes on working.
TEST(AsyncUnlink, AnOpenFileUnlinkedAheadStaysOpenAcrossACrash) {
  TestCluster::Options options;
  options.metaArgs = {"--recovery-window", "5"};
  TestCluster cluster(options);
  auto a = cluster.mount();
  makeFiles(a + "/d", 10);
  writeWhole(a + "/d/kept", "still here");
  int fd = open((a + "/d/kept").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  unlinkUntilAhead(a, a + "/d", 10);
  cluster.signalServer(0, SIGSTOP);
  ASSERT_EQ(unlink((a + "/d/kept").c_str()), 0) << strerror(errno);
  cluster.stopServer(0, SIGKILL);
  ASSERT_TRUE(cluster.startServer(0));
  std::atomic<bool> done{false};
  std::string got;
  std::thread reader([&] {
    char buf[64] = {};
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    got = n < 0 ? std::string("<") + strerror(errno) + ">" : std::string(buf, size_t(n));
    done = true;
  });
  bool answered = waitFor([&] { return done.load(); }, 20000);
  if (!answered) cluster.killMount(0);  // frees the reader so the test can end
  reader.join();
  ASSERT_TRUE(answered) << "the mount did not recover";
  EXPECT_EQ(got, "still here");
  EXPECT_EQ(syncDir(a + "/d"), 0);
  struct stat st;
  EXPECT_NE(stat((a + "/d/kept").c_str(), &st), 0);
  close(fd);
}

// The metadata server dies (kill -9) and comes back as a forced start: its clients are evicted.
bool restartForced(TestCluster& cluster) {
  cluster.stopServer(0, SIGKILL);
  return cluster.startServer(0, {"--version-override", "9.9.9", "--force"});
}

// After an eviction dropped the unlinks mount `a` answered ahead in directory `rel`: f<from> to
// f<to - 1> are all there still, through `a` and through a new mount.
void expectFilesLeft(TestCluster& cluster, const std::string& a, const std::string& rel, int from,
                     int to) {
  std::set<std::string> expected;
  for (int i = from; i < to; ++i) expected.insert("f" + std::to_string(i));
  EXPECT_EQ(names(a + "/" + rel), expected);
  auto b = cluster.mount();
  EXPECT_EQ(names(b + "/" + rel), expected);
}

// The server dies with an unlink answered ahead unread, and comes back as a forced start (its
// clients are evicted: what they were answered under is not trusted). The unlink is not sent
// after the fact to a server on which B may have made the name again; the directory's fsync
// on A reports EIO instead.
TEST(AsyncUnlink, AnEvictedClientDropsTheUnlinksItAnsweredAhead) {
  TestCluster cluster;
  auto a = cluster.mount();
  makeFiles(a + "/d", 20);
  int next = unlinkUntilAhead(a, a + "/d", 10);
  // (The unlink answered ahead there lands first: it may still be gathering for its batch.)
  ASSERT_EQ(syncDir(a + "/d"), 0);
  cluster.signalServer(0, SIGSTOP);
  ASSERT_EQ(unlink((a + "/d/f19").c_str()), 0) << strerror(errno);
  ASSERT_TRUE(restartForced(cluster));
  EXPECT_EQ(syncDir(a + "/d"), EIO);
  EXPECT_EQ(syncDir(a + "/d"), 0);  // reported once
  EXPECT_EQ(failedAhead(a), 1u);
  expectFilesLeft(cluster, a, "d", next, 20);
}

// Two batches of the directory are on their way to the hung server when a third unlink is
// answered ahead: it waits in the mount's queue. The server comes back as a forced start (A is
// evicted): the batches on their way are not applied, and the one still queued is not sent to
// the new session either (its sender dropped it with the eviction).
TEST(AsyncUnlink, AnEvictedClientDropsTheUnlinksStillQueued) {
  TestCluster cluster;
  auto a = cluster.mount();
  makeFiles(a + "/d", 20);
  int next = unlinkUntilAhead(a, a + "/d", 10);
  // (The unlink answered ahead there lands first: it may still be gathering for its batch.)
  ASSERT_EQ(syncDir(a + "/d"), 0);
  cluster.signalServer(0, SIGSTOP);
  for (int i : {19, 18, 17}) {
    ASSERT_EQ(unlink((a + "/d/f" + std::to_string(i)).c_str()), 0) << strerror(errno);
    // Longer than the mount gathers a directory's updates: each goes alone (the third is held
    // back by the two on their way).
    usleep(50 * 1000);
  }
  ASSERT_TRUE(restartForced(cluster));
  EXPECT_EQ(syncDir(a + "/d"), EIO);
  EXPECT_EQ(failedAhead(a), 3u);
  expectFilesLeft(cluster, a, "d", next, 20);
}

// Nobody waits for creates and unlinks answered ahead but later requests about them, so a
// directory's gather a moment and leave several to a request (before, each went alone unless
// the server fell behind): a loop of creates, then of unlinks, sends a fraction of the requests.
TEST(AsyncUnlink, UpdatesAnsweredAheadGatherIntoBatches) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0755), 0);
  const int n = 400;
  int made = createUntilAhead(a, a + "/d", n);
  uint64_t batched = mountGauge(a, "cairn_client_batched_updates_total", false);
  uint64_t batches = mountGauge(a, "cairn_client_update_batches_total", false);
  for (int i = made; i < n; ++i) {
    int fd = creat((a + "/d/c" + std::to_string(i)).c_str(), 0644);
    ASSERT_GE(fd, 0) << strerror(errno);
    close(fd);
  }
  for (int i = 0; i < n; i += 2) {
    ASSERT_EQ(unlink((a + "/d/c" + std::to_string(i)).c_str()), 0) << strerror(errno);
  }
  EXPECT_EQ(syncDir(a + "/d"), 0);
  uint64_t updates = (n - made) + n / 2;
  uint64_t inBatches = mountGauge(a, "cairn_client_batched_updates_total", false) - batched;
  uint64_t requests = mountGauge(a, "cairn_client_update_batches_total", false) - batches;
  EXPECT_GE(inBatches, updates / 2) << requests << " batches";
  EXPECT_LE(requests, inBatches / 2);
  std::set<std::string> expected;
  for (int i = 1; i < n; i += 2) expected.insert("c" + std::to_string(i));
  EXPECT_EQ(names(b + "/d"), expected);
  EXPECT_EQ(failedAhead(a), 0u);
}

TEST(AsyncUnlink, ATreeRemovedWithRmIsGoneEverywhere) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  ASSERT_EQ(mkdir((a + "/t").c_str(), 0755), 0);
  for (int d = 0; d < 8; ++d) {
    auto sub = a + "/t/s" + std::to_string(d);
    makeFiles(sub, 40);
    makeFiles(sub + "/deeper", 10);
  }
  EXPECT_EQ(names(b + "/t").size(), 8u);
  // rmdir of each directory right after the unlinks in it: it waits for them (ENOTEMPTY else).
  auto r = run({"/bin/rm", "-rf", a + "/t"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_GT(ahead(a), 100u);
  struct stat st;
  EXPECT_NE(stat((b + "/t").c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_TRUE(names(b).empty());
}

// Updates answered ahead that pile up while the server is busy (here: stopped) go to it several
// to a request when it answers again, each applied as it would be alone.
TEST(AsyncUnlink, UnlinksAndCreatesHeldUpByAHungServerGoInBatches) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  const int n = 300;
  makeFiles(a + "/d", n);
  int next = unlinkUntilAhead(a, a + "/d", n);
  int made = createUntilAhead(a, a + "/d", n);
  uint64_t before = mountGauge(a, "cairn_client_batched_updates_total", false);
  // Creates ahead draw on inode numbers set aside for the mount (at least 256 of them, a
  // refill may be on its way to the stopped server): 100 made while it hangs.
  const int creates = 100;
  cluster.signalServer(0, SIGSTOP);
  std::atomic<bool> done{false};
  std::thread app([&] {
    for (int i = next; i < n; ++i) {
      EXPECT_EQ(unlink((a + "/d/f" + std::to_string(i)).c_str()), 0) << strerror(errno);
      if (i - next < creates) {
        int fd = creat((a + "/d/c" + std::to_string(made + i)).c_str(), 0644);
        EXPECT_GE(fd, 0) << strerror(errno);
        close(fd);
      }
    }
    done = true;
  });
  bool answered = waitFor([&] { return done.load(); }, 10000);
  EXPECT_TRUE(answered);
  cluster.signalServer(0, SIGCONT);
  app.join();
  EXPECT_EQ(syncDir(a + "/d"), 0);
  // Two went alone before the rest piled up behind them.
  EXPECT_GE(mountGauge(a, "cairn_client_batched_updates_total", false),
            before + (n - next) + creates - 2);
  EXPECT_GE(mountGauge(a, "cairn_client_update_batches_total", false), 2u);
  auto left = names(b + "/d");
  for (int i = 0; i < n; ++i) EXPECT_EQ(left.count("f" + std::to_string(i)), 0u) << i;
  for (int i = next; i < next + creates; ++i) {
    EXPECT_EQ(left.count("c" + std::to_string(made + i)), 1u) << i;
  }
  EXPECT_EQ(failedAhead(a), 0u);
  EXPECT_NE(cluster.status(0).find("meta.batch"), std::string::npos);
}

// Files a client removed itself cost the kernel no invalidation: the kernel did the unlink and
// evicts the inode itself (before, each unlink sent the kernel two, attributes and pages, each
// on the notifier's thread, each answered "no such inode"). What replaces them is right: new
// files under the same names read back as written, here and on the other mount.
TEST(AsyncUnlink, FilesRemovedHereCostTheKernelNoInvalidation) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  const int n = 200;
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0755), 0);
  for (int i = 0; i < n; ++i)
    writeWhole(a + "/d/f" + std::to_string(i), "old " + std::to_string(i));
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(readWhole(a + "/d/f" + std::to_string(i)), "old " + std::to_string(i));
  }
  uint64_t before = mountGauge(a, "cairn_client_kernel_invalidations_total", false);
  uint64_t aheadBefore = ahead(a);
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(unlink((a + "/d/f" + std::to_string(i)).c_str()), 0) << strerror(errno);
  }
  EXPECT_EQ(syncDir(a + "/d"), 0);
  EXPECT_GT(ahead(a), aheadBefore + n / 2);
  EXPECT_LT(mountGauge(a, "cairn_client_kernel_invalidations_total", false), before + n / 10);
  EXPECT_TRUE(names(b + "/d").empty());
  for (int i = 0; i < n; i += 20) writeWhole(a + "/d/f" + std::to_string(i), "new");
  for (int i = 0; i < n; i += 20) {
    EXPECT_EQ(readWhole(a + "/d/f" + std::to_string(i)), "new");
    EXPECT_EQ(readWhole(b + "/d/f" + std::to_string(i)), "new");
  }
  EXPECT_EQ(failedAhead(a), 0u);
}

// What A's application was told of each file it made ahead is what the server made: B, right
// after, lists every name and sees the same inode, owner, group (the directory's, set-group-ID),
// mode, times and contents.
TEST(AsyncCreate, AnotherClientSeesFilesCreatedAheadAsTheirMakerDoes) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0755), 0);
  ASSERT_EQ(chown((a + "/d").c_str(), 0, 1234), 0);
  ASSERT_EQ(chmod((a + "/d").c_str(), 02775), 0);
  const int n = 200;
  int next = createUntilAhead(a, a + "/d", n);
  uint64_t before = createdAhead(a);
  std::map<std::string, struct stat> told;
  for (int i = next; i < n; ++i) {
    auto name = "c" + std::to_string(i);
    int fd = open((a + "/d/" + name).c_str(), O_CREAT | O_EXCL | O_WRONLY, 0640);
    ASSERT_GE(fd, 0) << strerror(errno);
    ASSERT_EQ(fstat(fd, &told[name]), 0);
    if (i % 10 == 0) {
      ASSERT_EQ(write(fd, name.data(), name.size()), ssize_t(name.size()));
    }
    close(fd);
  }
  EXPECT_GE(createdAhead(a), before + (n - next) / 2);
  // B's listing calls A's PW back, which waits for the creates.
  EXPECT_EQ(names(b + "/d").size(), size_t(n));
  for (auto& [name, st] : told) {
    struct stat there;
    ASSERT_EQ(stat((b + "/d/" + name).c_str(), &there), 0) << name;
    EXPECT_EQ(there.st_ino, st.st_ino) << name;
    EXPECT_EQ(there.st_mode, st.st_mode) << name;
    EXPECT_EQ(there.st_uid, st.st_uid) << name;
    EXPECT_EQ(there.st_gid, 1234u) << name;
    EXPECT_EQ(st.st_gid, 1234u) << name;
    int i = std::stoi(name.substr(1));
    if (i % 10 != 0) {  // (a write sets the times again)
      EXPECT_EQ(there.st_mtim.tv_sec, st.st_mtim.tv_sec) << name;
      EXPECT_EQ(there.st_mtim.tv_nsec, st.st_mtim.tv_nsec) << name;
      EXPECT_EQ(there.st_ctim.tv_nsec, st.st_ctim.tv_nsec) << name;
    }
    EXPECT_EQ(readWhole(b + "/d/" + name), i % 10 == 0 ? name : "") << name;
  }
  EXPECT_EQ(failedAhead(a), 0u);
}

// A name made, removed and made again, quickly and many times: the requests reach the server
// in the order the application made them (a create waits for the removal of its name on its
// way, an unlink for the create of its file).
TEST(AsyncCreate, MakingAndRemovingOneNameKeepsItsOrder) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0755), 0);
  createUntilAhead(a, a + "/d", 50);
  for (int i = 0; i < 100; ++i) {
    writeWhole(a + "/d/x", "round " + std::to_string(i));
    ASSERT_EQ(unlink((a + "/d/x").c_str()), 0) << strerror(errno);
    int fd = creat((a + "/d/x").c_str(), 0644);
    ASSERT_GE(fd, 0) << strerror(errno);
    close(fd);
    ASSERT_EQ(unlink((a + "/d/x").c_str()), 0) << strerror(errno);
  }
  writeWhole(a + "/d/x", "last");
  EXPECT_EQ(syncDir(a + "/d"), 0);
  EXPECT_EQ(readWhole(b + "/d/x"), "last");
  EXPECT_EQ(failedAhead(a), 0u);
}

// Creates answered while the server hangs, which then dies with them unread: the client sends
// them again to the new instance (the numbers they use were reserved, and synced, before), and
// every file is there.
TEST(AsyncCreate, FilesCreatedWhileTheServerHangsSurviveItsCrash) {
  TestCluster::Options options;
  options.metaArgs = {"--recovery-window", "5"};
  TestCluster cluster(options);
  auto a = cluster.mount();
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0755), 0);
  int next = createUntilAhead(a, a + "/d", 50);
  const int n = next + 100;
  struct stat st;
  ASSERT_NO_FATAL_FAILURE(answeredWhileTheServerHangsThenCrash(
      cluster, a + "/d", next, n,
      [&](int i) {
        int fd = creat((a + "/d/c" + std::to_string(i)).c_str(), 0644);
        close(fd);
        return fd >= 0;
      },
      [&] { EXPECT_EQ(stat((a + "/d/c" + std::to_string(n - 1)).c_str(), &st), 0); }));
  auto b = cluster.mount();
  EXPECT_EQ(names(b + "/d").size(), size_t(n));
  struct stat there;
  ASSERT_EQ(stat((b + "/d/c" + std::to_string(n - 1)).c_str(), &there), 0);
  EXPECT_EQ(there.st_ino, st.st_ino);
  EXPECT_EQ(failedAhead(a), 0u);
}

// A forced start evicts A with a create answered ahead unread: the file is not made after the
// fact (nor its data written anywhere); its descriptor and the directory's fsync report EIO.
TEST(AsyncCreate, AnEvictedClientDropsTheFilesItCreatedAhead) {
  TestCluster cluster;
  auto a = cluster.mount();
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0755), 0);
  int next = createUntilAhead(a, a + "/d", 50);
  cluster.signalServer(0, SIGSTOP);
  // The file is held by a child of its own: a process this test forks (the server) must not
  // share it, or its close would wait for the server it is about to become.
  int ask[2], told[2];
  ASSERT_EQ(pipe(ask), 0);
  ASSERT_EQ(pipe(told), 0);
  pid_t holder = fork();
  if (holder == 0) {
    int fd = open((a + "/d/new").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
    char ok = fd >= 0 && write(fd, "early", 5) == 5 ? 'y' : 'n';  // queued behind the create
    char go;
    if (write(told[1], &ok, 1) != 1 || read(ask[0], &go, 1) != 1) _exit(1);
    ok = write(fd, "x", 1) == -1 && errno == EIO ? 'y' : 'n';
    if (write(told[1], &ok, 1) != 1) _exit(1);
    _exit(0);
  }
  char reply = 0;
  ASSERT_EQ(read(told[0], &reply, 1), 1);
  EXPECT_EQ(reply, 'y') << "the create and write were not answered at once";
  cluster.stopServer(0, SIGKILL);
  ASSERT_TRUE(cluster.startServer(0, {"--version-override", "9.9.9", "--force"}));
  EXPECT_EQ(syncDir(a + "/d"), EIO);
  ASSERT_EQ(write(ask[1], "g", 1), 1);
  ASSERT_EQ(read(told[0], &reply, 1), 1);
  EXPECT_EQ(reply, 'y') << "a write to the dropped file did not fail with EIO";
  int status = 0;
  waitpid(holder, &status, 0);
  for (int fd : {ask[0], ask[1], told[0], told[1]}) close(fd);
  EXPECT_EQ(failedAhead(a), 1u);
  auto b = cluster.mount();
  auto left = names(b + "/d");
  EXPECT_EQ(left.count("new"), 0u);
  EXPECT_EQ(left.size(), size_t(next));
  struct stat st;
  EXPECT_NE(stat((a + "/d/new").c_str(), &st), 0);
}

// The point of it all: an application making files, with contents, as fast as it can while the
// metadata server is restarted through controlled shutdowns (its caching locks, the PW with
// them, go back at each; creates answered ahead are written back first) sees no error, and
// every file it made is there afterwards, as it wrote it.
TEST(AsyncCreate, FilesCreatedAheadAcrossControlledRestartsAreAllThere) {
  TestCluster::Options options;
  options.metaArgs = {"--recovery-window", "1"};
  TestCluster cluster(options);
  auto a = cluster.mount();
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0755), 0);
  int pre = createUntilAhead(a, a + "/d", 50);
  uint64_t before = createdAhead(a);
  std::atomic<bool> stop{false};
  std::atomic<int> made{0}, failed{0};
  std::thread app([&] {
    for (int i = 0; !stop; ++i) {
      auto name = "f" + std::to_string(i);
      int fd = open((a + "/d/" + name).c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
      if (fd < 0 || write(fd, name.data(), name.size()) != ssize_t(name.size()) || close(fd)) {
        ++failed;
      }
      ++made;
    }
  });
  for (int round = 0; round < 3; ++round) {
    int at = made;
    EXPECT_TRUE(waitFor([&] { return made >= at + 200; }, 20000)) << "the application stalled";
    EXPECT_EQ(cluster.stopServer(0, SIGTERM), 0);  // a controlled shutdown
    ASSERT_TRUE(cluster.startServer(0));
  }
  int at = made;
  EXPECT_TRUE(waitFor([&] { return made >= at + 200; }, 20000)) << "the application stalled";
  stop = true;
  app.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(syncDir(a + "/d"), 0);
  EXPECT_GT(createdAhead(a), before + 100);
  EXPECT_EQ(failedAhead(a), 0u);
  auto b = cluster.mount();
  auto there = names(b + "/d");
  int n = made;
  EXPECT_EQ(there.size(), size_t(n + pre));
  for (int i = 0; i < n; i += 37) {
    auto name = "f" + std::to_string(i);
    EXPECT_EQ(readWhole(b + "/d/" + name), name);
  }
  EXPECT_EQ(cluster.mountLog(0).find("evicted"), std::string::npos);
}

// Another client fills the metadata target. The numbers a client holds for creates ahead came
// with room for their creates: every create it answered lands, and once its numbers are used
// up, the next creates wait for the server and get its ENOSPC. None is taken back later.
TEST(AsyncCreate, AFullMetadataTargetKeepsTheCreatesAnsweredAhead) {
  TestCluster::Options options;
  options.dataServers = 1;
  options.metaArgs = {"--map-size", std::to_string(24 << 20), "--metrics", "127.0.0.1:0"};
  TestCluster cluster(options);
  auto a = cluster.mount();
  auto b = cluster.mount();
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0755), 0);
  int pre = createUntilAhead(a, a + "/d", 50);
  ASSERT_EQ(mkdir((b + "/fill").c_str(), 0755), 0);
  int filled = 0;
  // B fills the target until it refuses. (Again and again: what LMDB freed becomes free space
  // again at each checkpoint.) Large values first, then small ones: LMDB keeps a large value in
  // pages in a row, which a map the updates have churned may lack while single pages are free.
  auto fill = [&]() {
    for (size_t size : {60000, 1000}) {
      std::string pad(size, 'p');
      for (;; ++filled) {
        // Files made ahead (by B) too: a setxattr that found no file would say ENOENT.
        auto path = b + "/fill/x" + std::to_string(filled);
        int fd = creat(path.c_str(), 0644);
        if (fd < 0) return errno;
        close(fd);
        if (setxattr(path.c_str(), "user.pad", pad.data(), pad.size(), 0) == 0) continue;
        if (errno != ENOSPC) return errno;
        ++filled;
        break;
      }
    }
    return ENOSPC;
  };
  int err = fill();
  ASSERT_EQ(err, ENOSPC) << strerror(err) << " after " << filled << " files";
  uint64_t before = createdAhead(a);
  std::vector<std::string> made;
  for (int i = 0; i < 5000; ++i) {
    auto name = "n" + std::to_string(i);
    int fd = creat((a + "/d/" + name).c_str(), 0644);
    if (fd < 0) {
      ASSERT_EQ(errno, ENOSPC) << strerror(errno);
      break;
    }
    close(fd);
    made.push_back(name);
    if (i % 50 == 49) {
      ASSERT_EQ(fill(), ENOSPC);
    }
  }
  EXPECT_LT(made.size(), 5000u) << "the target never refused a create";
  EXPECT_GT(createdAhead(a), before + 100) << "too few creates answered ahead to tell";
  EXPECT_EQ(syncDir(a + "/d"), 0);
  EXPECT_EQ(failedAhead(a), 0u);
  EXPECT_EQ(failedAhead(b), 0u);
  auto there = names(b + "/d");  // calls A's PW back, which waits for the creates
  EXPECT_EQ(there.size(), made.size() + pre);
  for (auto& name : made) EXPECT_EQ(there.count(name), 1u) << name;
  // Near full, updates waited for checkpoints to give back the pages the last one held (they
  // would have run out of room, the creates answered ahead among them, with a checkpoint every
  // 100 ms alone).
  auto metrics = httpGet(metricsAddress(cluster, 0), "/metrics");
  EXPECT_GT(metricValue(metrics, "cairn_room_checkpoints_total"), 0) << metrics;
  // The space comes back with the fill gone, and with it the creates ahead.
  for (int i = 0; i <= filled; ++i) unlink((b + "/fill/x" + std::to_string(i)).c_str());
  before = createdAhead(a);
  int more = 0;
  EXPECT_TRUE(waitFor(
      [&] {
        int fd = creat((a + "/d/m" + std::to_string(more++)).c_str(), 0644);
        if (fd >= 0) close(fd);
        return createdAhead(a) > before;
      },
      30000));
  EXPECT_EQ(failedAhead(a), 0u);
}

uint64_t mkdirsBeside(const std::string& mnt) {
  return mountGauge(mnt, "cairn_client_mkdirs_beside_total", false);
}

// tar's order: files made ahead in a directory, a directory in it, a file in that one. The
// mkdir does not wait for the creates before it (which may reach the server after it): the
// link counts stay right in its maker's cache, the directory's times do not go back on the
// server, and another client sees every name as made.
TEST(AsyncCreate, AMkdirDoesNotWaitForTheCreatesAheadBeforeIt) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0755), 0);
  int pre = createUntilAhead(a, a + "/d", 50);
  uint64_t before = mkdirsBeside(a);
  const int n = 40;
  for (int i = 0; i < n; ++i) {
    int fd = creat((a + "/d/f" + std::to_string(i)).c_str(), 0644);
    ASSERT_GE(fd, 0) << strerror(errno);
    close(fd);
    auto sub = a + "/d/s" + std::to_string(i);
    ASSERT_EQ(mkdir(sub.c_str(), 0750), 0) << strerror(errno);
    if (i == n - 1) break;  // (its times stay those of the mkdir)
    fd = creat((sub + "/inner").c_str(), 0600);
    ASSERT_GE(fd, 0) << strerror(errno);
    close(fd);
  }
  EXPECT_GE(mkdirsBeside(a), before + n / 2);
  struct stat st;
  ASSERT_EQ(stat((a + "/d").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, nlink_t(2 + n));
  EXPECT_EQ(syncDir(a + "/d"), 0);
  EXPECT_EQ(failedAhead(a), 0u);
  EXPECT_EQ(names(b + "/d").size(), size_t(pre + 2 * n));
  ASSERT_EQ(stat((b + "/d").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, nlink_t(2 + n));
  // The last change of d was the last mkdir in it.
  struct stat last;
  ASSERT_EQ(stat((b + "/d/s" + std::to_string(n - 1)).c_str(), &last), 0);
  EXPECT_FALSE(later(last.st_ctim, st.st_mtim)) << "d's mtime went back";
  EXPECT_FALSE(later(last.st_ctim, st.st_ctim)) << "d's ctime went back";
  for (int i = 0; i < n; ++i) {
    auto sub = b + "/d/s" + std::to_string(i);
    ASSERT_EQ(stat(sub.c_str(), &st), 0) << sub;
    EXPECT_TRUE(S_ISDIR(st.st_mode)) << sub;
    EXPECT_EQ(st.st_mode & 07777, 0750u) << sub;
    EXPECT_EQ(names(sub).size(), i == n - 1 ? 0u : 1u) << sub;
  }
}

uint64_t dirAttrsAhead(const std::string& mnt) {
  return mountGauge(mnt, "cairn_client_dir_attrs_ahead_total", false);
}

// tar's last steps for a directory it extracted: owner, mode, then times (its contents are made
// by then). A client that made the directory holds its attributes in PW and answers all three
// itself, while the server hangs; the times it set stay the directory's, not those of the
// creates in it still on their way, and another client sees all of it.
TEST(DirAttrsAhead, ADirectoryMadeHereHasItsOwnerModeAndTimesSetAheadAfterItsContents) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0700), 0);
  int next = createUntilAhead(a, a + "/d", 50);
  for (int i = next; i < next + 20; ++i) writeWhole(a + "/d/c" + std::to_string(i), "x");
  uint64_t before = dirAttrsAhead(a);
  cluster.signalServer(0, SIGSTOP);
  const timespec times[2] = {{1000000000, 5}, {1234567890, 0}};
  bool returned;
  {
    Background tar([&] {
      EXPECT_EQ(chown((a + "/d").c_str(), 4321, 1234), 0) << strerror(errno);
      EXPECT_EQ(chmod((a + "/d").c_str(), 02751), 0) << strerror(errno);
      EXPECT_EQ(utimensat(AT_FDCWD, (a + "/d").c_str(), times, 0), 0) << strerror(errno);
    });
    returned = tar.doneWithin(3000);
    cluster.signalServer(0, SIGCONT);
  }
  EXPECT_TRUE(returned) << "the changes waited for the hung server";
  EXPECT_EQ(dirAttrsAhead(a), before + 3);
  for (auto& mnt : {a, b}) {  // A from its cache; B after calling A's locks back
    struct stat st;
    ASSERT_EQ(stat((mnt + "/d").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode, S_IFDIR | 02751u) << mnt;
    EXPECT_EQ(st.st_uid, 4321u) << mnt;
    EXPECT_EQ(st.st_gid, 1234u) << mnt;
    EXPECT_EQ(st.st_mtim.tv_sec, 1234567890) << mnt;
    EXPECT_EQ(st.st_atim.tv_sec, 1000000000) << mnt;
  }
  EXPECT_EQ(names(b + "/d").size(), size_t(next + 20));
  EXPECT_EQ(failedAhead(a), 0u);
}

// After a change of a directory's attributes answered ahead, what would overtake it waits for
// it: a create in the directory goes to the server after the utimes, so the create's time is
// the directory's mtime in the end, here and elsewhere (as on a local filesystem).
TEST(DirAttrsAhead, ACreateAfterAChangeAheadLandsAfterIt) {
  TestCluster cluster;
  auto a = cluster.mount();
  auto b = cluster.mount();
  ASSERT_EQ(mkdir((a + "/d").c_str(), 0755), 0);
  createUntilAhead(a, a + "/d", 50);
  const timespec times[2] = {{UTIME_OMIT, 0}, {1234567890, 0}};
  uint64_t before = dirAttrsAhead(a);
  ASSERT_EQ(utimensat(AT_FDCWD, (a + "/d").c_str(), times, 0), 0);
  EXPECT_EQ(dirAttrsAhead(a), before + 1);
  writeWhole(a + "/d/after", "x");
  struct stat here, there;
  ASSERT_EQ(stat((a + "/d").c_str(), &here), 0);
  EXPECT_GT(here.st_mtim.tv_sec, 1234567890);
  ASSERT_EQ(stat((b + "/d").c_str(), &there), 0);
  EXPECT_EQ(there.st_mtim.tv_sec, here.st_mtim.tv_sec);
  EXPECT_EQ(there.st_mtim.tv_nsec, here.st_mtim.tv_nsec);
  EXPECT_EQ(readWhole(b + "/d/after"), "x");
  EXPECT_EQ(failedAhead(a), 0u);
}

}  // namespace
}  // namespace cairn::test
