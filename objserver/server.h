// The server of one target: the bootstrap capability every peer gets (connect, status,
// registerTarget), the client sessions, and what the meta and data services share.
#pragma once

#include <capnp/message.h>
#include <capnp/schema.h>
#include <kj/async-io.h>
#include <kj/function.h>
#include <kj/map.h>
#include <kj/refcount.h>
#include <spdlog/spdlog.h>

#include <map>
#include <set>
#include <string>

#include "objserver/access_policy.h"
#include "objserver/client_table.h"
#include "objserver/lock_manager.h"
#include "objserver/metrics.h"
#include "objserver/reexec.h"
#include "objserver/room_gate.h"
#include "objserver/root_squash.h"
#include "objserver/syncer.h"
#include "objserver/target.h"
#include "rpc/busy_poll.h"
#include "rpc/cairn.capnp.h"
#include "rpc/errors.h"

namespace cairn {

class Namespace;
class ObjectStore;
class OpenFiles;
class Destroyer;
class ClientFence;
class PosixLocks;

// One client (or peer server) as the server knows it, across its reconnections. It is also
// the owner of the client's locks.
struct ClientSession : public kj::Refcounted, public LockOwner {
  void blocking(uint64_t lockId, kj::Duration timeout) override;
  void forgotten(uint64_t lockId) override;
  kj::StringPtr ownerName() const override { return label; }

  kj::Array<kj::byte> uuid;
  kj::String label;  // "client <uuid> (<host>)" for logs
  // Names this session (Bootstrap.connect's `session`): the target's instance, then a count,
  // so that a later session has a larger number, also across restarts.
  uint64_t number = 0;
  kj::Maybe<rpc::LockCallback::Client> callback;
  bool evicted = false;
  std::string key;  // uuid as hex
  kj::String hostName;
  kj::String softwareVersion;
  kj::String certSerial;  // of the certificate it last connected with (Peer::serial)
  uint64_t features = 0;
  rpc::Hello::Role role = rpc::Hello::Role::CLIENT;
  bool squashRoot = false;  // its uid 0 acts as the squash id (set at each connect)
  uint32_t connections = 0;
  uint64_t lastRequestId = 0;
  uint64_t prunedBelow = 0;
  uint64_t disconnects = 0;  // bumped on each disconnect, so a stale grace timer does nothing
  uint64_t serverLock = 0;   // its PR on the active-server lock (0: none, or cancelled)
  kj::String recovery;       // how its last connect went, for status
  kj::TimePoint connectedAt = kj::origin<kj::TimePoint>();
  // After a crash: its resends being applied, and whether it said recoveryDone meanwhile (the
  // others' new updates wait for both: ServerContext::resendWaiting_).
  size_t resendsRunning = 0;
  bool recoveredBehindResends = false;
  // Connected and not yet said recoveryDone (set at every connect): what it asks meanwhile is
  // its recovery, which never waits for the other clients' (ServerContext::waitsForOthers).
  bool inRecovery = false;

private:
  // LockCallback.blocking, both kinds (`gone`: the lock went with its inode).
  void callBack(uint64_t lockId, kj::Duration timeout, bool gone);
};

// Serving -> draining (a controlled shutdown has begun: the server's EX on the active-server
// lock waits for every client's PR) -> stopped (it holds EX; nothing more is taken).
enum class ServerState { SERVING, DRAINING, STOPPED };
kj::StringPtr stateName(ServerState state);

struct ServerConfig {
  kj::String advertise;                             // HOST:PORT given to peers
  kj::Duration disconnectGrace = 30 * kj::SECONDS;  // opens of a vanished client are kept this long
  kj::Duration recoveryWindow = 30 * kj::SECONDS;   // orphans wait this long for open replay
  kj::Duration lockTimeout = 10 * kj::SECONDS;      // to cancel a lock when asked; to come back
  kj::Duration lockProlongLimit = 60 * kj::SECONDS;  // to cancel it when asking for more time
  // Caching locks all clients together should hold, shared out among those connected
  // (ServerContext::shareLocks); each client's share is kept within [MIN_LOCK_SHARE, the lock
  // manager's per-client bound].
  size_t lockBudget = 2000000;
  bool testReplayBarrier = false;  // Bootstrap.replayBarrier allowed (tests)
  kj::String partner;              // failover partner's HOST:PORT, if any
  AccessPolicy access;             // who may ask what
  RootSquash squash;               // whose root acts as whom
};

class ServerContext {
public:
  // `network`: how this server reaches others (its partner's peers, the data servers).
  ServerContext(kj::AsyncIoContext& io, kj::Network& network, Target& target, ServerConfig config);
  ~ServerContext() noexcept(false);

