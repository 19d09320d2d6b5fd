// The write-ahead log over real LMDB files. A host crash is played by putting together what a
// disk could hold afterwards: LMDB's file as of an earlier point (its later pages never
// written) and the log's segments as they are.
#include "objserver/write_ahead_log.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "objserver/store.h"
#include "tests/unit/temp_dir.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;

store::Bytes b(kj::StringPtr s) {
  return s.asBytes();
}

// An environment with its log, as a target has, on the boot `boot` (the kernel's boot id).
kj::Own<store::Env> logged(const std::string& dir, kj::StringPtr boot = "boot-a") {
  auto env = kj::heap<store::Env>(dir.c_str(), store::Env::Options{});
  env->startLog(dir.c_str(), kj::str(boot));
  return env;
}

void put(store::Env& env, MDB_dbi dbi, kj::StringPtr key, kj::StringPtr value) {
  store::Txn txn(env, store::Txn::WRITE);
  txn.put(dbi, b(key), b(value));
  txn.commit();
}

kj::Maybe<std::string> get(store::Env& env, MDB_dbi dbi, kj::StringPtr key) {
  store::Txn txn(env, store::Txn::READ);
  KJ_IF_MAYBE (v, txn.get(dbi, b(key))) {
    return std::string(v->asChars().begin(), v->size());
  }
  return nullptr;
}

std::string valueOf(store::Env& env, MDB_dbi dbi, kj::StringPtr key) {
  KJ_IF_MAYBE (v, get(env, dbi, key)) {
    return *v;
  }
  return "<absent>";
}

// The environment in `dir` opened again (its log applied), and its database "t".
struct Reopened {
  explicit Reopened(const std::string& dir, kj::StringPtr boot = "boot-a")
      : env(logged(dir, boot)), t(env->openDb("t")) {}
  std::string operator[](kj::StringPtr key) { return valueOf(*env, t, key); }
  kj::Own<store::Env> env;
  MDB_dbi t;
};

// What the disk holds after the crash: `lmdb` (an earlier copy of data.mdb) and the log's
// A target directory `live` with its environment (and log) open and a database "t" in it.
class WriteAheadLogTest : public ::testing::Test {
protected:
  // Env's destructor may throw (a failed sync); gtest's fixtures may not.
  ~WriteAheadLogTest() noexcept override { envOwn = nullptr; }
  void SetUp() override {
    fs::create_directories(live);
    envOwn = logged(live);
    dbi = envOwn->openDb("t");
  }
  TempDir dir;
  std::string live = dir.path() + "/live";
  kj::Own<store::Env> envOwn;
  MDB_dbi dbi = 0;
};
using CheckpointSnapshotTest = WriteAheadLogTest;

// segments from `live` as they are now.
void crashInto(const std::string& live, const std::string& lmdb, const std::string& to) {
  fs::create_directories(to);
  fs::copy_file(lmdb, to + "/data.mdb");
  for (auto& e : fs::directory_iterator(live)) {
    auto name = e.path().filename().string();
    if (name.rfind("wal.", 0) == 0) fs::copy_file(e.path(), to + "/" + name);
  }
}

std::string snapshot(const std::string& dir, const std::string& name) {
  auto to = dir + "/" + name;
  fs::copy_file(dir + "/live/data.mdb", to);
  return to;
}

bool anyFileEndingIn(const std::string& dir, const std::string& suffix) {
  for (auto& e : fs::directory_iterator(dir)) {
    auto name = e.path().filename().string();
    if (name.size() >= suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      return true;
    }
  }
  return false;
}

TEST_F(WriteAheadLogTest, CommitsLmdbLostAreAppliedFromTheLog) {
  auto& env = *envOwn;
  put(env, dbi, "kept", "1");
  put(env, dbi, "gone", "x");
  put(env, dbi, "chunk", "hello world");
  env.sync();  // a checkpoint: LMDB on disk
  auto earlier = snapshot(dir.path(), "earlier.mdb");

  put(env, dbi, "new", "2");
  {
    store::Txn txn(env, store::Txn::WRITE);
    EXPECT_TRUE(txn.del(dbi, b("gone")));
    // "hello world" -> "hello WORLD!!": only the changed part is logged.
    txn.putPatched(dbi, b("chunk"), b("hello WORLD!!"), 6, 7);
    txn.commit();
  }
  {
    // A nested transaction that commits joins its parent's record; one that aborts leaves
    // nothing in either.
    store::Txn txn(env, store::Txn::WRITE);
    {
      store::Txn one(txn);
      one.put(dbi, b("nested"), b("yes"));
      one.commit();
    }
    {
      store::Txn two(txn);
      two.put(dbi, b("aborted"), b("no"));
    }
    txn.commit();
  }
  auto& log = KJ_ASSERT_NONNULL(env.log());
  uint64_t syncs = log.syncs();
  env.syncCommitted();
  EXPECT_EQ(log.syncs(), syncs + 1) << "small transactions sync through the log";

  auto after = dir.path() + "/after";
  crashInto(live, earlier, after);
  {
    Reopened back(after);
    EXPECT_EQ(back["kept"], "1");
    EXPECT_EQ(back["new"], "2");
    EXPECT_EQ(back["gone"], "<absent>");
    EXPECT_EQ(back["chunk"], "hello WORLD!!");
    EXPECT_EQ(back["nested"], "yes");
    EXPECT_EQ(back["aborted"], "<absent>");
    // Replayed, synced, and the log started afresh: what it held is now LMDB's.
    put(*back.env, back.t, "later", "3");
  }
  // Closed cleanly: no log left behind, and everything in LMDB.
  EXPECT_FALSE(anyFileEndingIn(after, ".unreplayed"));
  for (auto& e : fs::directory_iterator(after)) {
    EXPECT_NE(e.path().filename().string().rfind("wal.", 0), 0u) << e.path();
  }
  Reopened again(after);
  EXPECT_EQ(again["new"], "2");
  EXPECT_EQ(again["later"], "3");
}

