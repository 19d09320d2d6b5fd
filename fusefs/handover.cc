#include "fusefs/handover.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include <cstring>

#include "rpc/stats_socket.h"

namespace cairn {

namespace {

constexpr kj::StringPtr HELLO = "HANDOVER"_kj;
constexpr char ACK = 'A';
constexpr kj::Duration ACK_TIMEOUT = 30 * kj::SECONDS;

sockaddr_un unixAddress(kj::StringPtr path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  KJ_REQUIRE(path.size() < sizeof(addr.sun_path), "socket path too long", path);
  memcpy(addr.sun_path, path.begin(), path.size());
  return addr;
}

void writeAll(int fd, const void* data, size_t size) {
  auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    KJ_REQUIRE(n > 0, "handover socket write failed", strerror(errno));
    p += n;
    size -= size_t(n);
  }
}

void readAll(int fd, void* data, size_t size) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    ssize_t n = read(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    KJ_REQUIRE(n > 0, "the running cairn-mount closed the handover", strerror(errno));
    p += n;
    size -= size_t(n);
  }
}

void setBlocking(int fd, bool blocking) {
  int flags;
  KJ_SYSCALL(flags = fcntl(fd, F_GETFL));
  KJ_SYSCALL(fcntl(fd, F_SETFL, blocking ? flags & ~O_NONBLOCK : flags | O_NONBLOCK));
}

// The answer's first part: the state's length, with room for the /dev/fuse descriptor.
struct LengthAndFd {
  LengthAndFd() {
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  KJ_DISALLOW_COPY(LengthAndFd);
  uint64_t length = 0;
  iovec iov{&length, sizeof(length)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
};

}  // namespace

kj::String handoverSocketPath(kj::StringPtr mountPoint) {
  auto stats = statsSocketPath(mountPoint);
  return kj::str(stats.slice(0, stats.size() - strlen(".sock")), ".handover");
}

HandoverListener::HandoverListener(kj::UnixEventPort& port, kj::Timer& timer, kj::StringPtr path)
    : port_(port), timer_(timer), path_(kj::str(path)) {
  int fd;
  KJ_SYSCALL(fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  listenFd_ = kj::AutoCloseFd(fd);
  auto addr = unixAddress(path_);
  unlink(path_.cStr());  // one mount per mount point: a socket left here is stale
  KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), path_);
  chmod(path_.cStr(), 0600);  // only root may take a mount over
  struct stat st;
  if (stat(path_.cStr(), &st) == 0) socketIno_ = st.st_ino;
  KJ_SYSCALL(listen(fd, 1));
  listenObserver_ = kj::heap<kj::UnixEventPort::FdObserver>(
      port_, fd, kj::UnixEventPort::FdObserver::OBSERVE_READ);
}

HandoverListener::~HandoverListener() noexcept(false) {
  struct stat st;
  if (socketIno_ != 0 && stat(path_.cStr(), &st) == 0 && st.st_ino == socketIno_) {
    unlink(path_.cStr());
  }
}

void HandoverListener::closeConnection() {
  connObserver_ = nullptr;
  connFd_ = nullptr;
}

kj::Promise<void> HandoverListener::requested() {
  int fd = accept4(listenFd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) {
    KJ_REQUIRE(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR, "accept failed",
               strerror(errno));
    return listenObserver_->whenBecomesReadable().then([this]() { return requested(); });
  }
  closeConnection();
  connFd_ = kj::AutoCloseFd(fd);
  // The request is a few bytes the asker writes right after connecting.
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char hello[8] = {};
  try {
    readAll(fd, hello, sizeof(hello));
  } catch (kj::Exception& e) {
    closeConnection();
    return requested();
  }
  if (kj::StringPtr(kj::heapString(hello, sizeof(hello))) != HELLO) {
    spdlog::warn("handover socket: not a handover request; ignored");
    closeConnection();
    return requested();
  }
  spdlog::info("a new cairn-mount asks to take this mount over");
  return kj::READY_NOW;
}

