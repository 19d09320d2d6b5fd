// The inode table's references and the order of the attributes it records: replies that arrive
// out of order (resends after a reconnect) must not undo newer ones.
#include <gtest/gtest.h>

#include <kj/debug.h>

#include "fusefs/inode_table.h"

namespace cairn {
namespace {

struct stat sized(uint64_t ino, off_t size) {
  struct stat st {};
  st.st_ino = ino;
  st.st_mode = S_IFREG | 0644;
  st.st_size = size;
  return st;
}

TEST(InodeTable, ReferencesComeAndGoTheRootStays) {
  InodeTable table;
  EXPECT_NE(table.find(1), nullptr);
  table.remember(5);
  table.remember(5);
  table.forget(5, 1);
  EXPECT_NE(table.find(5), nullptr);
  table.forget(5, 1);
  EXPECT_EQ(table.find(5), nullptr);
  table.forget(1, 100);
  EXPECT_NE(table.find(1), nullptr);
}

TEST(InodeTable, AnOlderReplyDoesNotUndoANewerOne) {
  InodeTable table;
  table.remember(7);
  auto truncated = sized(7, 1918592);
  EXPECT_TRUE(table.sawAttr(truncated, 10));
  auto written = sized(7, 4029717);
  EXPECT_TRUE(table.sawAttr(written, 14));
  // The reply to an update applied at 12 (an atime set, say), resent and answered after.
  auto late = sized(7, 1918592);
  EXPECT_FALSE(table.sawAttr(late, 12));
  EXPECT_EQ(late.st_size, 4029717);  // what the newer one said
  auto& inode = KJ_ASSERT_NONNULL(table.find(7));
  EXPECT_EQ(inode.size, 4029717u);
  EXPECT_EQ(inode.last.st_size, 4029717);
  EXPECT_EQ(inode.asOf, 14u);
  // The same transaction is not older (a batch's replies share theirs, each after the last).
  auto same = sized(7, 5000000);
  EXPECT_TRUE(table.sawAttr(same, 14));
  EXPECT_EQ(inode.size, 5000000u);
}

TEST(InodeTable, UnknownOrderIsTakenAsItComes) {
  InodeTable table;
  table.remember(9);
  auto a = sized(9, 100);
  EXPECT_TRUE(table.sawAttr(a, 20));
  // No transaction (a server of an older release; an entry made here): taken, the mark stays.
  auto b = sized(9, 50);
  EXPECT_TRUE(table.sawAttr(b, 0));
  auto& inode = KJ_ASSERT_NONNULL(table.find(9));
  EXPECT_EQ(inode.size, 50u);
  EXPECT_EQ(inode.asOf, 20u);
  auto c = sized(9, 10);
  EXPECT_FALSE(table.sawAttr(c, 19));
  // An inode the kernel holds no reference to is not the table's to judge.
  auto other = sized(11, 1);
  EXPECT_TRUE(table.sawAttr(other, 1));
  EXPECT_EQ(table.find(11), nullptr);
}

TEST(InodeTable, ARestartedServerStartsTheOrderAgain) {
  InodeTable table;
  table.remember(3);
  auto before = sized(3, 4096);
  EXPECT_TRUE(table.sawAttr(before, 500));
  // The server lost its last transactions in a crash and counts again from lower.
  table.forgetOrder();
  auto after = sized(3, 8192);
  EXPECT_TRUE(table.sawAttr(after, 480));
  EXPECT_EQ(KJ_ASSERT_NONNULL(table.find(3)).size, 8192u);
}

}  // namespace
}  // namespace cairn
