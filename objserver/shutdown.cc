// Controlled shutdown (Simplified Interoperation): the active-server lock.
//
// Every session holds PR on the server's RES_SERVER resource from its connect on; a client may
// send requests only while it holds it. To shut down, the server enqueues EX on it. That calls
// every client back (it blocks new requests, writes back, drops what it cached from this
// server, waits for its requests in flight and cancels its PR: "ready to reconnect") and keeps
// newcomers out until the next instance. A client that does not cancel within the lock timeout
// is evicted by the lock manager, so one stuck client cannot hold a shutdown up for ever.
#include <spdlog/spdlog.h>

#include "objserver/server.h"
#include "rpc/feature_flags.h"
#include "rpc/lock_names.h"

namespace cairn {

kj::StringPtr stateName(ServerState state) {
  switch (state) {
    case ServerState::SERVING:
      return "serving";
    case ServerState::DRAINING:
      return "draining";
    case ServerState::STOPPED:
      return "stopped";
  }
  return "unknown";
}

namespace {
LockSpec activeServerLock(LockMode mode) {
  LockSpec spec;
  spec.resource = ResourceId{RES_SERVER, 0};
  spec.mode = mode;
  return spec;
}

[[noreturn]] void refuseShuttingDown() {
  // OVERLOADED, not DISCONNECTED or FAILED: a client retries it with backoff and never passes
  // it to an application.
  kj::throwFatalException(
      KJ_EXCEPTION(OVERLOADED, "server shutting down; retry (the next instance takes over)"));
}
}  // namespace

void ServerContext::admit(ClientSession& session) {
  if (state != ServerState::SERVING) refuseShuttingDown();
  // A peer that did not announce the feature would not answer the callback: it gets no PR,
  // and a shutdown does not wait for it (it reconnects and resends, as before the feature).
  if (!(session.features & features::ACTIVE_SERVER_LOCK)) {
    session.serverLock = 0;
    return;
  }
  KJ_IF_MAYBE (id, locks.tryGrant(session, activeServerLock(LockMode::PR))) {
    session.serverLock = *id;
  } else {
    refuseShuttingDown();
  }
}

void ServerContext::cancelled(ClientSession& session, uint64_t lockId) {
  if (lockId == 0 || lockId != session.serverLock) return;
  session.serverLock = 0;
  if (state == ServerState::DRAINING) {
    spdlog::info("{} is ready to reconnect", session.label.cStr());
  }
}

kj::Promise<void> ServerContext::shutdown(kj::StringPtr why) {
  KJ_IF_MAYBE (s, stopping_) {
    return s->addBranch();
  }
  auto& timer = io.provider->getTimer();
  auto begun = timer.now();
  state = ServerState::DRAINING;
  // Clients away at this moment miss the callback: what they hold (dirty data, opens about to
  // change) cannot be handed back before we stop, so they cannot recover. Peers have nothing
  // to hand back.
  kj::Vector<kj::Own<ClientSession>> away;
  size_t connected = 0;
  for (auto& [key, s] : sessions) {
    if (s->connections > 0) {
      ++connected;
    } else {
      away.add(kj::addRef(*s));
    }
  }
  spdlog::info("controlled shutdown ({}): calling back {} connected sessions", why.cStr(),
               connected);
  for (auto& s : away) {
    if (s->role == rpc::Hello::Role::CLIENT) {
      evict(*s, "disconnected during a controlled shutdown");
    } else {
      locks.dropAll(*s);
    }
  }
  auto forked = locks.enqueue(serverOwner, activeServerLock(LockMode::EX))
                    .then([this, begun, &timer](uint64_t) {
                      state = ServerState::STOPPED;
                      stopped_.fulfiller->fulfill();
                      spdlog::info("controlled shutdown: every client ready after {} ms",
                                   (timer.now() - begun) / kj::MILLISECONDS);
                    })
                    .fork();
  auto branch = forked.addBranch();
  stopping_ = kj::mv(forked);
  return branch;
}

}  // namespace cairn