  // How a session's service reaches this context when it is destroyed: Cap'n Proto may let go of
  // it after the context is gone. A call under way holds its service in a forked promise whose
  // hub lets go only when it fires, an event after the call was cancelled (cancelCalls): for a
  // fenced server that stopped serving at once, in its standby's loop, where the service then
  // read a destroyed context and the process stopped answering.
  struct Presence : public kj::Refcounted {
    kj::Maybe<ServerContext&> ctx;
  };
  kj::Own<Presence> presence;
  // A session's connection, held by its service: connected() when made, disconnected() when
  // the service goes, unless this context went first (Presence).
  class Connection {
  public:
    Connection(ServerContext& ctx, ClientSession& session);
    ~Connection() noexcept(false);
    KJ_DISALLOW_COPY(Connection);

  private:
    kj::Own<Presence> presence_;
    ClientSession& session_;
  };

  kj::AsyncIoContext& io;
  kj::Network& network;
  Target& target;
  ServerConfig config;
  Syncer syncer;
  ClientTable clients;
  RoomGate room;  // every client update's transaction goes through it
  kj::TimePoint started;
  uint64_t rpcCount = 0;
  struct RpcKind {
    std::string name;          // "meta.lookup"
    uint64_t count = 0;        // requests received
    LatencyHistogram latency;  // of those that were answered
  };
  std::map<std::string, RpcKind> rpcs;  // "meta.lookup" -> ...; nodes never move
  // Counts one request of a union kind (its name taken from the schema).
  template <typename Request>
  RpcKind& countRpc(kj::StringPtr service, Request req) {
    checkOwner();
    ++rpcCount;
    auto fields = capnp::Schema::from<typename Request::Reads>().getUnionFields();
    auto which = static_cast<uint>(req.which());
    std::string name = service.cStr();
    name += ".";
    name += which < fields.size() ? fields[which].getProto().getName().cStr() : "unknown";
    auto& kind = rpcs[name];
    if (kind.count++ == 0) kind.name = kj::mv(name);
    return kind;
  }
  // Starts a request (`dispatch` returns its promise) and records how long it took under its
  // kind, from before the handler runs (most of a request's work is done right there) to the end
  // of its promise. Read from the clock itself: the event loop's timer tells the time its turn
  // began, so a request handled within one turn (most are) would always take 0. One that took
  // SLOW_REQUEST or more (answered, failed or dropped) is logged with its client: a request
  // waiting on a lock another client does not give back is the first sign of a chain of waits.
  template <typename Dispatch>
  kj::Promise<void> timed(RpcKind& kind, ClientSession& from, Dispatch&& dispatch) {
    BusyPoll::arrived();
    auto& clock = kj::systemPreciseMonotonicClock();
    auto started = clock.now();
    kj::Promise<void> request = dispatch();
    return request.attach(kj::defer([&kind, &clock, started, from = kj::addRef(from)]() {
      auto took = clock.now() - started;
      kind.latency.observe(double(took / kj::NANOSECONDS) / 1e9);
      if (took >= SLOW_REQUEST) {
        spdlog::warn("{} from {} took {} ms", kind.name, from->label.cStr(),
                     took / kj::MILLISECONDS);
      }
    }));
  }
  static constexpr kj::Duration SLOW_REQUEST = 5 * kj::SECONDS;
  uint64_t bytesIn = 0;       // file data written to this target
  uint64_t bytesOut = 0;      // file data read from it
  uint64_t removalSteps = 0;  // transactions of large truncates and destroys (DataService)
  kj::String metricsAddress;
  std::map<std::string, kj::Own<ClientSession>> sessions;
  ServerState state = ServerState::SERVING;
  // The server's own locks (held while an update runs) belong to this owner.
  class ServerOwner : public LockOwner {
  public:
    void blocking(uint64_t, kj::Duration) override {}  // never called back: see evictable()
    void forgotten(uint64_t) override {}
    kj::StringPtr ownerName() const override { return "the server"; }
    bool evictable() const override { return false; }
  } serverOwner;
  kj::TaskSet tasks;
  LockManager locks;  // after `sessions`: destroyed before the owners it refers to

