// Recovery after a restart, as the server sees it: the clients of the previous instance (those
// that joined the target) are expected back. Each reconnects, replays its opens and its
// application locks, and says recoveryDone. Until all have (or the recovery window is over),
// new application locks wait, so that no lock granted before the restart is lost to a newcomer.
#include <kj/encoding.h>
#include <spdlog/spdlog.h>

#include <set>
#include <string>

#include "objserver/server.h"

namespace cairn {

void ServerContext::startRecovery() {
  kj::Vector<kj::Array<kj::byte>> known;
  std::set<std::string> away;
  {
    store::Txn txn(target.env(), store::Txn::READ);
    for (auto& uuid : clients.joinedClients(txn)) {
      if (clients.isEvicted(txn, uuid)) continue;
      if (clients.away(txn, uuid)) away.insert(kj::encodeHex(uuid).cStr());
      known.add(kj::mv(uuid));
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
  if (!target.previousClean()) {
    // An unclean stop may have lost commits that clients got replies for: they replay them.
    // Not those that were away (disconnected) before it: their mark is on disk, so is every
    // update they were answered. A client that died just before the server did would
    // otherwise hold everyone's updates up for the whole recovery window.
    for (auto& key : recovering_) {
      if (away.count(key) == 0) replayWaiting_.insert(key);
    }
    resendWaiting_ = replayWaiting_;
    replayPhase_ = ReplayPhase::WAITING;
    if (replayWaiting_.empty()) startReplays();
  }
  spdlog::info(
      "recovery: waiting up to {} s for {} clients of the previous instance ({} away before "
      "the stop: updates do not wait for them)",
      config.recoveryWindow / kj::SECONDS, recovering_.size(), away.size());
  recoveryTimer_ =
      io.provider->getTimer()
          .afterDelay(config.recoveryWindow)
          .then([this]() {
            if (replayPhase_ == ReplayPhase::WAITING) {
              spdlog::warn("recovery window over: {} clients did not send their replays",
                           replayWaiting_.size());
              replayWaiting_.clear();
              startReplays();
            }
            if (!resendWaiting_.empty()) {
              resendWaiting_.clear();
              resendsAllIn();
            }
            if (recovering_.empty()) return;
            spdlog::warn("recovery window over: {} clients did not recover", recovering_.size());
            recovering_.clear();
            endRecoveryWait();
          })
          .eagerlyEvaluate(nullptr);
}

void ServerContext::recoveryDone(ClientSession& session) {
  session.inRecovery = false;
  // What it wrote under the locks it held before it reconnected has landed.
  locks.releaseHeldOver(session);
  auto ms = (io.provider->getTimer().now() - session.connectedAt) / kj::MILLISECONDS;
  session.recovery = kj::str("recovered in ", ms, " ms");
  spdlog::info("{} recovered ({} ms after connecting)", session.label.cStr(), ms);
  // Its resends came before this; the others' new updates wait until they are applied.
  if (session.resendsRunning > 0) {
    session.recoveredBehindResends = true;
  } else {
    resent(session.key);
  }
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

kj::Promise<void> ServerContext::resendsIn() {
  if (resendWaiting_.empty()) return kj::READY_NOW;
  auto paf = kj::newPromiseAndFulfiller<void>();
  resendWaiters_.add(kj::mv(paf.fulfiller));
  return kj::mv(paf.promise);
}

void ServerContext::resent(const std::string& key) {
  if (resendWaiting_.erase(key) > 0 && resendWaiting_.empty()) resendsAllIn();
}

void ServerContext::resendsAllIn() {
  auto waiters = kj::mv(resendWaiters_);
  for (auto& w : waiters) w->fulfill();
}

void ServerContext::endRecoveryWait() {
  auto waiters = kj::mv(recoveryWaiters_);
  for (auto& w : waiters) w->fulfill();
}

}  // namespace cairn

namespace cairn {

uint64_t ServerContext::reportedSynced() const {
  uint64_t synced = syncer.lastSynced();
  KJ_IF_MAYBE (b, barrier) {
    return kj::min(*b, synced);
  }
  return synced;
}

kj::Promise<void> ServerContext::replayTurn(ClientSession& session, uint64_t transno) {
  // After the replays have run (the window is over), one more can no longer be put in order.
  if (replayPhase_ == ReplayPhase::DONE) {
    evict(session, "came back with replays after the others had been applied");
    return KJ_EXCEPTION(DISCONNECTED, "this client was evicted; reconnect");
  }
  // Only the clients of the previous instance are waited for, so only theirs are sure to be put
  // in order. A stranger (its joining lost with the crash, or its session ended since) may come
  // after replays it should have preceded were applied; it is refused as a late one would be,
  // not only when nobody else was expected. (The metadata server's destroys, which a data
  // target never records as a client, keep going in while the replays are not done.)
  if (session.role == rpc::Hello::Role::CLIENT && recovering_.count(session.key) == 0) {
    evict(session, "sent replays but is not a client of the previous instance");
    return KJ_EXCEPTION(DISCONNECTED, "this client was evicted; reconnect");
  }
  KJ_REQUIRE(transno > target.lastCommitted() || replayPhase_ == ReplayPhase::APPLYING,
             "a replay of a transaction the target has", transno, target.lastCommitted());
  KJ_REQUIRE(replayQueue_.count(transno) == 0, "two replays of one transaction", transno);
  auto paf = kj::newPromiseAndFulfiller<void>();
  replayQueue_.emplace(transno, kj::mv(paf.fulfiller));
  return kj::mv(paf.promise);
}

void ServerContext::replaysSent(ClientSession& session) {
  if (replayWaiting_.erase(session.key) > 0 && replayWaiting_.empty() &&
      replayPhase_ == ReplayPhase::WAITING) {
    startReplays();
  }
}

void ServerContext::startReplays() {
  replayPhase_ = ReplayPhase::APPLYING;
  replayStarted_ = io.provider->getTimer().now();
  spdlog::info("replay: applying {} updates of returning clients in transaction order",
               replayQueue_.size());
  nextReplay();
}

void ServerContext::nextReplay() {
  if (replayQueue_.empty()) {
    replayPhase_ = ReplayPhase::DONE;
    auto took = io.provider->getTimer().now() - replayStarted_;
    replaySeconds_ = double(took / kj::MICROSECONDS) / 1e6;
    spdlog::info("replay: {} updates applied in {} ms; serving updates again", replaysApplied_,
                 took / kj::MILLISECONDS);
    auto waiters = kj::mv(replayWaiters_);
    for (auto& w : waiters) w->fulfill();
    return;
  }
  auto first = replayQueue_.begin();
  auto fulfiller = kj::mv(first->second);
  replayQueue_.erase(first);
  ++replaysApplied_;
  fulfiller->fulfill();
}

void ServerContext::replayed() {
  // Not from inside the finishing request's own continuation.
  tasks.add(kj::evalLater([this]() { nextReplay(); }));
}

kj::Promise<void> ServerContext::replaysFinished() {
  if (replayPhase_ == ReplayPhase::DONE) return kj::READY_NOW;
  auto paf = kj::newPromiseAndFulfiller<void>();
  replayWaiters_.add(kj::mv(paf.fulfiller));
  return kj::mv(paf.promise);
}

}  // namespace cairn
