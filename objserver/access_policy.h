// Who may ask what of a server. Every Bootstrap call passes here with the identity the
// connection's certificate gave (rpc/transport.h):
//   status, ping                 anyone the cluster's CA vouches for
//   connect as a client          a client certificate (named in --allow-client, if any list)
//   connect as a server, and
//   registerTarget               a server certificate (data servers, the metadata server)
//   failover                     an administrator, or a server (a standby asks its partner)
//   shutdown, restart, evict,
//   replayBarrier                an administrator
// A refusal is logged with the peer and the call, and answered with an error saying what
// certificate it takes. In plain text (--insecure-plaintext, loopback tests) nobody is known
// and everything is allowed: the server said so loudly when it started.
#pragma once

#include <kj/array.h>
#include <kj/string.h>

#include "rpc/transport.h"

namespace cairn {

class AccessPolicy {
public:
  enum class Call {
    STATUS,
    PING,
    CONNECT_CLIENT,
    CONNECT_SERVER,
    REGISTER_TARGET,
    FAILOVER,
    SHUTDOWN,
    RESTART,
    REPLAY_BARRIER,
    EVICT
  };

  // `allowedClients`: the client names that may mount (empty: every client certificate).
  explicit AccessPolicy(kj::Array<kj::String> allowedClients = nullptr);

  // Throws (and logs) unless `peer` may make `call`.
  void check(const Peer& peer, Call call) const;

private:
  kj::Array<kj::String> allowedClients_;
};

kj::StringPtr callName(AccessPolicy::Call call);

}  // namespace cairn
