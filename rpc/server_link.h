// One connection to one server (target), and the only way requests leave for it.
//
// Every request waits at the link's gate before it is formatted. The gate opens for a class of
// requests according to the link's state:
//   CONNECTING / DISCONNECTED   nothing passes; the link is (re)connecting with backoff
//   RECOVERING                  only RECOVERY requests (e.g. open replay) pass; once the
//                               owner's recovery calls resendCutOff, resends and WRITEBACK too
//   ACTIVE                      everything passes
//   DRAINING                    the server is shutting down (it called back the active-server
//                               lock): only WRITEBACK requests pass, the ones that hand dirty
//                               data back; once they and every request in flight are done, the
//                               link cancels its PR on the active-server lock and goes to
//   READY                       nothing passes; waiting for the server to go, then reconnects
// A request that fails with DISCONNECTED goes back through the gate and is sent again, with the
// same request id, so the server answers a resent update from its reply record instead of
// applying it twice. The application never sees the outage, only a wait that a signal can end
// (by dropping the promise).
//
// The link can be torn down and re-established any number of times; callers hold the link, never
// a capability of one particular connection.
//
// Replay: the link keeps every update that got a reply (write data included) until the server
// reports it synced — a copy, or for a write-behind batch the request built again around the
// batch's own bytes, which it keeps alive (no second copy of the data). After a reconnect it first
// replays, in transaction order, what is newer than what the server says is on disk (a crash of its
// host may have lost it), then tells the server it has sent all; only then does the owner's
// recovery (open replay) run.
#pragma once

#include <capnp/message.h>
#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/function.h>
#include <kj/refcount.h>
#include <kj/string.h>
#include <kj/vector.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "rpc/cairn.capnp.h"
#include "rpc/feature_flags.h"

namespace cairn {

struct LinkIdentity {
  kj::Array<kj::byte> uuid;  // 16 bytes
  rpc::Hello::Role role = rpc::Hello::Role::CLIENT;
  kj::String hostName;
};

class ServerLink {
public:
  enum class State { CONNECTING, RECOVERING, ACTIVE, DRAINING, READY, DISCONNECTED };
  // NORMAL passes only an ACTIVE gate; WRITEBACK (dirty data going back) an ACTIVE or DRAINING
  // one; RECOVERY only a RECOVERING one.
  enum class Class { NORMAL, RECOVERY, WRITEBACK };

  ServerLink(kj::Network& network, kj::Timer& timer, kj::String name,
             kj::Array<kj::String> addresses, const LinkIdentity& identity);
  ~ServerLink() noexcept(false);
  KJ_DISALLOW_COPY(ServerLink);

  // Run after every (re)connect, while only RECOVERY requests pass; the gate opens when it
  // resolves. A failure disconnects and tries again.
  void setRecovery(kj::Function<kj::Promise<void>()> recovery);
  void setAddresses(kj::Array<kj::String> addresses);
  // Given to the server at every connect: how it asks this client to give a lock back.
  void setLockCallback(rpc::LockCallback::Client callback);
  // Called as soon as a connection is lost (before any reconnect): the server drops this
  // client's locks when it connects again, so whatever they covered must go now.
  void setOnLost(kj::Function<void()> onLost);
  // Called when the server starts a controlled shutdown, after the gate closed: the owner writes
  // back what it holds for this server and drops what it cached from it. When the promise
  // resolves and the requests in flight are done, the link cancels its active-server lock.
  void setOnDrain(kj::Function<kj::Promise<void>()> onDrain);
  void start();
  // Called by the owner's recovery, after its own replays and before it says recoveryDone: the
  // updates that were on their way when the connection went leave now, in the order they were
  // made, ahead of every other client's new ones (a server back from a crash holds those until
  // its returning clients have recovered); and from now on WRITEBACK requests pass too (what the
  // application was already answered: updates answered ahead, write-behind), those waiting
  // first. Updates sent while RECOVERING are resends to the server. Resolves once those waiting
  // are sent (not answered).
  kj::Promise<void> resendCutOff();

