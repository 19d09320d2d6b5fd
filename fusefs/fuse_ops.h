// The FUSE low-level adapter: one handler per operation, each turning its arguments into a call
// on the Client and the result into exactly one fuse_reply_*. Handlers run on the event-loop
// thread, start a promise and return; the reply comes from its continuation.
//
// Every request registers an interrupt hook. A signal to the caller (FUSE INTERRUPT) ends the
// request with EINTR when it is blocked on an absent server (parked at a closed gate), as the
// design requires; a request to live servers completes (it takes microseconds, and an update
// already sent must not be left half-known to the application). If an outage begins while an
// interrupted request is still running, it is ended then. SIGKILL always ends the caller.
#pragma once

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <kj/async.h>
#include <kj/vector.h>

#include "fusefs/client.h"

namespace cairn {

class FuseLoop;
class FuseOps;
class KillPriv;
class Notifier;

// The largest READ and WRITE the kernel sends (max_write, max_readahead; main.cc raises the
// mount's read-ahead window to it, fusefs/kernel_readahead.h).
constexpr uint32_t MAX_IO_BYTES = 1 << 20;

// What libfuse hands every handler (fuse_req_userdata). The session exists before the event
// loop and the client do, so this is filled in once they are made.
struct FuseUserdata {
  FuseOps* ops = nullptr;
  Notifier* notifier = nullptr;  // told the kernel's protocol version at init
  KillPriv* killPriv = nullptr;  // the session's I/O; what a request asks to clear
  FuseLoop* loop = nullptr;      // reads the requests (a write's bytes taken without a copy)
};

class FuseOps {
public:
  FuseOps(Client& client, kj::Timer& timer);
  ~FuseOps() noexcept(false);

  static const fuse_lowlevel_ops& table();
  Client& client() { return client_; }
  // Runs `start` (which returns a promise that replies itself on success); replies EINTR or
  // the error otherwise, including an exception thrown by `start` itself.
  template <typename Start>
  void run(fuse_req_t req, Start&& start) {
    runPromise(req, kj::evalNow(kj::fwd<Start>(start)), false);
  }
  // For requests that only wait and change nothing until they end (a lock wait): a signal
  // ends them at once.
  template <typename Start>
  void runAbortable(fuse_req_t req, Start&& start) {
    runPromise(req, kj::evalNow(kj::fwd<Start>(start)), true);
  }

  // Resolves once no request is being worked on (every one has had its reply): for a handover,
  // with the loop paused.
  kj::Promise<void> idle();
  size_t inFlight() const { return inFlight_; }

private:
  void runPromise(fuse_req_t req, kj::Promise<void> work, bool abortable);
  void done();
  kj::Promise<void> untilOutage();
  class ErrorHandler : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&& e) override;
  };
  Client& client_;
  kj::Timer& timer_;
  ErrorHandler errorHandler_;
  size_t inFlight_ = 0;
  kj::Vector<kj::Own<kj::PromiseFulfiller<void>>> idleWaiters_;
  kj::TaskSet tasks_;
};

}  // namespace cairn
