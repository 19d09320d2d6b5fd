// The metadata server's own connections to the data targets (as a server, not for a client):
// one link per target, made when first needed, found again where the target list says the
// target is now. The destroyer removes objects through them, the client fence evicts clients.
#pragma once

#include <kj/async.h>

#include <map>

#include "objserver/namespace.h"
#include "objserver/server.h"
#include "rpc/server_link.h"

namespace cairn {

class DataLinks {
public:
  DataLinks(ServerContext& ctx, Namespace& ns, const LinkIdentity& identity);
  KJ_DISALLOW_COPY(DataLinks);

  // The link to data target `index`; null while the target list does not know it.
  kj::Maybe<ServerLink&> linkFor(uint32_t index);
  // Every data target of the target list.
  kj::Array<uint32_t> targets();
  // The target registered again at other addresses (failed over to its partner).
  void targetMoved(uint32_t index, kj::Array<kj::String> addresses);

private:
  ServerContext& ctx_;
  Namespace& ns_;
  LinkIdentity identity_;
  std::map<uint32_t, kj::Own<ServerLink>> links_;
};

}  // namespace cairn
