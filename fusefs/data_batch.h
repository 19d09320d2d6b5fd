// Small write-behind writes of several files go to a data target in one writeMany (its pieces
// name their objects), applied there in one transaction: an untar's ~8,000 files cost a data
// target a request, a reply record and a commit each; gathered, a few hundred. Nobody waits
// for these writes but fsync, close's flush, a lock called back and a drain, all through
// Client::flushed, which hurries them; so a target's small writes gather for `gather` (or
// until a batch is full, GatherLanes) before they leave. Large writes (a file's batch of more
// than SMALL bytes for the target) leave at once on their own: they fill a request already.
#pragma once

#include <capnp/orphan.h>
#include <kj/async.h>
#include <kj/refcount.h>
#include <kj/timer.h>

#include "fusefs/gather_lanes.h"
#include "rpc/server_link.h"

namespace cairn {

// Bytes to write at an offset of an object.
struct StorePiece {
  uint64_t offset;  // in the object
  kj::ArrayPtr<const kj::byte> data;
};

// Pieces of one object.
struct ObjectPieces {
  uint64_t object;
  kj::ArrayPtr<const StorePiece> pieces;
};

// Fills a data request with the pieces: one `write` if there is one piece, else a `writeMany`
// (the caller keeps within its limits). The bytes of large pieces are referenced where they
// are, not copied into the message, when Cap'n Proto allows (word-aligned, whole words: nothing
// past the end goes out); the caller keeps them until the reply, and a resend builds the
// request again.
//
// A referenced piece is a segment of the message of its own, and Cap'n Proto's reader refuses
// a message of 512 segments or more (a fixed limit; the server drops the connection, and the
// resend on the next one met the same fate, so a file written in 4 KiB pieces with gaps between
// them hung its mount). So only pieces of REFERENCE_FROM bytes or more are referenced, at most
// MAX_REFERENCED of them; the rest are copied into the message's own segments, which grow.
constexpr size_t REFERENCE_FROM = 16 << 10;
constexpr size_t MAX_REFERENCED = 256;
void buildWrites(rpc::DataRequest::Builder b, kj::ArrayPtr<const ObjectPieces> writes);

// One file's writes to one target, queued in the target's lane.
struct DataBatchItem {
  ServerLink* link;     // the target's (a client's links live as long as it does)
  ObjectPieces writes;  // owned, with their bytes, by `keeps`
  size_t bytes;
  kj::Own<kj::Refcounted> keeps;
  kj::Own<kj::PromiseFulfiller<void>> done;
  // Its sender dropped the promise.
  bool cancelled() { return !done->isWaiting(); }
};

class DataBatch final : public GatherLanes<DataBatchItem> {
public:
  // What gathers: one file's writes to one target of at most this many bytes and pieces.
  static constexpr size_t SMALL = 256 << 10;
  static constexpr size_t SMALL_PIECES = 64;
  // A lane this full leaves without gathering longer.
  static constexpr size_t FULL = 1 << 20;

  DataBatch(kj::Timer& timer, kj::Duration gather);

  static bool gathers(kj::ArrayPtr<const StorePiece> pieces) {
    return pieces.size() <= SMALL_PIECES && bytesOf(pieces) <= SMALL;
  }
  // Sends one file's pieces (gathers(pieces)) to the target `link` serves, as a write-back, in
  // a writeMany with other files' (the link takes writeMany). Resolves once they are written;
  // fails as the request does (every file of a batch sees its error).
  kj::Promise<void> send(ServerLink& link, uint32_t target, uint64_t object,
                         kj::ArrayPtr<const StorePiece> pieces, kj::Own<kj::Refcounted> keeps);

  uint64_t batches() const { return batches_; }      // writeMany requests of several files
  uint64_t inBatches() const { return inBatches_; }  // files' writes they carried

private:
  static size_t bytesOf(kj::ArrayPtr<const StorePiece> pieces);
  bool full(const Queue& queue) const override;
  size_t take(const Queue& queue) const override;
  kj::Promise<void> sendBatch(uint64_t target, kj::Array<DataBatchItem> batch) override;

  uint64_t batches_ = 0;
  uint64_t inBatches_ = 0;
};

}  // namespace cairn
