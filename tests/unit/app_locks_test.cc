// The client's record of its application locks (what lock replay takes again): a lock or unlock
// replaces the owner's overlapping ranges, splitting them, as the server's table does.
#include "fusefs/app_locks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace cairn {
namespace {

using Range = AppLocks::Range;
constexpr uint64_t END = ~uint64_t(0);

std::vector<std::tuple<uint64_t, uint64_t, uint32_t>> ranges(const AppLocks& locks,
                                                             const AppLocks::Key& key) {
  std::vector<std::tuple<uint64_t, uint64_t, uint32_t>> out;
  auto it = locks.all().find(key);
  if (it == locks.all().end()) return out;
  for (auto& r : it->second) out.emplace_back(r.start, r.end, r.type);
  std::sort(out.begin(), out.end());
  return out;
}

TEST(AppLocks, AnUnlockInTheMiddleSplitsALock) {
  AppLocks locks;
  AppLocks::Key key{7, 1, 0};
  locks.set(key, Range{0, 99, 1, 42});
  locks.set(key, Range{40, 59, AppLocks::UNLOCK, 42});
  EXPECT_EQ(ranges(locks, key),
            (std::vector<std::tuple<uint64_t, uint64_t, uint32_t>>{{0, 39, 1}, {60, 99, 1}}));
  EXPECT_EQ(locks.size(), 2u);
}

TEST(AppLocks, ANewTypeReplacesTheOverlapOnly) {
  AppLocks locks;
  AppLocks::Key key{7, 1, 0};
  locks.set(key, Range{10, END, 0, 1});  // read lock to the end of the file
  locks.set(key, Range{0, 19, 1, 1});    // write lock over its start
  EXPECT_EQ(ranges(locks, key),
            (std::vector<std::tuple<uint64_t, uint64_t, uint32_t>>{{0, 19, 1}, {20, END, 0}}));
}

TEST(AppLocks, OwnersAndSpacesAreSeparateAndCloseDropsAnOwner) {
  AppLocks locks;
  AppLocks::Key fcntlA{7, 1, 0}, fcntlB{7, 2, 0}, flockA{7, 1, 1};
  locks.set(fcntlA, Range{0, END, 1, 1});
  locks.set(fcntlB, Range{0, 9, 0, 2});
  locks.set(flockA, Range{0, END, 1, 1});
  locks.set(fcntlB, Range{0, END, AppLocks::UNLOCK, 2});
  EXPECT_FALSE(locks.holds(fcntlB));
  EXPECT_TRUE(locks.holds(fcntlA));
  locks.release(fcntlA);
  EXPECT_FALSE(locks.holds(fcntlA));
  EXPECT_TRUE(locks.holds(flockA));
  EXPECT_EQ(locks.size(), 1u);
}

}  // namespace
}  // namespace cairn
