#include "tests/posix/posix_env.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/wait.h>

#include <memory>

#include "tests/integration/cluster.h"

namespace cairn::posix {

namespace {
// One cluster and one local directory for the whole run.
class Places : public ::testing::Environment {
public:
  void SetUp() override {
    cluster = std::make_unique<test::TestCluster>();
    // Every FUSE mount is nodev,nosuid unless told otherwise; a disk mount is not.
    cairnRoot = cluster->mount("dev,suid");
    chmod(cairnRoot.c_str(), 0777);
    local = std::make_unique<test::TempDir>();
    chmod(local->path().c_str(), 0755);
    localRoot = local->path() + "/fs";
    mkdir(localRoot.c_str(), 0777);
    chmod(localRoot.c_str(), 0777);
  }
  void TearDown() override {
    cluster.reset();
    local.reset();
  }
  std::unique_ptr<test::TestCluster> cluster;
  std::unique_ptr<test::TempDir> local;
  std::string cairnRoot, localRoot;
};
Places* places = nullptr;
}  // namespace

std::string rootOf(const std::string& fs) {
  return fs == "cairn" ? places->cairnRoot : places->localRoot;
}

void FsTest::SetUp() {
  auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = std::string(info->test_suite_name()) + "." + info->name();
  for (auto& c : name) {
    if (c == '/') c = '_';
  }
  dir_ = rootOf(GetParam()) + "/" + name;
  ASSERT_EQ(mkdir(dir_.c_str(), 0777), 0) << dir_ << ": " << strerror(errno);
  chmod(dir_.c_str(), 0777);
}

int err(int rc) {
  return rc < 0 ? errno : 0;
}

void touch(const std::string& path, mode_t mode) {
  int fd = open(path.c_str(), O_CREAT | O_WRONLY, mode);
  ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
  close(fd);
}

void writeFile(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
  ASSERT_EQ(write(fd, data.data(), data.size()), ssize_t(data.size()));
  close(fd);
}

std::string readFile(const std::string& path) {
  return test::readWhole(path);
}

struct stat statOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << path << ": " << strerror(errno);
  return st;
}

void age(const std::string& path) {
  timespec old[2] = {{time(nullptr) - 100000, 0}, {time(nullptr) - 100000, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), old, AT_SYMLINK_NOFOLLOW), 0) << strerror(errno);
}

bool newer(const timespec& t, long sinceSec) {
  return t.tv_sec >= time(nullptr) - sinceSec;
}

int asUser(const std::function<int()>& body, bool supplementary) {
  return test::runAs(USER, GROUP, supplementary ? std::vector<gid_t>{SUPP} : std::vector<gid_t>{},
                     body);
}

int asOther(const std::function<int()>& body, bool inGroup) {
  return test::runAs(USER + 1, inGroup ? GROUP : GROUP + 1, {}, body);
}

}  // namespace cairn::posix

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  cairn::posix::places = new cairn::posix::Places();
  ::testing::AddGlobalTestEnvironment(cairn::posix::places);
  return RUN_ALL_TESTS();
}
