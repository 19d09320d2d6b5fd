#include "objserver/data_service.h"

#include <sys/statvfs.h>

#include <kj/debug.h>

#include <spdlog/spdlog.h>
#include "objserver/lock_service.h"

#include "objserver/object_store.h"
#include "rpc/feature_flags.h"

namespace cairn {

namespace {
constexpr uint32_t MAX_READ = 8 << 20;
// Reads of at least this much prefetch what follows them too: PREFETCH_AHEAD times as much.
constexpr uint32_t PREFETCH_FROM = 128 << 10;
constexpr uint32_t PREFETCH_AHEAD = 2;
}  // namespace

DataService::DataService(ServerContext& ctx, kj::Own<ClientSession> session)
    : ctx_(ctx),
      objects_(KJ_ASSERT_NONNULL(ctx.objects)),
      session_(kj::mv(session)),
      connection_(ctx, *session_) {}

void targetStatFs(Target& target, rpc::StatFs::Builder out) {
  constexpr uint64_t BLOCK = 4096;
  uint64_t mapSize = target.env().mapSize();
  uint64_t used = target.env().usedBytes();
  uint64_t mapFree = mapSize > used ? mapSize - used : 0;
  struct statvfs vfs;
  uint64_t diskTotal = mapSize, diskFree = mapFree;
  if (statvfs(target.dir().cStr(), &vfs) == 0) {
    diskTotal = uint64_t(vfs.f_blocks) * vfs.f_frsize;
    diskFree = uint64_t(vfs.f_bavail) * vfs.f_frsize;
  }
  // The smaller of the two limits is the real one; "total" is what is used plus what is free.
  uint64_t free = kj::min(mapFree, diskFree);
  uint64_t total = kj::min(mapSize, used + diskFree);
  (void)diskTotal;
  out.setBlockSize(BLOCK);
  out.setTotalBlocks(total / BLOCK);
  out.setFreeBlocks(free / BLOCK);
  out.setNameMax(255);
}

kj::Promise<void> DataService::call(CallContext context) {
  auto& kind = ctx_.countRpc("data", context.getParams().getRequest());
  if (session_->evicted) throwEvicted(*session_);
  if (ctx_.state == ServerState::STOPPED) throwStopped();
  // A request that breaks the protocol is refused with an exception; say so once, here.
  try {
    return ctx_.timed(kind, *session_, [&]() { return dispatch(context); });
  } catch (kj::Exception& e) {
    spdlog::warn("client {}: data request refused: {}", session_->key, e.getDescription().cStr());
    throw;
  }
}

kj::Promise<void> DataService::dispatch(CallContext context) {
  auto req = context.getParams().getRequest();
  using R = rpc::DataRequest;
  if (req.which() == R::REPLAYS_SENT || req.which() == R::GOODBYE) {
    ctx_.sessionNote(*session_, req.which() == R::GOODBYE);
    context.getResults().initReply().setLastSynced(ctx_.reportedSynced());
    return kj::READY_NOW;
  }
  bool update = req.which() == R::WRITE || req.which() == R::TRUNCATE ||
                req.which() == R::DESTROY || req.which() == R::DESTROY_MANY ||
                req.which() == R::WRITE_MANY;
  // Updates are put in order against the replays of a recovery.
  return ctx_.ordered(*session_, req.getReplayOf(), req.getResend(), update,
                      [this, context]() mutable { return run(context); });
}

kj::Promise<void> DataService::run(CallContext context) {
  auto req = context.getParams().getRequest();
  using R = rpc::DataRequest;
  switch (req.which()) {
    case R::READ: {
      auto reply = context.getResults().initReply();
      auto r = req.getRead();
      KJ_REQUIRE(r.getLength() <= MAX_READ, "read too large", r.getLength());
      try {
        store::Txn txn(ctx_.target.env(), store::Txn::READ);
        if (r.getLength() >= PREFETCH_FROM) {
          // A large read is most likely one of a sequence: the disk reads of this one and of
          // the next ones start together.
          objects_.prefetch(txn, r.getObjectId(), r.getOffset(),
                            uint64_t(r.getLength()) * (1 + PREFETCH_AHEAD));
        }
        // Copied from the map straight into the reply (a new blob is zeros: holes need nothing).
        // The blob is made in place: one made apart and adopted needed a landing pad for its
        // pointer, which took a new segment of the message's growing size — another blob-sized
        // allocation zeroed, for two words.
        auto data = reply.initData(r.getLength());
        size_t filled = objects_.read(txn, r.getObjectId(), r.getOffset(), data);
        if (filled < data.size()) {
          // The object ends sooner: the blob is cut to what is there (the space it gives back
          // at the end of its segment takes the landing pad).
          auto orphan = reply.disownData();
          orphan.truncate(filled);
          reply.adoptData(kj::mv(orphan));
        }
        ctx_.bytesOut += filled;
      } catch (FsError& e) {
        reply.setError(e.err());
      }
      reply.setLastSynced(ctx_.reportedSynced());
      return kj::READY_NOW;
    }
    case R::STATFS: {
      auto reply = context.getResults().initReply();
      targetStatFs(ctx_.target, reply.initStatfs());
      reply.setLastSynced(ctx_.reportedSynced());
      return kj::READY_NOW;
    }
    case R::REPLAYS_SENT:
    case R::GOODBYE:
      KJ_UNREACHABLE;  // answered in dispatch()
    case R::RECOVERY_DONE:
      ctx_.recoveryDone(*session_);
      context.getResults().initReply().setLastSynced(ctx_.reportedSynced());
      return kj::READY_NOW;
    case R::SYNC:
      return ctx_.syncer.syncNow().then([this, context]() mutable {
        context.getResults().initReply().setLastSynced(ctx_.reportedSynced());
      });
    case R::WRITE:
    case R::WRITE_MANY:
      return admitUpdate(context);
    case R::TRUNCATE:
    case R::DESTROY:
    case R::DESTROY_MANY:
      KJ_REQUIRE(req.which() != R::DESTROY_MANY ||
                     req.getDestroyMany().size() <= features::MAX_DESTROY_MANY,
                 "too many objects in one destroyMany", req.getDestroyMany().size());
      // A replay runs whole in its turn; a resend may have been answered already; and most
      // removals fit in one step: those go as they did, in the request's transaction, at once.
      if (req.getReplayOf() != 0 || req.getResend() || !largeRemoval(req)) {
        return admitUpdate(context);
      }
      return removeInSteps(context).then(
          [this, context]() mutable { return admitUpdate(context); });
  }
  KJ_FAIL_REQUIRE("unknown data request; the client is newer than this server",
                  static_cast<uint>(req.which()));
}

namespace {
// Chunks a step of a large removal takes off: about a millisecond of the loop, and a log
// record of ~120 KB (29 bytes a deletion), under LogRecord::LIMIT, so that the syncs other
// clients wait for meanwhile stay appends to the log.
constexpr size_t REMOVAL_STEP = 4000;

// Calls func(object, from) for each object the removal covers (a truncate keeps what is before
// `from`) until it returns false; returns whether none did.
template <typename Func>
bool forEachRemoval(rpc::DataRequest::Reader req, Func&& func) {
  using R = rpc::DataRequest;
  switch (req.which()) {
    case R::TRUNCATE:
      return func(req.getTruncate().getObjectId(), req.getTruncate().getSize());
    case R::DESTROY:
      return func(req.getDestroy(), uint64_t(0));
    case R::DESTROY_MANY:
      for (uint64_t object : req.getDestroyMany()) {
        if (!func(object, uint64_t(0))) return false;
      }
      return true;
    default:
      KJ_UNREACHABLE;
  }
}
}  // namespace

bool DataService::largeRemoval(rpc::DataRequest::Reader req) {
  try {
    store::Txn txn(ctx_.target.env(), store::Txn::READ);
    size_t left = REMOVAL_STEP;
    return !forEachRemoval(req, [&](uint64_t object, uint64_t from) {
      left -= objects_.chunksPast(txn, object, from, left);
      return left > 0;
    });
  } catch (FsError&) {
    return false;  // a bad offset: the request's own transaction says so
  }
}

kj::Promise<void> DataService::removeInSteps(CallContext context) {
  // Why: a destroy or a truncate of a large object was one transaction, and deleting a 4 GiB
  // file's half a million chunks held this target's loop — every other client's reads and
  // writes — for ~180 ms. Removing chunks is idempotent, so what the request would remove
  // goes a step at a time first, each step a transaction of the server's own, with the loop
  // free in between; the request's own transaction then has at most a step's worth left. A
  // crash between steps loses nothing: the request was not answered and comes again.
  if (session_->evicted) throwEvicted(*session_);
  return ctx_.room.admit([this, context]() mutable -> kj::Promise<void> {
    auto req = context.getParams().getRequest();
    bool done = false;
    ctx_.commit([&](store::Txn& txn) {
      size_t budget = REMOVAL_STEP;
      done = forEachRemoval(req, [&](uint64_t object, uint64_t from) {
        return objects_.removePast(txn, object, from, budget);
      });
    });
    ++ctx_.removalSteps;
    if (done) return kj::READY_NOW;
    // Through the timer, not evalLater: kj looks for I/O only once its queue is empty, so
    // steps chained with evalLater would still keep every other request out until the last.
    return ctx_.io.provider->getTimer()
        .afterDelay(0 * kj::NANOSECONDS)
        .then([this, context]() mutable { return removeInSteps(context); });
  });
}

kj::Promise<void> DataService::admitUpdate(CallContext context) {
  return ctx_.room.admit([this, context]() mutable { applyUpdate(context); });
}

void DataService::applyUpdate(CallContext context) {
  auto req = context.getParams().getRequest();
  using R = rpc::DataRequest;
  size_t manyBytes = 0;
  if (req.which() == R::WRITE_MANY) {
    auto pieces = req.getWriteMany();
    KJ_REQUIRE(pieces.size() <= features::MAX_WRITE_MANY_PIECES, "too many pieces in one writeMany",
               pieces.size());
    for (auto p : pieces) manyBytes += p.getData().size();
    KJ_REQUIRE(manyBytes <= features::MAX_WRITE_MANY_BYTES, "writeMany too large", manyBytes);
  }
  capnp::MallocMessageBuilder message;
  ctx_.update<rpc::DataReply>(
      *session_, req.getRequestId(), req.getOldestUnreplied(), message,
      [&](store::Txn& txn, rpc::DataReply::Builder reply) {
        switch (req.which()) {
          case R::WRITE: {
            auto w = req.getWrite();
            ctx_.target.env().requireSpace(txn, w.getData().size());
            ctx_.bytesIn += w.getData().size();
            objects_.write(txn, w.getObjectId(), w.getOffset(), w.getData());
            break;
          }
          case R::WRITE_MANY:
            // A write-behind batch: one transaction (one commit, the tree's pages written
            // once) instead of one per piece.
            ctx_.target.env().requireSpace(txn, manyBytes);
            ctx_.bytesIn += manyBytes;
            for (auto p : req.getWriteMany()) {
              objects_.write(txn, p.getObjectId(), p.getOffset(), p.getData());
            }
            break;
          case R::TRUNCATE:
            objects_.truncate(txn, req.getTruncate().getObjectId(), req.getTruncate().getSize());
            break;
          case R::DESTROY:
            objects_.destroy(txn, req.getDestroy());
            break;
          case R::DESTROY_MANY:
            for (uint64_t object : req.getDestroyMany()) objects_.destroy(txn, object);
            break;
          default:
            KJ_UNREACHABLE;
        }
        reply.setNone();
      },
      req.getReplayOf());
  context.getResults().setReply(message.getRoot<rpc::DataReply>());
}

}  // namespace cairn