TEST_F(WriteAheadLogTest, ATornLastRecordEndsTheLog) {
  auto& env = *envOwn;
  env.sync();
  auto earlier = snapshot(dir.path(), "earlier.mdb");
  put(env, dbi, "a", "1");
  put(env, dbi, "b", "2");
  env.syncCommitted();

  auto after = dir.path() + "/after";
  crashInto(live, earlier, after);
  // The host went down in the middle of the last append: its last byte never reached the
  // disk (segments end in zeros, written ahead of the records).
  bool cut = false;
  for (auto& e : fs::directory_iterator(after)) {
    if (e.path().filename().string().rfind("wal.", 0) != 0) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto last = bytes.find_last_not_of('\0');
    if (last != std::string::npos && last > 64) {
      fs::resize_file(e.path(), last);
      cut = true;
    }
  }
  ASSERT_TRUE(cut);
  Reopened back(after);
  EXPECT_EQ(back["a"], "1");
  EXPECT_EQ(back["b"], "<absent>");
  EXPECT_FALSE(anyFileEndingIn(after, ".unreplayed"));
}

TEST_F(WriteAheadLogTest, ATransactionTooLargeToLogSyncsThroughLmdbAndStopsAReplay) {
  auto& env = *envOwn;
  env.sync();
  auto earlier = snapshot(dir.path(), "earlier.mdb");
  put(env, dbi, "small", "1");
  std::string big(store::LogRecord::LIMIT + 1, 'b');
  put(env, dbi, "big", kj::StringPtr(big.c_str()));
  put(env, dbi, "after", "2");
  auto& log = KJ_ASSERT_NONNULL(env.log());
  EXPECT_EQ(log.gaps(), 1u);
  // What the disk holds if the host goes down before any sync.
  auto after = dir.path() + "/after";
  crashInto(live, earlier, after);

  uint64_t syncs = log.syncs();
  env.syncCommitted();
  EXPECT_EQ(log.syncs(), syncs) << "the log cannot cover the large transaction: LMDB synced";
  // Once a checkpoint has LMDB on disk past the gap, the log serves syncs again.
  put(env, dbi, "next", "3");
  env.syncCommitted();
  EXPECT_EQ(log.syncs(), syncs + 1);

  // The replay applies what comes before the gap and nothing after it.
  Reopened back(after);
  EXPECT_EQ(back["small"], "1");
  EXPECT_EQ(back["big"], "<absent>");
  EXPECT_EQ(back["after"], "<absent>");
  EXPECT_TRUE(anyFileEndingIn(after, ".unreplayed"));
}

TEST_F(WriteAheadLogTest, AnLmdbFileOlderThanItsLogIsNotPatchedUp) {
  auto& env = *envOwn;
  env.sync();
  auto restored = snapshot(dir.path(), "restored.mdb");  // say, an old backup
  // Enough checkpoints that the segments holding the first records have been reused.
  for (int i = 0; i < 6; ++i) {
    put(env, dbi, kj::str("k", i), "v");
    env.sync();
  }
  put(env, dbi, "last", "v");
  env.syncCommitted();

  auto after = dir.path() + "/after";
  crashInto(live, restored, after);
  Reopened back(after);
  // Applying later transactions over a state they did not follow would mix two states.
  EXPECT_EQ(back["last"], "<absent>");
  EXPECT_EQ(back["k5"], "<absent>");
  EXPECT_TRUE(anyFileEndingIn(after, ".unreplayed"));
}