  using MetaResponse = capnp::Response<rpc::MetaSession::CallResults>;
  using DataResponse = capnp::Response<rpc::DataSession::CallResults>;
  // `update` requests get a request id and are recorded by the server; `build` is called for
  // every attempt and must fill the request the same way each time.
  kj::Promise<MetaResponse> meta(kj::Function<void(rpc::MetaRequest::Builder)> build, bool update,
                                 Class cls = Class::NORMAL);
  // `keeps` (an update's): owns the bytes `build` makes the request reference where they are
  // (Orphanage::referenceExternalData). The copy kept for replay is then built the same way,
  // referencing them too instead of copying them, and holds `keeps` until the update is synced.
  kj::Promise<DataResponse> data(kj::Function<void(rpc::DataRequest::Builder)> build, bool update,
                                 Class cls = Class::NORMAL,
                                 kj::Maybe<kj::Own<kj::Refcounted>> keeps = nullptr);
  // The server's bootstrap capability of the current connection, once the gate is open.
  kj::Promise<rpc::Bootstrap::Client> server(Class cls = Class::NORMAL);
  // The lock session of the current connection, once the gate is open.
  kj::Promise<rpc::LockSession::Client> locks(Class cls = Class::NORMAL);
  // The lock session of the current connection if there is one, gate or not: cancels must
  // get through while everything else waits. Null while disconnected.
  kj::Maybe<rpc::LockSession::Client> currentLocks();
  // Bumped at every connect and every loss: lock ids are only meaningful within one.
  uint64_t generation() const { return generation_; }
  // A call on a capability of this link's connection `generation` failed with DISCONNECTED
  // (as the link's own requests do: the server may have ended our session): reconnect.
  void disconnected(uint64_t generation, kj::StringPtr why) { lost(generation, why); }

  State state() const { return state_; }
  // Requests of ours are on their way to the server, or waiting at its gate for it to come
  // back: whoever waits on them is held up by the server, not by us.
  bool busy() const { return inFlight_ > 0 || !waiters_.empty(); }
  kj::StringPtr name() const { return name_; }
  kj::StringPtr currentAddress() const { return currentAddress_; }
  // Valid once connected: what the server said about itself.
  uint64_t peerFeatures() const { return peerFeatures_; }
  // The server squashes this client's root (its permissions are the server's to check).
  bool rootSquashed() const { return rootSquashed_; }
  // The metadata server's number for our session there, as of the last connect: a new
  // session has a larger one (0: an older server, or not connected yet).
  uint64_t session() const { return session_; }
  kj::StringPtr peerVersion() const { return peerVersion_; }
  uint64_t lastSynced() const { return lastSynced_; }
  // The server is a new instance since the connection before this one (a restart, a failover).
  bool restarted() const { return restarted_; }
  // What the link did, for the client's counters.
  struct Stats {
    std::map<std::string, uint64_t> requests;   // by kind ("meta.lookup")
    uint64_t gateWaits = 0;                     // requests that found the gate closed
    kj::Duration gateWaited = 0 * kj::SECONDS;  // their time there, in all
  };
  const Stats& stats() const { return stats_; }
  // Bytes of the updates kept for replay (not yet synced by the server).
  size_t keptBytes() const { return keptBytes_; }
  // Every update of ours the server answered is on its disk (none is kept for replay): a sync
  // there would make nothing of ours more durable. Known only of servers that report what they
  // synced (features::ACTIVE_SERVER_LOCK: with older ones updates are not kept).
  bool allSynced() const {
    return (peerFeatures_ & features::ACTIVE_SERVER_LOCK) != 0 && kept_.empty();
  }
  // Handover to a new client process (fusefs/handover.h): resolves once nothing of this link is
  // in flight and the server has synced every update it answered, so that nothing needs to be
  // kept for replay; the new process's link goes on numbering requests from here.
  kj::Promise<void> settle();
  uint64_t nextRequestId() const { return nextRequestId_; }
  void continueRequestIds(uint64_t next) { nextRequestId_ = kj::max(nextRequestId_, next); }
  // Once after a connect at which the server said it had evicted this client: whatever the
  // client held there (open files, locks) is gone. The owner's recovery takes it before
  // anything but RECOVERY requests pass, and decides what the eviction took away: it calls
  // forgetWriteback() unless the eviction was of a session it has already left behind.
  struct Eviction {
    // The server is a new instance whose disk ends before updates of ours it had answered: kept
    // for a replay it now refuses (a crash, then --force), or synced and still gone (its data
    // restored from an older copy). Their changes are gone.
    bool lostAnswered = false;
    // A data server fenced off by the metadata server: the session of ours there whose
    // eviction it was (compare with that link's session(); 0: not known).
    uint64_t session = 0;
  };
  kj::Maybe<Eviction> takeEviction() {
    auto e = kj::mv(eviction_);
    eviction_ = nullptr;  // kj::Maybe's move leaves the source set
    return e;
  }
  // The locks that dirty data was written under are gone (this server evicted us, or the
  // metadata server, which holds the data locks, did): WRITEBACK updates made before now that
  // have no reply yet are not sent (again) but fail with EIO, so that none lands after another
  // client's update under the lock it was given. Those waiting at the gate fail at once: they
  // must not hold up whoever waits on them (a recovery's write-back) until a server that may
  // be away comes back.
  void forgetWriteback();

