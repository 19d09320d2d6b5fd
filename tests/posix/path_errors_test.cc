// The path errors every call that takes a path documents, call by call, as the well-known suites
// check them: a component that is not a directory (ENOTDIR), a symlink loop on the way (ELOOP),
// a name over 255 bytes and a path over PATH_MAX (ENAMETOOLONG), a missing directory (ENOENT), a
// directory an unprivileged user may not search (EACCES). Each call is tried with the bad path in
// every position it takes one.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/xattr.h>

#include <climits>
#include <functional>
#include <vector>

#include "tests/posix/posix_env.h"

namespace cairn::posix {
namespace {

class PathErrors : public FsTest {
protected:
  void SetUp() override {
    FsTest::SetUp();
    touch(p("file"));
    touch(p("other"));
    ASSERT_EQ(symlink("loop2", p("loop1").c_str()), 0);
    ASSERT_EQ(symlink("loop1", p("loop2").c_str()), 0);
    ASSERT_EQ(mkdir(p("closed").c_str(), 0700), 0);  // root's: no search for others
    ASSERT_EQ(mkdir(p("open").c_str(), 0777), 0);
    ASSERT_EQ(chmod(dir().c_str(), 0755), 0);
  }
  struct Case {
    const char* what;
    std::string path;
    int expected;
    bool asUser;
  };
  std::vector<Case> cases() {
    std::string tooLong = p("open/");
    while (tooLong.size() <= PATH_MAX) tooLong += "./";
    tooLong += "x";
    return {
        {"a file as a directory", p("file/x"), ENOTDIR, false},
        {"a symlink loop", p("loop1/x"), ELOOP, false},
        {"a 256-byte name", p("open/" + std::string(256, 'n')), ENAMETOOLONG, false},
        {"a path over PATH_MAX", tooLong, ENAMETOOLONG, false},
        {"a missing directory", p("missing/x"), ENOENT, false},
        {"a directory that may not be searched", p("closed/x"), EACCES, true},
    };
  }
  // Runs `call` on every bad path, as root or as the unprivileged user.
  void check(const char* name, const std::function<int(const char*)>& call) {
    for (auto& c : cases()) {
      auto body = [&]() { return err(call(c.path.c_str())); };
      int got = c.asUser ? asUser(body) : body();
      EXPECT_EQ(got, c.expected) << name << " with " << c.what << ": got " << strerror(got);
    }
  }
};
ON_BOTH(PathErrors);

TEST_P(PathErrors, OneArgument) {
  auto file = p("file");
  check("open", [](const char* x) { return open(x, O_RDONLY); });
  check("open(O_CREAT)", [](const char* x) { return open(x, O_CREAT | O_WRONLY, 0644); });
  check("opendir", [](const char* x) {
    DIR* d = opendir(x);
    return d == nullptr ? -1 : closedir(d);
  });
  check("mkdir", [](const char* x) { return mkdir(x, 0755); });
  check("rmdir", [](const char* x) { return rmdir(x); });
  check("unlink", [](const char* x) { return unlink(x); });
  check("mkfifo", [](const char* x) { return mkfifo(x, 0644); });
  check("mknod", [](const char* x) { return mknod(x, S_IFREG | 0644, 0); });
  check("chmod", [](const char* x) { return chmod(x, 0644); });
  check("chown", [](const char* x) { return chown(x, 0, 0); });
  check("lchown", [](const char* x) { return lchown(x, 0, 0); });
  check("truncate", [](const char* x) { return truncate(x, 0); });
  check("utimensat", [](const char* x) { return utimensat(AT_FDCWD, x, nullptr, 0); });
  check("stat", [](const char* x) {
    struct stat st;
    return stat(x, &st);
  });
  check("lstat", [](const char* x) {
    struct stat st;
    return lstat(x, &st);
  });
  check("statfs", [](const char* x) {
    struct statfs st;
    return statfs(x, &st);
  });
  check("access", [](const char* x) { return access(x, F_OK); });
  check("readlink", [](const char* x) {
    char buf[64];
    return readlink(x, buf, sizeof(buf)) < 0 ? -1 : 0;
  });
  check("setxattr", [](const char* x) { return setxattr(x, "user.t", "v", 1, 0); });
  check("getxattr", [](const char* x) {
    char buf[16];
    return getxattr(x, "user.t", buf, sizeof(buf)) < 0 ? -1 : 0;
  });
  check("listxattr", [](const char* x) {
    char buf[64];
    return listxattr(x, buf, sizeof(buf)) < 0 ? -1 : 0;
  });
  check("removexattr", [](const char* x) { return removexattr(x, "user.t"); });
  // Nothing was made or changed on the way.
  EXPECT_EQ(statOf(file).st_size, 0);
}

TEST_P(PathErrors, TwoArguments) {
  auto file = p("file"), other = p("other"), fresh = p("open/fresh");
  check("symlink (the new name)", [](const char* x) { return symlink("target", x); });
  check("link (the existing name)", [&](const char* x) { return link(x, fresh.c_str()); });
  check("link (the new name)", [&](const char* x) { return link(file.c_str(), x); });
  check("rename (the old name)", [&](const char* x) { return rename(x, fresh.c_str()); });
  check("rename (the new name)", [&](const char* x) { return rename(other.c_str(), x); });
  EXPECT_EQ(err(access(fresh.c_str(), F_OK)), ENOENT);
  EXPECT_EQ(statOf(file).st_nlink, 1u);
  EXPECT_EQ(err(access(other.c_str(), F_OK)), 0);
}

}  // namespace
}  // namespace cairn::posix
