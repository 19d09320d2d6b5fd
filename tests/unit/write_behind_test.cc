// The write-behind queue: what queued writes and attribute changes make of a file's attributes,
// in the order the application made them, while batches are queued and while they are sent.
#include "fusefs/write_behind.h"

#include <gtest/gtest.h>
#include <kj/debug.h>

#include "rpc/cairn.capnp.h"

namespace cairn {
namespace {

constexpr uint64_t INO = 42;

kj::Array<kj::byte> bytes(size_t n) {
  return kj::heapArray<kj::byte>(n);
}

struct stat serverSays() {
  struct stat st {};
  st.st_ino = INO;
  st.st_mode = S_IFREG | 0644;
  st.st_size = 10;
  st.st_mtim = {1000, 0};
  st.st_ctim = {1000, 0};
  return st;
}

WriteBehind::AttrChange setMtime(time_t sec) {
  WriteBehind::AttrChange change;
  change.valid = rpc::SET_MTIME;
  change.mtime = {sec, 0};
  clock_gettime(CLOCK_REALTIME, &change.at);
  return change;
}

TEST(WriteBehind, QueuedWritesMakeTheFileLongerAndNewer) {
  WriteBehind wb;
  wb.add(INO, 100, bytes(50));
  auto st = serverSays();
  wb.adjust(st);
  EXPECT_EQ(st.st_size, 150);
  EXPECT_GT(st.st_mtim.tv_sec, 1000);
  EXPECT_TRUE(wb.queued(INO));
}

TEST(WriteBehind, AChangeAfterTheWritesWins) {
  WriteBehind wb;
  wb.add(INO, 0, bytes(5));
  wb.setAttr(INO, setMtime(5));
  auto st = serverSays();
  wb.adjust(st);
  EXPECT_EQ(st.st_mtim.tv_sec, 5);  // utimes after the write: its time stays
  // The same while that batch is being sent.
  auto batch = wb.take(INO);
  EXPECT_EQ(batch.writes.size(), 1u);
  EXPECT_TRUE(batch.attr != nullptr);
  st = serverSays();
  wb.adjust(st);
  EXPECT_EQ(st.st_mtim.tv_sec, 5);
}

TEST(WriteBehind, AWriteAfterAChangeBeingSentWins) {
  WriteBehind wb;
  wb.setAttr(INO, setMtime(5));
  auto batch = wb.take(INO);  // the change is on its way to the server
  EXPECT_FALSE(wb.attrQueued(INO));
  wb.add(INO, 0, bytes(1));  // then the application writes
  auto st = serverSays();
  wb.adjust(st);
  EXPECT_GT(st.st_mtim.tv_sec, 1000) << "the write came after the utimes";
  wb.sent(INO, 0, true, 0);
  st = serverSays();
  wb.adjust(st);
  EXPECT_GT(st.st_mtim.tv_sec, 1000);
}

TEST(WriteBehind, ChangesMergeAndTheLaterValueWins) {
  WriteBehind wb;
  WriteBehind::AttrChange mode;
  mode.valid = rpc::SET_MODE;
  mode.mode = 0600;
  WriteBehind::AttrChange owner;
  owner.valid = rpc::SET_UID | rpc::SET_GID;
  owner.uid = 7;
  owner.gid = 8;
  WriteBehind::AttrChange again = mode;
  again.mode = 0640;
  wb.setAttr(INO, mode);
  wb.setAttr(INO, owner);
  wb.setAttr(INO, again);
  auto batch = wb.take(INO);
  auto& a = KJ_ASSERT_NONNULL(batch.attr);
  EXPECT_EQ(a.valid, rpc::SET_MODE | rpc::SET_UID | rpc::SET_GID);
  EXPECT_EQ(a.mode, 0640u);
  EXPECT_EQ(a.uid, 7u);
  auto st = serverSays();
  wb.adjust(st);
  EXPECT_EQ(st.st_mode, S_IFREG | 0640);
  EXPECT_EQ(st.st_gid, 8u);
}

TEST(WriteBehind, AnAccessTimeUpdateStaysOneOnlyAlone) {
  WriteBehind wb;
  WriteBehind::AttrChange access;
  access.valid = rpc::SET_ATIME_NOW | rpc::SET_ACCESS;
  wb.setAttr(INO, access);
  wb.setAttr(INO, access);
  EXPECT_TRUE(KJ_ASSERT_NONNULL(wb.take(INO).attr).valid & rpc::SET_ACCESS);
  wb.setAttr(INO, access);
  wb.setAttr(INO, setMtime(5));
  auto merged = KJ_ASSERT_NONNULL(wb.take(INO).attr).valid;
  EXPECT_FALSE(merged & rpc::SET_ACCESS);  // with an mtime it is a change of the inode
  EXPECT_TRUE(merged & rpc::SET_ATIME_NOW);
}

// A read of a file with a utimes queued: the access time the read sets comes after the queued
// one (a stat shows it), and the change stays its asker's, at the time they asked.
TEST(WriteBehind, AReadsAccessTimeJoinsAQueuedChangeAsItsAskers) {
  WriteBehind wb;
  auto utimes = setMtime(5);
  utimes.valid |= rpc::SET_ATIME;
  utimes.atime = {3, 0};
  utimes.callerUid = 1000;
  utimes.at = {2000, 0};
  wb.setAttr(INO, utimes);
  WriteBehind::AttrChange access;
  access.valid = rpc::SET_ATIME_NOW | rpc::SET_ACCESS;
  access.atime = access.at = {3000, 0};
  wb.setAttr(INO, access);
  auto st = serverSays();
  wb.adjust(st);
  EXPECT_EQ(st.st_atim.tv_sec, 3000);
  EXPECT_EQ(st.st_mtim.tv_sec, 5);
  EXPECT_EQ(st.st_ctim.tv_sec, 2000);
  auto merged = KJ_ASSERT_NONNULL(wb.take(INO).attr);
  EXPECT_EQ(merged.valid, rpc::SET_MTIME | rpc::SET_ATIME_NOW);
  EXPECT_EQ(merged.callerUid, 1000u);
  EXPECT_EQ(merged.at.tv_sec, 2000);
}

TEST(WriteBehind, SentEverythingLeavesNothingPending) {
  kj::EventLoop loop;  // batches on their way are promises
  kj::WaitScope waitScope(loop);
  WriteBehind wb;
  wb.add(INO, 0, bytes(8));
  wb.setAttr(INO, setMtime(5));
  auto batch = wb.take(INO);
  auto id = wb.newFlight();
  wb.setSending(INO, id, WriteBehind::Span(batch), kj::Promise<void>(kj::NEVER_DONE).fork());
  wb.sent(INO, 8, true, 0);
  EXPECT_TRUE(wb.queued(INO) || wb.allSent(INO) != nullptr);
  wb.doneSending(INO, id);
  EXPECT_FALSE(wb.queued(INO));
  EXPECT_TRUE(wb.files().empty());
  EXPECT_EQ(wb.takeError(INO), 0);
}

TEST(WriteBehind, AFailedQueueIsReportedAndLeavesWhatIsBeingSent) {
  kj::EventLoop loop;  // batches on their way are promises
  kj::WaitScope waitScope(loop);
  WriteBehind wb;
  wb.add(INO, 0, bytes(8));
  auto sending = wb.take(INO);
  auto id = wb.newFlight();
  wb.setSending(INO, id, WriteBehind::Span(sending), kj::Promise<void>(kj::NEVER_DONE).fork());
  wb.add(INO, 8, bytes(4));
  wb.setAttr(INO, setMtime(5));
  wb.fail(INO, EIO);
  EXPECT_EQ(wb.total(), 8u);  // the batch being sent is still counted
  EXPECT_TRUE(wb.take(INO).writes.empty());
  EXPECT_TRUE(wb.queued(INO));  // ... and still pending
  wb.sent(INO, 8, false, 0);
  wb.doneSending(INO, id);
  EXPECT_FALSE(wb.queued(INO));
  EXPECT_EQ(wb.takeError(INO), EIO);  // once
  EXPECT_EQ(wb.takeError(INO), 0);
}

// What an fsync's last batch is (it alone asks for the syncs): the file's only one on its way,
// with nothing queued behind it — not a batch with another still on its way, nor one with
// writes or a change queued after it.
TEST(WriteBehind, TheLastBatchIsTheOnlyOneOnItsWayWithNothingBehind) {
  kj::EventLoop loop;  // batches on their way are promises
  kj::WaitScope waitScope(loop);
  WriteBehind wb;
  auto send = [&](size_t limit) {
    auto batch = wb.take(INO, limit);
    auto id = wb.newFlight();
    wb.setSending(INO, id, WriteBehind::Span(batch), kj::Promise<void>(kj::NEVER_DONE).fork());
    return id;
  };
  wb.add(INO, 0, bytes(40));
  wb.add(INO, 40, bytes(40));
  auto first = send(40);
  EXPECT_FALSE(wb.last(INO, first));  // the second write is still queued
  auto second = send(40);
  EXPECT_FALSE(wb.last(INO, second));  // the first is still on its way
  EXPECT_FALSE(wb.last(INO, first));
  wb.sent(INO, 40, false, 0);
  wb.doneSending(INO, first);
  EXPECT_TRUE(wb.last(INO, second));
  wb.setAttr(INO, setMtime(5));
  EXPECT_FALSE(wb.last(INO, second));      // a change queued behind it
  EXPECT_FALSE(wb.last(INO + 1, second));  // another file has nothing on its way
}

TEST(WriteBehind, ATakeUpToALimitLeavesTheRestAndTheChangeQueued) {
  WriteBehind wb;
  wb.add(INO, 0, bytes(40));
  wb.add(INO, 100, bytes(40));
  wb.add(INO, 40, bytes(40));
  wb.setAttr(INO, setMtime(5));
  auto first = wb.take(INO, 50);  // whole writes: the first two
  ASSERT_EQ(first.writes.size(), 2u);
  EXPECT_EQ(first.begin, 0u);
  EXPECT_EQ(first.end, 140u);
  EXPECT_TRUE(first.attr == nullptr);
  EXPECT_TRUE(wb.attrQueued(INO));
  EXPECT_EQ(wb.queuedBytes(INO), 40u);
  EXPECT_EQ(wb.total(), 120u);
  auto st = serverSays();
  wb.adjust(st);
  EXPECT_EQ(st.st_size, 140);
  EXPECT_EQ(st.st_mtim.tv_sec, 5);
  auto rest = wb.take(INO, 50);  // the last write, with the change after it
  ASSERT_EQ(rest.writes.size(), 1u);
  EXPECT_EQ(rest.begin, 40u);
  EXPECT_EQ(rest.end, 80u);
  EXPECT_TRUE(rest.attr != nullptr);
  EXPECT_FALSE(wb.attrQueued(INO));
  EXPECT_EQ(wb.queuedBytes(INO), 0u);
}

// Batches of one file on their way at once: disjoint ones leave together, up to MAX_FLIGHTS;
// one that overlaps a batch on its way, or one with a change of attributes (or after one),
// waits for every batch before it.
class Flights : public testing::Test {
protected:
  ~Flights() noexcept override {}
  kj::EventLoop loop;
  kj::WaitScope waitScope{loop};
  WriteBehind wb;
  struct Sent {
    uint64_t id;
    kj::Own<kj::PromiseFulfiller<void>> fulfiller;
  };
  std::vector<Sent> sent;

