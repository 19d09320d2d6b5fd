// mkdir, rmdir, link, unlink, symlink, rename, mkfifo, mknod: results, errors, link counts and
// the times of the file and of its parents.
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <sys/sysmacros.h>

#include "tests/posix/posix_env.h"

namespace cairn::posix {
namespace {

class Mkdir : public FsTest {};
ON_BOTH(Mkdir);

TEST_P(Mkdir, ModeOwnerAndLinkCounts) {
  mode_t old = umask(022);
  ASSERT_EQ(mkdir(p("d").c_str(), 0777), 0);
  umask(old);
  auto st = statOf(p("d"));
  EXPECT_EQ(st.st_mode, S_IFDIR | 0755u);
  EXPECT_EQ(st.st_nlink, 2u);
  EXPECT_EQ(st.st_uid, 0u);
  ASSERT_EQ(mkdir(p("d/e").c_str(), 0700), 0);
  EXPECT_EQ(statOf(p("d")).st_nlink, 3u);
  touch(p("d/file"));
  EXPECT_EQ(statOf(p("d")).st_nlink, 3u);  // files do not count
}

TEST_P(Mkdir, Errors) {
  ASSERT_EQ(mkdir(p("d").c_str(), 0755), 0);
  EXPECT_EQ(err(mkdir(p("d").c_str(), 0755)), EEXIST);
  touch(p("f"));
  EXPECT_EQ(err(mkdir(p("f").c_str(), 0755)), EEXIST);
  EXPECT_EQ(err(mkdir(p("f/x").c_str(), 0755)), ENOTDIR);
  EXPECT_EQ(err(mkdir(p("none/x").c_str(), 0755)), ENOENT);
  EXPECT_EQ(err(mkdir(p(std::string(256, 'n')).c_str(), 0755)), ENAMETOOLONG);
  ASSERT_EQ(symlink("d", p("l").c_str()), 0);
  EXPECT_EQ(err(mkdir(p("l").c_str(), 0755)), EEXIST);
}

TEST_P(Mkdir, UpdatesParentTimes) {
  age(dir());
  auto before = statOf(dir());
  ASSERT_EQ(mkdir(p("d").c_str(), 0755), 0);
  auto after = statOf(dir());
  EXPECT_GT(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
  EXPECT_TRUE(newer(after.st_ctim, 5));
  auto st = statOf(p("d"));
  EXPECT_TRUE(newer(st.st_atim, 5) && newer(st.st_mtim, 5) && newer(st.st_ctim, 5));
}

TEST_P(Mkdir, SetgidDirectoryInheritance) {
  ASSERT_EQ(mkdir(p("g").c_str(), 0777), 0);
  ASSERT_EQ(chown(p("g").c_str(), 0, SUPP), 0);
  ASSERT_EQ(chmod(p("g").c_str(), 02777), 0);
  EXPECT_EQ(asUser([&] { return err(mkdir(p("g/sub").c_str(), 0755)); }), 0);
  auto st = statOf(p("g/sub"));
  EXPECT_EQ(st.st_gid, SUPP);
  EXPECT_TRUE(st.st_mode & S_ISGID);
  EXPECT_EQ(st.st_uid, USER);
}

class Rmdir : public FsTest {};
ON_BOTH(Rmdir);

TEST_P(Rmdir, RemovesEmptyDirectoriesOnly) {
  ASSERT_EQ(mkdir(p("d").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(p("d/e").c_str(), 0755), 0);
  EXPECT_EQ(err(rmdir(p("d").c_str())), ENOTEMPTY);
  touch(p("f"));
  EXPECT_EQ(err(rmdir(p("f").c_str())), ENOTDIR);
  EXPECT_EQ(err(rmdir(p("none").c_str())), ENOENT);
  EXPECT_EQ(err(rmdir(p("d/e/.").c_str())), EINVAL);
  age(p("d"));
  auto before = statOf(p("d"));
  ASSERT_EQ(rmdir(p("d/e").c_str()), 0);
  auto after = statOf(p("d"));
  EXPECT_EQ(after.st_nlink, 2u);
  EXPECT_GT(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
  ASSERT_EQ(rmdir(p("d").c_str()), 0);
  struct stat st;
  EXPECT_EQ(err(stat(p("d").c_str(), &st)), ENOENT);
}

class Link : public FsTest {};
ON_BOTH(Link);

TEST_P(Link, CountsTimesAndErrors) {
  writeFile(p("f"), "x");
  age(p("f"));
  auto before = statOf(p("f"));
  sleep(1);
  ASSERT_EQ(link(p("f").c_str(), p("g").c_str()), 0);
  auto after = statOf(p("f"));
  EXPECT_EQ(after.st_nlink, 2u);
  EXPECT_TRUE(later(after.st_ctim, before.st_ctim));       // ctime: yes
  EXPECT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);  // mtime: no
  EXPECT_EQ(statOf(p("g")).st_ino, after.st_ino);
  EXPECT_EQ(err(link(p("f").c_str(), p("g").c_str())), EEXIST);
  EXPECT_EQ(err(link(p("none").c_str(), p("h").c_str())), ENOENT);
  ASSERT_EQ(mkdir(p("d").c_str(), 0755), 0);
  EXPECT_EQ(err(link(p("d").c_str(), p("dl").c_str())), EPERM);
  EXPECT_EQ(err(link(p("f").c_str(), p("none/x").c_str())), ENOENT);
  // Within one filesystem, never EXDEV.
  EXPECT_EQ(link(p("f").c_str(), p("d/deep").c_str()), 0);
  EXPECT_EQ(statOf(p("f")).st_nlink, 3u);
}

class Unlink : public FsTest {};
ON_BOTH(Unlink);

TEST_P(Unlink, RemovesNamesNotOpenFiles) {
  writeFile(p("f"), "still readable");
  ASSERT_EQ(link(p("f").c_str(), p("g").c_str()), 0);
  int fd = open(p("f").c_str(), O_RDONLY);
  age(dir());
  auto dirBefore = statOf(dir());
  ASSERT_EQ(unlink(p("f").c_str()), 0);
  EXPECT_GT(statOf(dir()).st_mtim.tv_sec, dirBefore.st_mtim.tv_sec);
  EXPECT_EQ(statOf(p("g")).st_nlink, 1u);
  ASSERT_EQ(unlink(p("g").c_str()), 0);
  char buf[32] = {};
  EXPECT_EQ(pread(fd, buf, sizeof(buf), 0), 14);
  struct stat st;
  fstat(fd, &st);
  EXPECT_EQ(st.st_nlink, 0u);
  close(fd);
  EXPECT_EQ(err(unlink(p("f").c_str())), ENOENT);
  ASSERT_EQ(mkdir(p("d").c_str(), 0755), 0);
  EXPECT_EQ(err(unlink(p("d").c_str())), EISDIR);
  touch(p("file"));
  EXPECT_EQ(err(unlink(p("file/x").c_str())), ENOTDIR);
}

TEST_P(Unlink, StickyDirectories) {
  ASSERT_EQ(chmod(dir().c_str(), 01777), 0);
  touch(p("roots"), 0666);
  chmod(p("roots").c_str(), 0666);
  EXPECT_EQ(asUser([&] { return err(unlink(p("roots").c_str())); }), EPERM);
  EXPECT_EQ(asUser([&] {
              int fd = open(p("mine").c_str(), O_CREAT | O_WRONLY, 0600);
              if (fd < 0) return errno;
              close(fd);
              return err(unlink(p("mine").c_str()));
            }),
            0);
  // The directory's owner may remove anything in it.
  ASSERT_EQ(chown(dir().c_str(), USER, GROUP), 0);
  EXPECT_EQ(asUser([&] { return err(unlink(p("roots").c_str())); }), 0);
}

class Symlink : public FsTest {};
ON_BOTH(Symlink);

TEST_P(Symlink, TargetsLoopsAndLimits) {
  ASSERT_EQ(symlink("some/where", p("l").c_str()), 0);
  auto st = statOf(p("l"));
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_EQ(st.st_size, 10);
  char buf[4096] = {};
  EXPECT_EQ(readlink(p("l").c_str(), buf, sizeof(buf)), 10);
  EXPECT_EQ(readlink(p("l").c_str(), buf, 4), 4);  // truncated, no error
  EXPECT_EQ(err(symlink("x", p("l").c_str())), EEXIST);
  // Loops, and chains at the kernel's limit of 40 links.
  symlink("a", p("b").c_str());
  symlink("b", p("a").c_str());
  struct stat s2;
  EXPECT_EQ(err(stat(p("a").c_str(), &s2)), ELOOP);
  touch(p("end"));
  std::string prev = "end";
  for (int i = 0; i < 41; ++i) {
    std::string name = "c" + std::to_string(i);
    ASSERT_EQ(symlink(prev.c_str(), p(name).c_str()), 0);
    prev = name;
  }
  EXPECT_EQ(stat(p("c39").c_str(), &s2), 0);
  EXPECT_EQ(err(stat(p("c40").c_str(), &s2)), ELOOP);
  // Targets up to PATH_MAX - 1 bytes.
  std::string longTarget(4095, 't');
  EXPECT_EQ(symlink(longTarget.c_str(), p("long").c_str()), 0);
  EXPECT_EQ(readlink(p("long").c_str(), buf, sizeof(buf)), 4095);
  std::string tooLong(4096, 't');
  EXPECT_EQ(err(symlink(tooLong.c_str(), p("toolong").c_str())), ENAMETOOLONG);
}

class Rename : public FsTest {};
ON_BOTH(Rename);

TEST_P(Rename, FilesAndDirectories) {
  writeFile(p("a"), "A");
  writeFile(p("b"), "B");
  ASSERT_EQ(rename(p("a").c_str(), p("b").c_str()), 0);
  EXPECT_EQ(readFile(p("b")), "A");
  ASSERT_EQ(mkdir(p("d1").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(p("d2").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(p("d1/sub").c_str(), 0755), 0);
  ASSERT_EQ(rename(p("d1/sub").c_str(), p("d2/sub").c_str()), 0);
  EXPECT_EQ(statOf(p("d1")).st_nlink, 2u);
  EXPECT_EQ(statOf(p("d2")).st_nlink, 3u);
  // ".." follows the directory.
  struct stat dotdot;
  ASSERT_EQ(stat(p("d2/sub/..").c_str(), &dotdot), 0);
  EXPECT_EQ(dotdot.st_ino, statOf(p("d2")).st_ino);
  // Over an empty directory; not over a full one; types must match.
  ASSERT_EQ(mkdir(p("empty").c_str(), 0755), 0);
  ASSERT_EQ(rename(p("d2/sub").c_str(), p("empty").c_str()), 0);
  touch(p("empty/x"));
  ASSERT_EQ(mkdir(p("other").c_str(), 0755), 0);
  EXPECT_EQ(err(rename(p("other").c_str(), p("empty").c_str())), ENOTEMPTY);
  EXPECT_EQ(err(rename(p("other").c_str(), p("b").c_str())), ENOTDIR);
  EXPECT_EQ(err(rename(p("b").c_str(), p("other").c_str())), EISDIR);
  // Into its own subtree.
  EXPECT_EQ(err(rename(p("empty").c_str(), p("empty/x/y").c_str())), ENOTDIR);
  ASSERT_EQ(mkdir(p("empty/in").c_str(), 0755), 0);
  EXPECT_EQ(err(rename(p("empty").c_str(), p("empty/in/y").c_str())), EINVAL);
  EXPECT_EQ(err(rename(p("none").c_str(), p("x").c_str())), ENOENT);
}

TEST_P(Rename, HardLinksOfOneInodeAreLeftAlone) {
  writeFile(p("f"), "x");
  ASSERT_EQ(link(p("f").c_str(), p("g").c_str()), 0);
  ASSERT_EQ(rename(p("f").c_str(), p("g").c_str()), 0);
  EXPECT_EQ(statOf(p("f")).st_nlink, 2u);
  EXPECT_EQ(statOf(p("g")).st_nlink, 2u);
}

TEST_P(Rename, TimesOfBothParentsAndTheFile) {
  ASSERT_EQ(mkdir(p("from").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(p("to").c_str(), 0755), 0);
  writeFile(p("from/f"), "x");
  age(p("from"));
  age(p("to"));
  age(p("from/f"));
  auto file = statOf(p("from/f"));
  sleep(1);
  ASSERT_EQ(rename(p("from/f").c_str(), p("to/f").c_str()), 0);
  EXPECT_TRUE(newer(statOf(p("from")).st_mtim, 5));
  EXPECT_TRUE(newer(statOf(p("to")).st_mtim, 5));
  auto moved = statOf(p("to/f"));
  EXPECT_EQ(moved.st_mtim.tv_sec, file.st_mtim.tv_sec);  // content unchanged
  EXPECT_TRUE(later(moved.st_ctim, file.st_ctim));       // Linux updates ctime
}

TEST_P(Rename, NoreplaceAndExchange) {
  writeFile(p("a"), "A");
  writeFile(p("b"), "B");
  EXPECT_EQ(err(renameat2(AT_FDCWD, p("a").c_str(), AT_FDCWD, p("b").c_str(), RENAME_NOREPLACE)),
            EEXIST);
  ASSERT_EQ(renameat2(AT_FDCWD, p("a").c_str(), AT_FDCWD, p("b").c_str(), RENAME_EXCHANGE), 0);
  EXPECT_EQ(readFile(p("a")), "B");
  EXPECT_EQ(readFile(p("b")), "A");
  EXPECT_EQ(err(renameat2(AT_FDCWD, p("a").c_str(), AT_FDCWD, p("c").c_str(), RENAME_EXCHANGE)),
            ENOENT);
  ASSERT_EQ(renameat2(AT_FDCWD, p("a").c_str(), AT_FDCWD, p("c").c_str(), RENAME_NOREPLACE), 0);
}

TEST_P(Rename, StickyDirectories) {
  ASSERT_EQ(chmod(dir().c_str(), 01777), 0);
  touch(p("roots"), 0666);
  EXPECT_EQ(asUser([&] { return err(rename(p("roots").c_str(), p("mine").c_str())); }), EPERM);
}

class Mknod : public FsTest {};
ON_BOTH(Mknod);

TEST_P(Mknod, FifosDevicesAndFiles) {
  ASSERT_EQ(mkfifo(p("fifo").c_str(), 0600), 0);
  EXPECT_TRUE(S_ISFIFO(statOf(p("fifo")).st_mode));
  EXPECT_EQ(err(mkfifo(p("fifo").c_str(), 0600)), EEXIST);
  ASSERT_EQ(mknod(p("null").c_str(), S_IFCHR | 0666, makedev(1, 3)), 0);
  auto st = statOf(p("null"));
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(1, 3));
  ASSERT_EQ(mknod(p("blk").c_str(), S_IFBLK | 0600, makedev(7, 0)), 0);
  EXPECT_TRUE(S_ISBLK(statOf(p("blk")).st_mode));
  ASSERT_EQ(mknod(p("reg").c_str(), S_IFREG | 0640, 0), 0);
  EXPECT_EQ(statOf(p("reg")).st_mode, S_IFREG | 0640u);
  ASSERT_EQ(mknod(p("sock").c_str(), S_IFSOCK | 0600, 0), 0);
  EXPECT_TRUE(S_ISSOCK(statOf(p("sock")).st_mode));
  // Devices work as devices (the kernel runs them): this one is /dev/null.
  int fd = open(p("null").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(write(fd, "gone", 4), 4);
  close(fd);
  EXPECT_EQ(asUser([&] { return err(mknod(p("dev2").c_str(), S_IFCHR | 0600, makedev(1, 3))); }),
            EPERM);
}

TEST_P(Mknod, OpeningAFifo) {
  ASSERT_EQ(mkfifo(p("fifo").c_str(), 0666), 0);
  // No reader: a non-blocking writer gets ENXIO; a non-blocking reader opens at once.
  EXPECT_EQ(err(open(p("fifo").c_str(), O_WRONLY | O_NONBLOCK)), ENXIO);
  int r = open(p("fifo").c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(r, 0);
  int w = open(p("fifo").c_str(), O_WRONLY | O_NONBLOCK);
  ASSERT_GE(w, 0);
  EXPECT_EQ(write(w, "abc", 3), 3);
  char buf[4] = {};
  EXPECT_EQ(read(r, buf, 3), 3);
  close(w);
  close(r);
}

}  // namespace
}  // namespace cairn::posix
