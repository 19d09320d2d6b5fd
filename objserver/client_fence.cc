#include "objserver/client_fence.h"

#include <kj/debug.h>
#include <spdlog/spdlog.h>

namespace cairn {

kj::Promise<void> ClientFence::fence(const ClientSession& session) {
  auto targets = links_.targets();
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(targets.size());
  for (uint32_t index : targets) {
    KJ_IF_MAYBE (link, links_.linkFor(index)) {
      parts.add(
          fenceOn(index, *link, kj::heapArray<kj::byte>(session.uuid), kj::str(session.label)));
    }
  }
  return canceler_.wrap(kj::joinPromises(parts.finish()));
}

kj::Promise<void> ClientFence::fenceOn(uint32_t index, ServerLink& link, kj::Array<kj::byte> uuid,
                                       kj::String label) {
  auto& timer = ctx_.io.provider->getTimer();
  auto started = timer.now();
  auto evicted = link.server().then([uuid = kj::mv(uuid)](rpc::Bootstrap::Client server) {
    auto req = server.evictRequest();
    req.setClientUuid(uuid);
    return req.send().then([](auto reply) { return reply.getEvicted(); });
  });
  return evicted
      .then(
          [&timer, index, started, label = kj::str(label)](bool hadSession) {
            spdlog::info("{}: fenced off data target {} in {} ms{}", label.cStr(), index,
                         (timer.now() - started) / kj::MILLISECONDS,
                         hadSession ? "" : " (it had no session there)");
          },
          [index, label = kj::str(label)](kj::Exception&& e) {
            spdlog::warn("{}: data target {} refused to evict it: {}", label.cStr(), index,
                         e.getDescription().cStr());
          })
      .exclusiveJoin(timer.afterDelay(LIMIT).then([index, label = kj::mv(label)]() {
        spdlog::warn("{}: data target {} not reached within {} s to evict it; its locks go anyway",
                     label.cStr(), index, LIMIT / kj::SECONDS);
      }));
}

}  // namespace cairn
