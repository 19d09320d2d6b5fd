// The lock service: one capability per client session, a thin layer over the LockManager.
#pragma once

#include "objserver/server.h"

namespace cairn {

class LockService final : public rpc::LockSession::Server {
public:
  LockService(ServerContext& ctx, kj::Own<ClientSession> session);

  kj::Promise<void> enqueue(EnqueueContext context) override;
  kj::Promise<void> cancel(CancelContext context) override;
  kj::Promise<void> cancelMany(CancelManyContext context) override;
  kj::Promise<void> convertMany(ConvertManyContext context) override;
  kj::Promise<void> prolong(ProlongContext context) override;

private:
  void requireSession();
  ServerContext& ctx_;
  kj::Own<ClientSession> session_;
};

// A refused request from an evicted client: DISCONNECTED, so that the client reconnects and
// is told at connect that it was evicted.
[[noreturn]] void throwEvicted(const ClientSession& session);
// A request after a controlled shutdown completed (the client should not send one): the same,
// so that it reconnects to the next instance.
[[noreturn]] void throwStopped();

}  // namespace cairn
