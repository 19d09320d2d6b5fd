#include "fusefs/update_batch.h"

#include <kj/debug.h>
#include <kj/vector.h>
#include <spdlog/spdlog.h>

#include <algorithm>

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
    : link_(link), timer_(timer), maxInFlight_(maxInFlight), gather_(gather), tasks_(*this) {}

kj::Promise<int> UpdateBatch::send(uint64_t dir, Build build, OnReply onReply) {
  if (!(link_.peerFeatures() & features::BATCH)) {
    // A server without batches: each on its own, at once, as before.
    return link_.meta(kj::mv(build), true, ServerLink::Class::WRITEBACK)
        .then([onReply = kj::mv(onReply)](ServerLink::MetaResponse&& resp) mutable {
          return onReply(resp.getReply()).attach(kj::mv(resp));
        });
  }
  auto paf = kj::newPromiseAndFulfiller<kj::Own<Ended>>();
  lanes_[dir].queue.push_back(Queued{kj::mv(build), kj::mv(onReply), kj::mv(paf.fulfiller)});
  schedule(dir);
  return paf.promise.then([](kj::Own<Ended> ended) { return kj::mv(ended->rest); });
}

void UpdateBatch::schedule(uint64_t dir) {
  auto it = lanes_.find(dir);
  if (it == lanes_.end()) return;
  auto& lane = it->second;
  if (lane.queue.empty() && lane.inFlight == 0) {
    lanes_.erase(it);  // nothing of this directory's left
    return;
  }
  if (lane.scheduled || lane.queue.empty()) return;
  if (lane.due || lane.queue.size() >= features::MAX_BATCH || gather_ == 0 * kj::SECONDS) {
    // Otherwise it leaves when a batch on its way is answered (this is called again then).
    if (lane.inFlight >= maxInFlight_) return;
    lane.scheduled = true;
    // Last in the turn: the updates answered in it leave together.
    tasks_.add(kj::evalLast([this, dir]() {
      KJ_IF_MAYBE (lane, find(dir)) {
        lane->scheduled = false;
        flush(dir, *lane);
      }
    }));
  } else if (!lane.gathering) {
    lane.gathering = true;
    tasks_.add(timer_.afterDelay(gather_).then([this, dir]() {
      KJ_IF_MAYBE (lane, find(dir)) {
        lane->gathering = false;
        if (!lane->queue.empty()) lane->due = true;
        schedule(dir);
      }
    }));
  }
}

void UpdateBatch::hurry() {
  kj::Vector<uint64_t> dirs;
  for (auto& [dir, lane] : lanes_) {
    if (lane.queue.empty()) continue;
    lane.due = true;
    dirs.add(dir);
  }
  for (uint64_t dir : dirs) schedule(dir);
}

kj::Maybe<UpdateBatch::Lane&> UpdateBatch::find(uint64_t dir) {
  auto it = lanes_.find(dir);
  if (it == lanes_.end()) return nullptr;
  return it->second;
}

void UpdateBatch::flush(uint64_t dir, Lane& lane) {
  // Cancelled while it waited here (an eviction drops what was answered ahead): never sent.
  auto cancelled = [](Queued& q) { return !q.ended->isWaiting(); };
  lane.queue.erase(std::remove_if(lane.queue.begin(), lane.queue.end(), cancelled),
                   lane.queue.end());
  if (lane.queue.empty()) {
    lane.due = false;
    schedule(dir);  // forgets the lane if nothing of it is on its way either
    return;
  }
  if (lane.inFlight >= maxInFlight_) return;
  size_t n = kj::min(lane.queue.size(), features::MAX_BATCH);
  auto builds = kj::heapArrayBuilder<Build>(n);
  auto waiting = kj::heapArrayBuilder<Queued>(n);
  for (size_t i = 0; i < n; ++i) {
    builds.add(kj::mv(lane.queue.front().build));
    waiting.add(kj::mv(lane.queue.front()));
    lane.queue.pop_front();
  }
  if (lane.queue.empty()) lane.due = false;
  ++lane.inFlight;
  kj::Promise<ServerLink::MetaResponse> sent = nullptr;
  if (n == 1) {
    sent = link_.meta(kj::mv(builds[0]), true, ServerLink::Class::WRITEBACK);
  } else {
    ++batches_;
    inBatches_ += n;
    // Called for every attempt (a resend, a replay): each update is built the same way again.
    sent = link_.meta(
        [builds = builds.finish()](rpc::MetaRequest::Builder b) mutable {
          auto list = b.initBatch(builds.size());
          for (auto i : kj::indices(builds)) builds[i](list[i]);
        },
        true, ServerLink::Class::WRITEBACK);
  }
  auto owned = kj::heap(waiting.finish());
  auto& each = *owned;
  auto ended = sent.then(
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
          each[i].ended->fulfill(kj::heap<Ended>(Ended{rest.attach(kj::addRef(*shared))}));
        }
      },
      [&each](kj::Exception&& e) {
        for (auto& q : each) q.ended->reject(kj::cp(e));
      });
  tasks_.add(ended.attach(kj::mv(owned)).then([this, dir]() {
    KJ_IF_MAYBE (lane, find(dir)) {
      --lane->inFlight;
    }
    schedule(dir);
  }));
}

void UpdateBatch::taskFailed(kj::Exception&& exception) {
  spdlog::error("update batch: {}", exception.getDescription().cStr());
}

}  // namespace cairn