  struct Connection;  // one TCP connection and its capabilities
  class Callback;     // the lock callback given at connect

private:
  void blocking(uint64_t lockId, uint32_t timeoutMs, bool gone);
  void share(uint32_t maxLocks);  // the server's share of its lock budget, for the owner
  void drain(uint64_t generation, kj::Duration timeout);  // `timeout`: 0 if not known
  kj::Promise<void> idle();                               // no request of this link in flight
  struct Kept {
    kj::Own<capnp::MallocMessageBuilder> request;  // a MetaRequest or a DataRequest
    bool meta;
    size_t bytes;
    kj::Maybe<kj::Own<kj::Refcounted>> keeps;  // what `request` references (see data())
  };
  void keep(uint64_t transno, Kept kept);
  template <typename Reader>
  void countRequest(Reader r);
  void synced(uint64_t lastSynced);
  // Asks the server to sync (its reply reports everything answered so far as on disk).
  kj::Promise<void> sync(bool meta);
  kj::Promise<void> replay(uint64_t generation, uint64_t serverSynced);
  template <typename Response>
  kj::Promise<void> replayOne(uint64_t transno);
  // An update of ours answered as `transno` (a reply or a replay's): the newest one and the
  // instance that answered it, which an eviction compares with its disk.
  void answered(uint64_t transno);
  struct Pending;
  template <typename Response, typename Build>
  kj::Promise<Response> send(kj::Own<Pending> pending, Build& build);

  // Resolves once `cls` may pass; the updates waiting leave in the order of their ids. A
  // WRITEBACK update (`writebackEpoch`: as made) also once forgetWriteback made it stale.
  kj::Promise<void> whenOpen(Class cls, uint64_t requestId = 0, bool resend = false,
                             uint64_t writebackEpoch = 0);
  // A WRITEBACK update made before the last forgetWriteback: it can only fail.
  bool forgotten(Class cls, uint64_t requestId, uint64_t writebackEpoch) const {
    return cls == Class::WRITEBACK && requestId != 0 && writebackEpoch != writebackEpoch_;
  }
  // This connection's recovery has called resendCutOff: resends and write-back pass.
  bool resendsPass() const;
  // What whenOpen lets through now (`resend`: an update cut off by a lost connection).
  bool mayPass(Class cls, bool resend) const;
  bool open(Class cls) const;  // the gate lets `cls` through and there is a connection
  void openGate(State state);
  void connectLoop(unsigned attempt);
  void lost(uint64_t generation, kj::StringPtr why);
  kj::Promise<void> heartbeat(uint64_t generation);
  uint64_t oldestUnreplied() const;