TEST(WriteAheadLog, AForeignFileWhereASegmentShouldBeIsRefused) {
  TempDir dir;
  {
    auto envOwn = logged(dir.path());
    auto& env = *envOwn;
    put(env, env.openDb("t"), "k", "v");
  }
  std::ofstream(dir.path() + "/wal.0") << std::string(4096, 'g');
  try {
    logged(dir.path());
    ADD_FAILURE() << "opened with a foreign segment";
  } catch (kj::Exception& e) {
    EXPECT_NE(std::string(e.getDescription().cStr()).find("not a Cairn write-ahead log"),
              std::string::npos)
        << e.getDescription().cStr();
  }
}

// A log that cannot grow (a full disk; played with a file size limit) loses nothing: the
// commits go on, their syncs are LMDB's until the next checkpoint starts a new segment.
TEST(WriteAheadLog, ALogThatCannotGrowFallsBackToLmdbsSync) {
  TempDir dir;
  auto envOwn = logged(dir.path());
  auto& env = *envOwn;
  MDB_dbi dbi = env.openDb("t");
  auto& log = KJ_ASSERT_NONNULL(env.log());
  // Free pages in LMDB's file that the commits below can take, so that LMDB's file stays below
  // the limit while the log has to grow past it (a checkpoint's snapshot keeps the pages freed
  // after it; these were freed before).
  std::string pad(1536 << 10, 'p');
  put(env, dbi, "pad", kj::StringPtr(pad.c_str()));
  {
    store::Txn txn(env, store::Txn::WRITE);
    txn.del(dbi, b("pad"));
    txn.commit();
  }
  put(env, dbi, "mark", "1");
  env.sync();
  uint64_t lmdbSize = fs::file_size(dir.path() + "/data.mdb");
  ASSERT_LT(lmdbSize, uint64_t(1900) << 10);
  struct rlimit old;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  auto oldHandler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit limit = old;
  limit.rlim_cur = 1900 << 10;  // above LMDB's file, below the log's second MiB
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  std::string value(100 << 10, 'v');
  int n = 0;
  while (log.gaps() == 1 && n < 14) {  // the pad was the first gap
    put(env, dbi, kj::str("k", n++), kj::StringPtr(value.c_str()));
  }
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  signal(SIGXFSZ, oldHandler);
  ASSERT_GE(log.gaps(), 2u) << "the segment never filled";

  uint64_t syncs = log.syncs();
  put(env, dbi, "after", "1");
  env.syncCommitted();
  EXPECT_EQ(log.syncs(), syncs) << "synced through LMDB";
  put(env, dbi, "later", "2");
  env.syncCommitted();
  EXPECT_EQ(log.syncs(), syncs + 1) << "a new segment after the checkpoint";
  for (int i = 0; i < n; ++i) EXPECT_EQ(valueOf(env, dbi, kj::str("k", i)), value) << i;
  EXPECT_EQ(valueOf(env, dbi, "after"), "1");
  EXPECT_EQ(valueOf(env, dbi, "later"), "2");
}

