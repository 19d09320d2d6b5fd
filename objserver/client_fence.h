// Fences a client the metadata server evicts off the data targets first. Its data locks live
// here, but its writes go straight to the data servers: a client that hung with writes queued
// under a lock, evicted for not giving the lock back, would otherwise send them when it wakes,
// over what the client granted the lock next wrote meanwhile. So before the evicted client's
// locks go, every data target ends its session (Bootstrap.evict, as an administrator's eviction
// does): what it sends there is refused from then on, and it learns at its next connect that
// its queued writes are lost (EIO on those files).
#pragma once

#include <kj/async.h>
#include <kj/time.h>

#include "objserver/data_links.h"
#include "objserver/server.h"

namespace cairn {

class ClientFence {
public:
  // A data target that cannot be reached within this long is given up on (logged), so that
  // one that is down does not hold the lock up for good; there the window stays open.
  static constexpr kj::Duration LIMIT = 5 * kj::SECONDS;

  ClientFence(ServerContext& ctx, DataLinks& links) : ctx_(ctx), links_(links) {}
  KJ_DISALLOW_COPY(ClientFence);

  // Resolves once every data target has ended the client's session, or the limit passed.
  kj::Promise<void> fence(const ClientSession& session);

private:
  kj::Promise<void> fenceOn(uint32_t index, ServerLink& link, kj::Array<kj::byte> uuid,
                            kj::String label);
  ServerContext& ctx_;
  DataLinks& links_;
  // The lock manager holds the promises fence() returns; they use the links, which may go
  // first as the server stops: they end with this.
  kj::Canceler canceler_;
};

}  // namespace cairn
