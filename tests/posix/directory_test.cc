// Reading directories, directory link counts, and what "." and ".." point to as directories
// move; times of the parents on symlink and mknod; appends from two descriptors.
#include <dirent.h>
#include <fcntl.h>

#include <set>

#include "tests/posix/posix_env.h"

namespace cairn::posix {
namespace {

std::set<std::string> list(const std::string& dir) {
  std::set<std::string> names;
  DIR* d = opendir(dir.c_str());
  EXPECT_NE(d, nullptr) << dir;
  if (d == nullptr) return names;
  while (struct dirent* e = readdir(d)) names.insert(e->d_name);
  closedir(d);
  return names;
}

class Readdir : public FsTest {};
ON_BOTH(Readdir);

TEST_P(Readdir, ListsEveryEntryWithDotAndDotdot) {
  touch(p("f"));
  ASSERT_EQ(mkdir(p("d").c_str(), 0755), 0);
  ASSERT_EQ(symlink("f", p("l").c_str()), 0);
  ASSERT_EQ(mkfifo(p("p").c_str(), 0644), 0);
  EXPECT_EQ(list(dir()), (std::set<std::string>{".", "..", "f", "d", "l", "p"}));
  EXPECT_EQ(list(p("d")), (std::set<std::string>{".", ".."}));
}

TEST_P(Readdir, TypesAndInodeNumbersMatchStat) {
  touch(p("f"));
  ASSERT_EQ(mkdir(p("d").c_str(), 0755), 0);
  ASSERT_EQ(symlink("f", p("l").c_str()), 0);
  DIR* d = opendir(dir().c_str());
  ASSERT_NE(d, nullptr);
  int seen = 0;
  while (struct dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    auto st = statOf(p(n));
    EXPECT_EQ(e->d_ino, st.st_ino) << n;
    if (e->d_type != DT_UNKNOWN) {
      EXPECT_EQ(DTTOIF(e->d_type), st.st_mode & S_IFMT) << n;
    }
    ++seen;
  }
  closedir(d);
  EXPECT_EQ(seen, 3);
}

TEST_P(Readdir, RewindSeesChanges) {
  touch(p("a"));
  DIR* d = opendir(dir().c_str());
  ASSERT_NE(d, nullptr);
  while (readdir(d) != nullptr) {}
  touch(p("b"));
  rewinddir(d);
  std::set<std::string> names;
  while (struct dirent* e = readdir(d)) names.insert(e->d_name);
  closedir(d);
  EXPECT_TRUE(names.count("b"));
}

TEST_P(Readdir, RemovedDirectoryReadsEmptyAndRefusesEntries) {
  ASSERT_EQ(mkdir(p("d").c_str(), 0755), 0);
  int fd = open(p("d").c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(rmdir(p("d").c_str()), 0);
  EXPECT_EQ(err(openat(fd, "x", O_CREAT | O_WRONLY, 0644)), ENOENT);
  EXPECT_EQ(err(mkdirat(fd, "y", 0755)), ENOENT);
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_nlink, 0u);
  close(fd);
}

class DirectoryLinks : public FsTest {};
ON_BOTH(DirectoryLinks);

TEST_P(DirectoryLinks, CountsAndDotdotFollowMoves) {
  ASSERT_EQ(mkdir(p("a").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(p("b").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(p("a/x").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(p("a/y").c_str(), 0755), 0);
  EXPECT_EQ(statOf(p("a")).st_nlink, 4u);
  ASSERT_EQ(rename(p("a/x").c_str(), p("b/x").c_str()), 0);
  EXPECT_EQ(statOf(p("a")).st_nlink, 3u);
  EXPECT_EQ(statOf(p("b")).st_nlink, 3u);
  EXPECT_EQ(statOf(p("b/x/..")).st_ino, statOf(p("b")).st_ino);
  // A directory renamed over an empty one in another parent.
  ASSERT_EQ(rename(p("b/x").c_str(), p("a/y").c_str()), 0);
  EXPECT_EQ(statOf(p("a")).st_nlink, 3u);
  EXPECT_EQ(statOf(p("b")).st_nlink, 2u);
  EXPECT_EQ(statOf(p("a/y/..")).st_ino, statOf(p("a")).st_ino);
  EXPECT_EQ(statOf(p("a/y/.")).st_ino, statOf(p("a/y")).st_ino);
}

class ParentTimes : public FsTest {};
ON_BOTH(ParentTimes);

TEST_P(ParentTimes, EveryNameChangeUpdatesTheDirectory) {
  auto check = [&](const char* what, const std::function<void()>& op) {
    age(dir());
    auto before = statOf(dir());
    op();
    auto after = statOf(dir());
    EXPECT_GT(after.st_mtim.tv_sec, before.st_mtim.tv_sec) << what;
    EXPECT_TRUE(newer(after.st_ctim, 5)) << what;
  };
  check("create", [&] { touch(p("f")); });
  check("symlink", [&] { ASSERT_EQ(symlink("f", p("l").c_str()), 0); });
  check("mknod", [&] { ASSERT_EQ(mkfifo(p("p").c_str(), 0644), 0); });
  check("link", [&] { ASSERT_EQ(link(p("f").c_str(), p("g").c_str()), 0); });
  check("rename", [&] { ASSERT_EQ(rename(p("g").c_str(), p("h").c_str()), 0); });
  check("unlink", [&] { ASSERT_EQ(unlink(p("h").c_str()), 0); });
  // Writing a file or changing its attributes does not change the directory.
  age(dir());
  auto before = statOf(dir());
  writeFile(p("f"), "content");
  chmod(p("f").c_str(), 0600);
  EXPECT_EQ(statOf(dir()).st_mtim.tv_sec, before.st_mtim.tv_sec);
}

class Append : public FsTest {};
ON_BOTH(Append);

TEST_P(Append, TwoDescriptorsNeverOverwriteEachOther) {
  int a = open(p("log").c_str(), O_CREAT | O_WRONLY | O_APPEND, 0644);
  int b = open(p("log").c_str(), O_WRONLY | O_APPEND);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  std::string want;
  for (int i = 0; i < 50; ++i) {
    int fd = i % 2 ? a : b;
    std::string rec = "record " + std::to_string(i) + "\n";
    ASSERT_EQ(write(fd, rec.data(), rec.size()), ssize_t(rec.size()));
    want += rec;
  }
  close(a);
  close(b);
  EXPECT_EQ(readFile(p("log")), want);
}

class Readlink : public FsTest {};
ON_BOTH(Readlink);

TEST_P(Readlink, ErrorsAndRelativeTargets) {
  char buf[16];
  EXPECT_EQ(err(int(readlink(p("none").c_str(), buf, sizeof(buf)))), ENOENT);
  EXPECT_EQ(err(int(readlink(dir().c_str(), buf, 0))), EINVAL);
  ASSERT_EQ(mkdir(p("d").c_str(), 0755), 0);
  writeFile(p("d/target"), "in d");
  ASSERT_EQ(symlink("target", p("d/rel").c_str()), 0);
  ASSERT_EQ(symlink("./d/../d/target", p("up").c_str()), 0);
  EXPECT_EQ(readFile(p("d/rel")), "in d");  // relative to the link's directory
  EXPECT_EQ(readFile(p("up")), "in d");
  // A symlink's own mode is 0777 and chmod through it changes the target.
  EXPECT_EQ(statOf(p("up")).st_mode & 07777, 0777u);
  ASSERT_EQ(chmod(p("up").c_str(), 0600), 0);
  EXPECT_EQ(statOf(p("d/target")).st_mode & 07777, 0600u);
  EXPECT_EQ(statOf(p("up")).st_mode & 07777, 0777u);
}

}  // namespace
}  // namespace cairn::posix
