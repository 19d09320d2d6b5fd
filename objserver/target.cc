#include "objserver/target.h"

#include <sys/stat.h>
#include <unistd.h>

#include <capnp/message.h>
#include <kj/debug.h>
#include <kj/encoding.h>
#include <spdlog/spdlog.h>

#include <random>

#include "objserver/object_store.h"
#include "rpc/version.h"

namespace cairn {

namespace {

// Format 2 records the data targets' chunk size; format 1 had none and kept 64 KiB chunks.
// Both are read; new targets are format 2, which earlier versions refuse.
constexpr uint32_t FORMAT_VERSION = 2;
constexpr uint32_t FORMAT_1_CHUNK_SIZE = 64 * 1024;
constexpr kj::StringPtr HEADER_KEY = "header"_kj;
constexpr kj::StringPtr TRANSNO_KEY = "lastTransno"_kj;

store::Bytes keyOf(kj::StringPtr s) {
  return s.asBytes();
}

bool fileExists(kj::StringPtr path) {
  struct stat st;
  return stat(path.cStr(), &st) == 0;
}

kj::Array<kj::byte> parseUuid(kj::StringPtr hex) {
  auto decoded = kj::decodeHex(hex.asArray());
  KJ_REQUIRE(!decoded.hadErrors && decoded.size() == 16, "a filesystem uuid is 32 hex digits", hex);
  return kj::mv(decoded);
}

kj::Array<kj::byte> randomUuid() {
  std::random_device rd;
  auto out = kj::heapArray<kj::byte>(16);
  for (auto& b : out) b = kj::byte(rd());
  return out;
}

}  // namespace

kj::String hexString(kj::ArrayPtr<const kj::byte> bytes) {
  return kj::encodeHex(bytes);
}

void Target::requireFormatted(kj::StringPtr dir) {
  KJ_REQUIRE(fileExists(dir), "the target directory does not exist", dir);
  KJ_REQUIRE(fileExists(kj::str(dir, "/data.mdb")),
             "no target here: format it first (cairn-server format ...)", dir);
}

void Target::format(kj::StringPtr dir, const FormatOptions& options) {
  KJ_REQUIRE(options.fsName.size() > 0 && options.fsName.size() <= 64,
             "a filesystem name is 1 to 64 characters", options.fsName);
  if (mkdir(dir.cStr(), 0700) != 0 && errno != EEXIST) {
    KJ_FAIL_SYSCALL("mkdir", errno, dir);
  }
  KJ_REQUIRE(!fileExists(kj::str(dir, "/data.mdb")),
             "the directory already holds a target; "
             "refusing to format over it",
             dir);
  auto lock = TargetLock::take(dir, "format");

  store::Env env(dir, store::Env::Options{});
  MDB_dbi dbi = env.openDb("target");
  store::Txn txn(env, store::Txn::WRITE);
  capnp::MallocMessageBuilder message;
  auto header = message.initRoot<rpc::TargetHeader>();
  header.setFsName(options.fsName);
  header.setFsUuid(options.fsUuid.size() > 0 ? parseUuid(options.fsUuid) : randomUuid());
  header.setKind(options.kind);
  header.setIndex(options.index);
  header.setFormatVersion(FORMAT_VERSION);
  header.setSoftwareVersion(CAIRN_VERSION);
  header.setCleanShutdown(true);
  header.setDefaultStripeSize(options.stripeSize);
  header.setDefaultStripeCount(options.stripeCount);
  if (options.kind == rpc::TargetKind::DATA) {
    header.setChunkSize(ObjectStore::requireChunkSize(
        options.chunkSize != 0 ? options.chunkSize : ObjectStore::defaultChunkSize()));
  }
  txn.putMessage(dbi, keyOf(HEADER_KEY), message);
  txn.commit();
  env.sync();
}

Target::Target(kj::StringPtr dir, rpc::TargetKind expectedKind, OpenOptions options)
    : dir_(kj::str(dir)) {
  requireFormatted(dir);
  KJ_IF_MAYBE (taken, options.lock) {
    lock_ = kj::mv(*taken);
  } else {
    lock_ = TargetLock::take(dir, "cairn-server");
  }
  restoreBarrier();

  store::Env::Options envOptions;
  envOptions.mapSize = options.mapSize;
  // After a host crash LMDB's file may hold pages written out of order: back to the last
  // checkpoint, which is whole (the log has the rest).
  store::CheckpointSnapshot::restoreAfterHostCrash(dir, TargetLock::bootId());
  env_ = kj::heap<store::Env>(dir, envOptions);

  // A foreign LMDB environment has no "target" database; mdb_dbi_open would create one, so look
  // in the main database first.
  {
    store::Txn txn(*env_, store::Txn::READ);
    MDB_dbi mainDb;
    store::check(mdb_dbi_open(txn.get(), nullptr, 0, &mainDb), "mdb_dbi_open(main)");
    KJ_REQUIRE(txn.get(mainDb, "target"_kj.asBytes()) != nullptr,
               "this LMDB environment is not a Cairn target", dir);
  }
  // Before anything is read: the log may hold commits LMDB lost in a host crash.
  env_->startLog(dir, kj::str(TargetLock::bootId()));
  targetDb_ = env_->openDb("target");

  store::Txn txn(*env_, store::Txn::WRITE);
  auto raw = KJ_REQUIRE_NONNULL(txn.get(targetDb_, keyOf(HEADER_KEY)),
                                "the target has no header: damaged", dir);
  kj::Own<store::StoredMessage> stored;
  rpc::TargetHeader::Reader header;
  try {
    stored = kj::heap<store::StoredMessage>(raw);
    header = stored->getRoot<rpc::TargetHeader>();
    fsName_ = kj::str(header.getFsName());
  } catch (kj::Exception& e) {
    KJ_FAIL_REQUIRE("the target's header is damaged", dir, e.getDescription());
  }
  KJ_REQUIRE(header.getFormatVersion() == 1 || header.getFormatVersion() == FORMAT_VERSION,
             "the target was formatted with an on-disk layout this version does not know", dir,
             header.getFormatVersion());
  KJ_REQUIRE(header.getKind() == expectedKind, "the target is of another kind", dir,
             header.getKind() == rpc::TargetKind::META ? "meta" : "data");
  KJ_IF_MAYBE (name, options.expectFsName) {
    KJ_REQUIRE(*name == fsName_, "the target belongs to another filesystem", dir, fsName_, *name);
  }
  fsUuid_ = kj::heapArray(header.getFsUuid());
  kind_ = header.getKind();
  index_ = header.getIndex();
  stripeSize_ = header.getDefaultStripeSize();
  stripeCount_ = header.getDefaultStripeCount();
  chunkSize_ = header.getFormatVersion() == 1 ? FORMAT_1_CHUNK_SIZE : header.getChunkSize();
  KJ_IF_MAYBE (v, options.versionOverride) {
    version_ = kj::str(*v);
  } else {
    version_ = kj::str(CAIRN_VERSION);
  }

  // Start-up rule (Simplified Interoperation, point 4): start if the version is unchanged, or
  // the previous shutdown was clean, or the administrator forces it.
  kj::StringPtr previous = header.getSoftwareVersion();
  bool clean = header.getCleanShutdown();
  previousClean_ = clean;
  versionChanged_ = previous != version_;
  if (clean) {
    startReason_ = "previous shutdown was clean";
  } else if (previous == version_) {
    startReason_ = "unclean stop, same version: normal recovery";
  } else if (options.force) {
    forced_ = true;
    startReason_ = "unclean stop by another version, forced: previous clients will be evicted";
  } else {
    KJ_FAIL_REQUIRE(kj::str(
        "the previous instance (version ", previous,
        ") did not shut down cleanly and this is "
        "version ",
        version_,
        ": refusing to start. Start the previous version to recover its "
        "clients and shut it down cleanly, or pass --force to start anyway; --force evicts the "
        "clients of the previous instance, which lose whatever they had not yet had committed"));
  }
  KJ_IF_MAYBE (t, txn.get(targetDb_, keyOf(TRANSNO_KEY))) {
    lastTransno_ = store::readU64(*t);
  }
  lastCommitted_.store(lastTransno_);
  instance_ = header.getInstance() + 1;
  spdlog::info(
      "target {}: fs {} ({}), kind {}, index {}, instance {}, previous version {} {}; "
      "starting: {}",
      dir.cStr(), fsName_.cStr(), hexString(fsUuid_).cStr(),
      kind_ == rpc::TargetKind::META ? "meta" : "data", index_, instance_, previous.cStr(),
      clean ? "clean" : "unclean", startReason_.cStr());

  capnp::MallocMessageBuilder message;
  message.setRoot(header);
  auto updated = message.getRoot<rpc::TargetHeader>();
  updated.setSoftwareVersion(version_);
  updated.setCleanShutdown(false);
  updated.setInstance(instance_);
  stored = nullptr;
  txn.putMessage(targetDb_, keyOf(HEADER_KEY), message);
  txn.commit();
  env_->sync();
}

Target::~Target() noexcept(false) {
  // The environment closes before the owner lock goes: the next owner finds it shut.
  env_ = nullptr;
  lock_ = nullptr;
}

MDB_dbi Target::db(kj::StringPtr name) {
  return env_->openDb(name);
}

uint64_t Target::replayTransno(store::Txn& txn, uint64_t original) {
  // Replays run in their original order above what survived, so their numbers still increase.
  if (original <= lastTransno_) return nextTransno(txn);
  lastTransno_ = original;
  store::U64Key value(original);
  txn.put(targetDb_, keyOf(TRANSNO_KEY), value.ptr());
  return original;
}

uint64_t Target::nextTransno(store::Txn& txn) {
  // The number is only taken for good if the transaction commits; an abort leaves a gap, which
  // is harmless (transaction numbers need to increase, not to be dense).
  uint64_t t = ++lastTransno_;
  store::U64Key value(t);
  txn.put(targetDb_, keyOf(TRANSNO_KEY), value.ptr());
  return t;
}

namespace {
kj::String barrierDir(kj::StringPtr dir) {
  return kj::str(dir, "/replay-barrier");
}
}  // namespace

// The snapshot is taken in one read transaction, so it is exactly the state as of one commit.
uint64_t Target::replayBarrier() {
  auto path = barrierDir(dir_);
  auto tmp = kj::str(path, ".tmp");
  KJ_REQUIRE(!fileExists(path), "a replay barrier is already set on this target", dir_);
  if (fileExists(kj::str(tmp, "/data.mdb"))) {
    KJ_SYSCALL(unlink(kj::str(tmp, "/data.mdb").cStr()));
  }
  if (!fileExists(tmp)) {
    KJ_SYSCALL(mkdir(tmp.cStr(), 0700));
  }
  // Commits happen on this (the event loop's) thread only, so none slips in during the copy.
  uint64_t transno = lastCommitted_.load();
  int rc = mdb_env_copy(env_->get(), tmp.cStr());
  KJ_REQUIRE(rc == 0, "cannot copy the target for a replay barrier", mdb_strerror(rc));
  KJ_SYSCALL(rename(tmp.cStr(), path.cStr()));
  spdlog::warn(
      "target {}: replay barrier at transaction {}: what is committed after it is "
      "discarded at the next start",
      dir_.cStr(), transno);
  return transno;
}

void Target::restoreBarrier() {
  auto path = barrierDir(dir_);
  auto copy = kj::str(path, "/data.mdb");
  if (!fileExists(copy)) return;
  KJ_SYSCALL(rename(copy.cStr(), kj::str(dir_, "/data.mdb").cStr()));
  KJ_SYSCALL(rmdir(path.cStr()));
  // The log holds the commits after the barrier too, and the saved checkpoint was of the
  // file just replaced; a host crash would have lost them with it.
  store::WriteAheadLog::discard(dir_);
  store::CheckpointSnapshot::discard(dir_);
  spdlog::warn("target {}: replay barrier: commits after it discarded, as a host crash would",
               dir_.cStr());
}

void Target::markClean() {
  env_->sync();
  store::Txn txn(*env_, store::Txn::WRITE);
  auto raw = KJ_ASSERT_NONNULL(txn.get(targetDb_, keyOf(HEADER_KEY)));
  store::StoredMessage stored(raw);
  capnp::MallocMessageBuilder message;
  message.setRoot(stored.getRoot<rpc::TargetHeader>());
  auto header = message.getRoot<rpc::TargetHeader>();
  header.setCleanShutdown(true);
  header.setSoftwareVersion(version_);
  txn.putMessage(targetDb_, keyOf(HEADER_KEY), message);
  txn.commit();
  env_->sync();
  spdlog::info("target {}: marked clean by version {}", dir_.cStr(), version_.cStr());
}

}  // namespace cairn
