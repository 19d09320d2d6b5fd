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
  // Every client with records.
  kj::Vector<kj::Array<kj::byte>> clients(store::Txn& txn);
  // Forgets a client that is gone for good.
  void forget(store::Txn& txn, kj::ArrayPtr<const kj::byte> client) {
    prune(txn, client, UINT64_MAX);
  }

private:
  MDB_dbi replies_;
};

}  // namespace cairn
