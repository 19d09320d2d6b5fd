// Client upgrade without unmounting: a new cairn-mount takes a live mount over from the running
// one. The running process listens on /run/cairn/<mount>.handover; the new one asks there, and
// gets the /dev/fuse descriptor (SCM_RIGHTS) and a MountHandover message (rpc/cairn.capnp): its
// command line, client identity, the kernel's FUSE_INIT, the inode and open-file tables, the
// application locks, each link's next request id. Once the new process says it has taken over,
// the old one exits without unmounting; applications keep their open files throughout.
//
// Wire: the new process writes "HANDOVER"; the old one answers with an 8-byte length (0: refused,
// followed by a 4-byte length and the reason) sent with the descriptor, then the message; the
// new process writes one byte, 'A', when it serves the mount.
#pragma once

#include <capnp/common.h>
#include <kj/array.h>
#include <kj/async-unix.h>
#include <kj/io.h>
#include <kj/string.h>
#include <sys/types.h>

namespace cairn {

kj::String handoverSocketPath(kj::StringPtr mountPoint);

// The running process's side.
class HandoverListener {
public:
  HandoverListener(kj::UnixEventPort& port, kj::Timer& timer, kj::StringPtr path);
  ~HandoverListener() noexcept(false);
  KJ_DISALLOW_COPY(HandoverListener);

  // Resolves when a new process asks (its connection is kept for the answer).
  kj::Promise<void> requested();
  // Sends the descriptor and the state; resolves true once the new process acknowledged (the
  // caller then exits without unmounting), false if it went away or did not answer in time.
  kj::Promise<bool> handOver(int fuseFd, kj::ArrayPtr<const capnp::word> message);
  // Tells the asking process why not, and waits for the next one.
  void refuse(kj::StringPtr why);

private:
  void closeConnection();
  kj::UnixEventPort& port_;
  kj::Timer& timer_;
  kj::String path_;
  kj::AutoCloseFd listenFd_;
  kj::Own<kj::UnixEventPort::FdObserver> listenObserver_;
  // Ours, unless a process that took over has bound the path since; 0 once handed over.
  ino_t socketIno_ = 0;
  kj::AutoCloseFd connFd_;
  kj::Own<kj::UnixEventPort::FdObserver> connObserver_;
};

// The new process's side: blocking, before any event loop exists.
struct ReceivedHandover {
  kj::AutoCloseFd socket;
  kj::AutoCloseFd fuseFd;
  kj::Array<capnp::word> message;
};
ReceivedHandover requestHandover(kj::StringPtr mountPoint);
void acknowledgeHandover(ReceivedHandover& received);

}  // namespace cairn
