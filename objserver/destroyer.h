// Removes the data objects of destroyed files from the data targets. The metadata target queues
// them durably in the same transaction that destroys the inode; this works the queue off in
// batches (one request per data target, one transaction here), and takes an entry off only when
// every target of its file has confirmed. A data target that is down just delays it.
#pragma once

#include <kj/async.h>
#include <kj/map.h>

#include "objserver/data_links.h"
#include "objserver/namespace.h"
#include "objserver/server.h"
#include "rpc/server_link.h"

namespace cairn {

class Destroyer {
public:
  Destroyer(ServerContext& ctx, Namespace& ns, DataLinks& links);
  void start();
  void poke();  // new work may be queued
  void targetMoved(uint32_t index, kj::Array<kj::String> addresses);
  size_t queued();

  // Files per round; their objects go to each data target in one request
  // (features::MAX_DESTROY_MANY).
  static constexpr size_t BATCH = 512;
  static constexpr kj::Duration GATHER = 100 * kj::MILLISECONDS;

private:
  kj::Promise<void> loop();
  kj::Promise<void> later();  // loop() after GATHER
  kj::Promise<void> destroyOn(ServerLink& link, kj::Array<uint64_t> objects);

  ServerContext& ctx_;
  Namespace& ns_;
  DataLinks& links_;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> wake_;
  kj::Promise<void> running_ = nullptr;
};

}  // namespace cairn
