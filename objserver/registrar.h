// A data server tells the metadata server where it serves (and where its failover partner
// would), after every (re)connect, so that a data server that moved to another port or host, or
// failed over to its partner, is found again by clients and the destroyer.
#pragma once

#include <kj/async-io.h>

#include "objserver/target.h"
#include "rpc/server_link.h"

namespace cairn {

class Registrar {
public:
  Registrar(kj::AsyncIoContext& io, kj::Network& network, Target& target,
            kj::Array<kj::String> metaAddresses, kj::Array<kj::String> addresses,
            const LinkIdentity& identity);
  void start() { link_.start(); }
  bool registered() const { return registered_; }

private:
  Target& target_;
  kj::Array<kj::String> addresses_;  // this server's first, then its failover partner's
  ServerLink link_;
  bool registered_ = false;
};

}  // namespace cairn
