#include "fusefs/update_batch.h"

#include <kj/debug.h>

#include "rpc/feature_flags.h"

namespace cairn {

namespace {
// A batch's response, kept by each update's continuation until it is done with its reply.
struct Response : public kj::Refcounted {
  explicit Response(ServerLink::MetaResponse&& r) : response(kj::mv(r)) {}
  ServerLink::MetaResponse response;
};
}  // namespace

UpdateBatch::UpdateBatch(ServerLink& link, kj::Timer& timer, size_t maxInFlight,
                         kj::Duration gather)
    : GatherLanes(timer, maxInFlight, gather, "update batch"), link_(link) {}

UpdateBatchItem::Build answeredOnDisk(UpdateBatchItem::Build build, bool sync) {
  if (!sync) return build;
  return [build = kj::mv(build)](rpc::MetaRequest::Builder b) mutable {
    build(b);
    b.setSyncAfter(true);
  };
}

kj::Promise<int> UpdateBatch::send(uint64_t dir, Build build, OnReply onReply, bool sync) {
  if (!(link_.peerFeatures() & features::BATCH)) {
    // A server without batches: each on its own, at once, as before.
    return link_.meta(answeredOnDisk(kj::mv(build), sync), true, ServerLink::Class::WRITEBACK)
        .then([onReply = kj::mv(onReply)](ServerLink::MetaResponse&& resp) mutable {
          return onReply(resp.getReply()).attach(kj::mv(resp));
        });
  }
  auto paf = kj::newPromiseAndFulfiller<kj::Own<UpdateBatchItem::Ended>>();
  add(dir, UpdateBatchItem{kj::mv(build), kj::mv(onReply), sync, kj::mv(paf.fulfiller)});
  return paf.promise.then(
      [](kj::Own<UpdateBatchItem::Ended> ended) { return kj::mv(ended->rest); });
}

bool UpdateBatch::full(const Queue& queue) const {
  return queue.size() >= features::MAX_BATCH;
}

size_t UpdateBatch::take(const Queue& queue) const {
  return kj::min(queue.size(), features::MAX_BATCH);
}

kj::Promise<void> UpdateBatch::sendBatch(uint64_t, kj::Array<UpdateBatchItem> batch) {
  size_t n = batch.size();
  bool sync = false;
  for (auto& item : batch) sync = sync || item.sync;
  kj::Promise<ServerLink::MetaResponse> sent = nullptr;
  if (n == 1) {
    sent = link_.meta(answeredOnDisk(kj::mv(batch[0].build), sync), true,
                      ServerLink::Class::WRITEBACK);
  } else {
    ++batches_;
    inBatches_ += n;
    auto builds = kj::heapArrayBuilder<Build>(n);
    for (auto& item : batch) builds.add(kj::mv(item.build));
    // Called for every attempt (a resend, a replay): each update is built the same way again.
    sent = link_.meta(answeredOnDisk(
                          [builds = builds.finish()](rpc::MetaRequest::Builder b) mutable {
                            auto list = b.initBatch(builds.size());
                            for (auto i : kj::indices(builds)) builds[i](list[i]);
                          },
                          sync),
                      true, ServerLink::Class::WRITEBACK);
  }
  auto owned = kj::heap(kj::mv(batch));
  auto& each = *owned;
  return sent
      .then(
          [&each](ServerLink::MetaResponse&& resp) {
            auto shared = kj::refcounted<Response>(kj::mv(resp));
            auto reply = shared->response.getReply();
            // Refused as a whole (no batch reply): each update ends with that errno.
            bool whole = !reply.isBatch();
            if (!whole && reply.getBatch().size() != each.size()) {
              auto e = KJ_EXCEPTION(FAILED, "a batch's reply does not match it",
                                    reply.getBatch().size(), each.size());
              for (auto& q : each) q.ended->reject(kj::cp(e));
              return;
            }
            // Each in this event, in order (OnReply).
            for (auto i : kj::indices(each)) {
              auto one = whole ? reply : reply.getBatch()[i];
              kj::Promise<int> rest =
                  kj::evalNow([&]() -> kj::Promise<int> { return each[i].onReply(one); });
              each[i].ended->fulfill(kj::heap<UpdateBatchItem::Ended>(
                  UpdateBatchItem::Ended{rest.attach(kj::addRef(*shared))}));
            }
          },
          [&each](kj::Exception&& e) {
            for (auto& q : each) q.ended->reject(kj::cp(e));
          })
      .attach(kj::mv(owned));
}

}  // namespace cairn
