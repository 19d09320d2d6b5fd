// The write-ahead log of a target: what each write transaction changed, appended to a file in
// commit order, so that a client's fsync waits for one sequential fdatasync instead of LMDB's.
//
// Why: LMDB commits without syncing (store.h) and an mdb_env_sync writes every page the
// transactions since the last one dirtied, each copied anew somewhere in the file. On these
// disks an fdatasync costs ~40 µs per separate page it writes; a small file made durable cost
// the metadata server ~21 of them, 32 random 4 KiB writes ~90 over three servers. The log
// writes the same changes as one run of bytes.
//
// How: every changed write transaction takes the next log sequence number, stored in LMDB with
// it (database "log"), and after its commit its puts and deletes go to the log (a "gap" record
// instead when a transaction is too large to be worth logging, such as a 1 MiB sequential
// write: for those the sync falls back to LMDB's). A checkpoint (every syncer interval) starts a
// new segment, syncs LMDB and retires the older segments (their files are reused: an
// fdatasync of overwritten blocks needs no journal commit). At start-up, what the log holds past
// LMDB's sequence number is applied again, in order, as long as the numbers follow on; a torn
// last record (a crash during the append) ends the log.
//
// On disk: segment files `wal.<slot>`, each a header (magic, format, generation) and then
// records, read in generation order:
//   u32 payload length, u32 CRC-32 of (generation, seq, kind, payload), u64 seq, u8 kind, payload
// A payload is a list of operations: u8 op (put, del, patch), u16 database name length, the
// name, u32 key length, the key; a patch then has u32 value length and u32 offset; a put and a
// patch then u32 length and the bytes. Numbers are little-endian.
#pragma once

#include <kj/array.h>
#include <kj/mutex.h>
#include <kj/string.h>
#include <kj/vector.h>
#include <lmdb.h>

#include <atomic>
#include <cstdint>
#include <functional>

namespace cairn::store {

using Bytes = kj::ArrayPtr<const kj::byte>;

// The changes of one transaction, encoded as the log stores them.
class LogRecord {
public:
  // Past this a transaction is not logged (its commit makes the next sync an LMDB one).
  static constexpr size_t LIMIT = 128 * 1024;

  void put(kj::StringPtr db, Bytes key, Bytes value);
  void del(kj::StringPtr db, Bytes key);
  // A put of a value of `length` bytes that differs from the stored one (zero-extended or cut
  // to that length) only in `bytes` at `at`: a 4 KiB write into a 16 KiB chunk logs 4 KiB.
  void patch(kj::StringPtr db, Bytes key, size_t length, size_t at, Bytes bytes);
  // A nested transaction's changes, at its commit.
  void append(LogRecord&& nested);

  bool changed() const { return changed_; }
  bool tooLarge() const { return tooLarge_; }
  Bytes payload() const { return bytes_.asPtr(); }

  struct Op {
    enum Kind : kj::byte { PUT = 1, DEL = 2, PATCH = 3 };
    Kind kind;
    kj::StringPtr db;
    Bytes key;
    Bytes value;        // a put's value, a patch's bytes
    size_t length = 0;  // a patch: the value's length after it
    size_t at = 0;      // a patch: where its bytes go
  };
  // Calls apply for each operation of a payload, in order; throws if it is malformed.
  static void forEach(Bytes payload, const std::function<void(const Op&)>& apply);

private:
  bool reserve(size_t more);  // false once the record is too large to keep
  void head(Op::Kind kind, kj::StringPtr db, Bytes key);
  kj::Vector<kj::byte> bytes_;
  bool changed_ = false;
  bool tooLarge_ = false;
};

class WriteAheadLog {
public:
  // Opens the log of the LMDB environment in `dir` (already open as `env`): applies what it
  // holds past the environment's sequence number, syncs the environment, calls `replayed`
  // (the first checkpoint: what the log held is not needed past it), then deletes the old
  // segments and starts a new one. Throws on a segment that is not a log (a foreign file); a
  // torn tail is normal.
  WriteAheadLog(kj::StringPtr dir, MDB_env* env, MDB_dbi logDb,
                const std::function<void()>& replayed);
  ~WriteAheadLog() noexcept(false);
  KJ_DISALLOW_COPY(WriteAheadLog);

  static constexpr kj::StringPtr SEQ_KEY = "seq"_kj;

  // The number the next changed transaction takes (it stores it with its changes).
  uint64_t nextSeq() { return lastSeq_ + 1; }
  // After that transaction committed: its record, or a gap when it was too large.
  void append(uint64_t seq, const LogRecord& record);
  // Makes every record appended so far durable. Returns false (and syncs nothing) when a gap
  // since the last checkpoint means only LMDB's own sync will do.
  bool sync();

  // A checkpoint, around an mdb_env_sync (one at a time): begin() starts a new segment and
  // returns the sequence number everything committed so far is at or below; end() (after the
  // sync) retires the segments before it.
  uint64_t beginCheckpoint();
  void endCheckpoint(uint64_t through);
  // After the environment's last sync at close: nothing in the log is needed any more.
  void removeAll();
  // Deletes every segment file in `dir`, set-aside ones too (LMDB's file was replaced).
  static void discard(kj::StringPtr dir);

  // For the metrics.
  uint64_t syncs() const { return syncs_.load(); }
  uint64_t bytesLogged() const { return bytes_.load(); }
  uint64_t gaps() const { return gapCount_.load(); }

private:
  enum class Kind : kj::byte;  // of a record
  struct Segment;
  // A segment to append to next: a spare file if there is one, else a new one.
  kj::Own<Segment> create();
  // Appends one record; false (with a warning) if it could not.
  bool write(Segment& segment, uint64_t seq, Kind kind, Bytes payload);
  // Writes zeros past the segment's end up to a whole number of GROWTH bytes covering `to`.
  bool grow(Segment& segment, uint64_t to);
  void replay(MDB_env* env, MDB_dbi logDb, const std::function<void()>& replayed);

  kj::String dir_;
  uint64_t lastSeq_ = 0;  // event-loop thread only

  struct State {
    kj::Vector<kj::Own<Segment>> segments;  // oldest first; the last is appended to
    kj::Vector<kj::Own<Segment>> spares;    // retired files, to be overwritten
    uint64_t lastAppended = 0;
    uint64_t gapSeq = 0;        // the last transaction not logged
    uint64_t checkpointed = 0;  // LMDB is on disk through this
    uint64_t nextGeneration = 1;
    uint64_t nextSlot = 0;
    bool broken = false;  // an append failed: gaps until the next segment
  };
  kj::MutexGuarded<State> state_;
  kj::MutexGuarded<bool> syncing_;  // one log sync at a time; appends go on meanwhile
  std::atomic<uint64_t> syncs_{0};
  std::atomic<uint64_t> bytes_{0};
  std::atomic<uint64_t> gapCount_{0};
};

}  // namespace cairn::store
