// Runs a FUSE session inside the kj event loop: the /dev/fuse descriptor is non-blocking and
// watched by the loop, so requests and RPC replies are handled by one thread and every
// fuse_reply_* comes from that thread.
#pragma once

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <kj/array.h>
#include <kj/async-unix.h>

#include "fusefs/kill_priv.h"
#include "fusefs/request_buffers.h"

namespace cairn {

class FuseLoop {
public:
  // `killPriv` sees every request before libfuse handles it.
  FuseLoop(fuse_session* session, kj::UnixEventPort& port, KillPriv& killPriv);
  ~FuseLoop();
  KJ_DISALLOW_COPY(FuseLoop);

  // Resolves when the session ends (unmounted, or fuse_session_exit).
  kj::Promise<void> run();

  // Handover (fusefs/handover.h): stop taking requests from the kernel (they wait in the
  // device for whoever reads next), and take them again.
  void pause();
  void resume();
  // The kernel's FUSE_INIT request as it came, for a process that takes the mount over.
  kj::ArrayPtr<const kj::byte> initRequest() const { return init_; }
  // In a process that took the mount over: runs the previous process's FUSE_INIT through
  // libfuse, so that the session is set up as the kernel negotiated it. libfuse's reply goes
  // to a request id the kernel does not know, and the kernel drops it.
  void replayInit(kj::ArrayPtr<const kj::byte> request);

  // A FUSE_WRITE's bytes, `data` pointing into the request being handled. When they fill most
  // of the buffer the request was read into, that buffer itself is handed over and the next
  // request is read into another (RequestBuffers): a 1 MiB write is not copied on its way into
  // the write-behind queue. Smaller writes are copied, so that what a queued write holds stays
  // close to its size.
  kj::Array<kj::byte> takeWriteBytes(const char* data, size_t size);

  // Requests read from the kernel so far.
  uint64_t requests() const { return requests_; }
  // The buffers kept for the next requests go (the mount is idle).
  void dropSpareBuffers();

private:
  kj::Promise<void> drain();

  fuse_session* session_;
  KillPriv& killPriv_;
  kj::UnixEventPort::FdObserver observer_;
  fuse_buf buf_;
  kj::Own<RequestBuffers> buffers_;  // made at the first write whose buffer is handed on
  kj::Array<kj::byte> init_;
  bool paused_ = false;
  uint64_t requests_ = 0;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> resumed_;
};

}  // namespace cairn
