#include "objserver/server.h"

#include <kj/debug.h>
#include <kj/encoding.h>
#include <spdlog/spdlog.h>

#include "objserver/client_fence.h"
#include "objserver/data_service.h"
#include "objserver/destroyer.h"
#include "objserver/lock_service.h"
#include "objserver/meta_service.h"
#include "objserver/namespace.h"
#include "objserver/object_store.h"
#include "objserver/open_files.h"
#include "objserver/posix_locks.h"
#include "rpc/feature_flags.h"

namespace cairn {

void ServerContext::ErrorHandler::taskFailed(kj::Exception&& e) {
  spdlog::warn("server task failed: {}", e.getDescription().cStr());
}

void ClientSession::blocking(uint64_t lockId, kj::Duration timeout) {
  callBack(lockId, timeout, false);
}

void ClientSession::forgotten(uint64_t lockId) {
  callBack(lockId, 0 * kj::SECONDS, true);
}

void ClientSession::callBack(uint64_t lockId, kj::Duration timeout, bool gone) {
  KJ_IF_MAYBE (cb, callback) {
    auto req = cb->blockingRequest();
    req.setLockId(lockId);
    req.setTimeoutMs(timeout / kj::MILLISECONDS);
    req.setGone(gone);
    // Not waited for: a client that does not act in time is evicted by the lock manager.
    req.send().detach([](kj::Exception&&) {});
  }
}

ServerContext::ServerContext(kj::AsyncIoContext& io, kj::Network& network, Target& target,
                             ServerConfig config)
    : io(io),
      network(network),
      target(target),
      config(kj::mv(config)),
      syncer(target, std::chrono::milliseconds(100)),
      clients(target),
      room(target, syncer, clients),
      started(io.provider->getTimer().now()),
      tasks(errorHandler_),
      locks(
          io.provider->getTimer(), this->config.lockTimeout,
          [this](LockOwner& owner) { return evictForLock(kj::downcast<ClientSession>(owner)); },
          this->config.lockProlongLimit) {
  presence = kj::refcounted<Presence>();
  presence->ctx = *this;
}

ServerContext::~ServerContext() noexcept(false) {
  presence->ctx = nullptr;
}

ClientSession& ServerContext::session(rpc::Hello::Reader hello) {
  KJ_REQUIRE(hello.getClientUuid().size() == 16, "a client uuid is 16 bytes",
             hello.getClientUuid().size());
  std::string key = kj::encodeHex(hello.getClientUuid()).cStr();
  auto it = sessions.find(key);
  if (it == sessions.end()) {
    auto s = kj::refcounted<ClientSession>();
    s->uuid = kj::heapArray(hello.getClientUuid());
    s->key = key;
    s->number = (target.instance() << 32) | ++sessionsMade_;
    {
      store::Txn txn(target.env(), store::Txn::READ);
      s->lastRequestId = clients.lastRequestId(txn, s->uuid);
    }
    it = sessions.emplace(key, kj::mv(s)).first;
  }
  auto& s = *it->second;
  s.hostName = kj::str(hello.getHostName());
  s.label = kj::str(hello.getRole() == rpc::Hello::Role::CLIENT ? "client " : "peer ", key.c_str(),
                    " (", s.hostName, ")");
  s.softwareVersion = kj::str(hello.getSoftwareVersion());
  s.features = hello.getFeatures();
  s.role = hello.getRole();
  return s;
}

ServerContext::Connection::Connection(ServerContext& ctx, ClientSession& session)
    : presence_(kj::addRef(*ctx.presence)), session_(session) {
  ctx.connected(session_);
}

ServerContext::Connection::~Connection() noexcept(false) {
  KJ_IF_MAYBE (ctx, presence_->ctx) {
    ctx->disconnected(session_);
  }
}

void ServerContext::connected(ClientSession& session) {
  ++session.connections;
}

void ServerContext::disconnected(ClientSession& session) {
  KJ_ASSERT(session.connections > 0);
  if (--session.connections > 0) return;
  uint64_t epoch = ++session.disconnects;
  if (session.role == rpc::Hello::Role::CLIENT) shareLocks(nullptr);
  if (state == ServerState::DRAINING && session.serverLock != 0 &&
      session.role == rpc::Hello::Role::CLIENT) {
    // It went before it was ready: what it held (dirty data, locks) cannot be handed back now.
    evict(session, "disconnected during a controlled shutdown");
    return;
  }
  spdlog::info("{} disconnected; keeping its locks {} s and its opens {} s", session.label.cStr(),
               config.lockTimeout / kj::SECONDS, config.disconnectGrace / kj::SECONDS);
  if (session.role == rpc::Hello::Role::CLIENT) {
    // Not synced on purpose: lost in a crash, the mark only makes recovery wait for it.
    try {
      commit([&](store::Txn& txn) {
        if (clients.joined(txn, session.uuid)) clients.markAway(txn, session.uuid);
      });
    } catch (FsError& e) {
      spdlog::warn("cannot mark {} away: {}", session.label.cStr(), e.what());
    }
  }
  // It may come back (a restarting client, a flapping link): its locks wait the lock timeout.
  tasks.add(io.provider->getTimer()
                .afterDelay(config.lockTimeout)
                .then([this, s = kj::addRef(session), epoch]() mutable {
                  if (isCurrent(*s) && s->connections == 0 && s->disconnects == epoch &&
                      locks.heldBy(*s) > 0) {
                    spdlog::info("{} did not come back: dropping its {} locks", s->label.cStr(),
                                 locks.heldBy(*s));
                    locks.dropAll(*s);
                  }
                }));
  // The session outlives this capability (it stays in `sessions`) until the grace period ends
  // without the client coming back; then it, its opens and its reply records go.
  tasks.add(io.provider->getTimer()
                .afterDelay(config.disconnectGrace)
                .then([this, s = kj::addRef(session), epoch]() mutable {
                  if (isCurrent(*s) && s->connections == 0 && s->disconnects == epoch) expire(*s);
                }));
}

bool ServerContext::isCurrent(const ClientSession& session) const {
  // An evicted session is replaced by a new one under the same key when the client returns.
  auto it = sessions.find(session.key);
  return it != sessions.end() && it->second.get() == &session;
}

void ServerContext::evict(ClientSession& session, kj::StringPtr why, uint64_t fenced) {
  if (session.evicted) return;
  session.evicted = true;
  spdlog::warn("evicting {}: {}", session.label.cStr(), why.cStr());
  session.recovery = kj::str("evicted: ", why);
  if (session.role == rpc::Hello::Role::CLIENT) {
    try {
      commit([&](store::Txn& txn) { clients.markEvicted(txn, session.uuid, why, fenced); });
    } catch (FsError& e) {
      spdlog::warn("cannot record the eviction of {}: {}", session.label.cStr(), e.what());
    }
  }
  KJ_IF_MAYBE (cb, session.callback) {
    // Told now, on its connection if it still has one: a client that learned it only at its
    // next request could meanwhile send data servers what it wrote under the locks it lost.
    auto req = cb->evictedRequest();
    req.setWhy(why);
    req.send().detach([](kj::Exception&&) {});
  }
  endSession(session);
}

void ServerContext::shareLocks(kj::Maybe<ClientSession&> joining) {
  auto connectedClient = [](const ClientSession& s) {
    return s.role == rpc::Hello::Role::CLIENT && s.connections > 0 && !s.evicted;
  };
  size_t clients = 0;
  for (auto& [key, s] : sessions) clients += connectedClient(*s);
  size_t share = kj::max(MIN_LOCK_SHARE, config.lockBudget / kj::max(clients, size_t(1)));
  share = kj::min(share, LockManager::MAX_PER_OWNER);
  auto tell = [share](ClientSession& s) {
    KJ_IF_MAYBE (cb, s.callback) {
      auto req = cb->shareRequest();
      req.setMaxLocks(uint32_t(share));
      // Older clients do not know it (UNIMPLEMENTED): their own bound still holds.
      req.send().detach([](kj::Exception&&) {});
    }
  };
  // Within a tenth of what everyone was told: only the newcomer hears it.
  bool moved = lockShare_ == 0 || share * 10 < lockShare_ * 9 || share * 10 > lockShare_ * 11;
  if (moved) {
    if (lockShare_ != 0) {
      spdlog::info("lock budget {}: {} clients connected, a share of {} locks each (was {})",
                   config.lockBudget, clients, share, lockShare_);
    }
    lockShare_ = share;
    for (auto& [key, s] : sessions) {
      if (connectedClient(*s)) tell(*s);
    }
  } else {
    KJ_IF_MAYBE (s, joining) {
      tell(*s);
    }
  }
}

void ServerContext::evictRevoked(kj::FunctionParam<bool(kj::StringPtr serial)> revoked) {
  kj::Vector<kj::Own<ClientSession>> gone;
  for (auto& [key, session] : sessions) {
    if (session->certSerial.size() > 0 && revoked(session->certSerial)) {
      gone.add(kj::addRef(*session));
    }
  }
  for (auto& session : gone) evict(*session, "its certificate was revoked");
}

kj::Promise<void> ServerContext::evictForLock(ClientSession& session) {
  kj::Promise<void> fenced = kj::READY_NOW;
  KJ_IF_MAYBE (f, fence) {
    if (session.role == rpc::Hello::Role::CLIENT) fenced = f->fence(session);
  }
  return fenced.then([this, ref = kj::addRef(session)]() mutable {
    // Unless it went meanwhile (unmounted, or evicted by hand): its key may name a new session.
    if (isCurrent(*ref)) evict(*ref, "did not cancel a lock in time");
  });
}

void ServerContext::goodbye(ClientSession& session) {
  if (!isCurrent(session)) return;
  spdlog::info("{} unmounted: session ended", session.label.cStr());
  endSession(session);
}

void ServerContext::expire(ClientSession& session) {
  spdlog::info("{} did not come back within {} s: session ended", session.label.cStr(),
               config.disconnectGrace / kj::SECONDS);
  endSession(session);
}

void ServerContext::endSession(ClientSession& session) {
  auto keep = kj::addRef(session);  // the map may hold the last reference
  locks.dropAll(session);
  KJ_IF_MAYBE (p, posixLocks) {
    p->releaseClient(session.key);
  }
  dropOpens(session);
  if (recovering_.erase(session.key) > 0 && recovering_.empty()) endRecoveryWait();
  replaysSent(session);  // it will send no more
  resent(session.key);
  try {
    commit([&](store::Txn& txn) { clients.forget(txn, session.uuid); });
  } catch (FsError& e) {
    spdlog::warn("cannot forget {}: {}", session.label.cStr(), e.what());
  }
  sessions.erase(session.key);
  if (session.role == rpc::Hello::Role::CLIENT) shareLocks(nullptr);
}

void ServerContext::expireAbsentClients() {
  // Clients recorded by an earlier instance that have not reconnected by now are gone (an
  // eviction mark stays: the client is told if it ever comes back).
  kj::Vector<kj::Array<kj::byte>> gone;
  {
    store::Txn txn(target.env(), store::Txn::READ);
    for (auto& uuid : clients.clients(txn)) {
      if (sessions.count(kj::encodeHex(uuid).cStr()) == 0) gone.add(kj::mv(uuid));
    }
  }
  if (gone.size() == 0) return;
  commit([&](store::Txn& txn) {
    for (auto& uuid : gone) clients.forget(txn, uuid);
  });
  spdlog::info("forgot {} clients of earlier instances that did not come back", gone.size());
}

void ServerContext::dropOpens(ClientSession& session) {
  KJ_IF_MAYBE (o, opens) {
    auto inos = o->closeAll(session.key);
    if (inos.empty()) return;
    spdlog::info("client {}: closed its {} open files", session.key, inos.size());
    auto& n = KJ_ASSERT_NONNULL(ns);
    commit([&](store::Txn& txn) {
      for (uint64_t ino : inos) n.closed(txn, ino);
    });
    KJ_IF_MAYBE (d, destroyer) {
      d->poke();
    }
  }
}

void ServerImpl::fillInfo(rpc::ServerInfo::Builder info) {
  info.setSoftwareVersion(ctx_.target.softwareVersion());
  info.setFeatures(features::SUPPORTED);
  info.setKind(ctx_.target.kind());
  info.setFsName(ctx_.target.fsName());
  info.setFsUuid(ctx_.target.fsUuid());
  info.setTargetIndex(ctx_.target.index());
  info.setInstance(ctx_.target.instance());
}

kj::Promise<void> ServerImpl::connect(ConnectContext context) {
  ctx_.checkOwner();
  auto hello = context.getParams().getHello();
  ctx_.config.access.check(peer_, hello.getRole() == rpc::Hello::Role::SERVER
                                      ? AccessPolicy::Call::CONNECT_SERVER
                                      : AccessPolicy::Call::CONNECT_CLIENT);
  auto& session = ctx_.session(hello);
  spdlog::info(
      "{} {} connected from {} (version {}, features {:#x}){}",
      hello.getRole() == rpc::Hello::Role::CLIENT ? "client" : "peer", session.key,
      session.hostName.cStr(), session.softwareVersion.cStr(), session.features,
      peer_.authenticated()
          ? kj::str(" as ", peer_.describe(), peer_.encrypted ? "" : ", unencrypted").cStr()
          : "");
  auto results = context.getResults();
  fillInfo(results.initInfo());
  if (context.getParams().hasCallback()) session.callback = context.getParams().getCallback();
  // A client drops what it cached when it loses a connection, but what it wrote under those
  // locks may still be queued there: they are held over until it has written that back and said
  // recoveryDone, so that nobody else reads or locks the files first. Its active-server lock
  // goes now: it takes a new one.
  if (session.role == rpc::Hello::Role::CLIENT) {
    size_t kept = ctx_.locks.holdOver(session, RES_SERVER);
    if (kept > 0) {
      spdlog::info("{} is back: holding over its {} locks until it has recovered",
                   session.label.cStr(), kept);
    }
  } else {
    ctx_.locks.dropAll(session);
  }
  session.serverLock = 0;
  session.certSerial = kj::str(peer_.serial);
  ctx_.admit(session);
  session.connectedAt = ctx_.io.provider->getTimer().now();
  session.inRecovery = true;
  bool backFromAway = false;
  bool firstJoin = false;
  if (session.role == rpc::Hello::Role::CLIENT) {
    session.squashRoot = ctx_.config.squash.squashes(peer_);
    results.setRootSquashed(session.squashRoot);
    bool marked, joined;
    {
      store::Txn txn(ctx_.target.env(), store::Txn::READ);
      marked = ctx_.clients.isEvicted(txn, session.uuid);
      joined = ctx_.clients.joined(txn, session.uuid);
      backFromAway = ctx_.clients.away(txn, session.uuid);
    }
    firstJoin = !joined;
    // Only a first connect, a return after an eviction or after being away has anything to
    // write.
    kj::Maybe<ClientTable::Eviction> evicted;
    if (marked || !joined || backFromAway) {
      ctx_.commit([&](store::Txn& txn) {
        evicted = ctx_.clients.takeEvicted(txn, session.uuid);
        if (!joined || backFromAway) ctx_.clients.join(txn, session.uuid);
      });
    }
    KJ_IF_MAYBE (eviction, evicted) {
      results.setEvicted(true);
      results.setEvictedSession(eviction->session);
      spdlog::info("{} is back after its eviction ({}): told so", session.label.cStr(),
                   eviction->why.cStr());
      session.recovery = kj::str("evicted: ", eviction->why);
      KJ_IF_MAYBE (f, ctx_.fence) {
        f->clientBack(session.uuid);
      }
    } else {
      session.recovery = kj::str("recovering");
    }
  }
  results.setServerLock(session.serverLock);
  results.setSession(session.number);
  // What is on disk (everything, after a restart): a client replays only what is newer.
  results.setLastTransno(ctx_.reportedSynced());
  results.setLocks(kj::heap<LockService>(ctx_, kj::addRef(session)));
  if (ctx_.target.kind() == rpc::TargetKind::META) {
    results.setMeta(kj::heap<MetaService>(ctx_, kj::addRef(session)));
  } else {
    results.setData(kj::heap<DataService>(ctx_, kj::addRef(session)));
  }
  // Connected now (its service holds the connection): one more client to share locks among.
  if (session.role == rpc::Hello::Role::CLIENT) ctx_.shareLocks(session);
  // The away mark must be gone from the disk before this client's next update is answered:
  // a recovery that found it would not wait for that update's replay. Likewise the joining
  // itself: a target restarted without it would refuse the client's replays as a stranger's.
  if (backFromAway || firstJoin) return ctx_.syncer.syncNow();
  return kj::READY_NOW;
}

kj::Promise<void> ServerImpl::status(StatusContext context) {
  ctx_.config.access.check(peer_, AccessPolicy::Call::STATUS);
  auto s = context.getResults().initStatus();
  fillInfo(s.initInfo());
  s.setAddress(ctx_.config.advertise);
  s.setState(stateName(ctx_.state));
  s.setRecovering(ctx_.recovering());
  s.setStartReason(ctx_.target.startReason());
  s.setPartner(ctx_.config.partner);
  s.setMetricsAddress(ctx_.metricsAddress == nullptr ? kj::StringPtr("")
                                                     : ctx_.metricsAddress.asPtr());
  s.setUptimeMs((ctx_.io.provider->getTimer().now() - ctx_.started) / kj::MILLISECONDS);
  s.setLastTransno(ctx_.target.lastCommitted());
  s.setLastSynced(ctx_.reportedSynced());
  s.setMapUsedBytes(ctx_.target.env().usedBytes());
  s.setMapSizeBytes(ctx_.target.env().mapSize());
  s.setRpcCount(ctx_.rpcCount);
  auto rpcs = s.initRpcs(ctx_.rpcs.size());
  size_t r = 0;
  for (auto& [name, kind] : ctx_.rpcs) {
    rpcs[r].setName(name);
    rpcs[r++].setCount(kind.count);
  }
  size_t n = 0;
  for (auto& [k, v] : ctx_.sessions) {
    if (v->role == rpc::Hello::Role::CLIENT) ++n;
  }
  auto list = s.initClients(n);
  size_t i = 0;
  for (auto& [k, v] : ctx_.sessions) {
    if (v->role != rpc::Hello::Role::CLIENT) continue;
    auto c = list[i++];
    c.setUuid(v->uuid);
    c.setHostName(v->hostName);
    c.setSoftwareVersion(v->softwareVersion);
    c.setConnected(v->connections > 0);
    c.setLastRequestId(v->lastRequestId);
    c.setLocks(ctx_.locks.heldBy(*v));
    c.setRecovery(v->recovery == nullptr ? kj::StringPtr("new") : v->recovery.asPtr());
    KJ_IF_MAYBE (o, ctx_.opens) {
      c.setOpenFiles(o->countFor(v->key));
    }
  }
  KJ_IF_MAYBE (ns, ctx_.ns) {
    store::Txn txn(ctx_.target.env(), store::Txn::READ);
    size_t count = 0;
    ns->listTargets(txn, [&](rpc::TargetAddress::Reader) { ++count; });
    auto targets = s.initTargets(count);
    size_t j = 0;
    ns->listTargets(txn, [&](rpc::TargetAddress::Reader t) { targets.setWithCaveats(j++, t); });
    s.setOrphans(ns->orphans(txn).size());
    s.setDestroyQueue(ns->pendingDestroys(txn, SIZE_MAX).size());
  }
  KJ_IF_MAYBE (o, ctx_.opens) {
    s.setOpenFiles(o->total());
  }
  auto lockStats = ctx_.locks.stats();
  s.setLocksGranted(lockStats.granted);
  s.setLocksWaiting(lockStats.waiting);
  s.setLockCallbacks(lockStats.callbacks);
  s.setEvictions(lockStats.evictions);
  KJ_IF_MAYBE (objects, ctx_.objects) {
    store::Txn txn(ctx_.target.env(), store::Txn::READ);
    s.setChunks(objects->objectCount(txn));
  }
  return kj::READY_NOW;
}

kj::Promise<void> ServerImpl::shutdown(ShutdownContext) {
  ctx_.config.access.check(peer_, AccessPolicy::Call::SHUTDOWN);
  return ctx_.shutdown(kj::str("requested by ", peer_.describe()));
}

kj::Promise<void> ServerImpl::failover(FailoverContext) {
  ctx_.config.access.check(peer_, AccessPolicy::Call::FAILOVER);
  KJ_REQUIRE(ctx_.config.partner.size() > 0,
             "this server has no failover partner (serve --partner HOST:PORT)");
  if (ctx_.state == ServerState::SERVING) ctx_.failingOver = true;
  return ctx_.shutdown("failover to the partner requested");
}

kj::Promise<void> ServerImpl::restart(RestartContext context) {
  ctx_.config.access.check(peer_, AccessPolicy::Call::RESTART);
  auto params = context.getParams();
  // Checked before anything stops: a wrong path leaves the server serving.
  auto version = checkServerBinary(params.getBinary());
  context.getResults().setVersion(params.getVersionOverride().size() > 0
                                      ? params.getVersionOverride()
                                      : kj::StringPtr(version));
  if (ctx_.state == ServerState::SERVING) {
    ctx_.restartWith = Reexec{kj::str(params.getBinary()), kj::str(params.getVersionOverride())};
  }
  return ctx_.shutdown(kj::str("restart as ", params.getBinary(), " (version ", version, ")"));
}

kj::Promise<void> ServerImpl::replayBarrier(ReplayBarrierContext context) {
  ctx_.config.access.check(peer_, AccessPolicy::Call::REPLAY_BARRIER);
  KJ_REQUIRE(ctx_.config.testReplayBarrier,
             "replay barriers are a test hook: start the server with --test-replay-barrier");
  uint64_t at = ctx_.target.replayBarrier();
  ctx_.barrier = at;
  context.getResults().setTransno(at);
  return kj::READY_NOW;
}

kj::Promise<void> ServerImpl::evict(EvictContext context) {
  ctx_.checkOwner();
  ctx_.config.access.check(peer_, AccessPolicy::Call::EVICT);
  auto uuid = context.getParams().getClientUuid();
  KJ_REQUIRE(uuid.size() == 16, "a client uuid is 16 bytes", uuid.size());
  auto it = ctx_.sessions.find(kj::encodeHex(uuid).cStr());
  bool found = it != ctx_.sessions.end() && it->second->role == rpc::Hello::Role::CLIENT &&
               !it->second->evicted;
  auto why = kj::str("evicted by ", peer_.describe());
  uint64_t fenced = context.getParams().getSession();
  if (found) {
    ctx_.evict(*it->second, why, fenced);
  } else {
    // No session now (say, this server restarted since, and the client, hung, has not come
    // back): a client this target knows is told at its return all the same, so that what it
    // queued under the locks it lost is not sent then.
    bool known, marked;
    {
      store::Txn txn(ctx_.target.env(), store::Txn::READ);
      known = ctx_.clients.joined(txn, uuid);
      marked = ctx_.clients.isEvicted(txn, uuid);
    }
    if (known && !marked) {
      spdlog::warn("evicting client {} (not connected): {}", kj::encodeHex(uuid).cStr(),
                   why.cStr());
      ctx_.commit([&](store::Txn& txn) { ctx_.clients.markEvicted(txn, uuid, why, fenced); });
      found = true;
    } else if (marked && fenced != 0) {
      // Evicted already and not told yet: the mark must name this later session too, or the
      // client, back after it left the earlier one, would keep what it wrote in this one.
      ctx_.commit([&](store::Txn& txn) { ctx_.clients.markEvicted(txn, uuid, why, fenced); });
    }
  }
  context.getResults().setEvicted(found);
  return kj::READY_NOW;
}

kj::Promise<void> ServerImpl::registerTarget(RegisterTargetContext context) {
  ctx_.config.access.check(peer_, AccessPolicy::Call::REGISTER_TARGET);
  auto params = context.getParams();
  auto& ns = KJ_REQUIRE_NONNULL(ctx_.ns, "only a metadata server keeps the target list");
  KJ_REQUIRE(params.getFsUuid() == ctx_.target.fsUuid(), "the target belongs to another filesystem",
             kj::encodeHex(params.getFsUuid()), kj::encodeHex(ctx_.target.fsUuid()));
  auto t = params.getTarget();
  KJ_REQUIRE(t.getKind() == rpc::TargetKind::DATA, "only data targets register");
  KJ_REQUIRE(t.getAddresses().size() > 0 && t.getAddresses().size() <= 8,
             "a target has 1 to 8 addresses");
  ctx_.commit([&](store::Txn& txn) { ns.registerTarget(txn, t); });
  kj::Vector<kj::String> addresses;
  for (auto a : t.getAddresses()) addresses.add(kj::str(a));
  spdlog::info("data target {} registered at {}", t.getIndex(),
               kj::strArray(addresses, ",").cStr());
  KJ_IF_MAYBE (d, ctx_.destroyer) {
    d->targetMoved(t.getIndex(), addresses.releaseAsArray());
  }
  KJ_IF_MAYBE (f, ctx_.fence) {
    f->targetBack(t.getIndex());
  }
  return kj::READY_NOW;
}

}  // namespace cairn
