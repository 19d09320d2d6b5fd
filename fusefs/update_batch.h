// The updates a client answered ahead (creates, unlinks, rmdirs) go to the metadata server
// several to a request (MetaRequest.batch, features::BATCH), applied there in one transaction:
// one request, one reply record and one commit where each used to cost its own. Nobody waits
// for these updates but the application's later requests about what they touch, a lock called
// back, fsync and the unmount, so a directory's updates gather for `gather` before they leave
// (or until a batch is full): a `tar x` or `rm -r` then sends a batch where it sent an update,
// and the server's work per update falls by a quarter (measured: docs/benchmarks.md, session
// 25). Whoever does wait calls hurry() (GatherLanes says when a lane leaves). Directory by
// directory: a batch waits on the server for the locks of all its updates, and an update in a
// directory another client is slow to give up must not hold up the others. What write-behind
// sends after files' data (`wrote`, a setattr; features::BATCH_ATTRS) gathers likewise, in a
// lane of its own (Client's WRITE_BEHIND_LANE): tar's files' updates go several to a request
// too.
#pragma once

#include <kj/async.h>
#include <kj/function.h>
#include <kj/timer.h>

#include "fusefs/gather_lanes.h"
#include "rpc/server_link.h"

namespace cairn {

// An update queued in a lane.
struct UpdateBatchItem {
  using Build = kj::Function<void(rpc::MetaRequest::Builder)>;
  // Runs on the update's reply in the event its response arrived in (as metaCall's OnReply:
  // before any lock callback that left the server after it), and says how it ended.
  using OnReply = kj::Function<kj::Promise<int>(rpc::MetaReply::Reader)>;
  struct Ended {
    kj::Promise<int> rest;  // what OnReply returned
  };
  Build build;
  OnReply onReply;
  bool sync;  // an fsync waits for it: its request asks to be answered once on disk
  kj::Own<kj::PromiseFulfiller<kj::Own<Ended>>> ended;
  // Its sender dropped the promise (an eviction cancels what was answered ahead).
  bool cancelled() { return !ended->isWaiting(); }
};

// `build`, and the request asks to be answered once on disk if `sync` (MetaRequest.syncAfter).
UpdateBatchItem::Build answeredOnDisk(UpdateBatchItem::Build build, bool sync);

class UpdateBatch final : public GatherLanes<UpdateBatchItem> {
public:
  using Build = UpdateBatchItem::Build;
  using OnReply = UpdateBatchItem::OnReply;

  UpdateBatch(ServerLink& link, kj::Timer& timer, size_t maxInFlight, kj::Duration gather);

  // Sends the update `build` makes (an unlink, rmdir or create in directory `dir`, or what
  // write-behind sends, in its lane) as a write-back, in a batch if the server takes batches.
  // A lane's updates leave in the order they were sent. `sync`: an fsync waits for it, so its
  // request (the batch it goes in) asks to be answered once on disk (MetaRequest.syncAfter).
  kj::Promise<int> send(uint64_t dir, Build build, OnReply onReply, bool sync = false);

  uint64_t batches() const { return batches_; }      // batch requests sent
  uint64_t inBatches() const { return inBatches_; }  // updates they carried

private:
  bool full(const Queue& queue) const override;
  size_t take(const Queue& queue) const override;
  kj::Promise<void> sendBatch(uint64_t dir, kj::Array<UpdateBatchItem> batch) override;

  ServerLink& link_;
  uint64_t batches_ = 0;
  uint64_t inBatches_ = 0;
};

}  // namespace cairn
