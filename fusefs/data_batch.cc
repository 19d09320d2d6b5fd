#include "fusefs/data_batch.h"

#include <kj/debug.h>

#include "rpc/errors.h"
#include "rpc/feature_flags.h"

namespace cairn {

namespace {
// `referenced`: how many pieces of this message are referenced so far.
capnp::Orphan<capnp::Data> pieceData(capnp::Orphanage orphanage, kj::ArrayPtr<const kj::byte> data,
                                     size_t& referenced) {
  if (data.size() >= REFERENCE_FROM && referenced < MAX_REFERENCED &&
      reinterpret_cast<uintptr_t>(data.begin()) % sizeof(capnp::word) == 0 &&
      data.size() % sizeof(capnp::word) == 0) {
    ++referenced;
    return orphanage.referenceExternalData(data);
  }
  return orphanage.newOrphanCopy(capnp::Data::Reader(data));
}
}  // namespace

void buildWrites(rpc::DataRequest::Builder b, kj::ArrayPtr<const ObjectPieces> writes) {
  auto orphanage = capnp::Orphanage::getForMessageContaining(b);
  size_t referenced = 0;
  size_t n = 0;
  for (auto& w : writes) n += w.pieces.size();
  if (n == 1) {
    for (auto& w : writes) {
      if (w.pieces.size() == 0) continue;
      auto one = b.initWrite();
      one.setObjectId(w.object);
      one.setOffset(w.pieces[0].offset);
      one.adoptData(pieceData(orphanage, w.pieces[0].data, referenced));
    }
    return;
  }
  auto list = b.initWriteMany(n);
  size_t k = 0;
  for (auto& w : writes) {
    for (auto& p : w.pieces) {
      list[k].setObjectId(w.object);
      list[k].setOffset(p.offset);
      list[k].adoptData(pieceData(orphanage, p.data, referenced));
      ++k;
    }
  }
}

namespace {
// What a batch's request references: every file's bytes, until it is synced (ServerLink::data
// keeps the request for replay until then).
struct Keeps : public kj::Refcounted {
  kj::Array<kj::Own<kj::Refcounted>> each;
};
}  // namespace

// Two batches of a target on their way: one is committed while the next one's bytes arrive.
DataBatch::DataBatch(kj::Timer& timer, kj::Duration gather)
    : GatherLanes(timer, 2, gather, "data batch") {}

size_t DataBatch::bytesOf(kj::ArrayPtr<const StorePiece> pieces) {
  size_t bytes = 0;
  for (auto& p : pieces) bytes += p.data.size();
  return bytes;
}

kj::Promise<void> DataBatch::send(ServerLink& link, uint32_t target, uint64_t object,
                                  kj::ArrayPtr<const StorePiece> pieces,
                                  kj::Own<kj::Refcounted> keeps) {
  size_t bytes = bytesOf(pieces);
  KJ_REQUIRE(bytes <= SMALL && pieces.size() <= SMALL_PIECES, "too large to gather", bytes,
             pieces.size());
  auto paf = kj::newPromiseAndFulfiller<void>();
  add(target, DataBatchItem{&link, ObjectPieces{object, pieces}, bytes, kj::mv(keeps),
                            kj::mv(paf.fulfiller)});
  return kj::mv(paf.promise);
}

bool DataBatch::full(const Queue& queue) const {
  size_t bytes = 0, pieces = 0;
  for (auto& item : queue) {
    bytes += item.bytes;
    pieces += item.writes.pieces.size();
    if (bytes >= FULL || pieces >= features::MAX_WRITE_MANY_PIECES) return true;
  }
  return false;
}

size_t DataBatch::take(const Queue& queue) const {
  // Within writeMany's limits (a gathered item is far below them).
  size_t n = 0, bytes = 0, pieces = 0;
  for (auto& item : queue) {
    if (n > 0 && (bytes + item.bytes > features::MAX_WRITE_MANY_BYTES ||
                  pieces + item.writes.pieces.size() > features::MAX_WRITE_MANY_PIECES)) {
      break;
    }
    bytes += item.bytes;
    pieces += item.writes.pieces.size();
    ++n;
  }
  return n;
}

kj::Promise<void> DataBatch::sendBatch(uint64_t, kj::Array<DataBatchItem> batch) {
  ServerLink& link = *batch[0].link;
  if (batch.size() > 1) {
    ++batches_;
    inBatches_ += batch.size();
  }
  auto keeps = kj::refcounted<Keeps>();
  auto each = kj::heapArrayBuilder<kj::Own<kj::Refcounted>>(batch.size());
  for (auto& item : batch) each.add(kj::mv(item.keeps));
  keeps->each = each.finish();
  auto writes = KJ_MAP(item, batch) {
    return item.writes;
  };
  // Called for every attempt (a resend, a replay): built the same way each time.
  auto build = [writes = kj::mv(writes)](rpc::DataRequest::Builder b) { buildWrites(b, writes); };
  auto owned = kj::heap(kj::mv(batch));
  auto& items = *owned;
  return link.data(kj::mv(build), true, ServerLink::Class::WRITEBACK, kj::mv(keeps))
      .then(
          [&items](ServerLink::DataResponse&& resp) {
            int err = resp.getReply().getError();
            for (auto& item : items) {
              if (err == 0) {
                item.done->fulfill();
              } else {
                item.done->reject(errnoException(err));
              }
            }
          },
          [&items](kj::Exception&& e) {
            for (auto& item : items) item.done->reject(kj::cp(e));
          })
      .attach(kj::mv(owned));
}

}  // namespace cairn
