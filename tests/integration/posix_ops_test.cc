// Every POSIX operation of the foundation, through a real kernel mount of a real cluster, with
// the errors Linux filesystems return.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/cluster.h"

namespace cairn::test {
namespace {

namespace {

// LOOKUPs and GETATTRs this mount's client answered or sent on, so far.
uint64_t kernelAsked(const std::string& mnt) {
  auto stats = mountStats(mnt);
  uint64_t n = 0;
  for (const char* name :
       {"\ncairn_client_cache_hits_total ", "\ncairn_client_cache_misses_total "}) {
    auto at = stats.find(name);
    EXPECT_NE(at, std::string::npos) << stats;
    if (at != std::string::npos) n += std::stoull(stats.substr(at + strlen(name)));
  }
  return n;
}

// The mount's counters that moved between two `cairnctl stats` texts, one per line: what to
// look at when a test counting the kernel's requests fails.
std::string countersMoved(const std::string& before, const std::string& after) {
  auto values = [](const std::string& text) {
    std::map<std::string, std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
      auto space = line.rfind(' ');
      if (line.empty() || line[0] == '#' || space == std::string::npos) continue;
      out[line.substr(0, space)] = line.substr(space + 1);
    }
    return out;
  };
  auto was = values(before);
  std::string moved;
  for (auto& [name, value] : values(after)) {
    auto old = was.find(name);
    std::string from = old == was.end() ? "-" : old->second;
    if (from != value) moved += name + ": " + from + " -> " + value + "\n";
  }
  return moved;
}

// Everything made in DIR is on the server (creates answered ahead included: fsync of the
// directory waits for them), and the data is on disk.
void settle(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(fd, 0) << dir;
  EXPECT_EQ(fsync(fd), 0);
  close(fd);
  sync();
}

// The kernel forgets the names and inodes nobody uses.
void dropKernelNames() {
  int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "2", 1), 1);
  close(fd);
}

// Lists a directory; returns how many names start with `prefix`.
int listNames(const std::string& dir, char prefix) {
  DIR* d = opendir(dir.c_str());
  EXPECT_NE(d, nullptr);
  if (d == nullptr) return 0;
  int n = 0;
  while (auto* e = readdir(d)) n += e->d_name[0] == prefix;
  closedir(d);
  return n;
}

}  // namespace

class PosixOps : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    cluster_ = new TestCluster();
    mnt_ = new std::string(cluster_->mount());
  }
  static void TearDownTestSuite() {
    delete cluster_;
    delete mnt_;
  }
  void SetUp() override {
    dir_ = *mnt_ + "/" + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    ASSERT_EQ(mkdir(dir_.c_str(), 0755), 0) << strerror(errno);
  }
  std::string p(const std::string& name) { return dir_ + "/" + name; }

  static void writeAll(int fd, const std::string& data, off_t off) {
    ASSERT_EQ(pwrite(fd, data.data(), data.size(), off), ssize_t(data.size())) << strerror(errno);
  }
  static std::string readAt(int fd, size_t n, off_t off) {
    std::string buf(n, '\0');
    ssize_t r = pread(fd, buf.data(), n, off);
    EXPECT_GE(r, 0) << strerror(errno);
    buf.resize(r < 0 ? 0 : r);
    return buf;
  }
  static std::string slurp(const std::string& path) { return readWhole(path); }
  static int errnoOf(int rc) { return rc == -1 ? errno : 0; }

  static TestCluster* cluster_;
  static std::string* mnt_;
  std::string dir_;
};

TestCluster* PosixOps::cluster_ = nullptr;
std::string* PosixOps::mnt_ = nullptr;

TEST_F(PosixOps, CreateWriteReadStat) {
  int fd = open(p("f").c_str(), O_CREAT | O_RDWR, 0640);
  ASSERT_GE(fd, 0);
  writeAll(fd, "hello, cairn", 0);
  EXPECT_EQ(readAt(fd, 100, 0), "hello, cairn");
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 12);
  EXPECT_EQ(st.st_mode, S_IFREG | 0640);
  EXPECT_EQ(st.st_nlink, 1u);
  close(fd);
  EXPECT_EQ(slurp(p("f")), "hello, cairn");
}