  // Set for a metadata target.
  kj::Maybe<Namespace&> ns;
  kj::Maybe<OpenFiles&> opens;
  kj::Maybe<Destroyer&> destroyer;
  kj::Maybe<ClientFence&> fence;
  kj::Maybe<PosixLocks&> posixLocks;
  // Set for a data target.
  kj::Maybe<ObjectStore&> objects;

  // Refuses (DISCONNECTED: the client goes to the partner) once this server has been asked to
  // give the target up, even before the main loop has noticed and stopped.
  void checkOwner() {
    KJ_IF_MAYBE (why, target.lock().verify()) {
      kj::throwFatalException(KJ_EXCEPTION(DISCONNECTED, "this server gave its target up", *why));
    }
  }

  ClientSession& session(rpc::Hello::Reader hello);
  void connected(ClientSession& session);
  void disconnected(ClientSession& session);
  // Ends a client's session: locks, opens and reply records go; its next request fails and
  // its next connect is told it was evicted. `fenced`: on a data target, the metadata server's
  // session this is the fence of (ClientFence), told to the client with the eviction.
  void evict(ClientSession& session, kj::StringPtr why, uint64_t fenced = 0);
  // The lock budget shared out among the connected clients: `joining` (just connected) is told
  // its share, and every connected client is when the share moved by a tenth since they last
  // were. Called as clients come and go.
  void shareLocks(kj::Maybe<ClientSession&> joining);
  static constexpr size_t MIN_LOCK_SHARE = 1000;
  size_t lockShare() const { return lockShare_; }
  // Evicts every session whose certificate `revoked` names (a new revocation list): it will
  // not connect again, so whoever waits for its locks need not wait for it to come back.
  void evictRevoked(kj::FunctionParam<bool(kj::StringPtr serial)> revoked);
  // The lock manager's eviction of a client that did not give a lock back: on a metadata
  // server the data targets fence it off first (ClientFence), then it is evicted here.
  kj::Promise<void> evictForLock(ClientSession& session);
  // A client unmounts: its session ends at once, so that a restart does not wait for it.
  void goodbye(ClientSession& session);
  // What both services answer the same way: the client has sent its replays, or leaves.
  void sessionNote(ClientSession& session, bool goodbye) {
    goodbye ? this->goodbye(session) : replaysSent(session);
  }
  // After the recovery window: forget clients of earlier instances that never came back.
  void expireAbsentClients();

  // Controlled shutdown (objserver/shutdown.cc). Starts it (again: no-op) and returns a promise
  // that resolves once the server holds its active-server lock in EX: every client has written
  // back and cancelled its PR, or was evicted. Then the caller commits, marks the target clean
  // and exits.
  kj::Promise<void> shutdown(kj::StringPtr why);
  // Resolves when a shutdown has completed, whoever started it (one caller: main).
  kj::Promise<void> whenStopped() { return kj::mv(stopped_.promise); }
  // The shutdown is a failover: the process stays up as its partner's standby.
  bool failingOver = false;
  // The shutdown is an upgrade in place: the process then becomes this binary.
  kj::Maybe<Reexec> restartWith;
  // Grants a connecting client its PR on the active-server lock; refuses (OVERLOADED, "retry")
  // while a shutdown is under way.
  void admit(ClientSession& session);
  // A client cancelled a lock: was it its active-server lock ("ready to reconnect")?
  void cancelled(ClientSession& session, uint64_t lockId);

  // Clients of the previous instance that have not finished recovery (objserver/recovery.cc).
  // New application locks wait for them (or for the recovery window), so that every lock
  // granted before the restart is taken again first.
  void startRecovery();
  void recoveryDone(ClientSession& session);
  kj::Promise<void> recovered();  // resolves when none is left
  // After an unclean stop, what a client asks once it has recovered (reads, locks, as updates
  // already do) waits until the updates the stop cut off are in (resendsIn): the returning
  // clients' resends, and the write-backs they make during their recovery. It must not see or
  // lock what those change before they land. A client's own recovery never waits.
  bool waitsForOthers(const ClientSession& session) const {
    return !session.inRecovery && !resendWaiting_.empty();
  }
  kj::Promise<void> resendsIn();
  size_t recovering() const { return recovering_.size(); }

