// Sizes users reach quickly: a 5 GiB sparse file and 10,000 entries in one directory.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <set>
#include <string>

#include "tests/integration/cluster.h"

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

}  // namespace
}  // namespace cairn::test
