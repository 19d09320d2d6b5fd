// Fences a client the metadata server evicts off the data targets first. Its data locks live
// here, but its writes go straight to the data servers: a client that hung with writes queued
// under a lock, evicted for not giving the lock back, would otherwise send them when it wakes,
// over what the client granted the lock next wrote meanwhile. So before the evicted client's
// locks go, every data target ends its session (Bootstrap.evict, as an administrator's eviction
// does): what it sends there is refused from then on, and it learns at its next connect that
// its queued writes are lost (EIO on those files).
//
// A data target that cannot be reached (down, restarting, cut off) must not hold the lock up
// for good, so the lock goes after LIMIT; but the fence is owed, not dropped. Owed fences are
// recorded on disk before the first attempt (a restart of this server resumes them) and tried
// again until the target takes them, at once when it registers again. One is dropped early only
// when the client itself comes back here and is told of its eviction: from then on the client
// throws away what it had queued under the lost locks, and a late fence would only end the
// session it has made since.
#pragma once

#include <kj/async.h>
#include <kj/time.h>

#include <map>
#include <string>

#include "objserver/data_links.h"
#include "objserver/server.h"

namespace cairn {

class ClientFence {
public:
  // How long the lock waits for a data target to take the fence.
  static constexpr kj::Duration LIMIT = 5 * kj::SECONDS;
  // How often an owed fence is tried again (besides at the target's registration).
  static constexpr kj::Duration RETRY = 2 * kj::SECONDS;

  ClientFence(ServerContext& ctx, DataLinks& links);
  KJ_DISALLOW_COPY(ClientFence);

  // Resumes the fences owed when the server last stopped.
  void start();
  // Resolves once every data target has ended the client's session, or LIMIT passed (what is
  // left stays owed).
  kj::Promise<void> fence(const ClientSession& session);
  // The client connected here again and was told it had been evicted.
  void clientBack(kj::ArrayPtr<const kj::byte> uuid);
  // Data target `index` registered (it started, or moved): its owed fences go now.
  void targetBack(uint32_t index);
  // Fences recorded and not yet taken by their target.
  size_t owed() const { return owed_.size(); }

private:
  // Key on disk and in owed_: client uuid (16 bytes), then the target index (big-endian).
  static std::string keyOf(kj::ArrayPtr<const kj::byte> uuid, uint32_t index);
  kj::Promise<void> deliver(std::string key, uint32_t index);
  kj::Promise<void> retryLater(std::string key, uint32_t index);
  kj::Promise<bool> evictOn(ServerLink& link, kj::ArrayPtr<const kj::byte> uuid, uint64_t session);
  void forget(const std::string& key);

  ServerContext& ctx_;
  DataLinks& links_;
  MDB_dbi db_;          // key -> the client's label
  MDB_dbi sessionsDb_;  // key -> the session evicted (ClientSession::number)
  struct Owed {
    kj::String label;  // the client's, for logs
    // Told to the target, which tells the client: one that has learned of this eviction
    // already keeps what it wrote in its later session (0: not known, as an older release
    // recorded no session).
    uint64_t session;
    kj::TimePoint since;
    bool reported = false;  // "not reached" logged once, not at every retry
  };
  std::map<std::string, Owed> owed_;
  // Fulfilled when a target registers, so that every waiting retry looks again.
  kj::Own<kj::PromiseFulfiller<void>> registered_;
  kj::ForkedPromise<void> nextRegistration_ = nullptr;
  class ErrorHandler : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&& e) override;
  };
  ErrorHandler errorHandler_;
  kj::TaskSet deliveries_;
  // The lock manager holds the promises fence() returns; they use the links, which may go
  // first as the server stops: they end with this.
  kj::Canceler canceler_;
};

}  // namespace cairn
