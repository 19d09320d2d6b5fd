// The conformance suite runs every test twice: on a local directory (showing the test right on
// Linux's own filesystem) and on a Cairn mount. Tests get their directory from FsTest::dir().
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <functional>
#include <string>

#include "rpc/time_order.h"

namespace cairn::posix {

// The two places: "local" (a directory on the machine's disk) and "cairn".
std::string rootOf(const std::string& fs);

class FsTest : public ::testing::TestWithParam<std::string> {
protected:
  void SetUp() override;
  const std::string& dir() const { return dir_; }
  std::string p(const std::string& name) const { return dir_ + "/" + name; }
  bool onCairn() const { return GetParam() == "cairn"; }

private:
  std::string dir_;
};

// Helpers shared by the tests.
int err(int rc);  // errno of a failed call, 0 on success
void touch(const std::string& path, mode_t mode = 0644);
void writeFile(const std::string& path, const std::string& data);
std::string readFile(const std::string& path);
struct stat statOf(const std::string& path);  // lstat
// Sets atime and mtime well in the past, so that any later update is visible.
void age(const std::string& path);
bool newer(const timespec& t, long sinceSec);  // t is after (now - sinceSec)
// Times are compared to the nanosecond (cairn::later, rpc/time_order.h): after a sleep of a
// second a change's time is later, but not always in a later second (a local filesystem's clock
// is coarse, and its ticks can fall so that the second stays the same — seen once in CI).
using cairn::later;
// Runs body as an unprivileged user (uid/gid 4242, optionally in supplementary group 5353);
// returns what body returns (an errno, 0 for success).
constexpr uid_t USER = 4242;
constexpr gid_t GROUP = 4242;
constexpr gid_t SUPP = 5353;
int asUser(const std::function<int()>& body, bool supplementary = false);
// Runs `body` as another user (no capabilities), in GROUP if `inGroup`, else in none of those.
int asOther(const std::function<int()>& body, bool inGroup = false);

#define ON_BOTH(Suite)                                                     \
  INSTANTIATE_TEST_SUITE_P(Fs, Suite, ::testing::Values("local", "cairn"), \
                           [](const auto& info) { return info.param; })

}  // namespace cairn::posix