// The kernel reads ahead up to a whole READ (1 MiB), not its default 128 KiB: a sequential
// buffered read costs one request per MiB instead of eight, each waiting for the one before.
TEST_F(PosixOps, TheMountReadsAheadAWholeRequest) {
  struct stat st;
  ASSERT_EQ(stat(mnt_->c_str(), &st), 0);
  std::string path = "/sys/class/bdi/" + std::to_string(major(st.st_dev)) + ":" +
                     std::to_string(minor(st.st_dev)) + "/read_ahead_kb";
  EXPECT_EQ(slurp(path), "1024\n") << path;
  std::string data = pattern(3 << 20, 11);
  int fd = open(p("big").c_str(), O_CREAT | O_RDWR | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  writeAll(fd, data, 0);
  close(fd);
  EXPECT_EQ(slurp(p("big")), data);
}

TEST_F(PosixOps, CreateExclusive) {
  int fd = open(p("x").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
  ASSERT_GE(fd, 0);
  close(fd);
  EXPECT_EQ(errnoOf(open(p("x").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600)), EEXIST);
  fd = open(p("x").c_str(), O_CREAT | O_WRONLY, 0600);
  EXPECT_GE(fd, 0);
  close(fd);
}

TEST_F(PosixOps, TruncateOnOpen) {
  int fd = open(p("t").c_str(), O_CREAT | O_WRONLY, 0600);
  writeAll(fd, std::string(100000, 'a'), 0);
  close(fd);
  fd = open(p("t").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0);
  writeAll(fd, "b", 0);
  close(fd);
  EXPECT_TRUE(slurp(p("t")) == "b");
}

TEST_F(PosixOps, Append) {
  int fd = open(p("a").c_str(), O_CREAT | O_WRONLY | O_APPEND, 0600);
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 10; ++i) {
    std::string line = "line " + std::to_string(i) + "\n";
    ASSERT_EQ(write(fd, line.data(), line.size()), ssize_t(line.size()));
  }
  close(fd);
  int fd2 = open(p("a").c_str(), O_WRONLY | O_APPEND);
  ASSERT_EQ(pwrite(fd2, "end\n", 4, 0), 4);  // O_APPEND ignores the offset, as on Linux
  close(fd2);
  std::string want;
  for (int i = 0; i < 10; ++i) want += "line " + std::to_string(i) + "\n";
  EXPECT_EQ(slurp(p("a")), want + "end\n");
}

TEST_F(PosixOps, SparseFilesAndHoles) {
  int fd = open(p("s").c_str(), O_CREAT | O_RDWR, 0600);
  writeAll(fd, "end", 3 * 1024 * 1024 + 17);
  struct stat st;
  fstat(fd, &st);
  EXPECT_EQ(st.st_size, 3 * 1024 * 1024 + 20);
  std::string hole = readAt(fd, 200000, 1000000);
  EXPECT_EQ(hole, std::string(200000, '\0'));
  EXPECT_EQ(readAt(fd, 10, 3 * 1024 * 1024 + 17), "end");
  // A write that spans stripes and targets, then overwrites inside it.
  std::string big(300000, 'x');
  for (size_t i = 0; i < big.size(); ++i) big[i] = char('a' + i % 26);
  writeAll(fd, big, 50000);
  writeAll(fd, "ZZZ", 65535);
  big.replace(65535 - 50000, 3, "ZZZ");
  EXPECT_EQ(readAt(fd, big.size(), 50000), big);
  close(fd);
}

TEST_F(PosixOps, BeyondFourGiB) {
  int fd = open(p("big").c_str(), O_CREAT | O_RDWR, 0600);
  off_t off = (off_t(5) << 30) + 12345;
  writeAll(fd, "far away", off);
  EXPECT_EQ(readAt(fd, 8, off), "far away");
  struct stat st;
  fstat(fd, &st);
  EXPECT_EQ(st.st_size, off + 8);
  EXPECT_EQ(readAt(fd, 4096, off - 4096), std::string(4096, '\0'));
  close(fd);
}

TEST_F(PosixOps, OffsetsNearTheLimit) {
  int fd = open(p("lim").c_str(), O_CREAT | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  char c = 'x';
  // The last byte a file can have: pos + count = 2^63 - 1.
  ASSERT_EQ(pwrite(fd, &c, 1, INT64_MAX - 1), 1) << strerror(errno);
  struct stat st;
  fstat(fd, &st);
  EXPECT_EQ(st.st_size, INT64_MAX);
  char back = 0;
  EXPECT_EQ(pread(fd, &back, 1, INT64_MAX - 1), 1);
  EXPECT_EQ(back, 'x');
  EXPECT_EQ(pread(fd, &back, 1, INT64_MAX - 4096), 1);
  EXPECT_EQ(back, 0);
  // Past it, the kernel answers before we are asked (pos + count overflows): EINVAL, as ext4.
  EXPECT_EQ(errnoOf(int(pwrite(fd, &c, 1, INT64_MAX))), EINVAL);
  EXPECT_EQ(errnoOf(int(pwrite(fd, &c, 1, -1))), EINVAL);
  ASSERT_EQ(ftruncate(fd, 0), 0);
  close(fd);
}

TEST_F(PosixOps, Truncate) {
  int fd = open(p("tr").c_str(), O_CREAT | O_RDWR, 0600);
  std::string data(200000, 'q');
  writeAll(fd, data, 0);
  ASSERT_EQ(ftruncate(fd, 70000), 0);
  struct stat st;
  fstat(fd, &st);
  EXPECT_EQ(st.st_size, 70000);
  // Extending again must show zeros, not the old bytes.
  ASSERT_EQ(truncate(p("tr").c_str(), 150000), 0);
  EXPECT_EQ(readAt(fd, 10, 69995), std::string(5, 'q') + std::string(5, '\0'));
  EXPECT_EQ(readAt(fd, 80000, 70000), std::string(80000, '\0'));
  EXPECT_EQ(errnoOf(truncate(dir_.c_str(), 0)), EISDIR);
  EXPECT_EQ(errnoOf(ftruncate(fd, -1)), EINVAL);
  close(fd);
}

TEST_F(PosixOps, ChmodChownUtimens) {
  int fd = open(p("m").c_str(), O_CREAT | O_WRONLY, 0600);
  close(fd);
  ASSERT_EQ(chmod(p("m").c_str(), 04755), 0);
  struct stat st;
  stat(p("m").c_str(), &st);
  EXPECT_EQ(st.st_mode, S_IFREG | 04755);
  ASSERT_EQ(chown(p("m").c_str(), 1234, 5678), 0);
  stat(p("m").c_str(), &st);
  EXPECT_EQ(st.st_uid, 1234u);
  EXPECT_EQ(st.st_gid, 5678u);

  struct timespec times[2] = {{1000, 5}, {2000, 7}};
  ASSERT_EQ(utimensat(AT_FDCWD, p("m").c_str(), times, 0), 0);
  stat(p("m").c_str(), &st);
  EXPECT_EQ(st.st_atim.tv_sec, 1000);
  EXPECT_EQ(st.st_atim.tv_nsec, 5);
  EXPECT_EQ(st.st_mtim.tv_sec, 2000);
  EXPECT_EQ(st.st_mtim.tv_nsec, 7);
  struct timespec omitNow[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
  time_t before = time(nullptr);
  ASSERT_EQ(utimensat(AT_FDCWD, p("m").c_str(), omitNow, 0), 0);
  stat(p("m").c_str(), &st);
  EXPECT_EQ(st.st_atim.tv_sec, 1000);
  EXPECT_GE(st.st_mtim.tv_sec, before);
  EXPECT_GE(st.st_ctim.tv_sec, before);
}

TEST_F(PosixOps, WriteUpdatesMtimeAndSize) {
  int fd = open(p("w").c_str(), O_CREAT | O_RDWR, 0600);
  struct timespec old[2] = {{100, 0}, {100, 0}};
  futimens(fd, old);
  writeAll(fd, "abc", 0);
  struct stat st;
  stat(p("w").c_str(), &st);
  EXPECT_GT(st.st_mtim.tv_sec, 100);
  EXPECT_EQ(st.st_size, 3);
  close(fd);
}

TEST_F(PosixOps, MkdirRmdir) {
  ASSERT_EQ(mkdir(p("d").c_str(), 0750), 0);
  struct stat st;
  stat(p("d").c_str(), &st);
  EXPECT_EQ(st.st_mode, S_IFDIR | 0750);
  EXPECT_EQ(st.st_nlink, 2u);
  EXPECT_EQ(errnoOf(mkdir(p("d").c_str(), 0750)), EEXIST);
  ASSERT_EQ(mkdir(p("d/sub").c_str(), 0755), 0);
  stat(p("d").c_str(), &st);
  EXPECT_EQ(st.st_nlink, 3u);
  EXPECT_EQ(errnoOf(rmdir(p("d").c_str())), ENOTEMPTY);
  int fd = open(p("d/file").c_str(), O_CREAT | O_WRONLY, 0600);
  close(fd);
  EXPECT_EQ(errnoOf(rmdir(p("d/file").c_str())), ENOTDIR);
  EXPECT_EQ(errnoOf(unlink(p("d/sub").c_str())), EISDIR);
  EXPECT_EQ(errnoOf(mkdir(p("d/file/x").c_str(), 0755)), ENOTDIR);
  EXPECT_EQ(errnoOf(rmdir(p("nothing").c_str())), ENOENT);
  ASSERT_EQ(rmdir(p("d/sub").c_str()), 0);
  ASSERT_EQ(unlink(p("d/file").c_str()), 0);
  ASSERT_EQ(rmdir(p("d").c_str()), 0) << strerror(errno);
  EXPECT_EQ(errnoOf(stat(p("d").c_str(), &st)), ENOENT);
}

TEST_F(PosixOps, Rename) {
  auto touch = [&](const std::string& n, const std::string& content) {
    int fd = open(p(n).c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
    writeAll(fd, content, 0);
    close(fd);
  };
  mkdir(p("a").c_str(), 0755);
  mkdir(p("b").c_str(), 0755);
  touch("a/f", "one");
  touch("b/g", "two");
  // Across directories, over an existing file.
  ASSERT_EQ(rename(p("a/f").c_str(), p("b/g").c_str()), 0);
  EXPECT_EQ(slurp(p("b/g")), "one");
  EXPECT_EQ(access(p("a/f").c_str(), F_OK), -1);
  // Over an empty directory, and not over a full one.
  mkdir(p("a/d1").c_str(), 0755);
  mkdir(p("b/d2").c_str(), 0755);
  ASSERT_EQ(rename(p("a/d1").c_str(), p("b/d2").c_str()), 0);
  struct stat st;
  stat(p("a").c_str(), &st);
  EXPECT_EQ(st.st_nlink, 2u);
  stat(p("b").c_str(), &st);
  EXPECT_EQ(st.st_nlink, 3u);
  mkdir(p("a/d3").c_str(), 0755);
  touch("b/d2/inside", "x");
  EXPECT_EQ(errnoOf(rename(p("a/d3").c_str(), p("b/d2").c_str())), ENOTEMPTY);
  EXPECT_EQ(errnoOf(rename(p("a/d3").c_str(), p("b/g").c_str())), ENOTDIR);
  EXPECT_EQ(errnoOf(rename(p("b/g").c_str(), p("a/d3").c_str())), EISDIR);
  // A directory into its own subtree.
  EXPECT_EQ(errnoOf(rename(p("b").c_str(), p("b/d2/x").c_str())), EINVAL);
  EXPECT_EQ(errnoOf(rename(p("none").c_str(), p("x").c_str())), ENOENT);
  // RENAME_NOREPLACE and RENAME_EXCHANGE.
  touch("n1", "n1");
  touch("n2", "n2");
  EXPECT_EQ(
      errnoOf(renameat2(AT_FDCWD, p("n1").c_str(), AT_FDCWD, p("n2").c_str(), RENAME_NOREPLACE)),
      EEXIST);
  ASSERT_EQ(renameat2(AT_FDCWD, p("n1").c_str(), AT_FDCWD, p("n3").c_str(), RENAME_NOREPLACE), 0);
  ASSERT_EQ(renameat2(AT_FDCWD, p("n3").c_str(), AT_FDCWD, p("n2").c_str(), RENAME_EXCHANGE), 0);
  EXPECT_EQ(slurp(p("n3")), "n2");
  EXPECT_EQ(slurp(p("n2")), "n1");
  EXPECT_EQ(
      errnoOf(renameat2(AT_FDCWD, p("n3").c_str(), AT_FDCWD, p("n9").c_str(), RENAME_EXCHANGE)),
      ENOENT);
  // Exchanging a directory and a file across parents keeps link counts right.
  ASSERT_EQ(renameat2(AT_FDCWD, p("a/d3").c_str(), AT_FDCWD, p("n3").c_str(), RENAME_EXCHANGE), 0);
  stat(p("n3").c_str(), &st);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  stat(p("a").c_str(), &st);
  EXPECT_EQ(st.st_nlink, 2u);
  EXPECT_EQ(slurp(p("a/d3")), "n2");
  // Within one directory.
  ASSERT_EQ(rename(p("n2").c_str(), p("n2-renamed").c_str()), 0);
  EXPECT_EQ(slurp(p("n2-renamed")), "n1");
}

TEST_F(PosixOps, HardLinks) {
  int fd = open(p("orig").c_str(), O_CREAT | O_WRONLY, 0600);
  writeAll(fd, "shared", 0);
  close(fd);
  ASSERT_EQ(link(p("orig").c_str(), p("alias").c_str()), 0);
  struct stat a, b;
  stat(p("orig").c_str(), &a);
  stat(p("alias").c_str(), &b);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_EQ(a.st_nlink, 2u);
  EXPECT_EQ(errnoOf(link(p("orig").c_str(), p("alias").c_str())), EEXIST);
  EXPECT_EQ(errnoOf(link(dir_.c_str(), p("dirlink").c_str())), EPERM);
  ASSERT_EQ(unlink(p("orig").c_str()), 0);
  EXPECT_EQ(slurp(p("alias")), "shared");
  stat(p("alias").c_str(), &b);
  EXPECT_EQ(b.st_nlink, 1u);
}

TEST_F(PosixOps, Symlinks) {
  ASSERT_EQ(symlink("target/path", p("l").c_str()), 0);
  char buf[256] = {};
  ASSERT_EQ(readlink(p("l").c_str(), buf, sizeof(buf)), 11);
  EXPECT_STREQ(buf, "target/path");
  struct stat st;
  lstat(p("l").c_str(), &st);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_EQ(st.st_size, 11);
  EXPECT_EQ(errnoOf(stat(p("l").c_str(), &st)), ENOENT);
  // Through the link.
  int fd = open(p("real").c_str(), O_CREAT | O_WRONLY, 0600);
  writeAll(fd, "via link", 0);
  close(fd);
  symlink("real", p("l2").c_str());
  EXPECT_EQ(slurp(p("l2")), "via link");
  // Loops.
  symlink("loop2", p("loop1").c_str());
  symlink("loop1", p("loop2").c_str());
  EXPECT_EQ(errnoOf(open(p("loop1").c_str(), O_RDONLY)), ELOOP);
  EXPECT_EQ(errnoOf(open(p("l2").c_str(), O_RDONLY | O_NOFOLLOW)), ELOOP);
  EXPECT_EQ(errnoOf(readlink(p("real").c_str(), buf, sizeof(buf))), EINVAL);
  std::string longTarget(4095, 'x');
  EXPECT_EQ(symlink(longTarget.c_str(), p("long").c_str()), 0);
}

TEST_F(PosixOps, MknodAndFifo) {
  ASSERT_EQ(mkfifo(p("fifo").c_str(), 0644), 0);
  struct stat st;
  stat(p("fifo").c_str(), &st);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  ASSERT_EQ(mknod(p("chr").c_str(), S_IFCHR | 0600, makedev(1, 3)), 0);
  stat(p("chr").c_str(), &st);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(1, 3));
  ASSERT_EQ(mknod(p("reg").c_str(), S_IFREG | 0600, 0), 0);
  stat(p("reg").c_str(), &st);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  // A FIFO works as a FIFO (the kernel runs it; the filesystem keeps the inode).
  pid_t child = fork();
  if (child == 0) {
    int w = open(p("fifo").c_str(), O_WRONLY);
    (void)!write(w, "pipe", 4);
    _exit(0);
  }
  int r = open(p("fifo").c_str(), O_RDONLY);
  char buf[8] = {};
  EXPECT_EQ(read(r, buf, sizeof(buf)), 4);
  EXPECT_STREQ(buf, "pipe");
  close(r);
  waitpid(child, nullptr, 0);
}

TEST_F(PosixOps, NameLimits) {
  std::string ok(255, 'n'), tooLong(256, 'n');
  int fd = open(p(ok).c_str(), O_CREAT | O_WRONLY, 0600);
  EXPECT_GE(fd, 0);
  close(fd);
  EXPECT_EQ(errnoOf(open(p(tooLong).c_str(), O_CREAT | O_WRONLY, 0600)), ENAMETOOLONG);
  EXPECT_EQ(errnoOf(mkdir(p(tooLong).c_str(), 0755)), ENAMETOOLONG);
  struct stat st;
  EXPECT_EQ(errnoOf(stat(p(tooLong).c_str(), &st)), ENAMETOOLONG);
  std::string longPath = dir_;
  while (longPath.size() < 5000) longPath += "/abcdefgh";
  EXPECT_EQ(errnoOf(stat(longPath.c_str(), &st)), ENAMETOOLONG);
}

// More entries than one batch from the server (the client keeps what the kernel's buffer did not
// take for the next READDIR), changed in the middle of the walk.
TEST_F(PosixOps, ReaddirOffsetsStayValid) {
  std::set<std::string> names;
  for (int i = 0; i < 1500; ++i) {
    std::string n = "e" + std::to_string(i);
    int fd = open(p(n).c_str(), O_CREAT | O_WRONLY, 0600);
    close(fd);
    names.insert(n);
  }
  DIR* d = opendir(dir_.c_str());
  ASSERT_NE(d, nullptr);
  std::set<std::string> seen;
  long mark = -1;
  std::string afterMark;
  int count = 0;
  while (struct dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    EXPECT_TRUE(seen.insert(n).second) << n << " listed twice";
    if (++count == 100) mark = telldir(d);
    if (count == 101) afterMark = n;
    // Entries removed and added while reading must not break the walk.
    if (count == 150) {
      unlink(p("e1499").c_str());
      int fd = open(p("late").c_str(), O_CREAT | O_WRONLY, 0600);
      close(fd);
    }
  }
  EXPECT_GE(count, 1499);
  for (auto& n : names) {
    if (n != "e1499") {
      EXPECT_TRUE(seen.count(n)) << n;
    }
  }
  seekdir(d, mark);
  struct dirent* e = readdir(d);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(afterMark, e->d_name);
  closedir(d);
  // ".." is the parent.
  struct stat parent, dotdot;
  stat(mnt_->c_str(), &parent);
  d = opendir(dir_.c_str());
  bool found = false;
  while (struct dirent* e = readdir(d)) {
    if (std::string(e->d_name) == "..") {
      found = true;
      EXPECT_EQ(e->d_ino, parent.st_ino);
    }
  }
  closedir(d);
  EXPECT_TRUE(found);
  (void)dotdot;
}

TEST_F(PosixOps, Statfs) {
  struct statvfs s;
  ASSERT_EQ(statvfs(dir_.c_str(), &s), 0);
  EXPECT_GT(s.f_blocks, 0u);
  EXPECT_GT(s.f_bfree, 0u);
  EXPECT_LE(s.f_bfree, s.f_blocks);
  EXPECT_EQ(s.f_namemax, 255u);
  EXPECT_GT(s.f_files, 0u);
}

TEST_F(PosixOps, Xattrs) {
  int fd = open(p("x").c_str(), O_CREAT | O_WRONLY, 0600);
  close(fd);
  ASSERT_EQ(setxattr(p("x").c_str(), "user.color", "blue", 4, 0), 0);
  ASSERT_EQ(setxattr(p("x").c_str(), "user.size", "xl", 2, XATTR_CREATE), 0);
  EXPECT_EQ(errnoOf(setxattr(p("x").c_str(), "user.size", "s", 1, XATTR_CREATE)), EEXIST);
  EXPECT_EQ(errnoOf(setxattr(p("x").c_str(), "user.none", "s", 1, XATTR_REPLACE)), ENODATA);
  char buf[64] = {};
  EXPECT_EQ(getxattr(p("x").c_str(), "user.color", buf, sizeof(buf)), 4);
  EXPECT_STREQ(buf, "blue");
  EXPECT_EQ(getxattr(p("x").c_str(), "user.color", nullptr, 0), 4);
  EXPECT_EQ(errnoOf(int(getxattr(p("x").c_str(), "user.color", buf, 2))), ERANGE);
  EXPECT_EQ(errnoOf(int(getxattr(p("x").c_str(), "user.nope", buf, sizeof(buf)))), ENODATA);
  char list[256] = {};
  ssize_t n = listxattr(p("x").c_str(), list, sizeof(list));
  ASSERT_GT(n, 0);
  std::set<std::string> names;
  for (ssize_t i = 0; i < n; i += strlen(list + i) + 1) names.insert(list + i);
  EXPECT_EQ(names, (std::set<std::string>{"user.color", "user.size"}));
  ASSERT_EQ(removexattr(p("x").c_str(), "user.color"), 0);
  EXPECT_EQ(errnoOf(removexattr(p("x").c_str(), "user.color")), ENODATA);
  ASSERT_EQ(setxattr(dir_.c_str(), "user.on-dir", "1", 1, 0), 0);
  EXPECT_EQ(getxattr(dir_.c_str(), "user.on-dir", buf, sizeof(buf)), 1);
}

TEST_F(PosixOps, UnlinkedWhileOpenKeepsWorking) {
  int fd = open(p("ghost").c_str(), O_CREAT | O_RDWR, 0600);
  writeAll(fd, "still here", 0);
  ASSERT_EQ(unlink(p("ghost").c_str()), 0);
  struct stat st;
  EXPECT_EQ(errnoOf(stat(p("ghost").c_str(), &st)), ENOENT);
  EXPECT_EQ(readAt(fd, 100, 0), "still here");
  writeAll(fd, " and more", 10);
  EXPECT_EQ(readAt(fd, 100, 0), "still here and more");
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_nlink, 0u);
  EXPECT_EQ(jsonNumber(cluster_->status(0), "orphans"), 1u);
  close(fd);
  EXPECT_TRUE(waitFor([] { return jsonNumber(cluster_->status(0), "orphans") == 0; }, 5000));
  EXPECT_TRUE(waitFor([] { return jsonNumber(cluster_->status(0), "destroyQueue") == 0; }, 5000));
}

// Removed files give their chunks back on every data target: more files than the destroyer
// takes in one round (one destroyMany request per target), striped over both targets.
TEST_F(PosixOps, RemovedFilesGiveTheirChunksBack) {
  auto chunks = [] {
    return jsonNumber(cluster_->status(1), "chunks") + jsonNumber(cluster_->status(2), "chunks");
  };
  ASSERT_TRUE(waitFor([] { return jsonNumber(cluster_->status(0), "destroyQueue") == 0; }, 5000));
  uint64_t before = chunks();
  constexpr int FILES = 700;  // > Destroyer::BATCH
  std::string data(3 * 64 * 1024, 'c');
  for (int i = 0; i < FILES; i++) {
    int fd = open(p("many" + std::to_string(i)).c_str(), O_CREAT | O_WRONLY, 0644);
    ASSERT_GE(fd, 0);
    writeAll(fd, data, 0);
    ASSERT_EQ(close(fd), 0);
  }
  sync();
  ASSERT_TRUE(waitFor([&] { return chunks() >= before + FILES * 3; }, 10000));
  for (int i = 0; i < FILES; i++) ASSERT_EQ(unlink(p("many" + std::to_string(i)).c_str()), 0);
  EXPECT_TRUE(waitFor([] { return jsonNumber(cluster_->status(0), "destroyQueue") == 0; }, 20000));
  EXPECT_TRUE(waitFor([&] { return chunks() == before; }, 5000)) << chunks() << " " << before;
}

// Scattered small writes between two fsyncs reach each data target as one request (writeMany:
// one transaction) instead of one each, and every one of them lands.
TEST_F(PosixOps, ScatteredWritesGoInOneRequestPerTarget) {
  constexpr size_t BLOCK = 4096, BLOCKS = 1024;  // a 4 MiB file, striped over both targets
  int fd = open(p("scattered").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  writeAll(fd, std::string(BLOCK * BLOCKS, '.'), 0);
  ASSERT_EQ(fsync(fd), 0);
  auto served = [](const std::string& kind) -> uint64_t {  // by both data servers (absent: 0)
    uint64_t n = 0;
    for (int server : {1, 2}) {
      auto status = cluster_->status(server);
      if (status.find("\"" + kind + "\":") != std::string::npos) n += jsonNumber(status, kind);
    }
    return n;
  };
  uint64_t singles = served("data.write"), batches = served("data.writeMany");
  std::vector<size_t> blocks;
  for (size_t i = 0; i < 64; i++) blocks.push_back((i * 389 + 7) % BLOCKS);  // distinct
  for (size_t b : blocks) writeAll(fd, std::string(BLOCK, char('A' + b % 26)), b * BLOCK);
  ASSERT_EQ(fsync(fd), 0);
  uint64_t sent = served("data.writeMany") - batches;
  EXPECT_GE(sent, 1u);
  EXPECT_LE(sent + served("data.write") - singles, 4u) << "the writes were not batched";
  close(fd);
  // Read back past this client's page cache.
  fd = open(p("scattered").c_str(), O_RDONLY | O_DIRECT);
  ASSERT_GE(fd, 0);
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, BLOCK, BLOCK), 0);
  std::unique_ptr<void, decltype(&free)> own(buf, &free);
  for (size_t b = 0; b < BLOCKS; b++) {
    ASSERT_EQ(pread(fd, buf, BLOCK, b * BLOCK), ssize_t(BLOCK)) << strerror(errno);
    bool written = std::find(blocks.begin(), blocks.end(), b) != blocks.end();
    char want = written ? char('A' + b % 26) : '.';
    ASSERT_EQ(std::string(static_cast<char*>(buf), BLOCK), std::string(BLOCK, want)) << b;
  }
  close(fd);
}

// A file written in thousands of places with gaps between them (as stress-ng's fpunch does)
// is written back in requests of thousands of pieces. Each piece the request referenced
// instead of copying was a Cap'n Proto segment of its own, and over 512 of them made a message
// the server refused: the connection dropped, the resend on the next one met the same fate, and
// the fsync (and everything else on those targets) waited forever.
TEST_F(PosixOps, ThousandsOfScatteredPiecesMakeRequestsTheServersRead) {
  constexpr size_t BLOCK = 4096, PIECES = 2048;  // every other block of 16 MiB
  int fd = open(p("pieces").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  for (size_t i = 0; i < PIECES; i++)
    writeAll(fd, std::string(BLOCK, char('a' + i % 26)), 2 * i * BLOCK);
  // On a thread of its own, so that a hang fails the test instead of stopping it. Then the
  // mount's daemon goes: every request it left waiting fails (the fsync, and the FLUSH that
  // each child the teardown forks would send closing its copy of `fd`).
  auto done = std::make_shared<std::promise<int>>();
  auto synced = done->get_future();
  std::thread([fd, done] { done->set_value(fsync(fd) == 0 ? 0 : errno); }).detach();
  if (synced.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    auto log = cluster_->mountLog(0);
    cluster_->killMount(0);
    FAIL() << "fsync hung; the mount's log ends:\n"
           << log.substr(log.size() - std::min<size_t>(log.size(), 3000));
  }
  EXPECT_EQ(synced.get(), 0);
  close(fd);
  EXPECT_EQ(cluster_->mountLog(0).find("too many segments"), std::string::npos);
  // Read back past this client's page cache: the pieces, and zeros between them.
  fd = open(p("pieces").c_str(), O_RDONLY | O_DIRECT);
  ASSERT_GE(fd, 0);
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, BLOCK, 2 * BLOCK), 0);
  std::unique_ptr<void, decltype(&free)> own(buf, &free);
  for (size_t i = 0; i < PIECES; i++) {
    ssize_t want = i + 1 < PIECES ? 2 * BLOCK : BLOCK;  // the file ends after the last piece
    ASSERT_EQ(pread(fd, buf, 2 * BLOCK, 2 * i * BLOCK), want) << strerror(errno);
    std::string got(static_cast<char*>(buf), want);
    std::string expected = std::string(BLOCK, char('a' + i % 26)) + std::string(want - BLOCK, '\0');
    ASSERT_TRUE(got == expected) << "piece " << i;
  }
  close(fd);
}

