#include "fusefs/fuse_loop.h"

#include <fcntl.h>

#include <kj/debug.h>
#include <spdlog/spdlog.h>

namespace cairn {

namespace {
// Requests handled before yielding to RPC events, so neither side starves the other.
constexpr int BATCH = 32;

int nonBlocking(int fd) {
  int flags;
  KJ_SYSCALL(flags = fcntl(fd, F_GETFL));
  KJ_SYSCALL(fcntl(fd, F_SETFL, flags | O_NONBLOCK));
  return fd;
}
}  // namespace

FuseLoop::FuseLoop(fuse_session* session, kj::UnixEventPort& port)
    : session_(session),
      observer_(port, nonBlocking(fuse_session_fd(session)),
                kj::UnixEventPort::FdObserver::OBSERVE_READ) {
  memset(&buf_, 0, sizeof(buf_));
}

FuseLoop::~FuseLoop() {
  free(buf_.mem);
}

kj::Promise<void> FuseLoop::run() {
  return observer_.whenBecomesReadable().then([this]() { return drain(); });
}

kj::Promise<void> FuseLoop::drain() {
  for (int i = 0; i < BATCH; ++i) {
    if (fuse_session_exited(session_)) return kj::READY_NOW;
    int res = fuse_session_receive_buf(session_, &buf_);
    if (res == -EINTR) continue;
    // The observer is edge-triggered: wait for the next edge only once the device is empty.
    if (res == -EAGAIN) return run();
    if (res <= 0) {
      if (res < 0) spdlog::error("reading /dev/fuse: {}", strerror(-res));
      return kj::READY_NOW;  // unmounted
    }
    fuse_session_process_buf(session_, &buf_);
  }
  return kj::evalLater([this]() { return drain(); });
}

}  // namespace cairn
