// A data server tells the metadata server where it serves, after every (re)connect, so that a
// data server that moved to another port or host is found again by clients and the destroyer.
#pragma once

#include <kj/async-io.h>

#include "objserver/target.h"
#include "rpc/server_link.h"

namespace cairn {

class Registrar {
public:
  Registrar(kj::AsyncIoContext& io, Target& target, kj::Array<kj::String> metaAddresses,
            kj::String advertise, const LinkIdentity& identity);
  void start() { link_.start(); }
  bool registered() const { return registered_; }

private:
  Target& target_;
  kj::String advertise_;
  ServerLink link_;
  bool registered_ = false;
};

}  // namespace cairn
