// The standby of a failover pair: a server whose partner serves the target. It answers status
// and ping on its address, refuses sessions (a client's link then tries the partner), watches
// its partner, and takes the target over when the partner lets go of it:
//  - at once when the owner lock comes free and the heartbeat was written on this kernel (the
//    partner stopped or died here: the kernel released its lock);
//  - after the heartbeat stood still for three intervals when another kernel wrote it;
//  - on `failover` (cairnctl): it asks the partner to fail over (a controlled shutdown after
//    which the partner stays up as the standby), or, if the partner cannot be reached, fences
//    it through the heartbeat record's takeover request;
//  - by itself when the partner has been unreachable for the failover timeout while clients
//    come asking for the target: clients that cannot reach the partner are the sign that the
//    partner, not this server, is cut off. A standby nobody asks for never fences anyone.
#pragma once

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

#include "objserver/access_policy.h"
#include "objserver/reexec.h"
#include "objserver/target_lock.h"
#include "rpc/cairn.capnp.h"

namespace cairn {

struct StandbyConfig {
  kj::String dir;
  kj::String advertise;
  kj::String partner;
  kj::String version;
  rpc::TargetKind kind = rpc::TargetKind::META;
  kj::Duration poll = 10 * kj::MILLISECONDS;       // owner lock checks (a flock: cheap)
  kj::Duration failoverTimeout = 2 * kj::SECONDS;  // partner silent this long: fence it
  kj::Duration holdOff = 0 * kj::SECONDS;          // leave the target to the partner first
  kj::String note;                                 // why standing by, for status
  AccessPolicy access;                             // who may ask what
};

class Standby {
public:
  // Answers on `listener` through `transport`, which also reaches the partner.
  Standby(kj::AsyncIoContext& io, Transport& transport, kj::ConnectionReceiver& listener,
          StandbyConfig config);
  ~Standby() noexcept(false);
  KJ_DISALLOW_COPY(Standby);

  // Resolves with the owner lock once this server may open the target, or null if it was told
  // to stop (shutdown, SIGTERM).
  kj::Promise<kj::Maybe<kj::Own<TargetLock>>> run();
  void stop();
  // Set when it stopped to be upgraded in place (Bootstrap.restart).
  kj::Maybe<Reexec> restartWith;

  // What the bootstrap capability does (objserver/standby.cc).
  void fillStatus(rpc::ServerStatus::Builder status);
  const AccessPolicy& access() const { return config_.access; }
  void asked();  // a client or peer wanted a session
  kj::Promise<void> takeOverNow();

private:
  struct Partner;
  kj::Promise<void> connectPartner();
  rpc::Bootstrap::Client partner();  // once connected
  kj::Promise<void> watchPartner();
  kj::Promise<void> pollLoop();
  void poll();
  void fence(kj::StringPtr why);

  Transport& transport_;
  kj::Timer& timer_;
  StandbyConfig config_;
  kj::TimePoint started_;
  kj::TimePoint partnerSeen_;
  kj::TimePoint askedAt_;
  kj::TimePoint fencedAt_;
  bool everAsked_ = false;
  bool fenced_ = false;
  bool holdOffOver_ = false;
  // Another kernel's heartbeat being watched: its sequence and when it was first seen.
  kj::Maybe<uint64_t> foreignSequence_;
  kj::TimePoint foreignSince_;
  kj::Maybe<kj::Own<Partner>> partner_;
  kj::Own<kj::PromiseFulfiller<kj::Maybe<kj::Own<TargetLock>>>> done_;
  kj::Promise<kj::Maybe<kj::Own<TargetLock>>> result_;
  RpcServer server_;
  kj::Promise<void> listening_;
  kj::Promise<void> watching_ = nullptr;
  kj::Promise<void> polling_ = nullptr;
};

}  // namespace cairn