// --- The checkpoint's snapshot, kept whole (checkpoint_snapshot.h) ---

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void writeFile(const std::string& path, const std::string& bytes, size_t at = 0) {
  std::fstream out(path, std::ios::binary | std::ios::in | std::ios::out);
  out.seekp(std::streamoff(at));
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

size_t pageSize() {
  return size_t(sysconf(_SC_PAGESIZE));
}

// The host went down with LMDB's newer meta pages on disk but not the pages they point to: the
// file as of the checkpoint with the newest meta pages over it, the log as it was.
TEST(CheckpointSnapshot, AHostCrashThatTornLmdbGoesBackToTheCheckpointAndTheLogOn) {
  TempDir dir;
  auto live = dir.path() + "/live";
  fs::create_directories(live);
  std::string atCheckpoint, newest;
  std::map<std::string, std::string> kept;  // the side file and the log's segments
  {
    auto envOwn = logged(live);
    auto& env = *envOwn;
    MDB_dbi dbi = env.openDb("t");
    for (int i = 0; i < 200; ++i) put(env, dbi, kj::str("k", i), kj::str("before", i));
    env.sync();  // the checkpoint
    atCheckpoint = readFile(live + "/data.mdb");
    for (int i = 0; i < 200; ++i) put(env, dbi, kj::str("k", i), kj::str("after", i));
    put(env, dbi, "new", "1");
    env.syncCommitted();  // through the log
    newest = readFile(live + "/data.mdb");
    for (auto& e : fs::directory_iterator(live)) {
      auto name = e.path().filename().string();
      if (name.rfind("wal.", 0) == 0 || name == "checkpoint.meta") {
        kept[name] = readFile(e.path().string());
      }
    }
  }
  // What the disk holds after the crash, in the same file: nothing written since the
  // checkpoint but the meta pages (the file's later blocks read as zeros).
  std::string torn = atCheckpoint;
  torn.resize(fs::file_size(live + "/data.mdb"), '\0');
  torn.replace(0, 2 * pageSize(), newest.substr(0, 2 * pageSize()));
  writeFile(live + "/data.mdb", torn);
  for (auto& [name, bytes] : kept) {
    std::ofstream(live + "/" + name, std::ios::binary) << bytes;
  }
  // Another boot: the page cache is gone, the saved checkpoint is put back.
  EXPECT_TRUE(store::CheckpointSnapshot::restoreAfterHostCrash(live.c_str(), "boot-b"));
  {
    Reopened back(live, "boot-b");
    for (int i = 0; i < 200; ++i) {
      EXPECT_EQ(back[kj::str("k", i)], kj::str("after", i).cStr());
    }
    EXPECT_EQ(back["new"], "1");
    // A crash of the process alone, on this boot, goes back to nothing.
    EXPECT_FALSE(store::CheckpointSnapshot::restoreAfterHostCrash(live.c_str(), "boot-b"));
  }
}

// A copy of LMDB's file (another inode: put back from a backup, say) is not the checkpoint's
// file, whatever it holds; a clean close leaves no checkpoint to go back to.
TEST_F(CheckpointSnapshotTest, ACopyIsNotTakenForTheCheckpointsFile) {
  auto& env = *envOwn;
  for (int i = 0; i < 300; ++i) put(env, dbi, kj::str("k", i), kj::str("checkpoint", i));
  env.sync();
  put(env, dbi, "k0", "later");
  auto after = dir.path() + "/after";
  fs::create_directories(after);
  fs::copy_file(live + "/data.mdb", after + "/data.mdb");
  fs::copy_file(live + "/checkpoint.meta", after + "/checkpoint.meta");
  EXPECT_FALSE(store::CheckpointSnapshot::restoreAfterHostCrash(after.c_str(), "boot-b"));
  envOwn = nullptr;  // closes cleanly: LMDB synced, the side file and the log removed
  EXPECT_FALSE(fs::exists(live + "/checkpoint.meta"));
}

// LMDB reuses no page of the last checkpoint's snapshot before the next checkpoint, however
// much is rewritten meanwhile: going back to it finds it whole.
TEST(CheckpointSnapshot, GoingBackFindsTheCheckpointWhole) {
  TempDir dir;
  auto live = dir.path() + "/live";
  fs::create_directories(live);
  std::string saved;
  {
    auto envOwn = logged(live);
    auto& env = *envOwn;
    MDB_dbi dbi = env.openDb("t");
    for (int i = 0; i < 300; ++i) put(env, dbi, kj::str("k", i), kj::str("checkpoint", i));
    env.sync();
    for (int round = 0; round < 20; ++round) {
      for (int i = 0; i < 300; ++i) {
        put(env, dbi, kj::str("k", i), kj::str("round", round, "-", i));
      }
    }
    // The host goes down now: keep what a crash would leave (the side file and LMDB's file
    // as the page cache has it; the log is set aside, this is about LMDB's pages).
    saved = readFile(live + "/checkpoint.meta");
    auto copy = readFile(live + "/data.mdb");
    envOwn = nullptr;
    writeFile(live + "/data.mdb", copy);  // same inode, the state at the crash
  }
  { std::ofstream(live + "/checkpoint.meta", std::ios::binary) << saved; }
  for (auto& e : fs::directory_iterator(live)) {
    if (e.path().filename().string().rfind("wal.", 0) == 0) fs::remove(e.path());
  }
  EXPECT_TRUE(store::CheckpointSnapshot::restoreAfterHostCrash(live.c_str(), "boot-b"));
  store::Env back(live.c_str(), store::Env::Options{});
  MDB_dbi t = back.openDb("t");
  for (int i = 0; i < 300; ++i) {
    EXPECT_EQ(valueOf(back, t, kj::str("k", i)), kj::str("checkpoint", i).cStr()) << i;
  }
}

TEST(WriteAheadLog, MalformedPayloadsAreRejected) {
  store::LogRecord record;
  record.put("db", b("key"), b("value"));
  auto whole = record.payload();
  size_t ops = 0;
  store::LogRecord::forEach(whole, [&](const store::LogRecord::Op&) { ++ops; });
  EXPECT_EQ(ops, 1u);
  for (size_t cut = 1; cut < whole.size(); ++cut) {
    EXPECT_ANY_THROW(
        store::LogRecord::forEach(whole.slice(0, cut), [](const store::LogRecord::Op&) {}))
        << cut;
  }
  kj::byte unknown[] = {9, 0, 0};
  EXPECT_ANY_THROW(
      store::LogRecord::forEach(kj::arrayPtr(unknown, 3), [](const store::LogRecord::Op&) {}));
}

}  // namespace
}  // namespace cairn
