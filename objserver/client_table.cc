#include "objserver/client_table.h"

#include <kj/debug.h>

namespace cairn {

namespace {
constexpr size_t UUID_SIZE = 16;

// A client's record numbered `n` (a request id, an inode number): ordered by client, then n.
kj::Array<kj::byte> clientKey(kj::ArrayPtr<const kj::byte> client, uint64_t n) {
  KJ_REQUIRE(client.size() == UUID_SIZE, "a client uuid is 16 bytes", client.size());
  auto key = kj::heapArray<kj::byte>(UUID_SIZE + 8);
  memcpy(key.begin(), client.begin(), UUID_SIZE);
  store::writeU64(key.begin() + UUID_SIZE, n);
  return key;
}

// Part `n` (from 1) of a reply record that did not fit in one page.
kj::Array<kj::byte> partKey(kj::ArrayPtr<const kj::byte> client, uint64_t requestId, uint16_t n) {
  auto key = clientKey(client, requestId);
  auto out = kj::heapArray<kj::byte>(key.size() + 2);
  memcpy(out.begin(), key.begin(), key.size());
  out[key.size()] = n >> 8;
  out[key.size() + 1] = n & 0xff;
  return out;
}

bool sameClient(store::Bytes key, kj::ArrayPtr<const kj::byte> client) {
  return (key.size() == UUID_SIZE + 8 || key.size() == UUID_SIZE + 10) &&
         memcmp(key.begin(), client.begin(), UUID_SIZE) == 0;
}
}  // namespace

ClientTable::ClientTable(Target& target)
    : part_(target.env().onePageValue() & ~(sizeof(capnp::word) - 1)),
      replies_(target.db("replies")),
      joined_(target.db("clients")),
      evicted_(target.db("evicted")),
      evictedSessions_(target.db("evicted_sessions")),
      reserved_(target.db("reserved")) {}

void ClientTable::join(store::Txn& txn, kj::ArrayPtr<const kj::byte> client) {
  KJ_REQUIRE(client.size() == UUID_SIZE, "a client uuid is 16 bytes", client.size());
  txn.put(joined_, client, store::Bytes());
}

bool ClientTable::joined(store::Txn& txn, kj::ArrayPtr<const kj::byte> client) {
  return txn.get(joined_, client) != nullptr;
}

namespace {
constexpr kj::byte AWAY = 1;  // the `clients` record's value: empty while connected
}

void ClientTable::markAway(store::Txn& txn, kj::ArrayPtr<const kj::byte> client) {
  KJ_REQUIRE(client.size() == UUID_SIZE, "a client uuid is 16 bytes", client.size());
  txn.put(joined_, client, store::Bytes(&AWAY, 1));
}

bool ClientTable::away(store::Txn& txn, kj::ArrayPtr<const kj::byte> client) {
  KJ_IF_MAYBE (value, txn.get(joined_, client)) {
    return value->size() == 1 && (*value)[0] == AWAY;
  }
  return false;
}

void ClientTable::reserve(store::Txn& txn, kj::ArrayPtr<const kj::byte> client, uint64_t ino) {
  txn.put(reserved_, clientKey(client, ino), store::Bytes());
}

size_t ClientTable::reservedCount(store::Txn& txn, kj::ArrayPtr<const kj::byte> client,
                                  size_t limit) {
  size_t n = 0;
  store::Cursor cursor(txn, reserved_);
  for (auto item = cursor.seek(clientKey(client, 0)); n < limit;) {
    KJ_IF_MAYBE (i, item) {
      if (!sameClient(i->key, client)) break;
      ++n;
      item = cursor.next();
    } else {
      break;
    }
  }
  return n;
}

bool ClientTable::takeReserved(store::Txn& txn, kj::ArrayPtr<const kj::byte> client, uint64_t ino) {
  auto key = clientKey(client, ino);
  if (txn.get(reserved_, key) == nullptr) return false;
  txn.del(reserved_, key);
  return true;
}

void ClientTable::forget(store::Txn& txn, kj::ArrayPtr<const kj::byte> client) {
  prune(txn, client, UINT64_MAX);
  dropBelow(txn, reserved_, client, UINT64_MAX);
  txn.del(joined_, client);
}

void ClientTable::markEvicted(store::Txn& txn, kj::ArrayPtr<const kj::byte> client,
                              kj::StringPtr why, uint64_t session) {
  KJ_REQUIRE(client.size() == UUID_SIZE, "a client uuid is 16 bytes", client.size());
  if (session != 0 && txn.get(evicted_, client) != nullptr) {
    // Marked already: an unknown session (0) stays unknown, else the later one counts.
    uint64_t earlier = store::u64Value(txn.get(evictedSessions_, client));
    session = earlier == 0 ? 0 : kj::max(session, earlier);
  }
  txn.put(evicted_, client, why.asBytes());
  if (session != 0) {
    txn.put(evictedSessions_, client, store::U64Key(session).ptr());
  } else {
    txn.del(evictedSessions_, client);
  }
}

kj::Maybe<ClientTable::Eviction> ClientTable::takeEvicted(store::Txn& txn,
                                                          kj::ArrayPtr<const kj::byte> client) {
  KJ_IF_MAYBE (value, txn.get(evicted_, client)) {
    Eviction eviction{kj::heapString(reinterpret_cast<const char*>(value->begin()), value->size())};
    eviction.session = store::u64Value(txn.get(evictedSessions_, client));
    txn.del(evictedSessions_, client);
    txn.del(evicted_, client);
    return kj::mv(eviction);
  }
  return nullptr;
}

bool ClientTable::isEvicted(store::Txn& txn, kj::ArrayPtr<const kj::byte> client) {
  return txn.get(evicted_, client) != nullptr;
}

kj::Maybe<kj::Array<capnp::word>> ClientTable::find(store::Txn& txn,
                                                    kj::ArrayPtr<const kj::byte> client,
                                                    uint64_t requestId) {
  auto key = clientKey(client, requestId);
  kj::Vector<kj::byte> bytes;
  store::Cursor cursor(txn, replies_);
  auto item = cursor.seek(key);
  for (uint16_t n = 0;; ++n) {
    KJ_IF_MAYBE (i, item) {
      // The record, then its parts in order (keys sort so).
      auto want = n == 0 ? kj::mv(key) : partKey(client, requestId, n);
      if (i->key != want.asPtr()) break;
      bytes.addAll(i->value);
      item = cursor.next();
    } else {
      break;
    }
  }
  if (bytes.empty()) return nullptr;
  KJ_REQUIRE(bytes.size() % sizeof(capnp::word) == 0, "damaged reply record", bytes.size());
  auto words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  memcpy(words.begin(), bytes.begin(), bytes.size());
  return kj::mv(words);
}

void ClientTable::record(store::Txn& txn, kj::ArrayPtr<const kj::byte> client, uint64_t requestId,
                         capnp::MessageBuilder& reply) {
  auto words = capnp::messageToFlatArray(reply);
  auto bytes = words.asBytes();
  size_t parts = (bytes.size() + part_ - 1) / part_;  // a message is never empty
  KJ_REQUIRE(parts <= UINT16_MAX, "reply too large to record", bytes.size());
  for (size_t n = 0; n < parts; ++n) {
    auto piece = bytes.slice(n * part_, kj::min(bytes.size(), (n + 1) * part_));
    txn.put(replies_, n == 0 ? clientKey(client, requestId) : partKey(client, requestId, n), piece);
  }
}

void ClientTable::prune(store::Txn& txn, kj::ArrayPtr<const kj::byte> client, uint64_t below) {
  dropBelow(txn, replies_, client, below);
}

void ClientTable::dropBelow(store::Txn& txn, MDB_dbi db, kj::ArrayPtr<const kj::byte> client,
                            uint64_t below) {
  auto start = clientKey(client, 0);
  store::Cursor cursor(txn, db);
  for (auto item = cursor.seek(start);;) {
    KJ_IF_MAYBE (i, item) {
      if (!sameClient(i->key, client) || store::readU64(i->key, UUID_SIZE) >= below) break;
      cursor.del();
      item = cursor.seek(start);
    } else {
      break;
    }
  }
}

kj::Vector<kj::Array<kj::byte>> ClientTable::joinedClients(store::Txn& txn) {
  kj::Vector<kj::Array<kj::byte>> out;
  store::Cursor cursor(txn, joined_);
  for (auto item = cursor.first();;) {
    KJ_IF_MAYBE (i, item) {
      if (i->key.size() == UUID_SIZE) out.add(kj::heapArray(i->key));
      item = cursor.next();
    } else {
      break;
    }
  }
  return out;
}

kj::Vector<kj::Array<kj::byte>> ClientTable::clients(store::Txn& txn) {
  auto out = joinedClients(txn);
  store::Cursor cursor(txn, replies_);
  for (auto item = cursor.first();;) {
    KJ_IF_MAYBE (i, item) {
      auto uuid = kj::heapArray(i->key.slice(0, UUID_SIZE));
      // Skip the rest of this client's records.
      item = cursor.seek(clientKey(uuid, UINT64_MAX));
      KJ_IF_MAYBE (j, item) {
        if (sameClient(j->key, uuid)) item = cursor.next();
      }
      if (!joined(txn, uuid)) out.add(kj::mv(uuid));
    } else {
      break;
    }
  }
  return out;
}

uint64_t ClientTable::lastRequestId(store::Txn& txn, kj::ArrayPtr<const kj::byte> client) {
  uint64_t last = 0;
  store::Cursor cursor(txn, replies_);
  for (auto item = cursor.seek(clientKey(client, 0));;) {
    KJ_IF_MAYBE (i, item) {
      if (!sameClient(i->key, client)) break;
      last = store::readU64(i->key, UUID_SIZE);
      item = cursor.next();
    } else {
      break;
    }
  }
  return last;
}

}  // namespace cairn
