// The LMDB layer, the target (format, header, start-up rule, owner lock), the object store.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "objserver/object_store.h"
#include "objserver/store.h"
#include "objserver/target.h"
#include "rpc/errors.h"
#include "tests/unit/temp_dir.h"

namespace cairn {
namespace {

store::Bytes b(kj::StringPtr s) {
  return s.asBytes();
}

TEST(Store, PutGetDeleteAndCursors) {
  TempDir dir;
  store::Env env(dir.path().c_str(), store::Env::Options{});
  MDB_dbi dbi = env.openDb("t");
  {
    store::Txn txn(env, store::Txn::WRITE);
    txn.put(dbi, b("b"), b("2"));
    txn.put(dbi, b("a"), b("1"));
    txn.put(dbi, b("c"), b("3"));
    txn.commit();
  }
  store::Txn txn(env, store::Txn::WRITE);
  EXPECT_EQ(kj::str(KJ_ASSERT_NONNULL(txn.get(dbi, b("b"))).asChars()), "2");
  EXPECT_TRUE(txn.get(dbi, b("zz")) == nullptr);
  EXPECT_EQ(txn.entries(dbi), 3u);
  EXPECT_TRUE(txn.del(dbi, b("b")));
  EXPECT_FALSE(txn.del(dbi, b("b")));
  EXPECT_EQ(txn.entries(dbi), 2u);  // as this transaction sees it
  {
    store::Txn nested(txn);
    nested.put(dbi, b("d"), b("4"));
    EXPECT_EQ(nested.entries(dbi), 3u);
  }
  EXPECT_EQ(txn.entries(dbi), 2u);  // the nested one was aborted
  store::Cursor cursor(txn, dbi);
  auto first = KJ_ASSERT_NONNULL(cursor.first());
  EXPECT_EQ(kj::str(first.key.asChars()), "a");
  auto next = KJ_ASSERT_NONNULL(cursor.seek(b("b")));
  EXPECT_EQ(kj::str(next.key.asChars()), "c");
  EXPECT_TRUE(cursor.next() == nullptr);
}

TEST(Store, AnAbortedTransactionLeavesNothing) {
  TempDir dir;
  store::Env env(dir.path().c_str(), store::Env::Options{});
  MDB_dbi dbi = env.openDb("t");
  {
    store::Txn txn(env, store::Txn::WRITE);
    txn.put(dbi, b("k"), b("v"));
  }
  store::Txn txn(env, store::Txn::READ);
  EXPECT_TRUE(txn.get(dbi, b("k")) == nullptr);
}

TEST(Store, AFullMapIsENOSPC) {
  TempDir dir;
  store::Env::Options options;
  options.mapSize = 1 << 20;
  store::Env env(dir.path().c_str(), options);
  MDB_dbi dbi = env.openDb("t");
  auto big = kj::heapArray<kj::byte>(64 * 1024);
  int err = 0;
  for (uint64_t i = 0; i < 100 && err == 0; ++i) {
    try {
      store::Txn txn(env, store::Txn::WRITE);
      txn.put(dbi, store::U64Key(i).ptr(), big);
      txn.commit();
    } catch (FsError& e) {
      err = e.err();
    }
  }
  EXPECT_EQ(err, ENOSPC);
}

TEST(Store, RequireSpaceKeepsAReserveForDeletes) {
  TempDir dir;
  store::Env::Options options;
  options.mapSize = 4 << 20;
  store::Env env(dir.path().c_str(), options);
  MDB_dbi dbi = env.openDb("t");
  auto chunk = kj::heapArray<kj::byte>(64 * 1024);
  uint64_t stored = 0;
  for (;; ++stored) {
    store::Txn txn(env, store::Txn::WRITE);
    try {
      env.requireSpace(txn, chunk.size());
    } catch (FsError& e) {
      EXPECT_EQ(e.err(), ENOSPC);
      break;
    }
    txn.put(dbi, store::U64Key(stored).ptr(), chunk);
    txn.commit();
  }
  EXPECT_GT(stored, 10u);
  // Deleting everything still works, and the freed pages count as free again.
  {
    store::Txn txn(env, store::Txn::WRITE);
    for (uint64_t i = 0; i < stored; ++i) txn.del(dbi, store::U64Key(i).ptr());
    txn.commit();
  }
  store::Txn txn(env, store::Txn::WRITE);
  EXPECT_NO_THROW(env.requireSpace(txn, chunk.size()));
}

TEST(Store, KeysSortNumerically) {
  EXPECT_LT(memcmp(store::U64Key(255).bytes, store::U64Key(256).bytes, 8), 0);
  EXPECT_EQ(store::readU64(store::U64Key(0x0102030405060708ull).ptr()), 0x0102030405060708ull);
}

FormatOptions metaFormat() {
  FormatOptions f;
  f.kind = rpc::TargetKind::META;
  f.fsName = kj::str("unit");
  return f;
}

TEST(Target, FormatThenOpenChecksWhatItIs) {
  TempDir dir;
  auto path = dir.path() + "/t";
  Target::format(path.c_str(), metaFormat());
  EXPECT_ANY_THROW(Target::format(path.c_str(), metaFormat()));
  {
    Target t(path.c_str(), rpc::TargetKind::META, OpenOptions{});
    EXPECT_EQ(t.fsName(), "unit");
    EXPECT_EQ(t.instance(), 1u);
    // Held by this instance: a second opener is refused.
    EXPECT_ANY_THROW(Target(path.c_str(), rpc::TargetKind::META, OpenOptions{}));
    t.markClean();
  }
  EXPECT_ANY_THROW(Target(path.c_str(), rpc::TargetKind::DATA, OpenOptions{}));
  OpenOptions other;
  other.expectFsName = kj::str("other");
  EXPECT_ANY_THROW(Target(path.c_str(), rpc::TargetKind::META, kj::mv(other)));
  Target again(path.c_str(), rpc::TargetKind::META, OpenOptions{});
  EXPECT_EQ(again.instance(), 2u);
}

TEST(Target, StartupRuleAfterAnUncleanStop) {
  TempDir dir;
  auto path = dir.path() + "/t";
  Target::format(path.c_str(), metaFormat());
  { Target t(path.c_str(), rpc::TargetKind::META, OpenOptions{}); }  // no markClean: unclean
  OpenOptions same;
  { Target t(path.c_str(), rpc::TargetKind::META, kj::mv(same)); }  // same version: recovery
  OpenOptions newer;
  newer.versionOverride = kj::str("99.0.0");
  EXPECT_ANY_THROW(Target(path.c_str(), rpc::TargetKind::META, kj::mv(newer)));
  OpenOptions forced;
  forced.versionOverride = kj::str("99.0.0");
  forced.force = true;
  {
    Target t(path.c_str(), rpc::TargetKind::META, kj::mv(forced));
    t.markClean();
  }
  OpenOptions afterClean;
  afterClean.versionOverride = kj::str("100.0.0");
  EXPECT_NO_THROW(Target(path.c_str(), rpc::TargetKind::META, kj::mv(afterClean)));
}

TEST(Target, DamagedDirectoriesAreRefused) {
  TempDir dir;
  auto path = dir.path() + "/garbage";
  mkdir(path.c_str(), 0700);
  std::ofstream(path + "/data.mdb") << std::string(50000, 'x');
  EXPECT_ANY_THROW(Target(path.c_str(), rpc::TargetKind::META, OpenOptions{}));
  EXPECT_ANY_THROW(Target((dir.path() + "/none").c_str(), rpc::TargetKind::META, OpenOptions{}));
}

TEST(Target, TransactionNumbersSurviveRestarts) {
  TempDir dir;
  auto path = dir.path() + "/t";
  Target::format(path.c_str(), metaFormat());
  uint64_t last;
  {
    Target t(path.c_str(), rpc::TargetKind::META, OpenOptions{});
    store::Txn txn(t.env(), store::Txn::WRITE);
    t.nextTransno(txn);
    last = t.nextTransno(txn);
    txn.commit();
    t.markClean();
  }
  Target t(path.c_str(), rpc::TargetKind::META, OpenOptions{});
  store::Txn txn(t.env(), store::Txn::WRITE);
  EXPECT_EQ(t.nextTransno(txn), last + 1);
}

// Rewrites a target's header as `edit` says (as another version, or damage, would leave it).
template <typename Edit>
void editHeader(const std::string& path, Edit&& edit) {
  store::Env env(path.c_str(), store::Env::Options{});
  MDB_dbi dbi = env.openDb("target");
  store::Txn txn(env, store::Txn::WRITE);
  store::StoredMessage stored(KJ_REQUIRE_NONNULL(txn.get(dbi, b("header"))));
  capnp::MallocMessageBuilder message;
  message.setRoot(stored.getRoot<rpc::TargetHeader>());
  edit(message.getRoot<rpc::TargetHeader>());
  txn.putMessage(dbi, b("header"), message);
  txn.commit();
}

FormatOptions dataFormat(uint32_t chunkSize = 0) {
  FormatOptions f = metaFormat();
  f.kind = rpc::TargetKind::DATA;
  f.chunkSize = chunkSize;
  return f;
}

TEST(Target, DataTargetsRecordTheirChunkSize) {
  TempDir dir;
  auto path = dir.path() + "/d";
  Target::format(path.c_str(), dataFormat());
  {
    Target t(path.c_str(), rpc::TargetKind::DATA, OpenOptions{});
    EXPECT_EQ(t.chunkSize(), ObjectStore::defaultChunkSize());
    EXPECT_EQ(ObjectStore(t).chunkSize(), ObjectStore::defaultChunkSize());
    t.markClean();
  }
  // Four pages exactly, with LMDB's header on the first.
  EXPECT_EQ((ObjectStore::defaultChunkSize() + 16) % sysconf(_SC_PAGESIZE), 0);
  auto chosen = dir.path() + "/chosen";
  Target::format(chosen.c_str(), dataFormat(4000));
  EXPECT_EQ(Target(chosen.c_str(), rpc::TargetKind::DATA, OpenOptions{}).chunkSize(), 4000u);
  EXPECT_ANY_THROW(Target::format((dir.path() + "/small").c_str(), dataFormat(100)));
  EXPECT_ANY_THROW(Target::format((dir.path() + "/large").c_str(), dataFormat(65537)));
}

TEST(Target, FormatOneTargetsKeepSixtyFourKiBChunks) {
  TempDir dir;
  auto path = dir.path() + "/d";
  Target::format(path.c_str(), dataFormat(ObjectStore::MAX_CHUNK_SIZE));
  {
    Target t(path.c_str(), rpc::TargetKind::DATA, OpenOptions{});
    ObjectStore objects(t);
    store::Txn txn(t.env(), store::Txn::WRITE);
    objects.write(txn, 7, 65530, b("0123456789"));  // across the 64 KiB boundary
    txn.commit();
    t.markClean();
  }
  // As version 0.1.0 formatted it: format 1, no chunk size recorded.
  editHeader(path, [](rpc::TargetHeader::Builder h) {
    h.setFormatVersion(1);
    h.setChunkSize(0);
  });
  {
    Target t(path.c_str(), rpc::TargetKind::DATA, OpenOptions{});
    EXPECT_EQ(t.chunkSize(), 65536u);
    ObjectStore objects(t);
    store::Txn txn(t.env(), store::Txn::READ);
    kj::byte out[10] = {};
    ASSERT_EQ(objects.read(txn, 7, 65530, out), 10u);
    EXPECT_EQ(kj::heapString(reinterpret_cast<char*>(out), 10), "0123456789");
    EXPECT_EQ(objects.objectCount(txn), 2u);  // two chunks: the boundary is where it was
    t.markClean();
  }
  // A layout from the future, and a chunk size nobody wrote, are refused.
  editHeader(path, [](rpc::TargetHeader::Builder h) { h.setFormatVersion(3); });
  EXPECT_ANY_THROW(Target(path.c_str(), rpc::TargetKind::DATA, OpenOptions{}));
  editHeader(path, [](rpc::TargetHeader::Builder h) {
    h.setFormatVersion(2);
    h.setChunkSize(70000);
  });
  Target t(path.c_str(), rpc::TargetKind::DATA, OpenOptions{});
  EXPECT_ANY_THROW(kj::heap<ObjectStore>(t));
}

// Every test of the object store runs with the default chunk size, format 1's, and an odd one.
class Objects : public ::testing::TestWithParam<uint32_t> {
protected:
  // kj destructors may throw; a test fixture's must not.
  ~Objects() noexcept override {}
  void SetUp() override {
    Target::format((dir.path() + "/d").c_str(), dataFormat(GetParam()));
    target = kj::heap<Target>((dir.path() + "/d").c_str(), rpc::TargetKind::DATA, OpenOptions{});
    objects = kj::heap<ObjectStore>(*target);
  }
  std::string read(uint64_t obj, uint64_t off, uint32_t len) {
    store::Txn txn(target->env(), store::Txn::READ);
    // Every read here prefetches first, as a data server's large reads do: advice only.
    objects->prefetch(txn, obj, off, uint64_t(len) * 3);
    std::string out(len, '\0');
    size_t filled = objects->read(
        txn, obj, off, kj::arrayPtr(reinterpret_cast<kj::byte*>(out.data()), out.size()));
    out.resize(filled);
    return out;
  }
  void write(uint64_t obj, uint64_t off, const std::string& data) {
    store::Txn txn(target->env(), store::Txn::WRITE);
    objects->write(txn, obj, off,
                   kj::arrayPtr(reinterpret_cast<const kj::byte*>(data.data()), data.size()));
    txn.commit();
  }
  TempDir dir;
  kj::Own<Target> target;
  kj::Own<ObjectStore> objects;
};

TEST_P(Objects, WritesReadsAndHoles) {
  const uint64_t C = objects->chunkSize();
  write(1, 10, "hello");
  EXPECT_EQ(read(1, 0, 100), std::string(10, '\0') + "hello");  // cut after the last byte
  write(1, C - 2, "span");                                      // across a chunk boundary
  EXPECT_EQ(read(1, C - 2, 4), "span");
  write(1, 5 * C, "far");
  EXPECT_EQ(read(1, 3 * C, 10), "");  // a hole after which something is stored: cut
  std::string mid = read(1, 2 * C, uint32_t(3 * C + 3));
  EXPECT_EQ(mid.size(), 3 * C + 3);
  EXPECT_EQ(mid.substr(0, 3 * C), std::string(3 * C, '\0'));
  EXPECT_EQ(mid.substr(3 * C), "far");
  EXPECT_EQ(read(2, 0, 10), "");  // another object
}

TEST_P(Objects, TruncateAndDestroy) {
  const uint64_t C = objects->chunkSize();
  write(1, 0, std::string(3 * C, 'a'));
  write(2, 0, "other");
  {
    store::Txn txn(target->env(), store::Txn::WRITE);
    objects->truncate(txn, 1, C + 5);
    txn.commit();
  }
  EXPECT_EQ(read(1, 0, uint32_t(4 * C)), std::string(C + 5, 'a'));
  write(1, 2 * C, "x");  // extending again shows zeros where data was cut
  EXPECT_EQ(read(1, C, uint32_t(C + 1)), std::string(5, 'a') + std::string(C - 5, '\0') + "x");
  {
    store::Txn txn(target->env(), store::Txn::WRITE);
    objects->destroy(txn, 1);
    txn.commit();
  }
  EXPECT_EQ(read(1, 0, 100), "");
  EXPECT_EQ(read(2, 0, 100), "other");
}

// A large truncate or destroy in steps (DataService): the whole chunks past an offset counted
// and removed a budget at a time; the chunk that holds the offset and other objects untouched.
TEST_P(Objects, RemovalInSteps) {
  const uint64_t C = objects->chunkSize();
  write(1, 0, std::string(10 * C, 'a'));
  write(2, 0, "other");
  store::Txn txn(target->env(), store::Txn::WRITE);
  EXPECT_EQ(objects->chunksPast(txn, 1, 0, 100), 10u);
  EXPECT_EQ(objects->chunksPast(txn, 1, 0, 4), 4u);        // counts no further than asked
  EXPECT_EQ(objects->chunksPast(txn, 1, C + 1, 100), 8u);  // chunk 1 holds the offset: kept
  EXPECT_EQ(objects->chunksPast(txn, 1, 2 * C, 100), 8u);
  EXPECT_EQ(objects->chunksPast(txn, 3, 0, 100), 0u);
  size_t budget = 5;
  EXPECT_FALSE(objects->removePast(txn, 1, C + 1, budget));
  EXPECT_EQ(budget, 0u);
  EXPECT_EQ(objects->chunksPast(txn, 1, 0, 100), 5u);
  budget = 5;
  EXPECT_TRUE(objects->removePast(txn, 1, C + 1, budget));
  EXPECT_EQ(budget, 2u);
  EXPECT_TRUE(objects->removePast(txn, 1, C + 1, budget));  // nothing left: done at once
  txn.commit();
  EXPECT_EQ(read(1, 0, uint32_t(10 * C)), std::string(2 * C, 'a'));
  EXPECT_EQ(read(2, 0, 100), "other");
}

TEST_P(Objects, PrefetchIsAdviceAtAnyRange) {
  const uint64_t C = objects->chunkSize();
  write(1, 0, std::string(4 * C, 'p'));
  write(2, 0, "next object");
  store::Txn txn(target->env(), store::Txn::READ);
  objects->prefetch(txn, 1, 0, UINT64_MAX);                // past the end of the object
  objects->prefetch(txn, 1, uint64_t(INT64_MAX) + 1, 10);  // past the largest offset
  objects->prefetch(txn, 1, uint64_t(INT64_MAX) - 1, UINT64_MAX);
  objects->prefetch(txn, 3, 0, 100);  // no such object
  objects->prefetch(txn, 1, 2 * C + 7, 0);
}

TEST_P(Objects, OffsetsPastTheLimitAreRefused) {
  store::Txn txn(target->env(), store::Txn::WRITE);
  kj::byte x = 1;
  try {
    objects->write(txn, 1, uint64_t(INT64_MAX), kj::arrayPtr(&x, 1));
    ADD_FAILURE();
  } catch (FsError& e) {
    EXPECT_EQ(e.err(), EFBIG);
  }
}

INSTANTIATE_TEST_SUITE_P(ChunkSizes, Objects, ::testing::Values(0u, 65536u, 1000u));

}  // namespace
}  // namespace cairn
