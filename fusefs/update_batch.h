// The updates a client answered ahead (creates, unlinks, rmdirs) go to the metadata server
// several to a request (MetaRequest.batch, features::BATCH), applied there in one transaction:
// one request, one reply record and one commit where each used to cost its own. Nothing waits
// to fill a batch: while fewer than `maxInFlight` of a directory's batches are on their way,
// what is queued for it goes at the end of the event loop's turn; while that many are, its
// updates queue up and leave together when one is answered. An `rm -r` or `tar x` that outruns
// the server so sends larger batches, and a lone unlink leaves at once, alone. Directory by
// directory: a batch waits on the server for the locks of all its updates, and an update in a
// directory another client is slow to give up must not hold up the others.
#pragma once

#include <kj/async.h>
#include <kj/function.h>
#include <kj/refcount.h>
#include <kj/vector.h>

#include <deque>
#include <unordered_map>

#include "rpc/server_link.h"

namespace cairn {

class UpdateBatch final : private kj::TaskSet::ErrorHandler {
public:
  using Build = kj::Function<void(rpc::MetaRequest::Builder)>;
  // Runs on the update's reply in the event its response arrived in (as metaCall's OnReply:
  // before any lock callback that left the server after it), and says how it ended.
  using OnReply = kj::Function<kj::Promise<int>(rpc::MetaReply::Reader)>;

  UpdateBatch(ServerLink& link, size_t maxInFlight);
  KJ_DISALLOW_COPY(UpdateBatch);

  // Sends the update `build` makes (an unlink, rmdir or create in directory `dir`) as a
  // write-back, in a batch if the server takes batches. A directory's updates leave in the
  // order they were sent.
  kj::Promise<int> send(uint64_t dir, Build build, OnReply onReply);

  uint64_t batches() const { return batches_; }      // batch requests sent
  uint64_t inBatches() const { return inBatches_; }  // updates they carried

private:
  struct Ended {
    kj::Promise<int> rest;  // what OnReply returned
  };
  struct Queued {
    Build build;
    OnReply onReply;
    kj::Own<kj::PromiseFulfiller<kj::Own<Ended>>> ended;
  };
  struct Lane {
    std::deque<Queued> queue;
    size_t inFlight = 0;
    bool scheduled = false;
  };
  void schedule(uint64_t dir);
  kj::Maybe<Lane&> find(uint64_t dir);
  void flush(uint64_t dir, Lane& lane);
  void taskFailed(kj::Exception&& exception) override;

  ServerLink& link_;
  size_t maxInFlight_;
  std::unordered_map<uint64_t, Lane> lanes_;  // by directory
  kj::TaskSet tasks_;
  uint64_t batches_ = 0;
  uint64_t inBatches_ = 0;
};

}  // namespace cairn
