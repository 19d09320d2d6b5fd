#include "objserver/destroyer.h"

#include <kj/debug.h>
#include <kj/vector.h>
#include <spdlog/spdlog.h>

#include "rpc/feature_flags.h"

namespace cairn {

static_assert(Destroyer::BATCH <= features::MAX_DESTROY_MANY, "a batch's objects fit one request");

Destroyer::Destroyer(ServerContext& ctx, Namespace& ns, DataLinks& links)
    : ctx_(ctx), ns_(ns), links_(links) {}

void Destroyer::start() {
  running_ = loop().eagerlyEvaluate(
      [](kj::Exception&& e) { spdlog::error("destroyer stopped: {}", e.getDescription().cStr()); });
}

void Destroyer::poke() {
  KJ_IF_MAYBE (w, wake_) {
    (*w)->fulfill();
    wake_ = nullptr;
  }
}

size_t Destroyer::queued() {
  store::Txn txn(ctx_.target.env(), store::Txn::READ);
  return ns_.pendingDestroys(txn, 1000000).size();
}

void Destroyer::targetMoved(uint32_t index, kj::Array<kj::String> addresses) {
  links_.targetMoved(index, kj::mv(addresses));
  poke();
}

kj::Promise<void> Destroyer::loop() {
  kj::Vector<Namespace::PendingDestroy> batch;
  {
    store::Txn txn(ctx_.target.env(), store::Txn::READ);
    batch = ns_.pendingDestroys(txn, BATCH);
  }
  if (batch.size() == 0) {
    auto paf = kj::newPromiseAndFulfiller<void>();
    wake_ = kj::mv(paf.fulfiller);
    return paf.promise.then([this]() { return later(); });
  }
  bool full = batch.size() == BATCH;
  // The batch's objects by target: one request (one transaction) per data target, then one
  // transaction here for every file whose targets all confirmed. A file with a target not known
  // yet stays queued.
  std::map<uint32_t, kj::Vector<uint64_t>> byTarget;
  kj::Vector<uint64_t> inos(batch.size());  // those with every target reachable
  for (auto& item : batch) {
    bool reachable = true;
    for (uint32_t t : item.layout.targets) reachable = reachable && links_.linkFor(t) != nullptr;
    if (!reachable) continue;
    for (uint32_t t : item.layout.targets) byTarget[t].add(item.layout.objectId);
    inos.add(item.ino);
  }
  auto done = kj::heapArrayBuilder<kj::Promise<void>>(byTarget.size());
  for (auto& [target, objects] : byTarget) {
    done.add(destroyOn(KJ_ASSERT_NONNULL(links_.linkFor(target)), objects.releaseAsArray()));
  }
  bool progress = inos.size() > 0;
  auto finished = kj::joinPromises(done.finish()).then([this, inos = inos.releaseAsArray()]() {
    ctx_.commit([&](store::Txn& txn) {
      for (uint64_t ino : inos) ns_.destroyed(txn, ino);
    });
  });
  return finished.then(
      [this, progress, full]() -> kj::Promise<void> {
        if (progress) return full ? loop() : later();
        // Some target is unknown yet: look again later or when told.
        auto paf = kj::newPromiseAndFulfiller<void>();
        wake_ = kj::mv(paf.fulfiller);
        return paf.promise.exclusiveJoin(ctx_.io.provider->getTimer().afterDelay(5 * kj::SECONDS))
            .then([this]() { return loop(); });
      },
      [this](kj::Exception&& e) -> kj::Promise<void> {
        spdlog::warn("destroying objects: {}; will retry", e.getDescription().cStr());
        return ctx_.io.provider->getTimer().afterDelay(1 * kj::SECONDS).then([this]() {
          return loop();
        });
      });
}

kj::Promise<void> Destroyer::later() {
  // Nothing here is urgent: waiting a little gathers what a `rm -rf` queues meanwhile into one
  // round, instead of a round of a few files each time one finishes.
  return ctx_.io.provider->getTimer().afterDelay(GATHER).then([this]() { return loop(); });
}

kj::Promise<void> Destroyer::destroyOn(ServerLink& link, kj::Array<uint64_t> objects) {
  // The server's features are known once connected: a server of a release before destroyMany
  // gets a request per object.
  return link.server().ignoreResult().then([&link, objects = kj::mv(objects)]() mutable {
    auto check = [](ServerLink::DataResponse&& resp) {
      KJ_REQUIRE(resp.getReply().getError() == 0, "destroy failed", resp.getReply().getError());
    };
    if (!(link.peerFeatures() & features::DESTROY_MANY)) {
      auto each = kj::heapArrayBuilder<kj::Promise<void>>(objects.size());
      for (uint64_t object : objects) {
        each.add(link.data([object](rpc::DataRequest::Builder r) { r.setDestroy(object); }, true)
                     .then(check));
      }
      return kj::joinPromises(each.finish());
    }
    return link
        .data(
            [objects = kj::mv(objects)](rpc::DataRequest::Builder r) {
              auto list = r.initDestroyMany(objects.size());
              for (size_t i = 0; i < objects.size(); i++) list.set(i, objects[i]);
            },
            true)
        .then(check);
  });
}

}  // namespace cairn