  // Replay after an unclean stop (objserver/recovery.cc). Each returning client sends the
  // updates it got a reply for but the target may have lost (newer than what it had synced),
  // then replaysSent. Once every client of the previous instance has (or the window is over),
  // the replays run one at a time in their original transaction order; other updates wait
  // until they are done, and updates other than resends until those clients have recovered
  // (their resends come before their recoveryDone). `run` is the request's own work.
  template <typename Run>
  kj::Promise<void> ordered(ClientSession& session, uint64_t replayOf, bool resend, bool update,
                            Run run);
  void replaysSent(ClientSession& session);
  // Cancels every request still under way (ordered() wraps them all), as a server stops
  // serving the target: Cap'n Proto lets a call it cannot cancel run on after its connection
  // is gone, and one resumed later (a sync the syncer finished as the server was fenced) would
  // find this context destroyed. The clients see the connection drop and resend.
  void cancelCalls() {
    calls_.cancel(KJ_EXCEPTION(DISCONNECTED, "the server stopped serving this target"));
  }
  // The last synced transaction, as clients are told (a replay barrier holds it back).
  uint64_t reportedSynced() const;
  size_t replaysApplied() const { return replaysApplied_; }
  double replaySeconds() const { return replaySeconds_; }
  kj::Maybe<uint64_t> barrier;  // set by a replay barrier (at 0 on a fresh target too)

  // Runs one update: a resend is answered from the reply record; otherwise `apply` runs in one
  // write transaction with a new transaction number, and the reply is recorded in it.
  template <typename Reply, typename Apply>
  void update(ClientSession& session, uint64_t requestId, uint64_t oldestUnreplied,
              capnp::MallocMessageBuilder& message, Apply&& apply, uint64_t replayOf = 0);

  // One write transaction with its own transaction number, for changes no client asked for
  // (closing a vanished client's files, the destroy queue, the target list).
  template <typename Apply>
  void commit(Apply&& apply) {
    store::Txn txn(target.env(), store::Txn::WRITE);
    // While replays wait to run, their numbers must stay free: the server's own changes (no
    // client knows their number) share the current one.
    uint64_t transno =
        replayPhase_ == ReplayPhase::DONE ? target.nextTransno(txn) : target.lastTransno();
    apply(txn);
    txn.commit();
    target.committed(transno);
  }

private:
  class ErrorHandler : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&& e) override;
  };
  ErrorHandler errorHandler_;
  void dropOpens(ClientSession& session);
  void endRecoveryWait();
  enum class ReplayPhase { WAITING, APPLYING, DONE };
  ReplayPhase replayPhase_ = ReplayPhase::DONE;
  std::set<std::string> replayWaiting_;  // clients that have not sent all their replays
  std::map<uint64_t, kj::Own<kj::PromiseFulfiller<void>>> replayQueue_;  // by transaction
  kj::Vector<kj::Own<kj::PromiseFulfiller<void>>> replayWaiters_;
  size_t lockShare_ = 0;       // as last told to every connected client (0: never)
  uint32_t sessionsMade_ = 0;  // by this instance: the low half of ClientSession::number
  size_t replaysApplied_ = 0;
  double replaySeconds_ = 0;
  kj::TimePoint replayStarted_ = kj::origin<kj::TimePoint>();
  kj::Promise<void> replayTurn(ClientSession& session, uint64_t transno);
  void replayed();
  void startReplays();
  void nextReplay();
  kj::Promise<void> replaysFinished();
  // After an unclean stop, the clients that may have updates on their way when it came (those
  // waited for with replays) send them again during their recovery, before recoveryDone. New
  // updates wait for that, so that none lands before one made earlier that the crash cut off;
  // so do other requests of clients already recovered (waitsForOthers).
  std::set<std::string> resendWaiting_;
  kj::Vector<kj::Own<kj::PromiseFulfiller<void>>> resendWaiters_;
  void resent(const std::string& key);  // that client's resends are in (or it is gone)
  void resendsAllIn();                  // wakes the updates resendsIn() held
  std::set<std::string> recovering_;    // keys of clients of the previous instance
  kj::Vector<kj::Own<kj::PromiseFulfiller<void>>> recoveryWaiters_;
  kj::Maybe<kj::ForkedPromise<void>> stopping_;
  kj::PromiseFulfillerPair<void> stopped_ = kj::newPromiseAndFulfiller<void>();
  kj::Promise<void> recoveryTimer_ = nullptr;
  void expire(ClientSession& session);
  void endSession(ClientSession& session);  // what evict and expire share
  bool isCurrent(const ClientSession& session) const;
  // Last, so that it cancels what is left before anything those requests use goes.
  kj::Canceler calls_;
};

// The bootstrap capability.
class ServerImpl final : public rpc::Bootstrap::Server {
public:
  // `peer`: who is at the other end of this connection (its certificate).
  ServerImpl(ServerContext& ctx, Peer peer) : ctx_(ctx), peer_(kj::mv(peer)) {}

