// FUSE_HANDLE_KILLPRIV_V2 with libfuse 3.14, which predates it.
//
// Without it the kernel clears set-ID bits and file capabilities itself, and to know whether
// there is anything to clear it asks: a GETXATTR of security.capability before every write, a
// GETATTR before every chown — 15% of the requests of an untar. With it the kernel asks for
// capabilities once per inode (then marks it S_NOSEC; it still removes them itself), and leaves
// clearing set-user-ID and set-group-ID to the filesystem, flagging the requests that need it: a
// write or truncate by a caller without CAP_FSETID, and a chown of a file. The rules applied
// here are the VFS's (setidCleared), checked against a local disk in tests/posix (SetIdBits).
//
// libfuse 3.14 neither asks for the feature at FUSE_INIT nor passes those flags on. So this
// adds the flag to libfuse's INIT reply (the session's custom I/O) when the kernel offered it,
// and reads the flags off each raw request before libfuse handles it; the handlers then ask
// kill(). A kernel without the feature never sets them: nothing is cleared here, and
// the kernel goes on doing it.
#pragma once

#include <sys/stat.h>
#include <sys/uio.h>

#include <kj/array.h>
#include <kj/common.h>
#include <kj/string.h>

#include <atomic>
#include <cstdint>

struct fuse_session;

namespace cairn {

struct Cred;

// Who asks for set-ID bits to be cleared, as the VFS tells them apart.
enum class SetidKill {
  NONE,
  WRITE,  // a write or truncate by a caller without CAP_FSETID (the kernel checked)
  CHOWN,  // a chown of a file, by anyone (uid 0 is taken to have CAP_FSETID)
};

// The mode of `st` without the set-ID bits `kill` clears (null: none to clear): set-user-ID
// always; set-group-ID where group-executable, or where the caller is neither in the file's
// group nor privileged (its supplementary groups read from /proc, only in that rare case).
kj::Maybe<uint32_t> setidCleared(const struct stat& st, const Cred& cred, SetidKill kill);

class KillPriv {
public:
  KillPriv() = default;
  KJ_DISALLOW_COPY(KillPriv);

  // Takes over the session's I/O on its (mounted) descriptor, to edit the INIT reply. The
  // session's userdata must lead here (FuseUserdata::killPriv).
  void install(fuse_session* session);
  // Every raw request, before libfuse handles it (FuseLoop). `replayed`: the previous
  // process's FUSE_INIT, replayed by a process that took the mount over; the kernel keeps what
  // it agreed then (with a process of this kind: the feature, when offered).
  void received(kj::ArrayPtr<const kj::byte> request, bool replayed = false);
  // What the request being handled clears (FUSE_WRITE or FUSE_SETATTR; NONE otherwise).
  SetidKill kill() const { return kill_; }
  // Whether the kernel was asked to leave the clearing to us (and offered it).
  bool asked() const { return asked_.load(std::memory_order_relaxed); }

  kj::String metrics() const;

private:
  static ssize_t readDevice(int fd, void* buf, size_t size, void* userdata);
  static ssize_t writeDevice(int fd, struct iovec* iov, int count, void* userdata);

  // Written on the loop's thread at FUSE_INIT; the notifier's threads write replies too.
  std::atomic<uint64_t> initUnique_{0};
  std::atomic<bool> offered_{false};
  std::atomic<bool> asked_{false};
  SetidKill kill_ = SetidKill::NONE;  // the loop's thread only
};

}  // namespace cairn
