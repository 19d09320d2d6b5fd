// Per-client reply records: the reply to every mutating request, committed in the same LMDB
// transaction as the change itself. A resend (same client, same request id) is answered from
// here instead of being applied twice. A client tells in each request which ids it still waits
// for (oldestUnreplied), so the records below that are dropped.
#pragma once

#include <kj/array.h>
#include <kj/vector.h>

#include "objserver/store.h"
#include "objserver/target.h"

namespace cairn {

class ClientTable {
public:
  explicit ClientTable(Target& target);

  kj::Maybe<kj::Array<capnp::word>> find(store::Txn& txn, kj::ArrayPtr<const kj::byte> client,
                                         uint64_t requestId);
  void record(store::Txn& txn, kj::ArrayPtr<const kj::byte> client, uint64_t requestId,
              capnp::MessageBuilder& reply);
  void prune(store::Txn& txn, kj::ArrayPtr<const kj::byte> client, uint64_t below);
  // The highest request id recorded for the client (0 if none).
  uint64_t lastRequestId(store::Txn& txn, kj::ArrayPtr<const kj::byte> client);
  // Every client with records, or that joined (below).
  kj::Vector<kj::Array<kj::byte>> clients(store::Txn& txn);
  // A client connected to this target: after a restart it is expected back (recovery).
  void join(store::Txn& txn, kj::ArrayPtr<const kj::byte> client);
  bool joined(store::Txn& txn, kj::ArrayPtr<const kj::byte> client);
  // A joined client disconnected (join() again clears it). Once this mark is on disk, so is
  // every update the client was ever answered: after a crash it has nothing to replay, and the
  // others' updates need not wait for it.
  void markAway(store::Txn& txn, kj::ArrayPtr<const kj::byte> client);
  bool away(store::Txn& txn, kj::ArrayPtr<const kj::byte> client);
  // The clients that joined (peer servers never do).
  kj::Vector<kj::Array<kj::byte>> joinedClients(store::Txn& txn);
  // Inode numbers set aside for the client's creates answered ahead (reserveInodes): a create
  // may use one only if it is the client's, and only once.
  void reserve(store::Txn& txn, kj::ArrayPtr<const kj::byte> client, uint64_t ino);
  // How many numbers the client holds, counted up to `limit`.
  size_t reservedCount(store::Txn& txn, kj::ArrayPtr<const kj::byte> client, size_t limit);
  // Numbers set aside for all clients together: creates the target has promised room for.
  size_t reservedTotal(store::Txn& txn) { return txn.entries(reserved_); }
  // Whether `ino` was reserved for the client; it is not any more.
  bool takeReserved(store::Txn& txn, kj::ArrayPtr<const kj::byte> client, uint64_t ino);

  // Forgets a client that is gone for good (its reply records and reserved numbers too).
  void forget(store::Txn& txn, kj::ArrayPtr<const kj::byte> client);

  // Evictions are kept on the target, so that a client evicted by an instance that then shut
  // down (or by a forced start) is told at its next connect, whichever instance it reaches.
  // `session`: a data target fenced by the metadata server marks which session of the
  // client's there was evicted (0: not known, or not a fence). Two marks before the client is
  // back keep the later session, and an unknown one wins: the client then assumes the worst.
  void markEvicted(store::Txn& txn, kj::ArrayPtr<const kj::byte> client, kj::StringPtr why,
                   uint64_t session = 0);
  struct Eviction {
    kj::String why;
    uint64_t session = 0;
  };
  // The mark, if the client was evicted; it goes.
  kj::Maybe<Eviction> takeEvicted(store::Txn& txn, kj::ArrayPtr<const kj::byte> client);
  bool isEvicted(store::Txn& txn, kj::ArrayPtr<const kj::byte> client);

private:
  // A reply record larger than a page (a batch's) is kept in parts of one page each, after
  // the first under the record's key with a part number appended: a map whose free room is in
  // scattered pages must still take it (a creates' batch answered ahead cannot fail for want
  // of pages in a row). Only batches have replies that large, and release 0.1.0 has none.
  size_t part_;
  MDB_dbi replies_;
  MDB_dbi joined_;
  MDB_dbi evicted_;
  MDB_dbi evictedSessions_;  // uuid -> the metadata server's session (a fence's mark)
  MDB_dbi reserved_;         // uuid + ino -> nothing
  // Deletes the client's records in `db` (keys uuid + a number) numbered below `below`.
  void dropBelow(store::Txn& txn, MDB_dbi db, kj::ArrayPtr<const kj::byte> client, uint64_t below);
};

}  // namespace cairn
