// The data service: one capability per connected client session of a data target. Turns a
// DataRequest into ObjectStore calls inside one transaction.
#pragma once

#include "objserver/server.h"

namespace cairn {

class DataService final : public rpc::DataSession::Server {
public:
  DataService(ServerContext& ctx, kj::Own<ClientSession> session);

  kj::Promise<void> call(CallContext context) override;

private:
  kj::Promise<void> dispatch(CallContext context);
  kj::Promise<void> run(CallContext context);
  void applyUpdate(CallContext context);  // in one transaction, its reply recorded with it
  kj::Promise<void> admitUpdate(CallContext context);  // applyUpdate through the room gate
  // A truncate or destroy that removes more chunks than a step (removeInSteps says why).
  bool largeRemoval(rpc::DataRequest::Reader req);
  kj::Promise<void> removeInSteps(CallContext context);
  ServerContext& ctx_;
  ObjectStore& objects_;
  kj::Own<ClientSession> session_;
  ServerContext::Connection connection_;  // after session_: goes before it
};

// Capacity of a data target: what its LMDB map and its filesystem can still take.
void targetStatFs(Target& target, rpc::StatFs::Builder out);

}  // namespace cairn
