// Permission checks for non-root users, through a mount with allow_other,default_permissions.
// Each check runs in a child that has dropped to an unprivileged uid/gid.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>

#include "tests/integration/cluster.h"

namespace cairn::test {
namespace {

constexpr uid_t USER = 4242;
constexpr gid_t GROUP = 4242;
constexpr gid_t OTHER_GROUP = 5353;

// Runs `body` as USER:GROUP (with OTHER_GROUP as a supplementary group if asked).
int as(std::function<int()> body, bool withOtherGroup = false) {
  return runAs(USER, GROUP, withOtherGroup ? std::vector<gid_t>{OTHER_GROUP} : std::vector<gid_t>{},
               body);
}

int check(int rc) {
  return rc < 0 ? errno : 0;
}

class Permissions : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    cluster_ = new TestCluster();
    mnt_ = new std::string(cluster_->mount());
    chmod(mnt_->c_str(), 0755);
  }
  static void TearDownTestSuite() {
    delete cluster_;
    delete mnt_;
  }
  std::string p(const std::string& n) { return *mnt_ + "/" + n; }
  static TestCluster* cluster_;
  static std::string* mnt_;
};
TestCluster* Permissions::cluster_ = nullptr;
std::string* Permissions::mnt_ = nullptr;

TEST_F(Permissions, CreateNeedsWriteOnTheDirectory) {
  ASSERT_EQ(mkdir(p("rootonly").c_str(), 0755), 0);
  EXPECT_EQ(as([&] { return check(open(p("rootonly/f").c_str(), O_CREAT | O_WRONLY, 0644)); }),
            EACCES);
  ASSERT_EQ(mkdir(p("open").c_str(), 0777), 0);
  ASSERT_EQ(chmod(p("open").c_str(), 0777), 0);
  EXPECT_EQ(as([&] {
              int fd = open(p("open/mine").c_str(), O_CREAT | O_WRONLY, 0640);
              if (fd < 0) return errno;
              close(fd);
              return 0;
            }),
            0);
  struct stat st;
  ASSERT_EQ(stat(p("open/mine").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, USER);
  EXPECT_EQ(st.st_gid, GROUP);
}

TEST_F(Permissions, ReadWriteFollowTheMode) {
  int fd = open(p("secret").c_str(), O_CREAT | O_WRONLY, 0600);
  close(fd);
  EXPECT_EQ(as([&] { return check(open(p("secret").c_str(), O_RDONLY)); }), EACCES);
  chmod(p("secret").c_str(), 0644);
  EXPECT_EQ(as([&] {
              int fd = open(p("secret").c_str(), O_RDONLY);
              if (fd < 0) return errno;
              close(fd);
              return 0;
            }),
            0);
  EXPECT_EQ(as([&] { return check(open(p("secret").c_str(), O_WRONLY)); }), EACCES);
  // Group permission through a supplementary group.
  chown(p("secret").c_str(), 0, OTHER_GROUP);
  chmod(p("secret").c_str(), 0060);
  EXPECT_EQ(as([&] { return check(open(p("secret").c_str(), O_RDWR)); }), EACCES);
  EXPECT_EQ(as(
                [&] {
                  int fd = open(p("secret").c_str(), O_RDWR);
                  if (fd < 0) return errno;
                  close(fd);
                  return 0;
                },
                true),
            0);
}

TEST_F(Permissions, SearchPermissionAlongThePath) {
  ASSERT_EQ(mkdir(p("locked").c_str(), 0700), 0);
  int fd = open(p("locked/inside").c_str(), O_CREAT | O_WRONLY, 0644);
  close(fd);
  struct stat st;
  EXPECT_EQ(as([&] { return check(stat(p("locked/inside").c_str(), &st)); }), EACCES);
}

TEST_F(Permissions, OnlyTheOwnerChangesModeAndNobodyGivesFilesAway) {
  int fd = open(p("owned").c_str(), O_CREAT | O_WRONLY, 0644);
  close(fd);
  EXPECT_EQ(as([&] { return check(chmod(p("owned").c_str(), 0777)); }), EPERM);
  chown(p("owned").c_str(), USER, GROUP);
  EXPECT_EQ(as([&] { return check(chmod(p("owned").c_str(), 0600)); }), 0);
  EXPECT_EQ(as([&] { return check(chown(p("owned").c_str(), 0, GROUP)); }), EPERM);
  struct timespec t[2] = {{1, 0}, {1, 0}};
  chown(p("owned").c_str(), 0, 0);
  EXPECT_EQ(as([&] { return check(utimensat(AT_FDCWD, p("owned").c_str(), t, 0)); }), EPERM);
}

TEST_F(Permissions, StickyDirectories) {
  ASSERT_EQ(mkdir(p("tmp").c_str(), 01777), 0);
  chmod(p("tmp").c_str(), 01777);
  int fd = open(p("tmp/roots").c_str(), O_CREAT | O_WRONLY, 0666);
  close(fd);
  chmod(p("tmp/roots").c_str(), 0666);
  EXPECT_EQ(as([&] { return check(unlink(p("tmp/roots").c_str())); }), EPERM);
  EXPECT_EQ(as([&] { return check(rename(p("tmp/roots").c_str(), p("tmp/x").c_str())); }), EPERM);
  EXPECT_EQ(as([&] {
              int fd = open(p("tmp/users").c_str(), O_CREAT | O_WRONLY, 0644);
              if (fd < 0) return errno;
              close(fd);
              return check(unlink(p("tmp/users").c_str()));
            }),
            0);
}

TEST_F(Permissions, SetgidDirectoriesPassTheirGroupOn) {
  ASSERT_EQ(mkdir(p("team").c_str(), 0777), 0);
  chown(p("team").c_str(), 0, OTHER_GROUP);
  chmod(p("team").c_str(), 02777);
  EXPECT_EQ(as([&] {
              int fd = open(p("team/f").c_str(), O_CREAT | O_WRONLY, 0644);
              if (fd < 0) return errno;
              close(fd);
              return check(mkdir(p("team/sub").c_str(), 0755));
            }),
            0);
  struct stat st;
  stat(p("team/f").c_str(), &st);
  EXPECT_EQ(st.st_gid, OTHER_GROUP);
  stat(p("team/sub").c_str(), &st);
  EXPECT_EQ(st.st_gid, OTHER_GROUP);
  EXPECT_TRUE(st.st_mode & S_ISGID);
}

TEST_F(Permissions, WriteByNonOwnerClearsSetuid) {
  ASSERT_EQ(mkdir(p("suid").c_str(), 0777), 0);
  int fd = open(p("suid/prog").c_str(), O_CREAT | O_WRONLY, 0666);
  close(fd);
  chmod(p("suid/prog").c_str(), 04777);
  EXPECT_EQ(as([&] {
              int fd = open(p("suid/prog").c_str(), O_WRONLY);
              if (fd < 0) return errno;
              int rc = check(int(write(fd, "x", 1)));
              close(fd);
              return rc;
            }),
            0);
  struct stat st;
  stat(p("suid/prog").c_str(), &st);
  EXPECT_FALSE(st.st_mode & S_ISUID);
}

// The kernel (5.11 and later) leaves that clearing to the mount (FUSE_HANDLE_KILLPRIV_V2, which
// spares it a GETXATTR before every write and a GETATTR before every chown), and the mount does
// it: tests/posix (SetIdBits) checks the rules against the local disk's.
TEST_F(Permissions, TheMountClearsSetIdBitsForTheKernel) {
  auto counter = [&](const std::string& name) {
    auto r = run({ctlBin(), "--mount", *mnt_, "stats"});
    EXPECT_EQ(r.status, 0) << r.err;
    auto at = r.out.find("\n" + name + " ");
    EXPECT_NE(at, std::string::npos) << name;
    return at == std::string::npos ? 0 : std::stoull(r.out.substr(at + name.size() + 2));
  };
  EXPECT_EQ(counter("cairn_client_killpriv_v2"), 1u);
  uint64_t before = counter("cairn_client_setid_cleared_total");
  ASSERT_EQ(mkdir(p("kill").c_str(), 0777), 0);
  ASSERT_EQ(chmod(p("kill").c_str(), 0777), 0);
  for (auto name : {"w", "t", "c"}) {
    int fd = open(p(std::string("kill/") + name).c_str(), O_CREAT | O_WRONLY, 0666);
    ASSERT_GE(fd, 0);
    close(fd);
    ASSERT_EQ(chmod(p(std::string("kill/") + name).c_str(), 06777), 0);
  }
  EXPECT_EQ(as([&] {
              int fd = open(p("kill/w").c_str(), O_WRONLY);
              if (fd < 0) return errno;
              int rc = check(int(write(fd, "x", 1)));
              close(fd);
              return rc == 0 ? check(truncate(p("kill/t").c_str(), 0)) : rc;
            }),
            0);
  ASSERT_EQ(chown(p("kill/c").c_str(), USER, GROUP), 0);
  for (auto name : {"w", "t", "c"}) {
    struct stat st;
    ASSERT_EQ(stat(p(std::string("kill/") + name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0777u) << name;
  }
  EXPECT_EQ(counter("cairn_client_setid_cleared_total") - before, 3u);
}

}  // namespace
}  // namespace cairn::test