  kj::Network& network_;
  kj::Timer& timer_;
  kj::String name_;
  kj::Array<kj::String> addresses_;  // a failover pair has two
  size_t preferred_ = 0;             // the one that worked last
  kj::Array<kj::byte> uuid_;
  rpc::Hello::Role role_;
  kj::String hostName_;
  kj::Maybe<kj::Function<kj::Promise<void>()>> recovery_;
  kj::Maybe<rpc::LockCallback::Client> lockCallback_;
  kj::Maybe<kj::Function<void()>> onLost_;
  kj::Maybe<kj::Function<kj::Promise<void>()>> onDrain_;
  struct Handle : public kj::Refcounted {
    ServerLink* link;
  };
  kj::Own<Handle> handle_;  // how the callback capability (which may outlive us) reaches us

  State state_ = State::DISCONNECTED;
  uint64_t generation_ = 0;
  // Recoveries that failed in a row (the server answers, then refuses what we ask, e.g. a
  // target of another filesystem): reconnects after them back off as failed connects do.
  unsigned failedRecoveries_ = 0;
  // Connections lost soon after they were made, in a row (see SHORT_LIVED): reconnects after
  // them back off too.
  unsigned shortLived_ = 0;
  kj::TimePoint connectedAt_ = kj::origin<kj::TimePoint>();
  kj::Maybe<kj::Own<Connection>> connection_;
  kj::String currentAddress_;
  uint64_t peerFeatures_ = 0;
  bool rootSquashed_ = false;
  uint64_t session_ = 0;
  kj::String peerVersion_;
  uint64_t lastSynced_ = 0;
  uint64_t lastAnswered_ = 0;  // the newest of our updates the server answered
  uint64_t answeredBy_ = 0;    // the instance that answered it
  kj::Maybe<Eviction> eviction_;
  uint64_t writebackEpoch_ = 0;  // bumped by forgetWriteback()
  uint64_t serverLock_ = 0;      // our PR on the active-server lock of this connection
  uint64_t connectSynced_ = 0;
  uint64_t resendGeneration_ = 0;  // the connection whose recovery let resends through
  uint64_t instance_ = 0;          // of the server at the last connect
  bool restarted_ = false;         // the server is a new instance since the previous connect
  rpc::TargetKind peerKind_ =
      rpc::TargetKind::META;       // what the server had on disk when we connected
  std::map<uint64_t, Kept> kept_;  // by transaction number
  size_t keptBytes_ = 0;
  bool syncing_ = false;
  Stats stats_;
  size_t inFlight_ = 0;
  kj::Vector<kj::Own<kj::PromiseFulfiller<void>>> idleWaiters_;

  uint64_t nextRequestId_ = 1;
  std::set<uint64_t> unreplied_;

  struct Waiter {
    Class cls;
    kj::Own<kj::PromiseFulfiller<void>> fulfiller;
    uint64_t requestId;  // of the update waiting (0: anything else)
    bool resend;         // an update cut off by a lost connection
    uint64_t writebackEpoch;
  };
  kj::Vector<Waiter> waiters_;
  // Takes the waiters `pred` picks out of waiters_ (dropping those whose callers are gone).
  template <typename Pred>
  kj::Vector<Waiter> takeWaiters(Pred&& pred);
  // Lets them go: updates by id (the order they were made), then the rest in their own order.
  void release(kj::Vector<Waiter> going);
  kj::Own<kj::TaskSet> tasks_;
  kj::Promise<void> connecting_ = nullptr;
};

// Splits "HOST:PORT,HOST:PORT" into its addresses.
kj::Array<kj::String> splitAddresses(kj::StringPtr list);

}  // namespace cairn
