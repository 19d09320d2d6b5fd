// The updates a client answered ahead (creates, unlinks, rmdirs) go to the metadata server
// several to a request (MetaRequest.batch, features::BATCH), applied there in one transaction:
// one request, one reply record and one commit where each used to cost its own. Nobody waits
// for these updates but the application's later requests about what they touch, a lock called
// back, fsync and the unmount, so a directory's updates gather for `gather` before they leave
// (or until a batch is full): a `tar x` or `rm -r` then sends a batch where it sent an update,
// and the server's work per update falls by a quarter (measured: docs/benchmarks.md, session
// 25). Whoever does wait calls hurry(): what is gathering leaves at the end of the turn. While
// `maxInFlight` of a directory's batches are on their way, its updates queue up and leave when
// one is answered. Directory by directory: a batch waits on the server for the locks of all its
// updates, and an update in a directory another client is slow to give up must not hold up the
// others. What write-behind sends after files' data (`wrote`, a setattr; features::BATCH_ATTRS)
// gathers likewise, in a lane of its own (Client's WRITE_BEHIND_LANE): tar's files' updates go
// several to a request too. An update whose sender dropped its promise (an eviction cancels
// what was answered ahead) is dropped from the queue, never sent.
#pragma once

#include <kj/async.h>
#include <kj/function.h>
#include <kj/refcount.h>
#include <kj/timer.h>
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

  UpdateBatch(ServerLink& link, kj::Timer& timer, size_t maxInFlight, kj::Duration gather);
  KJ_DISALLOW_COPY(UpdateBatch);

  // Sends the update `build` makes (an unlink, rmdir or create in directory `dir`, or what
  // write-behind sends, in its lane) as a write-back, in a batch if the server takes batches.
  // A lane's updates leave in the order they were sent.
  kj::Promise<int> send(uint64_t dir, Build build, OnReply onReply);
  // Someone waits for updates sent: every directory's queue leaves without gathering (at the
  // end of this turn, or as its batches on their way are answered) until it is empty.
  void hurry();

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
    bool scheduled = false;  // leaves at the end of this turn
    bool gathering = false;  // the gathering time runs
    // Gathered long enough, or hurried: leaves as soon as the in-flight limit lets it, until
    // the queue is empty (what comes after that gathers again).
    bool due = false;
  };
  void schedule(uint64_t dir);
  kj::Maybe<Lane&> find(uint64_t dir);
  void flush(uint64_t dir, Lane& lane);
  void taskFailed(kj::Exception&& exception) override;

  ServerLink& link_;
  kj::Timer& timer_;
  size_t maxInFlight_;
  kj::Duration gather_;
  std::unordered_map<uint64_t, Lane> lanes_;  // by directory
  kj::TaskSet tasks_;
  uint64_t batches_ = 0;
  uint64_t inBatches_ = 0;
};

}  // namespace cairn