void HandoverListener::refuse(kj::StringPtr why) {
  if (connFd_ == nullptr) return;
  try {
    uint64_t zero = 0;
    uint32_t length = why.size();
    writeAll(connFd_.get(), &zero, sizeof(zero));
    writeAll(connFd_.get(), &length, sizeof(length));
    writeAll(connFd_.get(), why.begin(), why.size());
  } catch (kj::Exception&) {}
  closeConnection();
}

kj::Promise<bool> HandoverListener::handOver(int fuseFd, kj::ArrayPtr<const capnp::word> message) {
  int fd = connFd_.get();
  // The length and the descriptor in one message, then the state.
  LengthAndFd head;
  head.length = message.asBytes().size();
  cmsghdr* c = CMSG_FIRSTHDR(&head.msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fuseFd, sizeof(int));
  try {
    KJ_SYSCALL(sendmsg(fd, &head.msg, MSG_NOSIGNAL));
    writeAll(fd, message.asBytes().begin(), message.asBytes().size());
  } catch (kj::Exception& e) {
    spdlog::warn("handover: sending the state failed: {}", e.getDescription().cStr());
    closeConnection();
    return false;
  }
  setBlocking(fd, false);
  connObserver_ = kj::heap<kj::UnixEventPort::FdObserver>(
      port_, fd, kj::UnixEventPort::FdObserver::OBSERVE_READ);
  auto ack = connObserver_->whenBecomesReadable().then([this, fd]() {
    char byte = 0;
    bool ok = read(fd, &byte, 1) == 1 && byte == ACK;
    closeConnection();
    // The path is the new process's now: it binds its own socket there. (Not left to the inode
    // check: a file system that reuses inode numbers, as ext4 does for /run on some hosts, can
    // give the new socket ours, and our exit would then unlink it.)
    if (ok) socketIno_ = 0;
    return ok;
  });
  return ack.exclusiveJoin(timer_.afterDelay(ACK_TIMEOUT).then([this]() {
    spdlog::warn("handover: the new process did not confirm in time");
    closeConnection();
    return false;
  }));
}

ReceivedHandover requestHandover(kj::StringPtr mountPoint) {
  auto path = handoverSocketPath(mountPoint);
  int fd;
  KJ_SYSCALL(fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ReceivedHandover out;
  out.socket = kj::AutoCloseFd(fd);
  auto addr = unixAddress(path);
  KJ_REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0,
             "no cairn-mount to take over at this mount point", mountPoint, path, strerror(errno));
  writeAll(fd, HELLO.begin(), HELLO.size());

  LengthAndFd head;
  ssize_t n;
  do {
    n = recvmsg(fd, &head.msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  } while (n < 0 && errno == EINTR);
  KJ_REQUIRE(n == ssize_t(sizeof(head.length)), "the running cairn-mount did not answer",
             strerror(errno));
  uint64_t length = head.length;
  msghdr& msg = head.msg;
  if (length == 0) {
    uint32_t size = 0;
    readAll(fd, &size, sizeof(size));
    KJ_REQUIRE(size < 4096, "bad refusal");
    auto why = kj::heapString(size);
    readAll(fd, why.begin(), size);
    KJ_FAIL_REQUIRE("the running cairn-mount refused the handover", why);
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int received;
      memcpy(&received, CMSG_DATA(c), sizeof(int));
      out.fuseFd = kj::AutoCloseFd(received);
    }
  }
  KJ_REQUIRE(out.fuseFd != nullptr, "no /dev/fuse descriptor came with the handover");
  KJ_REQUIRE(length % sizeof(capnp::word) == 0 && length < (uint64_t(1) << 32),
             "bad handover length", length);
  out.message = kj::heapArray<capnp::word>(length / sizeof(capnp::word));
  readAll(fd, out.message.begin(), length);
  return out;
}

void acknowledgeHandover(ReceivedHandover& received) {
  char ack = ACK;
  writeAll(received.socket.get(), &ack, 1);
  received.socket = nullptr;
}

}  // namespace cairn
