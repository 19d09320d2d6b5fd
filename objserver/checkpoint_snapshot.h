// LMDB's state as of the last checkpoint, kept whole, so that a host crash leaves the target's
// LMDB file behind (the write-ahead log brings it forward) rather than damaged.
//
// Why: commits run with MDB_NOSYNC, and the kernel writes their pages back in any order. After
// a host crash the file can hold a meta page whose tree was never written, or a checkpoint's
// pages overwritten by later commits that reused them: LMDB opens it and reads garbage.
//
// How: at every checkpoint, under LMDB's writer lock (no commit in between), the current meta
// page is read and a read transaction begun on that snapshot, which stops LMDB from reusing any
// of its pages. After the sync, the meta page goes to a side file (`checkpoint.meta`, two slots
// written in turn, each with a CRC) with the kernel's boot id, and the previous checkpoint's
// reader ends. A start on another boot (the host went down, not just the process) writes the
// saved meta page over both of LMDB's before LMDB opens the file: LMDB is then exactly at the
// checkpoint, whose pages nothing has touched since, and the log replays what came after. A
// clean close removes the side file (LMDB is synced and whole then).
//
// This writes LMDB 0.9's meta page by hand: the page header is 16 bytes, then the MDB_meta
// (magic 0xBEEFC0DE, data version 1, ..., mm_txnid at byte 128 of it).
#pragma once

#include <kj/array.h>
#include <kj/io.h>
#include <kj/string.h>
#include <lmdb.h>

#include <atomic>
#include <cstdint>

namespace cairn::store {

class CheckpointSnapshot {
public:
  // Before LMDB opens `dir`: if a checkpoint was saved on another boot than `bootId` and the
  // file has got at least that far, puts the checkpoint's meta page back. Returns whether it
  // did.
  static bool restoreAfterHostCrash(kj::StringPtr dir, kj::StringPtr bootId);
  // Forgets the saved checkpoint of `dir` (LMDB's file was replaced).
  static void discard(kj::StringPtr dir);

  CheckpointSnapshot(kj::StringPtr dir, MDB_env* env, kj::String bootId);
  ~CheckpointSnapshot() noexcept(false);
  KJ_DISALLOW_COPY(CheckpointSnapshot);

  struct Capture {
    kj::Array<kj::byte> meta;  // the meta page as of the snapshot
    MDB_txn* reader = nullptr;
  };
  // Before the checkpoint's sync; takes LMDB's writer lock for a moment.
  Capture capture();
  // After the sync: the capture becomes the checkpoint a host crash goes back to.
  void saved(Capture&& capture);
  // At a clean close, after the last sync (and before the log goes).
  void remove();
  // The transaction of the pinned snapshot (0: none): pages freed by it or after it stay
  // unused until the next checkpoint. Any thread.
  uint64_t pinnedTxnid() const { return pinnedTxnid_.load(); }

private:
  kj::String dir_;
  MDB_env* env_;
  kj::String bootId_;
  kj::AutoCloseFd data_;       // LMDB's file, read for its meta pages
  uint64_t inode_ = 0;         // LMDB's file's
  kj::AutoCloseFd side_;       // checkpoint.meta, once written
  MDB_txn* pinned_ = nullptr;  // the reader on the saved checkpoint's snapshot
  std::atomic<uint64_t> pinnedTxnid_{0};
  uint64_t counter_ = 0;  // slots are written in turn; the higher counter wins
};

}  // namespace cairn::store
