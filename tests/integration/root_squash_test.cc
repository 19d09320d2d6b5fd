// Root squash (--root-squash on the metadata server): root on a client that is not trusted acts
// as nobody (65534:65534), and the server checks what it may do; root on a trusted client
// (--trust-root NAME, its certificate's name) and every other user stay as they are. The test
// runs as root on two mounts of one cluster: `trusted_` sets the scene, `squashed_` tries it.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "tests/integration/cluster.h"

namespace cairn::test {
namespace {

constexpr uid_t USER = 4242;
constexpr gid_t GROUP = 4242;
constexpr uid_t NOBODY = 65534;

int check(int rc) {
  return rc < 0 ? errno : 0;
}

int openErr(const std::string& path, int flags, mode_t mode = 0644) {
  int fd = open(path.c_str(), flags, mode);
  if (fd < 0) return errno;
  close(fd);
  return 0;
}

class RootSquash : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    TestCluster::Options options;
    options.metaArgs = {"--root-squash", "--trust-root", "console"};
    cluster_ = new TestCluster(options);
    auto trustedCredentials = cluster_->issue("client", "console", "console");
    trusted_ = new std::string(cluster_->mount("tls=" + trustedCredentials));
    squashed_ = new std::string(cluster_->mount());
    chmod(trusted_->c_str(), 0755);
  }
  static void TearDownTestSuite() {
    delete cluster_;
    delete trusted_;
    delete squashed_;
  }
  void SetUp() override {
    name_ = std::string("/") + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    ASSERT_EQ(mkdir(t("").c_str(), 0755), 0);
  }
  // The test's own directory, through the trusted and the squashed mount.
  std::string t(const std::string& n) { return *trusted_ + name_ + "/" + n; }
  std::string s(const std::string& n) { return *squashed_ + name_ + "/" + n; }
  // A file the trusted root makes and gives to USER.
  void give(const std::string& n, mode_t mode, const std::string& content = "theirs") {
    writeWhole(t(n), content);
    ASSERT_EQ(chown(t(n).c_str(), USER, GROUP), 0);
    ASSERT_EQ(chmod(t(n).c_str(), mode), 0);
  }

  static TestCluster* cluster_;
  static std::string* trusted_;
  static std::string* squashed_;
  std::string name_;
};
TestCluster* RootSquash::cluster_ = nullptr;
std::string* RootSquash::trusted_ = nullptr;
std::string* RootSquash::squashed_ = nullptr;

