#include "fusefs/kill_priv.h"

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <linux/fuse.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include <kj/debug.h>

#include "fusefs/client.h"
#include "fusefs/fuse_ops.h"

namespace cairn {

namespace {
KillPriv& of(void* userdata) {
  auto* killPriv = static_cast<FuseUserdata*>(userdata)->killPriv;
  KJ_ASSERT(killPriv != nullptr, "the session's userdata has no KillPriv");
  return *killPriv;
}

// A request's fixed part after its header, if it is there whole.
template <typename In>
const In* argOf(kj::ArrayPtr<const kj::byte> request) {
  if (request.size() < sizeof(fuse_in_header) + sizeof(In)) return nullptr;
  return reinterpret_cast<const In*>(request.begin() + sizeof(fuse_in_header));
}

// Whether process `pid` has `gid` among its supplementary groups (/proc/PID/status, "Groups:").
bool hasGroup(uint32_t pid, gid_t gid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Groups:", 0) != 0) continue;
    std::istringstream groups(line.substr(7));
    gid_t g;
    while (groups >> g) {
      if (g == gid) return true;
    }
    return false;
  }
  return false;  // gone: treated as outside the group (the bit goes, the safer side)
}
}  // namespace

kj::Maybe<uint32_t> setidCleared(const struct stat& st, const Cred& cred, SetidKill kill) {
  mode_t mode = st.st_mode;
  if (kill == SetidKill::NONE || !S_ISREG(mode) || !(mode & (S_ISUID | S_ISGID))) return nullptr;
  mode_t kept = mode & ~S_ISUID;
  if (mode & S_ISGID) {
    bool privileged = kill == SetidKill::CHOWN && cred.uid == 0;
    if ((mode & S_IXGRP) ||
        !(privileged || cred.gid == st.st_gid || hasGroup(cred.pid, st.st_gid))) {
      kept &= ~S_ISGID;
    }
  }
  if (kept == mode) return nullptr;
  return uint32_t(kept & 07777);
}

void KillPriv::install(fuse_session* session) {
  static const fuse_custom_io io = {writeDevice, readDevice, nullptr, nullptr};
  int rc = fuse_session_custom_io(session, &io, fuse_session_fd(session));
  KJ_REQUIRE(rc == 0, "fuse_session_custom_io failed", rc);
}

void KillPriv::received(kj::ArrayPtr<const kj::byte> request, bool replayed) {
  kill_ = SetidKill::NONE;
  if (request.size() < sizeof(fuse_in_header)) return;
  auto* header = reinterpret_cast<const fuse_in_header*>(request.begin());
  switch (header->opcode) {
    case FUSE_INIT:
      // (Offered in `flags`; fuse_init_in's first four fields are there in every version.)
      if (request.size() >= sizeof(fuse_in_header) + 4 * sizeof(uint32_t)) {
        uint32_t flags;
        memcpy(&flags, request.begin() + sizeof(fuse_in_header) + 3 * sizeof(uint32_t),
               sizeof(flags));
        offered_ = (flags & FUSE_HANDLE_KILLPRIV_V2) != 0;
        if (replayed) {
          asked_ = offered_.load();  // the reply to a replay goes nowhere: nothing to edit
        } else {
          initUnique_ = header->unique;
        }
      }
      return;
    case FUSE_WRITE:
      if (auto* in = argOf<fuse_write_in>(request)) {
        if (in->write_flags & FUSE_WRITE_KILL_SUIDGID) kill_ = SetidKill::WRITE;
      }
      return;
    case FUSE_SETATTR:
      if (auto* in = argOf<fuse_setattr_in>(request)) {
        // A truncate flagged by a caller without CAP_FSETID; a chown flagged; and a chown that
        // changes nothing (Linux clears the bits all the same), the one setattr that comes
        // with nothing to set and no flag.
        constexpr uint32_t ANY = FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | FATTR_ATIME |
                                 FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW;
        if (in->valid & FATTR_KILL_SUIDGID) {
          kill_ = (in->valid & FATTR_SIZE) ? SetidKill::WRITE : SetidKill::CHOWN;
        } else if ((in->valid & ANY) == 0 && asked()) {
          kill_ = SetidKill::CHOWN;
        }
      }
      return;
    default:
      return;
  }
}

ssize_t KillPriv::readDevice(int fd, void* buf, size_t size, void*) {
  return ::read(fd, buf, size);
}

ssize_t KillPriv::writeDevice(int fd, struct iovec* iov, int count, void* userdata) {
  auto& self = of(userdata);
  if (self.offered_ && count >= 2 && iov[0].iov_len >= sizeof(fuse_out_header) &&
      iov[1].iov_len >= offsetof(fuse_init_out, flags) + sizeof(uint32_t)) {
    auto* header = static_cast<fuse_out_header*>(iov[0].iov_base);
    if (self.initUnique_ != 0 && header->unique == self.initUnique_ && header->error == 0) {
      // libfuse's reply to FUSE_INIT: the same, asking for the feature too.
      fuse_init_out out{};
      size_t n = kj::min(iov[1].iov_len, sizeof(out));
      memcpy(&out, iov[1].iov_base, n);
      out.flags |= FUSE_HANDLE_KILLPRIV_V2;
      iovec patched[2] = {iov[0], {&out, n}};
      if (count == 2) {
        self.asked_ = true;
        return ::writev(fd, patched, 2);
      }
    }
  }
  return ::writev(fd, iov, count);
}

kj::String KillPriv::metrics() const {
  return kj::str(
      "# HELP cairn_client_killpriv_v2 1: the kernel leaves clearing set-ID bits on write, "
      "truncate and chown to this mount (FUSE_HANDLE_KILLPRIV_V2)\n"
      "# TYPE cairn_client_killpriv_v2 gauge\n"
      "cairn_client_killpriv_v2 ",
      asked_ ? 1 : 0, "\n");
}

}  // namespace cairn
