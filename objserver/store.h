// RAII over LMDB: an environment, its transactions and cursors. Every return code goes through
// check(), which throws: MDB_MAP_FULL (and a full disk) as FsError(ENOSPC), so a client gets
// ENOSPC and the server keeps running; anything else as a kj exception naming the call.
//
// All transactions run on the server's event-loop thread and are kept short; only the syncer's
// threads touch the environment otherwise (mdb_env_sync is safe from any thread). A target's
// environment also keeps a write-ahead log (write_ahead_log.h): every top-level write
// transaction that changed something hands its changes to it at commit.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>
#include <kj/common.h>
#include <kj/memory.h>
#include <kj/string.h>
#include <lmdb.h>

#include <cstdint>
#include <mutex>

#include "objserver/checkpoint_snapshot.h"
#include "objserver/write_ahead_log.h"

namespace cairn::store {

using Bytes = kj::ArrayPtr<const kj::byte>;

void check(int rc, const char* what);

class Env {
public:
  struct Options {
    uint64_t mapSize = uint64_t(1) << 40;  // address space only; the file grows as used
    unsigned maxDbs = 32;
  };
  Env(kj::StringPtr dir, Options options);
  ~Env() noexcept(false);
  KJ_DISALLOW_COPY(Env);

  MDB_env* get() { return env_; }
  MDB_dbi openDb(kj::StringPtr name);  // creates it if missing; call once at start-up
  // Keeps a write-ahead log beside the environment from now on (write_ahead_log.h), applying
  // what the log holds that LMDB lacks; syncCommitted() is then cheap for small transactions.
  // Once, at start-up, before any other write. A target's environment has one, and with it
  // the checkpoint's snapshot kept whole (checkpoint_snapshot.h); `bootId` is the kernel's.
  void startLog(kj::StringPtr dir, kj::String bootId);
  kj::StringPtr dbName(MDB_dbi dbi) const;
  // Flush everything committed so far to disk: an mdb_env_sync, which is also the log's
  // checkpoint. Any thread.
  void sync();
  // Make everything committed so far durable, through the log when it can. Any thread.
  void syncCommitted();
  kj::Maybe<WriteAheadLog&> log();
  uint64_t mapSize() const { return mapSize_; }
  uint64_t usedBytes();
  // Room in the map as of the last commit.
  struct Space {
    uint64_t usable = 0;  // bytes a transaction can take: the untouched end, freed pages
    uint64_t held = 0;    // freed pages the checkpoint's snapshot keeps until the next one
  };
  // Stops counting once `usable` reached `enough` (held is then left at 0).
  Space space(uint64_t enough = UINT64_MAX);
  // Kept free for deletions: LMDB needs free pages even to delete, so a map filled to the
  // brim could never be emptied.
  uint64_t reserveBytes() const { return kj::max(mapSize_ / 32, uint64_t(256) << 10); }
  // The largest value that takes a single page of its own. A larger one takes pages in a row,
  // which a map with room left in single freed pages may not have (MDB_MAP_FULL).
  size_t onePageValue();
  // Refuses (FsError ENOSPC) a change that would eat into that reserve.
  void requireSpace(class Txn& txn, uint64_t bytes);

private:
  friend class Txn;
  friend class Cursor;
  // mdb_env_sync with the checkpoint's snapshot captured before and saved after; false if it
  // could not be (the previous one stands).
  bool syncKeepingSnapshot();
  MDB_env* env_ = nullptr;
  uint64_t mapSize_;
  kj::Vector<kj::String> dbNames_;  // by handle
  kj::Maybe<kj::Own<CheckpointSnapshot>> snapshot_;
  kj::Maybe<kj::Own<WriteAheadLog>> log_;
  MDB_dbi logDb_ = 0;
  std::mutex checkpoint_;  // one checkpoint at a time
};

class Txn {
public:
  enum Mode { READ, WRITE };
  Txn(Env& env, Mode mode);
  // A write transaction nested in `parent`: its changes join the parent's at commit, and
  // vanish if it is aborted (destroyed uncommitted), the parent going on.
  explicit Txn(Txn& parent);
  ~Txn() noexcept(false);
  KJ_DISALLOW_COPY(Txn);

  MDB_txn* get() { return txn_; }
  // A top-level transaction that changed something also takes the log's next number and, once
  // committed, goes to the log.
  void commit();

  kj::Maybe<Bytes> get(MDB_dbi dbi, Bytes key);
  void put(MDB_dbi dbi, Bytes key, Bytes value, unsigned flags = 0);
  // The same, for a value that differs from the stored one (zero-extended or cut to its
  // length) only in value[at, at + length): the log keeps just that part.
  void putPatched(MDB_dbi dbi, Bytes key, Bytes value, size_t at, size_t length);
  // Returns false if the key was absent.
  bool del(MDB_dbi dbi, Bytes key);
  // How many keys the table holds, as this transaction sees it (LMDB keeps the count).
  size_t entries(MDB_dbi dbi);

  // Stores a Cap'n Proto message as a flat array of words.
  void putMessage(MDB_dbi dbi, Bytes key, capnp::MessageBuilder& message);

private:
  friend class Cursor;
  Env& env_;
  Txn* parent_ = nullptr;
  MDB_txn* txn_ = nullptr;
  LogRecord record_;  // kept only when the environment has a log
};

class Cursor {
public:
  Cursor(Txn& txn, MDB_dbi dbi);
  ~Cursor();
  KJ_DISALLOW_COPY(Cursor);

  struct Item {
    Bytes key;
    Bytes value;
  };
  kj::Maybe<Item> seek(Bytes key);  // first key >= key
  kj::Maybe<Item> next();
  kj::Maybe<Item> first();
  void del();  // the current item

private:
  kj::Maybe<Item> op(MDB_cursor_op op, Bytes key = nullptr);
  Txn& txn_;
  MDB_dbi dbi_;
  MDB_cursor* cursor_ = nullptr;
};

// A Cap'n Proto reader over an LMDB value. LMDB does not align values, so the words are copied.
class StoredMessage {
public:
  explicit StoredMessage(Bytes value);
  template <typename T>
  typename T::Reader getRoot() {
    return reader_->getRoot<T>();
  }

private:
  kj::Array<capnp::word> words_;
  kj::Own<capnp::FlatArrayMessageReader> reader_;
};

// Keys: fixed-width big-endian integers sort in numeric order.
struct U64Key {
  kj::byte bytes[8];
  explicit U64Key(uint64_t v);
  Bytes ptr() const { return kj::arrayPtr(bytes, 8); }
};
uint64_t readU64(Bytes b, size_t at = 0);
// A value that is one U64Key: 0 if there is none, or it is not 8 bytes (damaged).
inline uint64_t u64Value(kj::Maybe<Bytes> value) {
  KJ_IF_MAYBE (v, value) {
    if (v->size() == 8) return readU64(*v);
  }
  return 0;
}
void writeU64(kj::byte* out, uint64_t v);

}  // namespace cairn::store
