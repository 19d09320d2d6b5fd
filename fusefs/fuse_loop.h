// Runs a FUSE session inside the kj event loop: the /dev/fuse descriptor is non-blocking and
// watched by the loop, so requests and RPC replies are handled by one thread and every
// fuse_reply_* comes from that thread.
#pragma once

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <kj/async-unix.h>

namespace cairn {

class FuseLoop {
public:
  FuseLoop(fuse_session* session, kj::UnixEventPort& port);
  ~FuseLoop();
  KJ_DISALLOW_COPY(FuseLoop);

  // Resolves when the session ends (unmounted, or fuse_session_exit).
  kj::Promise<void> run();

private:
  kj::Promise<void> drain();

  fuse_session* session_;
  kj::UnixEventPort::FdObserver observer_;
  fuse_buf buf_;
};

}  // namespace cairn
