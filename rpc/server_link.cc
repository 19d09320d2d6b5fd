#include "rpc/server_link.h"

#include <capnp/schema.h>
#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "rpc/errors.h"
#include "rpc/feature_flags.h"
#include "rpc/transport.h"
#include "rpc/version.h"

namespace cairn {

namespace {
class LogErrors : public kj::TaskSet::ErrorHandler {
public:
  explicit LogErrors(kj::StringPtr name) : name_(kj::str(name)) {}
  void taskFailed(kj::Exception&& e) override {
    spdlog::warn("link {}: {}", name_.cStr(), e.getDescription().cStr());
  }
  kj::String name_;
};

// Backoff between connection attempts: quick for the first seconds (a server restarted for an
// upgrade is back within a second, and every millisecond here is an application's wait), then
// at most one attempt per second.
kj::Duration backoff(unsigned attempt) {
  static const kj::Duration steps[] = {10 * kj::MILLISECONDS, 20 * kj::MILLISECONDS,
                                       50 * kj::MILLISECONDS, 100 * kj::MILLISECONDS};
  if (attempt < kj::size(steps)) return steps[attempt];
  return attempt < 40 ? 150 * kj::MILLISECONDS : 1 * kj::SECONDS;
}

// After a server refused our certificate as revoked or expired: this process cannot present
// another, so trying every second only fills both logs. Still tried, for a list or a clock
// corrected meanwhile. (Other refusals can pass: a server half way through a change of settings.)
constexpr kj::Duration REFUSED_RETRY = 30 * kj::SECONDS;
bool certificateRefused(kj::StringPtr description) {
  return description.startsWith(PEER_REFUSED) &&
         (strstr(description.cStr(), "alert certificate revoked") != nullptr ||
          strstr(description.cStr(), "alert certificate expired") != nullptr);
}

constexpr kj::Duration CONNECT_TIMEOUT = 5 * kj::SECONDS;
// A connection whose peer has not answered a ping for this long is given up and re-made: a
// host that vanished sends no RST, and a stopped or wedged process answers nothing.
constexpr kj::Duration PING_INTERVAL = 2 * kj::SECONDS;
constexpr kj::Duration PING_TIMEOUT = 8 * kj::SECONDS;
// Past this many bytes of updates kept for replay, the link asks the server to sync (which lets
// it forget them) instead of waiting for the next periodic sync to be reported.
constexpr size_t KEEP_LIMIT = 64 << 20;
// How long a draining link works at writing back before it lets go of the server regardless:
// at most DRAIN_LIMIT, and at most two thirds of the time the server's callback gives (its lock
// timeout), so that the requests in flight and the cancel still land before it runs out.
constexpr kj::Duration DRAIN_LIMIT = 5 * kj::SECONDS;
// The largest request a server reads: its limit on a whole message, less room for the RPC
// call around the request. One past it would drop every connection it is sent on.
constexpr uint64_t MAX_REQUEST_WORDS = RpcServer::Limits().messageWords - 1024;
// "meta.lookup", "data.writeMany", ...
template <typename Reader>
std::string kindOf(Reader r) {
  auto fields = capnp::Schema::from<typename Reader::Reads>().getUnionFields();
  auto which = static_cast<uint>(r.which());
  std::string kind = kj::isSameType<Reader, rpc::MetaRequest::Reader>() ? "meta." : "data.";
  kind += which < fields.size() ? fields[which].getProto().getName().cStr() : "unknown";
  return kind;
}
// Connections lost this soon after they were made, several in a row, are not an outage but
// something that kills each new one: most likely a request of ours the server cannot read
// (its RPC system drops the connection, and we send the request again on the next). Requests
// still wait, and are sent again (failing them could fail an application in an upgrade, whose
// disconnects look the same), but reconnects back off: the first few are free (a server
// restarted twice in a row), then 100 ms doubling up to 5 s.
constexpr kj::Duration SHORT_LIVED = 1 * kj::SECONDS;
constexpr unsigned SHORT_LIVED_FREE = 3;
// `first` at the first step, doubling with each one after, at most `most`.
kj::Duration doubling(kj::Duration first, unsigned step, kj::Duration most) {
  return kj::min(first * (1u << kj::min(step, 10u)), most);
}
}  // namespace

struct ServerLink::Connection {
  Connection(kj::Own<kj::AsyncIoStream> s) : stream(kj::mv(s)), client(*stream) {}
  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyClient client;
  rpc::Bootstrap::Client server = nullptr;
  rpc::MetaSession::Client meta = nullptr;
  rpc::DataSession::Client data = nullptr;
  rpc::LockSession::Client locks = nullptr;
};

// Which connection a callback was given on: its generation, set once the connect succeeded (0
// until then). A call that arrives on a connection the link has already dropped then finds the
// generation past and leaves the current connection alone.
struct CallbackGeneration : public kj::Refcounted {
  uint64_t value = 0;
};

// Given to the server at connect. The active-server lock's callback is the link's own (a
// controlled shutdown); any other lock's goes to the owner's callback (the lock cache).
class ServerLink::Callback final : public rpc::LockCallback::Server {
public:
  Callback(kj::Own<Handle> handle, kj::Own<CallbackGeneration> generation)
      : handle_(kj::mv(handle)), generation_(kj::mv(generation)) {}
  kj::Promise<void> blocking(BlockingContext context) override {
    // Answered at once: the server waits for the cancel, not for this reply.
    auto params = context.getParams();
    if (handle_->link != nullptr)
      handle_->link->blocking(params.getLockId(), params.getTimeoutMs(), params.getGone());
    return kj::READY_NOW;
  }
  kj::Promise<void> share(ShareContext context) override {
    if (handle_->link != nullptr) handle_->link->share(context.getParams().getMaxLocks());
    return kj::READY_NOW;
  }
  kj::Promise<void> evicted(EvictedContext context) override {
    // Reconnecting is how the link learns of an eviction (the connect's reply says so, and
    // what the owner held there goes); the server has ended our session already.
    if (handle_->link != nullptr && generation_->value != 0) {
      handle_->link->lost(generation_->value, kj::str("the server evicted this client: ",
                                                      context.getParams().getWhy()));
    }
    return kj::READY_NOW;
  }

private:
  kj::Own<Handle> handle_;
  kj::Own<CallbackGeneration> generation_;
};

// The session capability a response type comes from.
template <typename Response>
auto& sessionFor(ServerLink::Connection& conn) {
  if constexpr (kj::isSameType<Response, ServerLink::MetaResponse>()) {
    return conn.meta;
  } else {
    return conn.data;
  }
}

// A request on its way: keeps its id in the unreplied set until it is answered or abandoned.
struct ServerLink::Pending : public kj::Refcounted {
  Pending(ServerLink& link, bool update, Class cls)
      : link(link),
        id(update ? link.nextRequestId_++ : 0),
        cls(cls),
        writebackEpoch(link.writebackEpoch_) {
    if (id != 0) link.unreplied_.insert(id);
  }
  ~Pending() {
    if (id != 0) link.unreplied_.erase(id);
  }
  ServerLink& link;
  uint64_t id;
  Class cls;
  uint64_t writebackEpoch;  // the link's when the request was made
  unsigned attempts = 0;
  kj::Maybe<kj::Own<kj::Refcounted>> keeps;  // see data()
};

ServerLink::ServerLink(kj::Network& network, kj::Timer& timer, kj::String name,
                       kj::Array<kj::String> addresses, const LinkIdentity& identity)
    : network_(network),
      timer_(timer),
      name_(kj::mv(name)),
      addresses_(kj::mv(addresses)),
      uuid_(kj::heapArray<kj::byte>(identity.uuid)),
      role_(identity.role),
      hostName_(kj::str(identity.hostName)),
      currentAddress_(kj::str()),
      peerVersion_(kj::str()) {
  tasks_ = kj::heap<kj::TaskSet>(*kj::heap<LogErrors>(name_).attach());
  handle_ = kj::refcounted<Handle>();
  handle_->link = this;
}

ServerLink::~ServerLink() noexcept(false) {
  handle_->link = nullptr;
}

void ServerLink::setOnDrain(kj::Function<kj::Promise<void>()> onDrain) {
  onDrain_ = kj::mv(onDrain);
}

void ServerLink::blocking(uint64_t lockId, uint32_t timeoutMs, bool gone) {
  if (lockId != 0 && lockId == serverLock_ && !gone) {
    drain(generation_, timeoutMs * kj::MILLISECONDS);
    return;
  }
  KJ_IF_MAYBE (cb, lockCallback_) {
    auto req = cb->blockingRequest();
    req.setLockId(lockId);
    req.setTimeoutMs(timeoutMs);
    req.setGone(gone);
    tasks_->add(req.send().ignoreResult());
  }
}

void ServerLink::share(uint32_t maxLocks) {
  KJ_IF_MAYBE (cb, lockCallback_) {
    auto req = cb->shareRequest();
    req.setMaxLocks(maxLocks);
    tasks_->add(req.send().ignoreResult());
  }
}

// Controlled shutdown, the client's part (Simplified Interoperation): new requests wait at the
// gate before they are formatted; dirty data goes back and cached state is dropped (the owner's
// onDrain); the requests in flight finish; then the PR on the active-server lock is cancelled
// and the link waits for the server to go.
void ServerLink::drain(uint64_t gen, kj::Duration timeout) {
  if (gen != generation_ || connection_ == nullptr) return;
  if (state_ == State::DRAINING || state_ == State::READY) return;
  auto started = timer_.now();
  // (A server before features::LOCK_PROLONG says 0: its timeout is not known.)
  kj::Duration limit = DRAIN_LIMIT;
  if (timeout > 0 * kj::SECONDS) limit = kj::min(limit, timeout / 3 * 2);
  state_ = State::DRAINING;
  spdlog::info("link {}: the server is shutting down: requests wait, writing back", name_.cStr());
  kj::Promise<void> written = kj::READY_NOW;
  KJ_IF_MAYBE (f, onDrain_) {
    // Bounded: the server evicts a client that has not let go within its lock timeout, which
    // costs far more than anything written back late (it goes after the reconnect).
    written = (*f)()
                  .catch_([this](kj::Exception&& e) {
                    spdlog::warn("link {}: write-back before the shutdown failed: {}", name_.cStr(),
                                 e.getDescription().cStr());
                  })
                  .exclusiveJoin(timer_.afterDelay(limit).then([this, limit]() {
                    spdlog::warn(
                        "link {}: write-back before the shutdown still running after "
                        "{} ms: letting go anyway",
                        name_.cStr(), limit / kj::MILLISECONDS);
                  }));
  }
  tasks_->add(
      written.then([this]() { return idle(); }).then([this, gen, started]() -> kj::Promise<void> {
        if (gen != generation_ || connection_ == nullptr) return kj::READY_NOW;
        state_ = State::READY;
        auto req = KJ_ASSERT_NONNULL(connection_)->locks.cancelRequest();
        req.setLockId(serverLock_);
        serverLock_ = 0;
        spdlog::info("link {}: ready to reconnect ({} ms after the callback)", name_.cStr(),
                     (timer_.now() - started) / kj::MILLISECONDS);
        return req.send().ignoreResult().catch_([](kj::Exception&&) {
          // The server went first: nothing is lost, we reconnect anyway.
        });
      }));
}

kj::Promise<void> ServerLink::idle() {
  if (inFlight_ == 0) return kj::READY_NOW;
  auto paf = kj::newPromiseAndFulfiller<void>();
  idleWaiters_.add(kj::mv(paf.fulfiller));
  return kj::mv(paf.promise);
}

kj::Promise<void> ServerLink::sync(bool meta) {
  if (meta)
    return this->meta([](rpc::MetaRequest::Builder b) { b.setSync(); }, false).ignoreResult();
  return data([](rpc::DataRequest::Builder b) { b.setSync(); }, false).ignoreResult();
}

kj::Promise<void> ServerLink::settle() {
  return idle().then([this]() -> kj::Promise<void> {
    if (kept_.empty()) return kj::READY_NOW;
    // A sync's reply says everything answered so far is on disk, which forgets the kept copies.
    return sync(peerKind_ == rpc::TargetKind::META).then([this]() {
      KJ_REQUIRE(kept_.empty(), "updates not yet synced after a sync", name_, kept_.size());
    });
  });
}

void ServerLink::setRecovery(kj::Function<kj::Promise<void>()> recovery) {
  recovery_ = kj::mv(recovery);
}

void ServerLink::setLockCallback(rpc::LockCallback::Client callback) {
  lockCallback_ = kj::mv(callback);
}

void ServerLink::setOnLost(kj::Function<void()> onLost) {
  onLost_ = kj::mv(onLost);
}

void ServerLink::setAddresses(kj::Array<kj::String> addresses) {
  KJ_REQUIRE(addresses.size() > 0, "a link needs at least one address", name_);
  addresses_ = kj::mv(addresses);
  preferred_ = 0;
  for (auto i : kj::indices(addresses_)) {
    if (addresses_[i] == currentAddress_) preferred_ = i;
  }
}

void ServerLink::start() {
  KJ_REQUIRE(addresses_.size() > 0, "a link needs at least one address", name_);
  state_ = State::CONNECTING;
  connectLoop(0);
}

uint64_t ServerLink::oldestUnreplied() const {
  return unreplied_.empty() ? nextRequestId_ : *unreplied_.begin();
}

namespace {
bool passes(ServerLink::State state, ServerLink::Class cls) {
  static constexpr bool table[6][3] = {
      // NORMAL RECOVERY WRITEBACK
      {false, false, false},  // CONNECTING
      {false, true, false},   // RECOVERING
      {true, true, true},     // ACTIVE
      {false, false, true},   // DRAINING
      {false, false, false},  // READY
      {false, false, false},  // DISCONNECTED
  };
  return table[static_cast<int>(state)][static_cast<int>(cls)];
}
}  // namespace

bool ServerLink::open(Class cls) const {
  // Write-back also passes a recovery that has let what was cut off through (resendCutOff).
  return connection_ != nullptr &&
         (passes(state_, cls) || (cls == Class::WRITEBACK && resendsPass()));
}

bool ServerLink::mayPass(Class cls, bool resend) const {
  return open(cls) || (resend && resendsPass());
}

kj::Promise<void> ServerLink::whenOpen(Class cls, uint64_t requestId, bool resend,
                                       uint64_t writebackEpoch) {
  if (mayPass(cls, resend) || forgotten(cls, requestId, writebackEpoch)) return kj::READY_NOW;
  auto paf = kj::newPromiseAndFulfiller<void>();
  waiters_.add(Waiter{cls, kj::mv(paf.fulfiller), requestId, resend, writebackEpoch});
  return kj::mv(paf.promise);
}

void ServerLink::forgetWriteback() {
  ++writebackEpoch_;
  release(takeWaiters(
      [this](const Waiter& w) { return forgotten(w.cls, w.requestId, w.writebackEpoch); }));
}

bool ServerLink::resendsPass() const {
  return connection_ != nullptr && state_ == State::RECOVERING && resendGeneration_ == generation_;
}

void ServerLink::release(kj::Vector<Waiter> going) {
  // Updates cut off by a lost connection wait here in the order the RPC system rejected them,
  // which follows its own reused question numbers, not the order they were made; the server
  // applies what it receives in turn. Each waiter's continuation sends its request in one event,
  // and fulfilled events run in turn: released by id, they leave by id (before other waiters,
  // which keep their order).
  std::stable_sort(going.begin(), going.end(), [](const Waiter& a, const Waiter& b) {
    return (a.requestId - 1) < (b.requestId - 1);  // 0 wraps round: last
  });
  for (auto& w : going) w.fulfiller->fulfill();
}

template <typename Pred>
kj::Vector<ServerLink::Waiter> ServerLink::takeWaiters(Pred&& pred) {
  kj::Vector<Waiter> taken, still;
  for (auto& w : waiters_) {
    if (pred(w)) {
      taken.add(kj::mv(w));
    } else if (w.fulfiller->isWaiting()) {
      still.add(kj::mv(w));  // (the others' callers are gone)
    }
  }
  waiters_ = kj::mv(still);
  return taken;
}

kj::Promise<void> ServerLink::resendCutOff() {
  if (connection_ == nullptr || state_ != State::RECOVERING) return kj::READY_NOW;
  resendGeneration_ = generation_;
  // The updates cut off, and the write-back waiting (open() lets it through from now on).
  auto going = takeWaiters([this](const Waiter& w) { return mayPass(w.cls, w.resend); });
  if (going.size() > 0) {
    spdlog::info(
        "link {}: sending {} requests made before this connection (cut off with the "
        "last one, or waiting since)",
        name_.cStr(), going.size());
  }
  release(kj::mv(going));
  // Their continuations, which send them, run in turn before this one.
  return kj::evalLater([]() {});
}

void ServerLink::openGate(State state) {
  state_ = state;
  release(takeWaiters([state](const Waiter& w) { return passes(state, w.cls); }));
}

void ServerLink::connectLoop(unsigned attempt) {
  // From the address that worked last: after a failover that is the partner's.
  size_t index = (preferred_ + attempt) % addresses_.size();
  auto& address = addresses_[index];
  auto addressCopy = kj::str(address);
  auto started = timer_.now();
  connecting_ =
      network_.parseAddress(address)
          .then([](kj::Own<kj::NetworkAddress> addr) { return addr->connect(); })
          .then([this, index,
                 addressCopy = kj::mv(addressCopy)](kj::Own<kj::AsyncIoStream> stream) mutable {
            auto conn = kj::heap<Connection>(kj::mv(stream));
            conn->server = conn->client.bootstrap().castAs<rpc::Bootstrap>();
            auto req = conn->server.connectRequest();
            auto hello = req.initHello();
            hello.setClientUuid(uuid_);
            hello.setSoftwareVersion(CAIRN_VERSION);
            hello.setFeatures(features::SUPPORTED);
            hello.setHostName(hostName_);
            hello.setRole(role_);
            auto generation = kj::refcounted<CallbackGeneration>();
            req.setCallback(kj::heap<Callback>(kj::addRef(*handle_), kj::addRef(*generation)));
            return req.send().then(
                [this, index, conn = kj::mv(conn), addressCopy = kj::mv(addressCopy),
                 generation = kj::mv(generation)](
                    capnp::Response<rpc::Bootstrap::ConnectResults>&& reply) mutable {
                  auto info = reply.getInfo();
                  conn->meta = reply.getMeta();
                  conn->data = reply.getData();
                  conn->locks = reply.getLocks();
                  serverLock_ = reply.getServerLock();
                  connectSynced_ = reply.getLastTransno();
                  // Only a new instance can have lost commits: a reconnect to the same one (a
                  // network blip) finds everything it had, synced or not.
                  restarted_ = instance_ != 0 && info.getInstance() != instance_;
                  instance_ = info.getInstance();
                  peerFeatures_ = info.getFeatures() & features::SUPPORTED;
                  rootSquashed_ = reply.getRootSquashed();
                  session_ = reply.getSession();
                  peerVersion_ = kj::str(info.getSoftwareVersion());
                  peerKind_ = info.getKind();
                  if (reply.getEvicted()) {
                    // The server refuses our replay now. Only another instance than the
                    // one that answered our newest update can lack it: past what it has on
                    // disk (a crash, then --force; or our replays refused because the crash
                    // lost even our joining, and this is the reconnect after that refusal).
                    // Comparing its disk with that update also catches synced ones gone with
                    // a restored older copy.
                    bool lost = answeredBy_ != instance_ && lastAnswered_ > connectSynced_;
                    eviction_ = Eviction{lost, reply.getEvictedSession()};
                    if (lost) {
                      size_t kept = 0;
                      for (auto& entry : kept_) kept += entry.first > connectSynced_;
                      spdlog::error(
                          "link {}: updates the server had answered are lost with the "
                          "eviction: its disk ends at transaction {}, ours went up to {} ({} "
                          "of them kept for replay)",
                          name_.cStr(), connectSynced_, lastAnswered_, kept);
                    }
                    kept_.clear();
                    keptBytes_ = 0;
                    spdlog::warn("link {}: the server had evicted this client", name_.cStr());
                  }
                  currentAddress_ = kj::mv(addressCopy);
                  preferred_ = index;
                  connectedAt_ = timer_.now();
                  uint64_t gen = ++generation_;
                  generation->value = gen;
                  tasks_->add(conn->client.onDisconnect().then(
                      [this, gen]() { lost(gen, "connection closed"); }));
                  tasks_->add(heartbeat(gen));
                  auto wire = wireOf(*conn->stream);
                  connection_ = kj::mv(conn);
                  spdlog::info("link {}: connected to {} (version {}, instance {}, {})",
                               name_.cStr(), currentAddress_.cStr(), peerVersion_.cStr(),
                               info.getInstance(), wire.cStr());
                  return gen;
                });
          })
          .exclusiveJoin(timer_.afterDelay(CONNECT_TIMEOUT).then([]() -> uint64_t {
            KJ_FAIL_REQUIRE("connect timed out");
          }))
          .then([this, started](uint64_t gen) -> kj::Promise<void> {
            openGate(State::RECOVERING);
            // Replays first (in transaction order, and before anything could depend on them),
            // then the owner's recovery (open replay, lock replay).
            kj::Promise<void> recovered = replay(gen, connectSynced_).then([this]() {
              KJ_IF_MAYBE (r, recovery_) {
                return (*r)();
              }
              return kj::Promise<void>(kj::READY_NOW);
            });
            return recovered.then(
                [this, gen, started]() {
                  // Lost meanwhile, or the server began shutting down again.
                  if (gen != generation_ || state_ != State::RECOVERING) return;
                  spdlog::info("link {}: active after {} ms", name_.cStr(),
                               (timer_.now() - started) / kj::MILLISECONDS);
                  failedRecoveries_ = 0;
                  openGate(State::ACTIVE);
                },
                [this, gen](kj::Exception&& e) {
                  spdlog::warn("link {}: recovery failed: {}", name_.cStr(),
                               e.getDescription().cStr());
                  ++failedRecoveries_;
                  lost(gen, "recovery failed");
                });
          })
          .catch_([this, attempt, address = kj::str(address)](kj::Exception&& e) {
            auto delay = backoff(attempt);
            if (certificateRefused(e.getDescription())) {
              delay = kj::max(delay, REFUSED_RETRY);
              spdlog::error("link {}: {} refused our certificate: {}; trying again in {} s",
                            name_.cStr(), address.cStr(), e.getDescription().cStr(),
                            delay / kj::SECONDS);
            } else if (attempt % 50 == 0) {
              // A refusal (a certificate the server does not take, a client not allowed to
              // mount) is no outage: said as an error, with the server's reason.
              bool refused = e.getType() == kj::Exception::Type::FAILED;
              if (refused) {
                spdlog::error("link {}: {} refused us: {}; retrying", name_.cStr(), address.cStr(),
                              e.getDescription().cStr());
              } else {
                spdlog::info("link {}: cannot reach {}: {}; retrying", name_.cStr(), address.cStr(),
                             e.getDescription().cStr());
              }
            }
            tasks_->add(
                timer_.afterDelay(delay).then([this, attempt]() { connectLoop(attempt + 1); }));
          })
          .eagerlyEvaluate(nullptr);
}

kj::Promise<void> ServerLink::heartbeat(uint64_t gen) {
  return timer_.afterDelay(PING_INTERVAL).then([this, gen]() -> kj::Promise<void> {
    if (gen != generation_) return kj::READY_NOW;
    auto& conn = *KJ_ASSERT_NONNULL(connection_);
    return conn.server.pingRequest()
        .send()
        .then([](auto&&) { return true; },
              [](kj::Exception&& e) {
                // An older server without ping still answers (UNIMPLEMENTED): it is alive.
                return e.getType() == kj::Exception::Type::UNIMPLEMENTED;
              })
        .exclusiveJoin(timer_.afterDelay(PING_TIMEOUT).then([]() { return false; }))
        .then([this, gen](bool alive) -> kj::Promise<void> {
          if (gen != generation_) return kj::READY_NOW;
          if (!alive) {
            lost(gen, "no answer to ping");
            return kj::READY_NOW;
          }
          return heartbeat(gen);
        });
  });
}

void ServerLink::lost(uint64_t generation, kj::StringPtr why) {
  if (generation != generation_ || connection_ == nullptr) return;
  spdlog::warn("link {}: lost {} ({}); reconnecting", name_.cStr(), currentAddress_.cStr(),
               why.cStr());
  state_ = State::DISCONNECTED;
  ++generation_;
  serverLock_ = 0;
  // Never destroy a connection from inside one of its own continuations.
  KJ_IF_MAYBE (c, connection_) {
    tasks_->add(kj::evalLater([dead = kj::mv(*c)]() mutable { (void)dead; }));
  }
  connection_ = nullptr;
  KJ_IF_MAYBE (f, onLost_) {
    (*f)();
  }
  if (timer_.now() - connectedAt_ < SHORT_LIVED) {
    ++shortLived_;
  } else {
    shortLived_ = 0;
  }
  auto delay =
      shortLived_ <= SHORT_LIVED_FREE
          ? 0 * kj::SECONDS
          : doubling(100 * kj::MILLISECONDS, shortLived_ - SHORT_LIVED_FREE - 1, 5 * kj::SECONDS);
  if (delay > 0 * kj::SECONDS && (shortLived_ == SHORT_LIVED_FREE + 1 || shortLived_ % 20 == 0)) {
    spdlog::error(
        "link {}: {} connections in a row to {} lost within {} ms of being made (the last: "
        "{}); reconnecting after {} ms. A request of ours that the server cannot read does "
        "this: its RPC system drops each connection the request is sent on again",
        name_.cStr(), shortLived_, currentAddress_.cStr(), SHORT_LIVED / kj::MILLISECONDS,
        why.cStr(), delay / kj::MILLISECONDS);
  }
  if (failedRecoveries_ > 0) {
    // Connecting works, recovering does not (a refused target, say): no tight loop of
    // connects. 20 ms after the first failure, doubling up to 10 s.
    delay =
        kj::max(delay, doubling(20 * kj::MILLISECONDS, failedRecoveries_ - 1, 10 * kj::SECONDS));
  }
  if (delay == 0 * kj::SECONDS) {
    tasks_->add(kj::evalLater([this]() { connectLoop(0); }));
  } else {
    tasks_->add(timer_.afterDelay(delay).then([this]() { connectLoop(0); }));
  }
}

template <typename Response, typename Build>
kj::Promise<Response> ServerLink::send(kj::Own<Pending> pending, Build& build) {
  kj::Maybe<kj::TimePoint> parked;
  if (!open(pending->cls)) {
    ++stats_.gateWaits;
    parked = timer_.now();
  }
  bool resend = pending->id != 0 && pending->attempts > 0;
  return whenOpen(pending->cls, pending->id, resend, pending->writebackEpoch)
      .then([this, pending = kj::mv(pending), &build, parked,
             resend]() mutable -> kj::Promise<Response> {
        KJ_IF_MAYBE (since, parked) {
          stats_.gateWaited += timer_.now() - *since;
        }
        if (forgotten(pending->cls, pending->id, pending->writebackEpoch)) {
          // Made under locks an eviction took away since (see forgetWriteback).
          return errnoException(EIO);
        }
        // The gate opened, but the connection may have gone since (this runs an event later):
        // back to the gate.
        if (!mayPass(pending->cls, resend)) {
          return send<Response>(kj::mv(pending), build);
        }
        auto& conn = *KJ_ASSERT_NONNULL(connection_);
        uint64_t gen = generation_;
        auto onError = [this, gen, pending = kj::addRef(*pending),
                        &build](kj::Exception&& e) mutable -> kj::Promise<Response> {
          if (e.getType() != kj::Exception::Type::DISCONNECTED) return kj::mv(e);
          lost(gen, e.getDescription());
          return send<Response>(kj::mv(pending), build);
        };
        auto req = sessionFor<Response>(conn).callRequest();
        auto r = req.initRequest();
        r.setRequestId(pending->id);
        r.setOldestUnreplied(oldestUnreplied());
        build(r);
        // Never sent: no server would read it (a bug of ours, as every request is bounded).
        // Failed here, with what it was, instead of waiting for good.
        auto words = r.totalSize().wordCount;
        if (words > MAX_REQUEST_WORDS) {
          spdlog::error(
              "link {}: a {} request of {} bytes is over what a server reads ({}); failed",
              name_.cStr(), kindOf(r.asReader()), words * sizeof(capnp::word),
              MAX_REQUEST_WORDS * sizeof(capnp::word));
          return KJ_EXCEPTION(FAILED, "request too large for a server to read", words,
                              MAX_REQUEST_WORDS);
        }
        // What leaves during recovery (resendCutOff let it) is a resend to the server too: it
        // goes in ahead of other clients' new updates, as what was answered must.
        r.setResend(pending->attempts++ > 0 || (pending->id != 0 && state_ == State::RECOVERING));
        countRequest(r.asReader());
        // An update is kept until the server has it on disk, for replay after a crash that
        // loses it: a copy (the caller's buffers go with its promise), or, when the caller
        // handed over what owns the bytes the request references, built again referencing them.
        kj::Maybe<Kept> copy;
        if (pending->id != 0 && (peerFeatures_ & features::ACTIVE_SERVER_LOCK)) {
          auto message = kj::heap<capnp::MallocMessageBuilder>();
          kj::Maybe<kj::Own<kj::Refcounted>> keeps;
          KJ_IF_MAYBE (owner, pending->keeps) {
            auto again = message->initRoot<typename decltype(r)::Builds>();
            again.setRequestId(r.getRequestId());
            again.setOldestUnreplied(r.getOldestUnreplied());
            build(again);
            again.setResend(r.getResend());
            keeps = kj::addRef(**owner);
          } else {
            message->setRoot(r.asReader());
          }
          size_t bytes = message->sizeInWords() * sizeof(capnp::word);
          copy =
              Kept{kj::mv(message), kj::isSameType<Response, MetaResponse>(), bytes, kj::mv(keeps)};
        }
        // Counted while in flight: a draining link cancels its active-server lock only when
        // none is left.
        ++inFlight_;
        auto done = kj::defer([this]() {
          if (--inFlight_ == 0) {
            auto waiters = kj::mv(idleWaiters_);
            for (auto& w : waiters) w->fulfill();
          }
        });
        return req.send()
            .attach(kj::mv(done))
            .then(
                [this, pending = kj::mv(pending),
                 copy = kj::mv(copy)](Response&& resp) mutable -> kj::Promise<Response> {
                  auto reply = resp.getReply();
                  lastSynced_ = kj::max(lastSynced_, reply.getLastSynced());
                  KJ_IF_MAYBE (c, copy) {
                    answered(reply.getTransno());
                    if (reply.getTransno() > lastSynced_) keep(reply.getTransno(), kj::mv(*c));
                  }
                  synced(lastSynced_);
                  return kj::mv(resp);
                },
                kj::mv(onError));
      });
}

template <typename Reader>
void ServerLink::countRequest(Reader r) {
  ++stats_.requests[kindOf(r)];
}

void ServerLink::keep(uint64_t transno, Kept kept) {
  keptBytes_ += kept.bytes;
  bool meta = kept.meta;
  auto old = kept_.find(transno);
  if (old != kept_.end()) {
    keptBytes_ -= old->second.bytes;
    kept_.erase(old);
  }
  kept_.emplace(transno, kj::mv(kept));
  if (keptBytes_ > KEEP_LIMIT && !syncing_) {
    syncing_ = true;
    tasks_->add(sync(meta).attach(kj::defer([this]() { syncing_ = false; })));
  }
}

void ServerLink::synced(uint64_t through) {
  while (!kept_.empty() && kept_.begin()->first <= through) {
    keptBytes_ -= kept_.begin()->second.bytes;
    kept_.erase(kept_.begin());
  }
}

kj::Promise<void> ServerLink::replay(uint64_t gen, uint64_t serverSynced) {
  if (!(peerFeatures_ & features::ACTIVE_SERVER_LOCK)) return kj::READY_NOW;
  if (restarted_) {
    // What the server has on disk needs no replay; its count may be lower than before (the
    // crash lost what was not synced), so it replaces ours.
    lastSynced_ = serverSynced;
    synced(serverSynced);
  }
  // Nothing to replay to the instance that has it all (still said, in case it waits for us).
  auto keepFrom = restarted_ ? kept_.begin() : kept_.end();
  auto started = timer_.now();
  size_t bytes = keptBytes_;
  size_t n = std::distance(keepFrom, kept_.end());
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(n + 1);
  // Sent at once, in transaction order; the server runs them in that order, interleaved with
  // other clients' replays.
  for (auto it = keepFrom; it != kept_.end(); ++it) {
    uint64_t transno = it->first;
    parts.add(it->second.meta ? replayOne<MetaResponse>(transno)
                              : replayOne<DataResponse>(transno));
  }
  // Then: "that was all" (on the session the server has: meta or data).
  auto& conn = *KJ_ASSERT_NONNULL(connection_);
  if (peerKind_ == rpc::TargetKind::META) {
    auto req = conn.meta.callRequest();
    req.initRequest().setReplaysSent();
    parts.add(req.send().ignoreResult());
  } else {
    auto req = conn.data.callRequest();
    req.initRequest().setReplaysSent();
    parts.add(req.send().ignoreResult());
  }
  return kj::joinPromises(parts.finish()).then([this, gen, n, bytes, started]() {
    if (n > 0 && gen == generation_) {
      spdlog::info("link {}: replayed {} updates ({} bytes) in {} ms", name_.cStr(), n, bytes,
                   (timer_.now() - started) / kj::MILLISECONDS);
    }
  });
}

void ServerLink::answered(uint64_t transno) {
  if (transno > lastAnswered_) {
    lastAnswered_ = transno;
    answeredBy_ = instance_;
  }
}

template <typename Response>
kj::Promise<void> ServerLink::replayOne(uint64_t transno) {
  auto& conn = *KJ_ASSERT_NONNULL(connection_);
  auto req = sessionFor<Response>(conn).callRequest();
  auto& kept = kept_.find(transno)->second;
  if constexpr (kj::isSameType<Response, MetaResponse>()) {
    req.setRequest(kept.request->getRoot<rpc::MetaRequest>().asReader());
  } else {
    req.setRequest(kept.request->getRoot<rpc::DataRequest>().asReader());
  }
  auto r = req.getRequest();
  r.setReplayOf(transno);
  r.setResend(false);
  // Its own reply record must outlive it: replayed again after another crash, it is answered
  // from there.
  r.setOldestUnreplied(r.getRequestId());
  return req.send().then([this, transno](Response&& resp) {
    auto reply = resp.getReply();
    if (reply.getError() != 0) {
      spdlog::error(
          "link {}: the replay of transaction {} failed (errno {}): it conflicts with "
          "what another client did since",
          name_.cStr(), transno, reply.getError());
    }
    lastSynced_ = kj::max(lastSynced_, reply.getLastSynced());
    // Renumbered (it could not keep its number): kept under the new one.
    uint64_t now = reply.getTransno();
    answered(now);
    if (now != transno && now != 0) {
      auto node = kept_.extract(transno);
      if (!node.empty()) {
        node.key() = now;
        kept_.insert(kj::mv(node));
      }
    }
    synced(lastSynced_);
  });
}

kj::Promise<ServerLink::MetaResponse> ServerLink::meta(
    kj::Function<void(rpc::MetaRequest::Builder)> build, bool update, Class cls) {
  auto pending = kj::refcounted<Pending>(*this, update, cls);
  auto buildOwn = kj::heap(kj::mv(build));
  auto& ref = *buildOwn;
  return send<MetaResponse>(kj::mv(pending), ref).attach(kj::mv(buildOwn));
}

kj::Promise<ServerLink::DataResponse> ServerLink::data(
    kj::Function<void(rpc::DataRequest::Builder)> build, bool update, Class cls,
    kj::Maybe<kj::Own<kj::Refcounted>> keeps) {
  auto pending = kj::refcounted<Pending>(*this, update, cls);
  if (update) pending->keeps = kj::mv(keeps);
  auto buildOwn = kj::heap(kj::mv(build));
  auto& ref = *buildOwn;
  return send<DataResponse>(kj::mv(pending), ref).attach(kj::mv(buildOwn));
}

kj::Promise<rpc::Bootstrap::Client> ServerLink::server(Class cls) {
  return whenOpen(cls).then([this, cls]() -> kj::Promise<rpc::Bootstrap::Client> {
    if (!open(cls)) return server(cls);  // lost again meanwhile
    rpc::Bootstrap::Client cap = KJ_ASSERT_NONNULL(connection_)->server;
    return kj::mv(cap);
  });
}

kj::Promise<rpc::LockSession::Client> ServerLink::locks(Class cls) {
  return whenOpen(cls).then([this, cls]() -> kj::Promise<rpc::LockSession::Client> {
    if (!open(cls)) return locks(cls);  // lost again meanwhile
    rpc::LockSession::Client cap = KJ_ASSERT_NONNULL(connection_)->locks;
    // Through a continuation rather than an immediate promise of the capability, which GCC 12
    // wrongly warns about (maybe-uninitialized), depending on what else it inlines here.
    return kj::Promise<void>(kj::READY_NOW).then([cap = kj::mv(cap)]() mutable {
      return kj::mv(cap);
    });
  });
}

kj::Maybe<rpc::LockSession::Client> ServerLink::currentLocks() {
  KJ_IF_MAYBE (c, connection_) {
    return (*c)->locks;
  }
  return nullptr;
}

kj::Array<kj::String> splitAddresses(kj::StringPtr list) {
  kj::Vector<kj::String> out;
  size_t start = 0;
  for (size_t i = 0; i <= list.size(); ++i) {
    if (i == list.size() || list[i] == ',') {
      if (i > start) out.add(kj::heapString(list.slice(start, i)));
      start = i + 1;
    }
  }
  return out.releaseAsArray();
}

}  // namespace cairn
