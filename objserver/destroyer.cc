#include "objserver/destroyer.h"

#include <kj/debug.h>
#include <spdlog/spdlog.h>

namespace cairn {

Destroyer::Destroyer(ServerContext& ctx, Namespace& ns, const LinkIdentity& identity)
    : ctx_(ctx),
      ns_(ns),
      identity_{kj::heapArray<kj::byte>(identity.uuid), identity.role, kj::str(identity.hostName)} {
}

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
  auto it = links_.find(index);
  if (it != links_.end()) it->second->setAddresses(kj::mv(addresses));
  poke();
}

kj::Maybe<ServerLink&> Destroyer::linkFor(uint32_t index) {
  auto it = links_.find(index);
  if (it != links_.end()) return *it->second;
  kj::Array<kj::String> addresses;
  {
    store::Txn txn(ctx_.target.env(), store::Txn::READ);
    ns_.listTargets(txn, [&](rpc::TargetAddress::Reader t) {
      if (t.getIndex() != index || t.getKind() != rpc::TargetKind::DATA) return;
      kj::Vector<kj::String> a;
      for (auto s : t.getAddresses()) a.add(kj::str(s));
      addresses = a.releaseAsArray();
    });
  }
  if (addresses.size() == 0) return nullptr;
  auto link = kj::heap<ServerLink>(ctx_.network, ctx_.io.provider->getTimer(),
                                   kj::str("destroyer->data", index), kj::mv(addresses), identity_);
  link->start();
  auto& ref = *link;
  links_.emplace(index, kj::mv(link));
  return ref;
}

kj::Promise<void> Destroyer::loop() {
  kj::Vector<Namespace::PendingDestroy> batch;
  {
    store::Txn txn(ctx_.target.env(), store::Txn::READ);
    batch = ns_.pendingDestroys(txn, 64);
  }
  if (batch.size() == 0) {
    auto paf = kj::newPromiseAndFulfiller<void>();
    wake_ = kj::mv(paf.fulfiller);
    return paf.promise.then([this]() { return loop(); });
  }
  auto done = kj::heapArrayBuilder<kj::Promise<void>>(batch.size());
  for (auto& item : batch) {
    auto parts = kj::heapArrayBuilder<kj::Promise<void>>(item.layout.targets.size());
    bool reachable = true;
    for (uint32_t t : item.layout.targets) {
      KJ_IF_MAYBE (link, linkFor(t)) {
        uint64_t object = item.layout.objectId;
        parts.add(link->data([object](rpc::DataRequest::Builder r) { r.setDestroy(object); }, true)
                      .then([](ServerLink::DataResponse&& resp) {
                        KJ_REQUIRE(resp.getReply().getError() == 0, "destroy failed",
                                   resp.getReply().getError());
                      }));
      } else {
        reachable = false;
      }
    }
    if (!reachable) continue;
    uint64_t ino = item.ino;
    done.add(kj::joinPromises(parts.finish()).then([this, ino]() {
      ctx_.commit([&](store::Txn& txn) { ns_.destroyed(txn, ino); });
    }));
  }
  bool progress = done.size() > 0;
  return kj::joinPromises(done.finish())
      .then(
          [this, progress]() -> kj::Promise<void> {
            if (progress) return loop();
            // Some target is unknown yet: look again later or when told.
            auto paf = kj::newPromiseAndFulfiller<void>();
            wake_ = kj::mv(paf.fulfiller);
            return paf.promise
                .exclusiveJoin(ctx_.io.provider->getTimer().afterDelay(5 * kj::SECONDS))
                .then([this]() { return loop(); });
          },
          [this](kj::Exception&& e) -> kj::Promise<void> {
            spdlog::warn("destroying objects: {}; will retry", e.getDescription().cStr());
            return ctx_.io.provider->getTimer().afterDelay(1 * kj::SECONDS).then([this]() {
              return loop();
            });
          });
}

}  // namespace cairn
