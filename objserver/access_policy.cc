#include "objserver/access_policy.h"

#include <kj/debug.h>
#include <spdlog/spdlog.h>

namespace cairn {

kj::StringPtr callName(AccessPolicy::Call call) {
  using C = AccessPolicy::Call;
  switch (call) {
    case C::STATUS:
      return "status";
    case C::PING:
      return "ping";
    case C::CONNECT_CLIENT:
      return "a client session (mount)";
    case C::CONNECT_SERVER:
      return "a server session";
    case C::REGISTER_TARGET:
      return "registerTarget";
    case C::FAILOVER:
      return "failover";
    case C::SHUTDOWN:
      return "shutdown";
    case C::RESTART:
      return "restart";
    case C::REPLAY_BARRIER:
      return "replayBarrier";
    case C::EVICT:
      return "evict";
  }
  return "?";
}

AccessPolicy::AccessPolicy(kj::Array<kj::String> allowedClients)
    : allowedClients_(kj::mv(allowedClients)) {}

void AccessPolicy::check(const Peer& peer, Call call) const {
  using C = AccessPolicy::Call;
  using R = Peer::Role;
  if (!peer.authenticated()) return;
  kj::StringPtr needs;
  switch (call) {
    case C::STATUS:
    case C::PING:
      return;
    case C::CONNECT_CLIENT:
      if (peer.role == R::CLIENT) {
        if (allowedClients_.size() == 0) return;
        for (auto& name : allowedClients_) {
          if (name == peer.name) return;
        }
        needs = "a client named in --allow-client";
      } else {
        needs = "a client certificate";
      }
      break;
    case C::CONNECT_SERVER:
    case C::REGISTER_TARGET:
      if (peer.role == R::SERVER) return;
      needs = "a server certificate";
      break;
    case C::FAILOVER:
      if (peer.role == R::ADMIN || peer.role == R::SERVER) return;
      needs = "an admin certificate";
      break;
    case C::EVICT:
      // A metadata server fences a client it evicted off the data targets (ClientFence).
      if (peer.role == R::ADMIN || peer.role == R::SERVER) return;
      needs = "an admin certificate";
      break;
    case C::SHUTDOWN:
    case C::RESTART:
    case C::REPLAY_BARRIER:
      if (peer.role == R::ADMIN) return;
      needs = "an admin certificate";
      break;
  }
  auto who = peer.describe();
  spdlog::warn("refused {} to {}: it takes {}", callName(call).cStr(), who.cStr(), needs.cStr());
  kj::throwFatalException(KJ_EXCEPTION(FAILED, "permission denied", callName(call), needs, who));
}

}  // namespace cairn