// A listing hands the kernel each name with its attributes (READDIRPLUS), under the locks that
// came with it: stat() of every listed name is then answered by the kernel, with no LOOKUP.
TEST_F(PosixOps, AListingHandsTheKernelNamesWithTheirAttributes) {
  constexpr int FILES = 100;
  for (int i = 0; i < FILES; i++) writeWhole(p("l" + std::to_string(i)), "x");
  settle(dir_);
  // The closes' releases are done too: each waits for its file's data and update, which gather
  // a moment for their batches, and while releases were still on their way the kernel asked for
  // the files' attributes again after the listing (not what this test is about).
  EXPECT_TRUE(waitFor([&] { return mountGauge(*mnt_, "cairn_client_open_files") == 0; }, 5000));
  dropKernelNames();
  EXPECT_EQ(listNames(dir_, 'l'), FILES);
  uint64_t before = kernelAsked(*mnt_);
  struct stat st;
  for (int i = 0; i < FILES; i++) {
    ASSERT_EQ(stat(p("l" + std::to_string(i)).c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 1);
  }
  EXPECT_LT(kernelAsked(*mnt_) - before, uint64_t(FILES) / 10)
      << "stat() after a listing asked the client";
}

// Removing a directory just listed (as `rm -r` does, one after another) leaves the kernel the
// names it holds elsewhere: none of them is made to be looked up again.
TEST_F(PosixOps, RemovingAListedDirectoryKeepsOtherNames) {
  constexpr int FILES = 50;
  for (int i = 0; i < FILES; i++) writeWhole(p("k" + std::to_string(i)), "x");
  ASSERT_EQ(mkdir(p("sub").c_str(), 0755), 0);
  writeWhole(p("sub/kf"), "x");
  settle(dir_);
  settle(p("sub"));
  dropKernelNames();
  EXPECT_EQ(listNames(dir_, 'k'), FILES);
  EXPECT_EQ(listNames(p("sub"), 'k'), 1);  // a name of `sub` handed out just now
  // Every name in the kernel's cache, whichever way it got there (on a loaded machine the
  // listing does not always hand all of them over): what is measured is the removal's effect.
  struct stat st;
  for (int i = 0; i < FILES; i++) ASSERT_EQ(stat(p("k" + std::to_string(i)).c_str(), &st), 0);
  auto stats = mountStats(*mnt_);
  ASSERT_EQ(unlink(p("sub/kf").c_str()), 0);
  ASSERT_EQ(rmdir(p("sub").c_str()), 0);
  usleep(100 * 1000);  // the client's reaction to the removal is asynchronous
  uint64_t before = kernelAsked(*mnt_);
  for (int i = 0; i < FILES; i++) ASSERT_EQ(stat(p("k" + std::to_string(i)).c_str(), &st), 0);
  // (Twice in many runs the kernel looked up every name again, as after an epoch raise: the
  // counters that moved meanwhile say which callback or invalidation did it.)
  EXPECT_LT(kernelAsked(*mnt_) - before, uint64_t(FILES) / 5)
      << "the removal made the kernel look names up again; counters that moved since it:\n"
      << countersMoved(stats, mountStats(*mnt_));
}

// Closes reach the metadata server in batches (releaseMany), and every handle is released.
TEST_F(PosixOps, ClosedHandlesAreReleasedInBatches) {
  constexpr int FILES = 300;
  for (int i = 0; i < FILES; i++) {
    int fd = open(p("r" + std::to_string(i)).c_str(), O_CREAT | O_WRONLY, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(close(fd), 0);
  }
  ASSERT_TRUE(waitFor([] { return jsonNumber(cluster_->status(0), "openFiles") == 0; }, 5000));
  auto served = [](const std::string& kind) -> uint64_t {  // requests of a kind (absent: 0)
    auto status = cluster_->status(0);
    return status.find("\"" + kind + "\":") == std::string::npos ? 0 : jsonNumber(status, kind);
  };
  uint64_t batches = served("meta.releaseMany");
  uint64_t singles = served("meta.release");
  // All opened first, then closed one after another: each open waits for the server (slower
  // than the gathering window on a loaded machine under the sanitizers), a close does not.
  std::vector<int> fds;
  for (int i = 0; i < FILES; i++) {
    int fd = open(p("r" + std::to_string(i)).c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
  }
  for (int fd : fds) ASSERT_EQ(close(fd), 0);
  EXPECT_TRUE(waitFor([] { return jsonNumber(cluster_->status(0), "openFiles") == 0; }, 5000));
  EXPECT_EQ(served("meta.release"), singles);
  uint64_t sent = served("meta.releaseMany") - batches;
  EXPECT_GT(sent, 0u);
  EXPECT_LT(sent, uint64_t(FILES) / 2) << "closes were not batched";
}

TEST_F(PosixOps, Fsync) {
  int fd = open(p("sync").c_str(), O_CREAT | O_RDWR, 0600);
  writeAll(fd, std::string(1 << 20, 's'), 0);
  EXPECT_EQ(fsync(fd), 0);
  EXPECT_EQ(fdatasync(fd), 0);
  close(fd);
  int dfd = open(dir_.c_str(), O_RDONLY | O_DIRECTORY);
  EXPECT_EQ(fsync(dfd), 0);
  close(dfd);
  std::string st = cluster_->status(1);
  EXPECT_EQ(jsonNumber(st, "lastSynced"), jsonNumber(st, "lastTransno"));
}

TEST_F(PosixOps, SharedWritableMmap) {
  int fd = open(p("mm").c_str(), O_CREAT | O_RDWR, 0600);
  ASSERT_EQ(ftruncate(fd, 3 * 4096), 0);
  char* m = static_cast<char*>(mmap(nullptr, 3 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  ASSERT_NE(m, MAP_FAILED);
  memcpy(m + 4096 - 2, "mapped", 6);
  ASSERT_EQ(msync(m, 3 * 4096, MS_SYNC), 0);
  // read() on the same client sees what was stored through the mapping...
  EXPECT_EQ(readAt(fd, 6, 4096 - 2), "mapped");
  // ...and a mapping sees what write() stored.
  writeAll(fd, "written", 2 * 4096 + 10);
  EXPECT_EQ(std::string(m + 2 * 4096 + 10, 7), "written");
  munmap(m, 3 * 4096);
  close(fd);
  EXPECT_EQ(slurp(p("mm")).substr(4096 - 2, 6), "mapped");
}

TEST_F(PosixOps, LargeSequentialRoundTrip) {
  std::string data(8 << 20, '\0');
  uint32_t x = 12345;
  for (auto& c : data) {
    x = x * 1103515245 + 12345;
    c = char(x >> 16);
  }
  int fd = open(p("seq").c_str(), O_CREAT | O_RDWR, 0600);
  for (size_t off = 0; off < data.size(); off += 1 << 20) {
    writeAll(fd, data.substr(off, 1 << 20), off);
  }
  close(fd);
  EXPECT_TRUE(slurp(p("seq")) == data);
}

}  // namespace
}  // namespace cairn::test