TEST_F(RootSquash, NewFilesBelongToNobodyAndRootOwnedDirectoriesAreClosed) {
  ASSERT_EQ(mkdir(t("open").c_str(), 0777), 0);
  ASSERT_EQ(chmod(t("open").c_str(), 0777), 0);
  ASSERT_EQ(mkdir(t("rootonly").c_str(), 0755), 0);

  EXPECT_EQ(openErr(s("rootonly/f"), O_CREAT | O_WRONLY), EACCES);
  EXPECT_EQ(check(mkdir(s("rootonly/d").c_str(), 0755)), EACCES);
  EXPECT_EQ(check(symlink("x", s("rootonly/l").c_str())), EACCES);
  // `mkdir -p` walks over what exists: EEXIST comes before the permission check.
  EXPECT_EQ(check(mkdir(s("rootonly").c_str(), 0755)), EEXIST);

  writeWhole(s("open/mine"), "made by a squashed root");
  struct stat st;
  ASSERT_EQ(stat(t("open/mine").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, NOBODY);
  EXPECT_EQ(st.st_gid, NOBODY);
  ASSERT_EQ(mkdir(s("open/sub").c_str(), 0700), 0);
  ASSERT_EQ(stat(t("open/sub").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, NOBODY);
  // Its own files it may change and remove.
  EXPECT_EQ(check(chmod(s("open/mine").c_str(), 0600)), 0);
  EXPECT_EQ(check(truncate(s("open/mine").c_str(), 4)), 0);
  EXPECT_EQ(readWhole(t("open/mine")), "made");
  EXPECT_EQ(check(unlink(s("open/mine").c_str())), 0);
  EXPECT_EQ(check(rmdir(s("open/sub").c_str())), 0);
  // Devices need a capability it no longer has.
  EXPECT_EQ(check(mknod(s("open/dev").c_str(), S_IFCHR | 0600, makedev(1, 3))), EPERM);
  EXPECT_EQ(check(mknod(s("open/fifo").c_str(), S_IFIFO | 0600, 0)), 0);

  // The trusted client's root is root.
  writeWhole(t("rootonly/f"), "root was here");
  EXPECT_EQ(check(chown(t("rootonly/f").c_str(), USER, GROUP)), 0);
}

TEST_F(RootSquash, OtherPeoplesFilesFollowTheirModeBits) {
  give("secret", 0600, "secret");
  give("public", 0644, "public");
  EXPECT_EQ(openErr(s("secret"), O_RDONLY), EACCES);
  EXPECT_EQ(readWhole(s("public")), "public");
  EXPECT_EQ(openErr(s("public"), O_WRONLY), EACCES);
  EXPECT_EQ(openErr(s("public"), O_RDONLY | O_TRUNC), EACCES);
  EXPECT_EQ(check(truncate(s("public").c_str(), 0)), EACCES);
  EXPECT_EQ(check(chmod(s("public").c_str(), 0666)), EPERM);
  EXPECT_EQ(check(chown(s("public").c_str(), 0, 0)), EPERM);
  EXPECT_EQ(check(chown(s("public").c_str(), NOBODY, NOBODY)), EPERM);
  const timespec times[2] = {{1, 0}, {2, 0}};
  EXPECT_EQ(check(utimensat(AT_FDCWD, s("public").c_str(), times, 0)), EPERM);
  EXPECT_EQ(check(utimensat(AT_FDCWD, s("public").c_str(), nullptr, 0)), EACCES);
  EXPECT_EQ(check(setxattr(s("public").c_str(), "user.x", "1", 1, 0)), EACCES);
  EXPECT_EQ(check(link(s("secret").c_str(), s("hardlink").c_str())), EACCES);
  // Nothing changed.
  EXPECT_EQ(readWhole(t("secret")), "secret");
  EXPECT_EQ(readWhole(t("public")), "public");
  struct stat st;
  ASSERT_EQ(stat(t("public").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  EXPECT_EQ(st.st_uid, USER);

  // Group and other bits count as they would for any user.
  give("shared", 0666, "shared");
  writeWhole(s("shared"), "rewritten");
  EXPECT_EQ(readWhole(t("shared")), "rewritten");

  // A directory it may not read it may not list, though its kernel thinks it is root.
  ASSERT_EQ(mkdir(t("private").c_str(), 0700), 0);
  ASSERT_EQ(chown(t("private").c_str(), USER, GROUP), 0);
  DIR* d = opendir(s("private").c_str());
  EXPECT_EQ(d, nullptr);
  EXPECT_EQ(errno, EACCES);
  if (d != nullptr) closedir(d);
  EXPECT_EQ(openErr(s("private/f"), O_CREAT | O_WRONLY), EACCES);
}

TEST_F(RootSquash, StickyDirectoriesProtectOtherPeoplesEntries) {
  ASSERT_EQ(mkdir(t("tmp").c_str(), 0777), 0);
  ASSERT_EQ(chmod(t("tmp").c_str(), 01777), 0);
  give("tmp/theirs", 0666);
  EXPECT_EQ(check(unlink(s("tmp/theirs").c_str())), EPERM);
  writeWhole(s("tmp/mine"), "mine");
  EXPECT_EQ(check(rename(s("tmp/mine").c_str(), s("tmp/theirs").c_str())), EPERM);
  EXPECT_EQ(check(rename(s("tmp/mine").c_str(), s("tmp/mine2").c_str())), 0);
  EXPECT_EQ(check(unlink(s("tmp/mine2").c_str())), 0);
  EXPECT_EQ(readWhole(t("tmp/theirs")), "theirs");
}

TEST_F(RootSquash, XattrNamespacesFollowLinux) {
  ASSERT_EQ(chmod(t("").c_str(), 0777), 0);
  writeWhole(s("mine"), "x");
  EXPECT_EQ(check(setxattr(s("mine").c_str(), "user.note", "1", 1, 0)), 0);
  EXPECT_EQ(check(setxattr(s("mine").c_str(), "trusted.note", "1", 1, 0)), EPERM);
  ASSERT_EQ(setxattr(t("mine").c_str(), "trusted.note", "1", 1, 0), 0);
  char value[8];
  EXPECT_EQ(getxattr(s("mine").c_str(), "trusted.note", value, sizeof(value)), -1);
  EXPECT_EQ(errno, ENODATA);
  EXPECT_EQ(getxattr(t("mine").c_str(), "trusted.note", value, sizeof(value)), 1);
}

TEST_F(RootSquash, OtherUsersOfTheSquashedClientAreUnchanged) {
  give("secret", 0600, "secret");
  auto path = s("secret");
  EXPECT_EQ(runAs(USER, GROUP, {}, [&] { return readWhole(path) == "secret" ? 0 : EIO; }), 0);
  EXPECT_EQ(runAs(USER, GROUP, {}, [&] { return check(chmod(path.c_str(), 0640)); }), 0);
}

TEST_F(RootSquash, TheServerSaysWhatItSquashes) {
  std::ifstream in(cluster_->log(0));
  std::stringstream log;
  log << in.rdbuf();
  EXPECT_NE(log.str().find("root squash: 65534:65534 (trusted: console)"), std::string::npos)
      << log.str();
}

// Without the setting, root is root everywhere (the default, as before).
TEST(RootSquashOff, RootIsRoot) {
  TestCluster cluster;
  auto m = cluster.mount();
  ASSERT_EQ(mkdir((m + "/d").c_str(), 0700), 0);
  ASSERT_EQ(chown((m + "/d").c_str(), USER, GROUP), 0);
  writeWhole(m + "/d/f", "root writes anywhere");
  EXPECT_EQ(check(chown((m + "/d/f").c_str(), USER, GROUP)), 0);
}

}  // namespace
}  // namespace cairn::test