  // Takes the queue and puts it on its way, as Client::flushed does.
  void send() {
    auto batch = wb.take(INO);
    auto paf = kj::newPromiseAndFulfiller<void>();
    auto id = wb.newFlight();
    wb.setSending(INO, id, WriteBehind::Span(batch), paf.promise.fork());
    sent.push_back(Sent{id, kj::mv(paf.fulfiller)});
  }
  // A write of `n` bytes at `offset`, sent as a batch of its own.
  void sendWrite(uint64_t offset, size_t n) {
    wb.add(INO, offset, bytes(n));
    send();
  }
  // The batch sent `i`-th arrives.
  void arrive(size_t i) {
    sent[i].fulfiller->fulfill();
    wb.doneSending(INO, sent[i].id);
  }
  bool waits() {
    bool wait = wb.mustWait(INO) != nullptr;
    EXPECT_EQ(wb.mayLeave(INO), !wait);
    return wait;
  }
  bool released(kj::Promise<void>& p) { return p.poll(waitScope); }
};

TEST_F(Flights, DisjointBatchesLeaveTogetherUpToTheLimit) {
  for (size_t i = 0; i < WriteBehind::MAX_FLIGHTS; i++) {
    wb.add(INO, i * 100, bytes(100));
    EXPECT_FALSE(waits()) << "batch " << i;
    send();
  }
  wb.add(INO, 10000, bytes(100));
  auto wait = KJ_ASSERT_NONNULL(wb.mustWait(INO));
  EXPECT_FALSE(released(wait));
  arrive(1);  // not the oldest: the window is still full of what is before it
  EXPECT_FALSE(released(wait));
  arrive(0);
  EXPECT_TRUE(released(wait));
  EXPECT_FALSE(waits());
}

TEST_F(Flights, AnOverlappingBatchWaitsForEveryBatchBeforeIt) {
  sendWrite(0, 100);
  sendWrite(100, 100);
  wb.add(INO, 50, bytes(10));  // rewrites bytes of the first
  auto wait = KJ_ASSERT_NONNULL(wb.mustWait(INO));
  arrive(0);
  EXPECT_FALSE(released(wait));
  arrive(1);
  EXPECT_TRUE(released(wait));
  EXPECT_FALSE(waits());
}

TEST_F(Flights, AChangeOfAttributesGoesAloneInItsTurn) {
  sendWrite(0, 100);
  wb.setAttr(INO, setMtime(5));  // utimes after the write: must land after its `wrote`
  auto before = KJ_ASSERT_NONNULL(wb.mustWait(INO));
  arrive(0);
  EXPECT_TRUE(released(before));
  EXPECT_FALSE(waits());
  send();
  wb.add(INO, 100, bytes(100));  // a write after the utimes: must land after it
  auto after = KJ_ASSERT_NONNULL(wb.mustWait(INO));
  EXPECT_FALSE(released(after));
  arrive(1);
  EXPECT_TRUE(released(after));
}

TEST_F(Flights, NothingQueuedWaitsForNothingButAllSentWaitsForEveryBatch) {
  sendWrite(0, 100);
  sendWrite(100, 100);
  EXPECT_FALSE(waits());
  auto all = KJ_ASSERT_NONNULL(wb.allSent(INO));
  arrive(0);
  EXPECT_FALSE(released(all));
  EXPECT_TRUE(wb.queued(INO));
  wb.sent(INO, 200, false, 0);
  arrive(1);
  EXPECT_TRUE(released(all));
  EXPECT_FALSE(wb.queued(INO));
  EXPECT_TRUE(wb.files().empty());
}

}  // namespace
}  // namespace cairn
