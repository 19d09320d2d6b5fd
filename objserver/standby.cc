#include "objserver/standby.h"

#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include "rpc/feature_flags.h"

namespace cairn {

namespace {

constexpr kj::Duration PARTNER_PING = 200 * kj::MILLISECONDS;
constexpr kj::Duration PARTNER_TIMEOUT = 1 * kj::SECONDS;

[[noreturn]] void refuseStandby() {
  // OVERLOADED: a link retries it (and tries the partner's address); no application sees it.
  kj::throwFatalException(
      KJ_EXCEPTION(OVERLOADED, "standby server: its failover partner serves the target"));
}

class StandbyImpl final : public rpc::Bootstrap::Server {
public:
  StandbyImpl(Standby& standby, Peer peer) : standby_(standby), peer_(kj::mv(peer)) {}

  kj::Promise<void> connect(ConnectContext context) override {
    check(context.getParams().getHello().getRole() == rpc::Hello::Role::SERVER
              ? AccessPolicy::Call::CONNECT_SERVER
              : AccessPolicy::Call::CONNECT_CLIENT);
    standby_.asked();
    refuseStandby();
  }
  kj::Promise<void> registerTarget(RegisterTargetContext) override {
    check(AccessPolicy::Call::REGISTER_TARGET);
    standby_.asked();
    refuseStandby();
  }
  kj::Promise<void> status(StatusContext context) override {
    check(AccessPolicy::Call::STATUS);
    standby_.fillStatus(context.getResults().initStatus());
    return kj::READY_NOW;
  }
  kj::Promise<void> ping(PingContext) override {
    check(AccessPolicy::Call::PING);
    return kj::READY_NOW;
  }
  kj::Promise<void> mayMount(MayMountContext) override {
    check(AccessPolicy::Call::CONNECT_CLIENT);
    return kj::READY_NOW;
  }
  kj::Promise<void> shutdown(ShutdownContext) override {
    check(AccessPolicy::Call::SHUTDOWN);
    spdlog::info("standby: shutdown requested by {}", peer_.describe().cStr());
    standby_.stop();
    return kj::READY_NOW;
  }
  kj::Promise<void> replayBarrier(ReplayBarrierContext) override {
    check(AccessPolicy::Call::REPLAY_BARRIER);
    KJ_FAIL_REQUIRE("a standby serves no target");
  }
  kj::Promise<void> evict(EvictContext) override {
    check(AccessPolicy::Call::EVICT);
    KJ_FAIL_REQUIRE("a standby has no clients");
  }
  kj::Promise<void> failover(FailoverContext) override {
    check(AccessPolicy::Call::FAILOVER);
    return standby_.takeOverNow();
  }
  kj::Promise<void> restart(RestartContext context) override {
    check(AccessPolicy::Call::RESTART);
    auto params = context.getParams();
    auto version = checkServerBinary(params.getBinary());
    context.getResults().setVersion(params.getVersionOverride().size() > 0
                                        ? params.getVersionOverride()
                                        : kj::StringPtr(version));
    spdlog::info("standby: restart as {} (version {})", params.getBinary().cStr(), version.cStr());
    standby_.restartWith =
        Reexec{kj::str(params.getBinary()), kj::str(params.getVersionOverride())};
    standby_.stop();
    return kj::READY_NOW;
  }

private:
  void check(AccessPolicy::Call call) { standby_.access().check(peer_, call); }
  Standby& standby_;
  Peer peer_;
};

}  // namespace

struct Standby::Partner {
  explicit Partner(kj::Own<kj::AsyncIoStream> s)
      : stream(kj::mv(s)), client(*stream), server(client.bootstrap().castAs<rpc::Bootstrap>()) {}
  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyClient client;
  rpc::Bootstrap::Client server;
};

Standby::Standby(kj::AsyncIoContext& io, Transport& transport, kj::ConnectionReceiver& listener,
                 StandbyConfig config)
    : transport_(transport),
      timer_(io.provider->getTimer()),
      config_(kj::mv(config)),
      started_(timer_.now()),
      partnerSeen_(started_),
      askedAt_(started_),
      fencedAt_(started_),
      foreignSince_(started_),
      result_(nullptr),
      server_(transport,
              [this](const Peer& peer) -> kj::Own<capnp::Capability::Server> {
                return kj::heap<StandbyImpl>(*this, peer.clone());
              }),
      listening_(server_.listen(listener).eagerlyEvaluate([](kj::Exception&& e) {
        spdlog::error("standby: listening failed: {}", e.getDescription().cStr());
      })) {
  auto paf = kj::newPromiseAndFulfiller<kj::Maybe<kj::Own<TargetLock>>>();
  done_ = kj::mv(paf.fulfiller);
  result_ = kj::mv(paf.promise);
  spdlog::info("standby for {} (partner {}): {}", config_.dir.cStr(),
               config_.partner.size() > 0 ? config_.partner.cStr() : "none", config_.note.cStr());
}

Standby::~Standby() noexcept(false) {}

kj::Promise<kj::Maybe<kj::Own<TargetLock>>> Standby::run() {
  if (config_.partner.size() > 0) {
    watching_ = watchPartner().eagerlyEvaluate([](kj::Exception&& e) {
      spdlog::error("standby: watching the partner: {}", e.getDescription().cStr());
    });
  }
  polling_ = pollLoop().eagerlyEvaluate(
      [](kj::Exception&& e) { spdlog::error("standby: {}", e.getDescription().cStr()); });
  return kj::mv(result_);
}

void Standby::stop() {
  if (done_->isWaiting()) done_->fulfill(nullptr);
}

void Standby::asked() {
  askedAt_ = timer_.now();
  everAsked_ = true;
}

void Standby::fillStatus(rpc::ServerStatus::Builder status) {
  auto info = status.initInfo();
  info.setSoftwareVersion(config_.version);
  info.setFeatures(features::SUPPORTED);
  info.setKind(config_.kind);
  status.setAddress(config_.advertise);
  status.setState("standby");
  status.setPartner(config_.partner);
  status.setStandbyNote(config_.note);
  status.setUptimeMs((timer_.now() - started_) / kj::MILLISECONDS);
}

kj::Promise<void> Standby::connectPartner() {
  if (partner_ != nullptr) return kj::READY_NOW;
  return transport_.network()
      .parseAddress(config_.partner)
      .then([](kj::Own<kj::NetworkAddress> address) { return address->connect(); })
      .then([this](kj::Own<kj::AsyncIoStream> stream) {
        partner_ = kj::heap<Partner>(kj::mv(stream));
      });
}

rpc::Bootstrap::Client Standby::partner() {
  return KJ_ASSERT_NONNULL(partner_)->server;
}

kj::Promise<void> Standby::watchPartner() {
  auto ping = connectPartner()
                  .then([this]() { return partner().pingRequest().send().ignoreResult(); })
                  .exclusiveJoin(timer_.afterDelay(PARTNER_TIMEOUT).then([]() {
                    KJ_FAIL_REQUIRE("partner did not answer a ping in time");
                  }));
  return ping
      .then([this]() { partnerSeen_ = timer_.now(); },
            [this](kj::Exception&&) { partner_ = nullptr; })
      .then([this]() { return timer_.afterDelay(PARTNER_PING); })
      .then([this]() { return watchPartner(); });
}

void Standby::fence(kj::StringPtr why) {
  spdlog::warn("standby: {}: fencing the partner through the heartbeat record", why.cStr());
  try {
    TargetLock::requestTakeover(config_.dir, config_.advertise);
    fenced_ = true;
    fencedAt_ = timer_.now();
  } catch (kj::Exception& e) {
    spdlog::error("standby: cannot request the takeover: {}", e.getDescription().cStr());
  }
}

kj::Promise<void> Standby::pollLoop() {
  poll();
  if (!done_->isWaiting()) return kj::READY_NOW;
  return timer_.afterDelay(config_.poll).then([this]() { return pollLoop(); });
}

void Standby::poll() {
  if (!done_->isWaiting()) return;
  auto now = timer_.now();
  bool available = false;
  // Right after letting go of the target, leave it to the partner, until it has taken it or the
  // hold-off is over (it may be gone).
  if (!holdOffOver_) {
    KJ_IF_MAYBE (h, TargetLock::readHeartbeat(config_.dir)) {
      if (h->state == Heartbeat::State::ACTIVE && h->owner != config_.advertise) {
        holdOffOver_ = true;
      }
    }
  }
  if (fenced_ || holdOffOver_ || now - started_ >= config_.holdOff) {
    KJ_IF_MAYBE (lock, TargetLock::tryTake(config_.dir, config_.advertise)) {
      available = true;
      KJ_IF_MAYBE (h, TargetLock::readHeartbeat(config_.dir)) {
        if (h->state == Heartbeat::State::ACTIVE && h->bootId != TargetLock::bootId()) {
          // Written on another kernel, whose lock we cannot see: wait until it stands still.
          bool moved = foreignSequence_.orDefault(h->sequence + 1) != h->sequence;
          if (moved) {
            foreignSequence_ = h->sequence;
            foreignSince_ = now;
          }
          if (moved || now - foreignSince_ < 3 * h->intervalMs * kj::MILLISECONDS) {
            available = false;
          }
        }
      }
      if (available) {
        spdlog::info("standby: the target is free: taking it over");
        done_->fulfill(kj::mv(*lock));
        return;
      }
    }
  }
  if (!available && config_.partner.size() > 0 && everAsked_ &&
      now - askedAt_ < config_.failoverTimeout && now - partnerSeen_ > config_.failoverTimeout &&
      (!fenced_ || now - fencedAt_ > 3 * config_.failoverTimeout)) {
    fence(kj::str("partner ", config_.partner, " unreachable for ",
                  (now - partnerSeen_) / kj::MILLISECONDS, " ms while clients ask for the target"));
  }
}

kj::Promise<void> Standby::takeOverNow() {
  spdlog::info("standby: failover requested");
  fenced_ = true;  // no hold-off: the administrator asked for it
  fencedAt_ = timer_.now();
  if (config_.partner.size() == 0) return kj::READY_NOW;
  partner_ = nullptr;  // a fresh connection: the partner may have changed roles since
  auto asked = connectPartner()
                   .then([this]() {
                     auto server = partner();
                     return server.statusRequest().send().then(
                         [server](auto&& reply) mutable -> kj::Promise<void> {
                           // Two standbys: nobody holds the target, the poll takes it.
                           if (reply.getStatus().getState() == "standby") return kj::READY_NOW;
                           return server.failoverRequest().send().ignoreResult();
                         });
                   })
                   .exclusiveJoin(timer_.afterDelay(config_.failoverTimeout).then([]() {
                     KJ_FAIL_REQUIRE("the partner did not answer in time");
                   }));
  return asked.catch_([this](kj::Exception&& e) {
    partner_ = nullptr;
    fence(kj::str("failover requested; partner: ", e.getDescription()));
  });
}

}  // namespace cairn