  kj::Promise<void> connect(ConnectContext context) override;
  kj::Promise<void> status(StatusContext context) override;
  kj::Promise<void> registerTarget(RegisterTargetContext context) override;
  kj::Promise<void> ping(PingContext) override {
    ctx_.config.access.check(peer_, AccessPolicy::Call::PING);
    return kj::READY_NOW;
  }
  kj::Promise<void> mayMount(MayMountContext) override {
    ctx_.config.access.check(peer_, AccessPolicy::Call::CONNECT_CLIENT);
    return kj::READY_NOW;
  }
  kj::Promise<void> replayBarrier(ReplayBarrierContext context) override;
  kj::Promise<void> evict(EvictContext context) override;
  kj::Promise<void> shutdown(ShutdownContext context) override;
  kj::Promise<void> failover(FailoverContext context) override;
  kj::Promise<void> restart(RestartContext context) override;

private:
  void fillInfo(rpc::ServerInfo::Builder info);
  ServerContext& ctx_;
  Peer peer_;
};

template <typename Run>
kj::Promise<void> ServerContext::ordered(ClientSession& session, uint64_t replayOf, bool resend,
                                         bool update, Run run) {
  return calls_.wrap(kj::evalNow([&]() -> kj::Promise<void> {
    if ((replayOf != 0 || resend) && replayPhase_ != ReplayPhase::DONE && target.versionChanged()) {
      // Point 4 of the design: across a version change after an unclean stop, only opens replay.
      evict(session, "it had requests to replay or resend, and the server's version changed");
      return KJ_EXCEPTION(DISCONNECTED, "this client was evicted; reconnect");
    }
    if (replayOf != 0) {
      return replayTurn(session, replayOf).then([this, run = kj::mv(run)]() mutable {
        return kj::evalNow(kj::mv(run)).attach(kj::defer([this]() { replayed(); }));
      });
    }
    kj::Promise<void> work = nullptr;
    if (update && !resend && !resendWaiting_.empty()) {
      work = resendsIn().then([this]() { return replaysFinished(); }).then(kj::mv(run));
    } else if (!update && !resend && waitsForOthers(session)) {
      work = resendsIn().then(kj::mv(run));
    } else if (update && replayPhase_ != ReplayPhase::DONE) {
      work = replaysFinished().then(kj::mv(run));
    } else {
      work = run();
    }
    if (resend && resendWaiting_.count(session.key) > 0) {
      // Others wait until it has been applied, not only received: its locks are not theirs yet.
      ++session.resendsRunning;
      work = work.attach(kj::defer([this, s = kj::addRef(session)]() mutable {
        if (--s->resendsRunning == 0 && s->recoveredBehindResends) resent(s->key);
      }));
    }
    return work;
  }));
}

template <typename Reply, typename Apply>
void ServerContext::update(ClientSession& session, uint64_t requestId, uint64_t oldestUnreplied,
                           capnp::MallocMessageBuilder& message, Apply&& apply, uint64_t replayOf) {
  if (requestId != 0) {
    store::Txn txn(target.env(), store::Txn::READ);
    KJ_IF_MAYBE (words, clients.find(txn, session.uuid, requestId)) {
      capnp::FlatArrayMessageReader recorded(*words);
      message.setRoot(recorded.getRoot<Reply>());
      message.getRoot<Reply>().setLastSynced(reportedSynced());
      return;
    }
  }
  try {
    auto reply = message.initRoot<Reply>();
    store::Txn txn(target.env(), store::Txn::WRITE);
    uint64_t transno =
        replayOf != 0 ? target.replayTransno(txn, replayOf) : target.nextTransno(txn);
    reply.setTransno(transno);  // before `apply`, which may tell it (MetaReply.asOf)
    apply(txn, reply);
    if (requestId != 0) {
      clients.record(txn, session.uuid, requestId, message);
      if (oldestUnreplied > session.prunedBelow + 64) {
        clients.prune(txn, session.uuid, oldestUnreplied);
        session.prunedBelow = oldestUnreplied;
      }
      session.lastRequestId = kj::max(session.lastRequestId, requestId);
    }
    txn.commit();
    target.committed(transno);
  } catch (FsError& e) {
    message.initRoot<Reply>().setError(e.err());
  }
  message.getRoot<Reply>().setLastSynced(reportedSynced());
}

}  // namespace cairn
