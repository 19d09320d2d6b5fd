// Recovery after a restart, as the server sees it: the clients of the previous instance (those
// that joined the target) are expected back. Each reconnects, replays its opens and its
// application locks, and says recoveryDone. Until all have (or the recovery window is over),
// new application locks wait, so that no lock granted before the restart is lost to a newcomer.
#include <kj/encoding.h>
#include <spdlog/spdlog.h>

#include "objserver/server.h"

namespace cairn {

void ServerContext::startRecovery() {
  kj::Vector<kj::Array<kj::byte>> known;
  {
    store::Txn txn(target.env(), store::Txn::READ);
    for (auto& uuid : clients.joinedClients(txn)) {
      if (!clients.isEvicted(txn, uuid)) known.add(kj::mv(uuid));
    }
  }
  if (known.size() == 0) return;
  if (target.forced()) {
    // Started over an unclean stop by another version: what those clients would replay cannot
    // be trusted to this one.
    commit([&](store::Txn& txn) {
      for (auto& uuid : known) {
        clients.markEvicted(txn, uuid, "the server was force-started after an unclean stop");
        clients.forget(txn, uuid);
      }
    });
    spdlog::warn(
        "forced start: {} clients of the previous instance will be evicted when they "
        "come back",
        known.size());
    return;
  }
  for (auto& uuid : known) recovering_.insert(kj::encodeHex(uuid).cStr());
  spdlog::info("recovery: waiting up to {} s for {} clients of the previous instance",
               config.recoveryWindow / kj::SECONDS, recovering_.size());
  recoveryTimer_ =
      io.provider->getTimer()
          .afterDelay(config.recoveryWindow)
          .then([this]() {
            if (recovering_.empty()) return;
            spdlog::warn("recovery window over: {} clients did not recover", recovering_.size());
            recovering_.clear();
            endRecoveryWait();
          })
          .eagerlyEvaluate(nullptr);
}

void ServerContext::recoveryDone(ClientSession& session) {
  auto ms = (io.provider->getTimer().now() - session.connectedAt) / kj::MILLISECONDS;
  session.recovery = kj::str("recovered in ", ms, " ms");
  spdlog::info("{} recovered ({} ms after connecting)", session.label.cStr(), ms);
  if (recovering_.erase(session.key) > 0 && recovering_.empty()) {
    spdlog::info("recovery: every client of the previous instance is back");
    endRecoveryWait();
  }
}

kj::Promise<void> ServerContext::recovered() {
  if (recovering_.empty()) return kj::READY_NOW;
  auto paf = kj::newPromiseAndFulfiller<void>();
  recoveryWaiters_.add(kj::mv(paf.fulfiller));
  return kj::mv(paf.promise);
}

void ServerContext::endRecoveryWait() {
  auto waiters = kj::mv(recoveryWaiters_);
  for (auto& w : waiters) w->fulfill();
}

}  // namespace cairn
