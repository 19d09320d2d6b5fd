#include "objserver/client_fence.h"

#include <kj/debug.h>
#include <kj/encoding.h>
#include <spdlog/spdlog.h>

namespace cairn {

namespace {
constexpr size_t UUID_BYTES = 16;

store::Bytes bytesOf(const std::string& s) {
  return kj::arrayPtr(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}

kj::ArrayPtr<const kj::byte> uuidOf(const std::string& key) {
  return bytesOf(key).slice(0, UUID_BYTES);
}
}  // namespace

ClientFence::ClientFence(ServerContext& ctx, DataLinks& links)
    : ctx_(ctx),
      links_(links),
      db_(ctx.target.db("fences")),
      sessionsDb_(ctx.target.db("fence_sessions")),
      deliveries_(errorHandler_) {
  auto paf = kj::newPromiseAndFulfiller<void>();
  registered_ = kj::mv(paf.fulfiller);
  nextRegistration_ = paf.promise.fork();
}

void ClientFence::ErrorHandler::taskFailed(kj::Exception&& e) {
  spdlog::error("delivering a client fence: {}", e.getDescription().cStr());
}

std::string ClientFence::keyOf(kj::ArrayPtr<const kj::byte> uuid, uint32_t index) {
  KJ_REQUIRE(uuid.size() == UUID_BYTES, "a client uuid is 16 bytes", uuid.size());
  std::string key(reinterpret_cast<const char*>(uuid.begin()), uuid.size());
  for (int shift = 24; shift >= 0; shift -= 8) key.push_back(char((index >> shift) & 0xff));
  return key;
}

void ClientFence::start() {
  auto now = ctx_.io.provider->getTimer().now();
  kj::Vector<std::pair<std::string, uint32_t>> found;
  {
    store::Txn txn(ctx_.target.env(), store::Txn::READ);
    store::Cursor cursor(txn, db_);
    for (auto item = cursor.first();; item = cursor.next()) {
      KJ_IF_MAYBE (i, item) {
        if (i->key.size() != UUID_BYTES + 4) {
          spdlog::warn("an owed client fence with a damaged key ({} bytes): skipped",
                       i->key.size());
          continue;
        }
        std::string key(reinterpret_cast<const char*>(i->key.begin()), i->key.size());
        uint32_t index = 0;
        for (size_t b = UUID_BYTES; b < key.size(); ++b) index = (index << 8) | kj::byte(key[b]);
        uint64_t session = store::u64Value(txn.get(sessionsDb_, i->key));
        owed_.insert_or_assign(
            key,
            Owed{kj::heapString(reinterpret_cast<const char*>(i->value.begin()), i->value.size()),
                 session, now});
        found.add(kj::mv(key), index);
      } else {
        break;
      }
    }
  }
  if (found.size() > 0) {
    spdlog::warn("{} client fences owed to data targets since before the restart: delivering",
                 found.size());
  }
  for (auto& [key, index] : found) deliveries_.add(deliver(key, index));
}

kj::Promise<void> ClientFence::fence(const ClientSession& session) {
  auto& timer = ctx_.io.provider->getTimer();
  auto targets = links_.targets();
  auto keys = kj::heapArrayBuilder<std::string>(targets.size());
  for (uint32_t index : targets) keys.add(keyOf(session.uuid, index));
  // On disk before the first attempt: if this server stops meanwhile, the next one still
  // owes them.
  try {
    ctx_.commit([&](store::Txn& txn) {
      for (auto& key : keys) {
        txn.put(db_, bytesOf(key), session.label.asBytes());
        txn.put(sessionsDb_, bytesOf(key), store::U64Key(session.number).ptr());
      }
    });
  } catch (FsError& e) {
    spdlog::warn("{}: cannot record the fences owed to the data targets: {}", session.label.cStr(),
                 e.what());
  }
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(targets.size());
  for (auto i : kj::indices(targets)) {
    uint32_t index = targets[i];
    owed_.insert_or_assign(keys[i], Owed{kj::str(session.label), session.number, timer.now()});
    auto delivered = deliver(keys[i], index).fork();
    deliveries_.add(delivered.addBranch());
    parts.add(delivered.addBranch().exclusiveJoin(
        timer.afterDelay(LIMIT).then([this, key = keys[i], index]() {
          auto it = owed_.find(key);
          if (it == owed_.end()) return;
          it->second.reported = true;
          spdlog::warn(
              "{}: data target {} not reached within {} s to evict it; its locks go, and the "
              "target is fenced as soon as it can be reached",
              it->second.label.cStr(), index, LIMIT / kj::SECONDS);
        })));
  }
  return canceler_.wrap(kj::joinPromises(parts.finish()));
}

kj::Promise<void> ClientFence::deliver(std::string key, uint32_t index) {
  auto owed = owed_.find(key);
  if (owed == owed_.end()) return kj::READY_NOW;  // taken, or the client came back
  auto& timer = ctx_.io.provider->getTimer();
  KJ_IF_MAYBE (link, links_.linkFor(index)) {
    // One attempt is bounded: a link whose target moved may never answer, and the next one
    // looks the target up again.
    auto attempt = evictOn(*link, uuidOf(key), owed->second.session)
                       .exclusiveJoin(timer.afterDelay(LIMIT).then(
                           []() -> bool { KJ_FAIL_REQUIRE("the data target did not answer"); }));
    return attempt.then(
        [this, key, index](bool hadSession) -> kj::Promise<void> {
          auto it = owed_.find(key);
          if (it == owed_.end()) return kj::READY_NOW;
          auto ms = (ctx_.io.provider->getTimer().now() - it->second.since) / kj::MILLISECONDS;
          spdlog::info("{}: fenced off data target {} in {} ms{}", it->second.label.cStr(), index,
                       ms, hadSession ? "" : " (it had no session there)");
          forget(key);
          return kj::READY_NOW;
        },
        [this, key, index](kj::Exception&& e) {
          auto it = owed_.find(key);
          if (it == owed_.end()) return kj::Promise<void>(kj::READY_NOW);
          if (!it->second.reported) {
            it->second.reported = true;
            spdlog::warn("{}: data target {} did not take its eviction ({}); trying again",
                         it->second.label.cStr(), index, e.getDescription().cStr());
          }
          return retryLater(key, index);
        });
  }
  return retryLater(kj::mv(key), index);  // not in the target list (yet)
}

kj::Promise<void> ClientFence::retryLater(std::string key, uint32_t index) {
  return nextRegistration_.addBranch()
      .exclusiveJoin(ctx_.io.provider->getTimer().afterDelay(RETRY))
      .then([this, key = kj::mv(key), index]() mutable { return deliver(kj::mv(key), index); });
}

kj::Promise<bool> ClientFence::evictOn(ServerLink& link, kj::ArrayPtr<const kj::byte> uuid,
                                       uint64_t session) {
  return link.server().then([uuid = kj::heapArray(uuid), session](rpc::Bootstrap::Client server) {
    auto req = server.evictRequest();
    req.setClientUuid(uuid);
    req.setSession(session);
    return req.send().then([](auto reply) { return reply.getEvicted(); });
  });
}

void ClientFence::forget(const std::string& key) {
  owed_.erase(key);
  try {
    ctx_.commit([&](store::Txn& txn) {
      txn.del(db_, bytesOf(key));
      txn.del(sessionsDb_, bytesOf(key));
    });
  } catch (FsError& e) {
    // Left on disk, it is delivered again after a restart: a repeat the target ignores.
    spdlog::warn("cannot record a delivered client fence: {}", e.what());
  }
}

void ClientFence::clientBack(kj::ArrayPtr<const kj::byte> uuid) {
  // Keys start with the uuid: the client's fences are one run of the ordered map.
  auto first = keyOf(uuid, 0);
  kj::Vector<std::string> dropped;
  for (auto it = owed_.lower_bound(first);
       it != owed_.end() && it->first.compare(0, UUID_BYTES, first, 0, UUID_BYTES) == 0; ++it) {
    dropped.add(it->first);
  }
  if (dropped.size() == 0) return;
  for (auto& key : dropped) forget(key);
  spdlog::info("client {} is back and knows of its eviction: {} fences owed for it dropped",
               kj::encodeHex(uuid).cStr(), dropped.size());
}

void ClientFence::targetBack(uint32_t) {
  // Every waiting retry looks again (those of other targets only find theirs still away).
  auto paf = kj::newPromiseAndFulfiller<void>();
  auto previous = kj::mv(registered_);
  registered_ = kj::mv(paf.fulfiller);
  nextRegistration_ = paf.promise.fork();
  previous->fulfill();
}

}  // namespace cairn
