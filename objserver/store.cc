#include "objserver/store.h"

#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include "rpc/errors.h"

namespace cairn::store {

void check(int rc, const char* what) {
  if (rc == MDB_SUCCESS) return;
  // A full map or a full disk is the client's ENOSPC, not the server's failure.
  if (rc == MDB_MAP_FULL || rc == ENOSPC || rc == EDQUOT) throw FsError(ENOSPC);
  KJ_FAIL_REQUIRE("LMDB call failed", what, rc, mdb_strerror(rc));
}

namespace {
MDB_val toVal(Bytes b) {
  return MDB_val{b.size(), const_cast<kj::byte*>(b.begin())};
}
Bytes fromVal(const MDB_val& v) {
  return kj::arrayPtr(static_cast<const kj::byte*>(v.mv_data), v.mv_size);
}
}  // namespace

Env::Env(kj::StringPtr dir, Options options) : mapSize_(options.mapSize) {
  check(mdb_env_create(&env_), "mdb_env_create");
  KJ_ON_SCOPE_FAILURE({
    mdb_env_close(env_);
    env_ = nullptr;
  });
  check(mdb_env_set_mapsize(env_, options.mapSize), "mdb_env_set_mapsize");
  check(mdb_env_set_maxdbs(env_, options.maxDbs), "mdb_env_set_maxdbs");
  // NOSYNC: a commit survives a crash of this process at once; the syncer thread makes it
  // survive a host crash, and replies report how far that has got (lastSynced).
  int rc = mdb_env_open(env_, dir.cStr(), MDB_NOSYNC | MDB_NOTLS, 0600);
  if (rc != MDB_SUCCESS) {
    KJ_FAIL_REQUIRE("cannot open the target's LMDB environment", dir, rc, mdb_strerror(rc));
  }
}

void Env::startLog(kj::StringPtr dir, kj::String bootId) {
  KJ_REQUIRE(log_ == nullptr, "the log has started already");
  logDb_ = openDb("log");
  snapshot_ = kj::heap<CheckpointSnapshot>(dir, env_, kj::mv(bootId));
  // The first checkpoint, after the replay: the old segments go only once it is saved.
  log_ = kj::heap<WriteAheadLog>(dir, env_, logDb_, [this]() {
    KJ_REQUIRE(syncKeepingSnapshot(), "cannot save the first checkpoint");
  });
}

Env::~Env() noexcept(false) {
  if (env_ != nullptr) {
    int rc = mdb_env_sync(env_, 1);
    // Synced: LMDB is whole and holds everything the log does. The saved checkpoint goes
    // first: found without the log after a crash, it would take LMDB back past what it held.
    if (rc == 0) {
      // Never throws from here (this may run while an exception unwinds): a side file that
      // stays keeps the log too, and the next start finds both consistent.
      try {
        KJ_IF_MAYBE (s, snapshot_) {
          (*s)->remove();
        }
        KJ_IF_MAYBE (l, log_) {
          (*l)->removeAll();
        }
      } catch (kj::Exception& e) {
        spdlog::warn("closing the environment: {}", e.getDescription().cStr());
      }
    }
    log_ = nullptr;
    snapshot_ = nullptr;  // ends its reader: LMDB closes with no transaction open
    mdb_env_close(env_);
  }
}

MDB_dbi Env::openDb(kj::StringPtr name) {
  Txn txn(*this, Txn::WRITE);
  MDB_dbi dbi;
  check(mdb_dbi_open(txn.get(), name.cStr(), MDB_CREATE, &dbi), "mdb_dbi_open");
  txn.commit();
  while (dbNames_.size() <= dbi) dbNames_.add(kj::String());
  dbNames_[dbi] = kj::str(name);
  return dbi;
}

kj::StringPtr Env::dbName(MDB_dbi dbi) const {
  KJ_REQUIRE(dbi < dbNames_.size() && dbNames_[dbi].size() > 0,
             "a database not opened through Env::openDb", dbi);
  return dbNames_[dbi];
}

kj::Maybe<WriteAheadLog&> Env::log() {
  KJ_IF_MAYBE (l, log_) {
    return **l;
  }
  return nullptr;
}

void Env::sync() {
  std::lock_guard<std::mutex> lock(checkpoint_);
  kj::Maybe<uint64_t> through;
  KJ_IF_MAYBE (l, log_) {
    try {
      through = (*l)->beginCheckpoint();
    } catch (kj::Exception& e) {
      // No new segment (a full disk, say): the old one stays until a later checkpoint can
      // start one; syncs are LMDB's meanwhile.
      spdlog::warn("cannot start a new write-ahead log segment: {}", e.getDescription().cStr());
    }
  }
  // Taken after the log's new segment began, so the log holds everything after it. If it
  // fails, the previous checkpoint stays the one a host crash goes back to, so the log keeps
  // everything after that (no endCheckpoint); the sync still makes LMDB durable.
  if (!syncKeepingSnapshot()) through = nullptr;
  // Only once the side file names this checkpoint may the log let go of what came before it.
  KJ_IF_MAYBE (l, log_) {
    KJ_IF_MAYBE (t, through) {
      (*l)->endCheckpoint(*t);
    }
  }
}

bool Env::syncKeepingSnapshot() {
  kj::Maybe<CheckpointSnapshot::Capture> capture;
  bool kept = true;
  KJ_IF_MAYBE (s, snapshot_) {
    try {
      capture = (*s)->capture();
    } catch (kj::Exception& e) {
      spdlog::error("cannot capture LMDB's snapshot for the checkpoint: {}",
                    e.getDescription().cStr());
      kept = false;
    }
  }
  check(mdb_env_sync(env_, 1), "mdb_env_sync");
  KJ_IF_MAYBE (s, snapshot_) {
    KJ_IF_MAYBE (c, capture) {
      try {
        (*s)->saved(kj::mv(*c));
      } catch (kj::Exception& e) {
        spdlog::error("cannot save the checkpoint's meta page: {}", e.getDescription().cStr());
        kept = false;
      }
    }
  }
  return kept;
}

void Env::syncCommitted() {
  KJ_IF_MAYBE (l, log_) {
    if ((*l)->sync()) return;
  }
  sync();
}

uint64_t Env::usedBytes() {
  MDB_envinfo info;
  MDB_stat stat;
  check(mdb_env_info(env_, &info), "mdb_env_info");
  check(mdb_env_stat(env_, &stat), "mdb_env_stat");
  return uint64_t(info.me_last_pgno + 1) * stat.ms_psize;
}

Env::Space Env::space(uint64_t enough) {
  MDB_envinfo info;
  MDB_stat stat;
  check(mdb_env_info(env_, &info), "mdb_env_info");
  check(mdb_env_stat(env_, &stat), "mdb_env_stat");
  uint64_t pages = mapSize_ / stat.ms_psize;
  uint64_t untouched = pages > info.me_last_pgno + 1 ? pages - info.me_last_pgno - 1 : 0;
  Space space;
  space.usable = untouched * stat.ms_psize;
  // Reading the free list costs time; skip it while the untouched map is plenty.
  if (space.usable >= enough) return space;
  // Database 0 is LMDB's free list: each record holds a count of page numbers, then the numbers.
  // LMDB opens it only in read-only transactions, and what the last commit freed is enough.
  // Its key is the transaction that freed them; those freed since the checkpoint's pinned
  // snapshot cannot be taken again before the next checkpoint: held, not usable.
  uint64_t usableBelow = UINT64_MAX;
  KJ_IF_MAYBE (s, snapshot_) {
    uint64_t pinned = (*s)->pinnedTxnid();
    if (pinned != 0) usableBelow = pinned;
  }
  uint64_t freed = 0, held = 0;
  Txn reader(*this, Txn::READ);
  MDB_cursor* cursor;
  check(mdb_cursor_open(reader.get(), 0, &cursor), "mdb_cursor_open(free list)");
  KJ_DEFER(mdb_cursor_close(cursor));
  MDB_val k, v;
  for (int rc = mdb_cursor_get(cursor, &k, &v, MDB_FIRST); rc == MDB_SUCCESS;
       rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) {
    if (v.mv_size < sizeof(size_t)) continue;
    size_t count = *static_cast<const size_t*>(v.mv_data);
    bool recent =
        k.mv_size == sizeof(size_t) && *static_cast<const size_t*>(k.mv_data) >= usableBelow;
    (recent ? held : freed) += count;
  }
  space.usable += freed * stat.ms_psize;
  space.held = held * stat.ms_psize;
  return space;
}

size_t Env::onePageValue() {
  MDB_stat stat;
  check(mdb_env_stat(env_, &stat), "mdb_env_stat");
  return stat.ms_psize - 16;  // less the page's header
}

void Env::requireSpace(Txn&, uint64_t bytes) {
  // Values larger than a page take whole overflow pages; count them generously.
  uint64_t need = reserveBytes() + bytes + bytes / 8;
  if (space(need).usable < need) throw FsError(ENOSPC);
}

Txn::Txn(Env& env, Mode mode) : env_(env) {
  check(mdb_txn_begin(env.get(), nullptr, mode == READ ? MDB_RDONLY : 0, &txn_), "mdb_txn_begin");
}

Txn::Txn(Txn& parent) : env_(parent.env_), parent_(&parent) {
  KJ_REQUIRE(parent.txn_ != nullptr, "nesting in a transaction that has ended");
  check(mdb_txn_begin(mdb_txn_env(parent.txn_), parent.txn_, 0, &txn_), "mdb_txn_begin(nested)");
}

Txn::~Txn() noexcept(false) {
  if (txn_ != nullptr) mdb_txn_abort(txn_);
}

void Txn::commit() {
  KJ_REQUIRE(txn_ != nullptr, "transaction already ended");
  kj::Maybe<uint64_t> seq;
  KJ_IF_MAYBE (log, env_.log_) {
    if (parent_ == nullptr && record_.changed()) {
      seq = (*log)->nextSeq();
      U64Key value(KJ_ASSERT_NONNULL(seq));
      MDB_val k = toVal(WriteAheadLog::SEQ_KEY.asBytes()), v = toVal(value.ptr());
      check(mdb_put(txn_, env_.logDb_, &k, &v, 0), "mdb_put(log seq)");
    }
  }
  MDB_txn* t = txn_;
  txn_ = nullptr;  // mdb_txn_commit frees the transaction even when it fails
  check(mdb_txn_commit(t), "mdb_txn_commit");
  if (parent_ != nullptr) {
    parent_->record_.append(kj::mv(record_));
    return;
  }
  KJ_IF_MAYBE (s, seq) {
    KJ_ASSERT_NONNULL(env_.log_)->append(*s, record_);
  }
}

kj::Maybe<Bytes> Txn::get(MDB_dbi dbi, Bytes key) {
  MDB_val k = toVal(key), v;
  int rc = mdb_get(txn_, dbi, &k, &v);
  if (rc == MDB_NOTFOUND) return nullptr;
  check(rc, "mdb_get");
  return fromVal(v);
}

void Txn::put(MDB_dbi dbi, Bytes key, Bytes value, unsigned flags) {
  MDB_val k = toVal(key), v = toVal(value);
  check(mdb_put(txn_, dbi, &k, &v, flags), "mdb_put");
  if (env_.log_ != nullptr) record_.put(env_.dbName(dbi), key, value);
}

void Txn::putPatched(MDB_dbi dbi, Bytes key, Bytes value, size_t at, size_t length) {
  MDB_val k = toVal(key), v = toVal(value);
  check(mdb_put(txn_, dbi, &k, &v, 0), "mdb_put");
  if (env_.log_ != nullptr) {
    record_.patch(env_.dbName(dbi), key, value.size(), at, value.slice(at, at + length));
  }
}

bool Txn::del(MDB_dbi dbi, Bytes key) {
  MDB_val k = toVal(key);
  int rc = mdb_del(txn_, dbi, &k, nullptr);
  if (rc == MDB_NOTFOUND) return false;
  check(rc, "mdb_del");
  if (env_.log_ != nullptr) record_.del(env_.dbName(dbi), key);
  return true;
}

size_t Txn::entries(MDB_dbi dbi) {
  MDB_stat stat;
  check(mdb_stat(txn_, dbi, &stat), "mdb_stat");
  return stat.ms_entries;
}

void Txn::putMessage(MDB_dbi dbi, Bytes key, capnp::MessageBuilder& message) {
  auto words = capnp::messageToFlatArray(message);
  put(dbi, key, words.asBytes());
}

Cursor::Cursor(Txn& txn, MDB_dbi dbi) : txn_(txn), dbi_(dbi) {
  check(mdb_cursor_open(txn.get(), dbi, &cursor_), "mdb_cursor_open");
}

Cursor::~Cursor() {
  mdb_cursor_close(cursor_);
}

kj::Maybe<Cursor::Item> Cursor::op(MDB_cursor_op o, Bytes key) {
  MDB_val k = toVal(key), v;
  int rc = mdb_cursor_get(cursor_, &k, &v, o);
  if (rc == MDB_NOTFOUND) return nullptr;
  check(rc, "mdb_cursor_get");
  return Item{fromVal(k), fromVal(v)};
}

kj::Maybe<Cursor::Item> Cursor::seek(Bytes key) {
  return op(MDB_SET_RANGE, key);
}
kj::Maybe<Cursor::Item> Cursor::next() {
  return op(MDB_NEXT);
}
kj::Maybe<Cursor::Item> Cursor::first() {
  return op(MDB_FIRST);
}
void Cursor::del() {
  if (txn_.env_.log_ != nullptr) {
    MDB_val k, v;
    check(mdb_cursor_get(cursor_, &k, &v, MDB_GET_CURRENT), "mdb_cursor_get(current)");
    txn_.record_.del(txn_.env_.dbName(dbi_), fromVal(k));
  }
  check(mdb_cursor_del(cursor_, 0), "mdb_cursor_del");
}

StoredMessage::StoredMessage(Bytes value) {
  KJ_REQUIRE(value.size() % sizeof(capnp::word) == 0, "stored record is not a message",
             value.size());
  words_ = kj::heapArray<capnp::word>(value.size() / sizeof(capnp::word));
  memcpy(words_.begin(), value.begin(), value.size());
  reader_ = kj::heap<capnp::FlatArrayMessageReader>(words_);
}

U64Key::U64Key(uint64_t v) {
  writeU64(bytes, v);
}

void writeU64(kj::byte* out, uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    out[i] = kj::byte(v & 0xff);
    v >>= 8;
  }
}

uint64_t readU64(Bytes b, size_t at) {
  KJ_REQUIRE(b.size() >= at + 8, "key too short", b.size());
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | b[at + i];
  return v;
}

}  // namespace cairn::store
