// The FUSE low-level adapter: one handler per operation, each turning its arguments into a call
// on the Client and the result into exactly one fuse_reply_*. Handlers run on the event-loop
// thread, start a promise and return; the reply comes from its continuation.
//
// Every request registers an interrupt hook: a signal to the caller (FUSE INTERRUPT) ends the
// wait with EINTR and cancels whatever the request was waiting for (a parked request at a
// closed gate, or an RPC in flight), so no process is left unkillable.
#pragma once

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <kj/async.h>

#include "fusefs/client.h"

namespace cairn {

class FuseOps;

// What libfuse hands every handler (fuse_req_userdata). The session exists before the event
// loop and the client do, so this is filled in once they are made.
struct FuseUserdata {
  FuseOps* ops = nullptr;
};

class FuseOps {
public:
  explicit FuseOps(Client& client);
  ~FuseOps() noexcept(false);

  static const fuse_lowlevel_ops& table();
  Client& client() { return client_; }
  // Runs `start` (which returns a promise that replies itself on success); replies EINTR or
  // the error otherwise, including an exception thrown by `start` itself.
  template <typename Start>
  void run(fuse_req_t req, Start&& start) {
    runPromise(req, kj::evalNow(kj::fwd<Start>(start)));
  }

private:
  void runPromise(fuse_req_t req, kj::Promise<void> work);
  class ErrorHandler : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&& e) override;
  };
  Client& client_;
  ErrorHandler errorHandler_;
  kj::TaskSet tasks_;
};

}  // namespace cairn
