#include "objserver/lock_service.h"

#include <kj/debug.h>

namespace cairn {

void throwEvicted(const ClientSession& session) {
  kj::throwFatalException(
      KJ_EXCEPTION(DISCONNECTED, "this client was evicted; reconnect", session.label));
}

LockService::LockService(ServerContext& ctx, kj::Own<ClientSession> session)
    : ctx_(ctx), session_(kj::mv(session)) {}

void LockService::requireSession() {
  if (session_->evicted) throwEvicted(*session_);
  if (ctx_.state == ServerState::STOPPED) throwStopped();
}

void throwStopped() {
  kj::throwFatalException(KJ_EXCEPTION(DISCONNECTED, "the server has stopped; reconnect"));
}

kj::Promise<void> LockService::enqueue(EnqueueContext context) {
  requireSession();
  auto r = context.getParams().getRequest();
  auto mode = static_cast<uint16_t>(r.getMode());
  KJ_REQUIRE(mode <= static_cast<uint16_t>(LockMode::EX), "unknown lock mode", mode);
  KJ_REQUIRE(r.getType() >= RES_INODE && r.getType() <= RES_SERVER, "unknown resource type",
             r.getType());
  LockSpec spec;
  spec.resource = ResourceId{r.getType(), r.getId()};
  spec.mode = static_cast<LockMode>(mode);
  spec.bits = r.getBits();
  spec.start = r.getStart();
  spec.end = r.getEnd();
  auto enqueue = [this, context, spec, replaces = r.getReplaces()]() mutable {
    requireSession();
    return ctx_.locks.enqueue(*session_, spec, nullptr, 0, replaces)
        .then([context](uint64_t id) mutable { context.getResults().setLockId(id); });
  };
  // After an unclean stop, not before the updates it cut off are in; the active-server lock is
  // part of connecting, and never waits.
  if (spec.resource.type != RES_SERVER && ctx_.waitsForOthers(*session_)) {
    return ctx_.resendsIn().then(kj::mv(enqueue));
  }
  return enqueue();
}

kj::Promise<void> LockService::cancel(CancelContext context) {
  requireSession();
  ctx_.locks.cancel(*session_, context.getParams().getLockId());
  ctx_.cancelled(*session_, context.getParams().getLockId());
  return kj::READY_NOW;
}

kj::Promise<void> LockService::cancelMany(CancelManyContext context) {
  requireSession();
  for (uint64_t id : context.getParams().getLockIds()) {
    ctx_.locks.cancel(*session_, id);
    ctx_.cancelled(*session_, id);
  }
  return kj::READY_NOW;
}

kj::Promise<void> LockService::convertMany(ConvertManyContext context) {
  requireSession();
  auto mode = static_cast<uint16_t>(context.getParams().getMode());
  KJ_REQUIRE(mode <= static_cast<uint16_t>(LockMode::EX), "unknown lock mode", mode);
  for (uint64_t id : context.getParams().getLockIds()) {
    ctx_.locks.convert(*session_, id, static_cast<LockMode>(mode));
  }
  return kj::READY_NOW;
}

kj::Promise<void> LockService::prolong(ProlongContext context) {
  requireSession();
  for (uint64_t id : context.getParams().getLockIds()) ctx_.locks.prolong(*session_, id);
  return kj::READY_NOW;
}

}  // namespace cairn
