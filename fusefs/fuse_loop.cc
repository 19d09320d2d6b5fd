#include "fusefs/fuse_loop.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <malloc.h>

#include <cstring>

#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include "rpc/busy_poll.h"

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

FuseLoop::FuseLoop(fuse_session* session, kj::UnixEventPort& port, KillPriv& killPriv)
    : session_(session),
      killPriv_(killPriv),
      observer_(port, nonBlocking(fuse_session_fd(session)),
                kj::UnixEventPort::FdObserver::OBSERVE_READ) {
  memset(&buf_, 0, sizeof(buf_));
}

FuseLoop::~FuseLoop() {
  free(buf_.mem);
}

kj::Promise<void> FuseLoop::run() {
  // Read first: an edge that came before anyone waited for it is not reported again (requests
  // may already be queued, e.g. for a process that takes a mount over).
  return kj::evalLater([this]() { return drain(); });
}

void FuseLoop::pause() {
  paused_ = true;
}

void FuseLoop::resume() {
  paused_ = false;
  KJ_IF_MAYBE (f, resumed_) {
    (*f)->fulfill();
    resumed_ = nullptr;
  }
}

void FuseLoop::replayInit(kj::ArrayPtr<const kj::byte> request) {
  KJ_REQUIRE(request.size() >= sizeof(fuse_in_header), "no FUSE_INIT to replay");
  init_ = kj::heapArray(request);  // for the next handover
  auto copy = kj::heapArray(request);
  auto* header = reinterpret_cast<fuse_in_header*>(copy.begin());
  KJ_REQUIRE(header->opcode == FUSE_INIT, "not a FUSE_INIT request", header->opcode);
  // Far above any id the kernel hands out, odd (not an interrupt's), never 0 (a notification).
  header->unique = (uint64_t(1) << 62) | 1;
  fuse_buf buf;
  memset(&buf, 0, sizeof(buf));
  buf.mem = copy.begin();
  buf.size = copy.size();
  killPriv_.received(copy, true);
  fuse_session_process_buf(session_, &buf);
}

kj::Array<kj::byte> FuseLoop::takeWriteBytes(const char* data, size_t size) {
  auto* mem = static_cast<char*>(buf_.mem);
  // libfuse allocated the first buffer with its session's size; the pool's are as large.
  size_t capacity = mem == nullptr ? 0 : malloc_usable_size(mem);
  bool inside = mem != nullptr && !(buf_.flags & FUSE_BUF_IS_FD) && data >= mem &&
                size <= capacity && size_t(data - mem) <= capacity - size;
  bool mostOfIt = inside && size >= capacity / 4 * 3;
  if (mostOfIt && buffers_.get() == nullptr) buffers_ = kj::refcounted<RequestBuffers>(capacity);
  if (!mostOfIt || capacity < buffers_->size()) {
    return kj::heapArray(reinterpret_cast<const kj::byte*>(data), size);
  }
  buf_.mem = nullptr;  // the next request is read into another buffer (drain)
  buf_.size = 0;
  return buffers_->lend(mem,
                        kj::arrayPtr(reinterpret_cast<kj::byte*>(const_cast<char*>(data)), size));
}

void FuseLoop::dropSpareBuffers() {
  if (buffers_.get() != nullptr) buffers_->dropSpares();
}

kj::Promise<void> FuseLoop::drain() {
  for (int i = 0; i < BATCH; ++i) {
    if (fuse_session_exited(session_)) return kj::READY_NOW;
    if (paused_) {
      auto paf = kj::newPromiseAndFulfiller<void>();
      resumed_ = kj::mv(paf.fulfiller);
      return paf.promise.then([this]() { return drain(); });
    }
    if (buf_.mem == nullptr && buffers_.get() != nullptr) buf_.mem = buffers_->take();
    int res = fuse_session_receive_buf(session_, &buf_);
    if (res == -EINTR) continue;
    // The observer is edge-triggered: wait for the next edge only once the device is empty.
    if (res == -EAGAIN) {
      return observer_.whenBecomesReadable().then([this]() { return drain(); });
    }
    if (res <= 0) {
      if (res < 0) spdlog::error("reading /dev/fuse: {}", strerror(-res));
      return kj::READY_NOW;  // unmounted
    }
    if (init_.size() == 0 && !(buf_.flags & FUSE_BUF_IS_FD) &&
        size_t(res) >= sizeof(fuse_in_header) &&
        reinterpret_cast<const fuse_in_header*>(buf_.mem)->opcode == FUSE_INIT) {
      init_ = kj::heapArray(static_cast<const kj::byte*>(buf_.mem), size_t(res));
    }
    if (!(buf_.flags & FUSE_BUF_IS_FD)) {
      killPriv_.received(kj::arrayPtr(static_cast<const kj::byte*>(buf_.mem), size_t(res)));
    }
    BusyPoll::arrived();
    ++requests_;
    fuse_session_process_buf(session_, &buf_);
  }
  return kj::evalLater([this]() { return drain(); });
}

}  // namespace cairn
