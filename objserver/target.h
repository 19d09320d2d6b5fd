// A target: one directory holding one LMDB environment, served by one process at a time.
//
// The header record says what the target is (filesystem name and uuid, kind, index) and how the
// last instance left it (software version, clean shutdown flag). Opening a target takes the
// owner lock, checks the header against what the caller expects, applies the start-up rule of the
// Simplified Interoperation design, and marks the target "in use" (not clean) until close().
#pragma once

#include <kj/string.h>

#include <atomic>
#include <cstdint>

#include "objserver/store.h"
#include "objserver/target_lock.h"
#include "rpc/cairn.capnp.h"

namespace cairn {

struct FormatOptions {
  rpc::TargetKind kind = rpc::TargetKind::META;
  kj::String fsName;
  kj::String fsUuid;  // 32 hex digits; made up if empty
  uint32_t index = 0;
  uint32_t stripeSize = 1 << 20;
  uint32_t stripeCount = 0;  // 0 = all data targets
  uint32_t chunkSize = 0;    // data: bytes per stored chunk; 0 = ObjectStore::defaultChunkSize()
};

struct OpenOptions {
  bool force = false;  // start even after an unclean stop by another version
  uint64_t mapSize = uint64_t(1) << 40;
  kj::Maybe<kj::String> expectFsName;     // refuse a target of another filesystem
  kj::Maybe<kj::String> versionOverride;  // test hook: pretend to be this software version
  kj::Maybe<kj::Own<TargetLock>> lock;    // already taken (a standby's); else taken here
};

class Target {
public:
  // Makes a new target in `dir` (created if missing). Refuses a directory that already holds one.
  static void format(kj::StringPtr dir, const FormatOptions& options);

  // Throws unless `dir` holds a formatted target (checked before anything is written there,
  // such as the owner lock).
  static void requireFormatted(kj::StringPtr dir);

  Target(kj::StringPtr dir, rpc::TargetKind expectedKind, OpenOptions options);
  ~Target() noexcept(false);
  KJ_DISALLOW_COPY(Target);

  store::Env& env() { return *env_; }
  TargetLock& lock() { return *lock_; }
  kj::StringPtr dir() const { return dir_; }
  kj::StringPtr fsName() const { return fsName_; }
  kj::ArrayPtr<const kj::byte> fsUuid() const { return fsUuid_; }
  rpc::TargetKind kind() const { return kind_; }
  uint32_t index() const { return index_; }
  uint64_t instance() const { return instance_; }
  uint32_t defaultStripeSize() const { return stripeSize_; }
  uint32_t defaultStripeCount() const { return stripeCount_; }
  // Data: how many bytes of an object each stored chunk holds (fixed when formatted).
  uint32_t chunkSize() const { return chunkSize_; }
  kj::StringPtr softwareVersion() const { return version_; }
  // Why the start-up check let this instance start.
  kj::StringPtr startReason() const { return startReason_; }
  // How the previous instance left the target.
  bool previousClean() const { return previousClean_; }
  bool versionChanged() const { return versionChanged_; }
  // Started with --force after an unclean stop by another version: the previous instance's
  // clients are evicted when they come back.
  bool forced() const { return forced_; }

  // Every change takes the next transaction number in its own write transaction.
  uint64_t nextTransno(store::Txn& txn);
  // A replayed update keeps the number it had before the crash (clients know it by it).
  uint64_t replayTransno(store::Txn& txn, uint64_t original);
  uint64_t lastTransno() const { return lastTransno_; }
  // Called after each commit, so the syncer knows what a sync started now covers.
  void committed(uint64_t transno) { lastCommitted_.store(transno); }
  uint64_t lastCommitted() const { return lastCommitted_.load(); }

  // Controlled shutdown: everything synced, header says clean and by which version.
  void markClean();

  // Test hook: snapshots the target as of now; the next start goes back to the snapshot,
  // discarding every later commit (as a host crash discards unsynced ones). Returns the last
  // transaction the snapshot holds.
  uint64_t replayBarrier();

  MDB_dbi db(kj::StringPtr name);  // opens a named database (start-up only)

private:
  void restoreBarrier();
  kj::String dir_;
  kj::Own<TargetLock> lock_;
  kj::Own<store::Env> env_;
  MDB_dbi targetDb_;
  kj::String fsName_;
  kj::Array<kj::byte> fsUuid_;
  rpc::TargetKind kind_;
  uint32_t index_ = 0;
  uint64_t instance_ = 0;
  uint32_t stripeSize_ = 0;
  uint32_t stripeCount_ = 0;
  uint32_t chunkSize_ = 0;
  kj::String version_;
  kj::StringPtr startReason_;
  bool previousClean_ = false;
  bool versionChanged_ = false;
  bool forced_ = false;
  uint64_t lastTransno_ = 0;
  std::atomic<uint64_t> lastCommitted_{0};
};

kj::String hexString(kj::ArrayPtr<const kj::byte> bytes);

}  // namespace cairn
