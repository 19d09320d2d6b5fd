// Sizes users reach quickly: a 5 GiB sparse file, 10,000 entries in one directory, and a mount
// left idle after moving 256 MiB.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <string>

#include "tests/integration/cluster.h"

// (GCC says __SANITIZE_ADDRESS__, clang __has_feature.)
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

namespace cairn::test {
namespace {

TEST(Scale, FiveGiBSparseFile) {
  TestCluster cluster;
  auto mnt = cluster.mount();
  const off_t size = off_t(5) << 30;
  int fd = open((mnt + "/sparse").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, size), 0);
  // Islands of data across the file, including the very end.
  const off_t offsets[] = {0, off_t(1) << 30, (off_t(3) << 30) + 4095, size - 8};
  for (off_t off : offsets) {
    std::string mark = "@" + std::to_string(off) + "@";
    mark.resize(8, '#');
    ASSERT_EQ(pwrite(fd, mark.data(), 8, off), 8);
  }
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, size);
  for (off_t off : offsets) {
    std::string mark = "@" + std::to_string(off) + "@";
    mark.resize(8, '#');
    char buf[8];
    ASSERT_EQ(pread(fd, buf, 8, off), 8);
    EXPECT_EQ(std::string(buf, 8), mark);
  }
  std::string hole(1 << 20, 'x');
  ASSERT_EQ(pread(fd, hole.data(), hole.size(), off_t(2) << 30), ssize_t(hole.size()));
  EXPECT_TRUE(hole == std::string(1 << 20, '\0'));
  close(fd);
  // Only what was written is stored.
  uint64_t chunks =
      jsonNumber(cluster.status(1), "chunks") + jsonNumber(cluster.status(2), "chunks");
  EXPECT_LE(chunks, 8u);
}

TEST(Scale, TenThousandEntriesInOneDirectory) {
  TestCluster cluster;
  auto mnt = cluster.mount();
  auto dir = mnt + "/many";
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  const int n = 10000;
  for (int i = 0; i < n; ++i) {
    std::string name = dir + "/entry-" + std::to_string(i);
    int fd = open(name.c_str(), O_CREAT | O_WRONLY, 0644);
    ASSERT_GE(fd, 0) << name << ": " << strerror(errno);
    close(fd);
  }
  DIR* d = opendir(dir.c_str());
  ASSERT_NE(d, nullptr);
  std::set<std::string> seen;
  while (struct dirent* e = readdir(d)) seen.insert(e->d_name);
  closedir(d);
  EXPECT_EQ(seen.size(), size_t(n + 2));
  EXPECT_TRUE(seen.count("entry-0") && seen.count("entry-9999"));
  struct stat st;
  ASSERT_EQ(stat((dir + "/entry-5000").c_str(), &st), 0);
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(unlink((dir + "/entry-" + std::to_string(i)).c_str()), 0);
  }
  EXPECT_EQ(rmdir(dir.c_str()), 0);
}

// The mount's anonymous memory (heap and stacks), in KiB.
uint64_t anonymousKib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("RssAnon:", 0) == 0) return std::stoull(line.substr(8));
  }
  ADD_FAILURE() << "no RssAnon for " << pid;
  return 0;
}

// Moving data keeps large buffers in the mount's heap for reuse (rpc/heap_tuning.h); once the
// mount has done nothing for a while they go back to the kernel.
TEST(Scale, AnIdleMountGivesBackTheBuffersItMovedDataWith) {
#ifdef UNDER_ASAN
  GTEST_SKIP() << "AddressSanitizer's allocator keeps its own heap (malloc_trim does not apply)";
#endif
  TestCluster cluster;
  auto mnt = cluster.mount();
  int fd = open((mnt + "/big").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  std::string block(1 << 20, 'b');
  for (int i = 0; i < 256; ++i)
    ASSERT_EQ(write(fd, block.data(), block.size()), ssize_t(block.size()));
  ASSERT_EQ(fsync(fd), 0);
  ASSERT_EQ(close(fd), 0);
  pid_t pid = cluster.mountPid(0);
  // (Nothing below touches the mount: reading its /proc entry is not activity.)
  uint64_t busy = anonymousKib(pid);
  EXPECT_GT(busy, uint64_t(48 << 10)) << "the write left too little behind to tell";
  EXPECT_TRUE(waitFor([&] { return anonymousKib(pid) < uint64_t(24 << 10); }, 30000))
      << "still " << anonymousKib(pid) << " KiB anonymous, " << busy << " right after the write";
}

}  // namespace
}  // namespace cairn::test
