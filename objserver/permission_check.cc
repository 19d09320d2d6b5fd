#include "objserver/permission_check.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/fs.h>

#include <cstring>

#include "rpc/errors.h"

namespace cairn {

namespace {
constexpr uint32_t MAY_READ = R_OK;
constexpr uint32_t MAY_WRITE = W_OK;
constexpr uint32_t MAY_EXEC = X_OK;

bool allows(const InodeData& node, const Caller& caller, uint32_t mask) {
  uint32_t bits = node.uid == caller.uid   ? node.mode >> 6
                  : node.gid == caller.gid ? node.mode >> 3
                                           : node.mode;
  return (bits & mask) == mask;
}

void requireAccess(const InodeData& node, const Caller& caller, uint32_t mask) {
  fsRequire(allows(node, caller, mask), EACCES);
}

void requireOwner(const InodeData& node, const Caller& caller) {
  fsRequire(node.uid == caller.uid, EPERM);
}

// A directory to be searched (and the error a path walk would give first).
InodeData searchable(Namespace& ns, store::Txn& txn, uint64_t ino, const Caller& caller) {
  auto dir = ns.get(txn, ino);
  fsRequire(dir.isDir(), ENOTDIR);
  requireAccess(dir, caller, MAY_EXEC);
  return dir;
}

kj::Maybe<InodeData> existing(Namespace& ns, store::Txn& txn, uint64_t parent,
                              kj::ArrayPtr<const kj::byte> name) {
  try {
    return ns.lookup(txn, parent, name);
  } catch (FsError& e) {
    if (e.err() != ENOENT) throw;
    return nullptr;
  }
}

// A new name in `parent`: an existing one is EEXIST before anything else (mkdir -p relies on
// it); otherwise the directory must be writable.
void requireMayCreate(Namespace& ns, store::Txn& txn, uint64_t parent,
                      kj::ArrayPtr<const kj::byte> name, const Caller& caller) {
  auto dir = searchable(ns, txn, parent, caller);
  fsRequire(existing(ns, txn, parent, name) == nullptr, EEXIST);
  requireAccess(dir, caller, MAY_WRITE);
}

// Removing (or replacing) `child` from `dir`: a writable directory, and in a sticky one the
// caller must own the entry or the directory.
void requireMayRemove(const InodeData& dir, const InodeData& child, const Caller& caller) {
  requireAccess(dir, caller, MAY_WRITE | MAY_EXEC);
  if (dir.mode & S_ISVTX) fsRequire(dir.uid == caller.uid || child.uid == caller.uid, EPERM);
}

uint32_t openMask(uint32_t flags) {
  uint32_t mask = 0;
  uint32_t access = flags & O_ACCMODE;
  if (access != O_WRONLY) mask |= MAY_READ;
  if (access != O_RDONLY || (flags & O_TRUNC)) mask |= MAY_WRITE;
  return mask;
}

bool startsWith(kj::ArrayPtr<const kj::byte> name, kj::StringPtr prefix) {
  return name.size() >= prefix.size() && memcmp(name.begin(), prefix.begin(), prefix.size()) == 0;
}

// Extended attributes by namespace: user.* follow the file's read and write bits, trusted.*
// are for root alone (hidden from others: ENODATA on read), the rest (security.*, system.*)
// may be read by anyone and changed by the owner.
void requireXattr(const InodeData& node, kj::ArrayPtr<const kj::byte> name, const Caller& caller,
                  bool write) {
  if (startsWith(name, "user.")) {
    // Linux allows user.* only on regular files and directories.
    if (write) fsRequire(node.isReg() || node.isDir(), EPERM);
    requireAccess(node, caller, write ? MAY_WRITE : MAY_READ);
  } else if (startsWith(name, "trusted.")) {
    throw FsError(write ? EPERM : ENODATA);
  } else if (write) {
    requireOwner(node, caller);
  }
}

// Linux's protected_hardlinks (on by default): a link to a file one does not own needs read and
// write access to it, and it must not be set-user-ID or set-group-ID executable.
void requireMayLink(const InodeData& node, const Caller& caller) {
  if (node.uid == caller.uid) return;
  bool safe = node.isReg() && !(node.mode & S_ISUID) &&
              !((node.mode & S_ISGID) && (node.mode & S_IXGRP)) &&
              allows(node, caller, MAY_READ | MAY_WRITE);
  fsRequire(safe, EPERM);
}

void requireMaySetattr(const InodeData& node, rpc::MetaRequest::Setattr::Reader s,
                       const Caller& caller) {
  uint32_t valid = s.getValid();
  if (valid & rpc::SET_MODE) requireOwner(node, caller);
  // Only root gives a file away; an owner may "change" it to itself.
  if (valid & rpc::SET_UID) fsRequire(node.uid == caller.uid && s.getUid() == node.uid, EPERM);
  if (valid & rpc::SET_GID) {
    requireOwner(node, caller);
    fsRequire(s.getGid() == node.gid || s.getGid() == caller.gid, EPERM);
  }
  if (valid & rpc::SET_SIZE) requireAccess(node, caller, MAY_WRITE);
  // A read's atime update (setAccess) is the filesystem's own doing, not the caller's.
  if (valid & rpc::SET_ACCESS) return;
  bool now = valid & (rpc::SET_ATIME_NOW | rpc::SET_MTIME_NOW);
  bool explicitTimes = ((valid & rpc::SET_ATIME) && !(valid & rpc::SET_ATIME_NOW)) ||
                       ((valid & rpc::SET_MTIME) && !(valid & rpc::SET_MTIME_NOW));
  if (explicitTimes) {
    requireOwner(node, caller);
  } else if (now && node.uid != caller.uid) {
    // touch: the owner, or anyone who may write the file.
    requireAccess(node, caller, MAY_WRITE);
  }
}
}  // namespace

uint32_t permittedMode(const InodeData& node, const Caller& caller, uint32_t mode) {
  if (caller.checked && (mode & S_ISGID) && node.gid != caller.gid) mode &= ~uint32_t(S_ISGID);
  return mode;
}

void checkPermitted(Namespace& ns, store::Txn& txn, rpc::MetaRequest::Reader req,
                    const Caller& caller) {
  using R = rpc::MetaRequest;
  switch (req.which()) {
    case R::LOOKUP:
      searchable(ns, txn, req.getLookup().getParent(), caller);
      return;
    case R::ACCESS:
      requireAccess(ns.get(txn, req.getAccess().getIno()), caller,
                    req.getAccess().getMask() & (MAY_READ | MAY_WRITE | MAY_EXEC));
      return;
    case R::OPEN: {
      auto node = ns.get(txn, req.getOpen().getIno());
      requireAccess(node, caller, node.isDir() ? MAY_READ : openMask(req.getOpen().getFlags()));
      return;
    }
    case R::READDIR:
      requireAccess(ns.get(txn, req.getReaddir().getIno()), caller, MAY_READ);
      return;
    case R::SETATTR:
      requireMaySetattr(ns.get(txn, req.getSetattr().getIno()), req.getSetattr(), caller);
      return;
    case R::MKNOD: {
      auto m = req.getMknod();
      // Device nodes need CAP_MKNOD.
      fsRequire(!S_ISCHR(m.getMode()) && !S_ISBLK(m.getMode()), EPERM);
      requireMayCreate(ns, txn, m.getParent(), m.getName(), caller);
      return;
    }
    case R::MKDIR:
      requireMayCreate(ns, txn, req.getMkdir().getParent(), req.getMkdir().getName(), caller);
      return;
    case R::SYMLINK:
      requireMayCreate(ns, txn, req.getSymlink().getParent(), req.getSymlink().getName(), caller);
      return;
    case R::LINK: {
      auto l = req.getLink();
      requireMayCreate(ns, txn, l.getNewParent(), l.getNewName(), caller);
      requireMayLink(ns.get(txn, l.getIno()), caller);
      return;
    }
    case R::CREATE: {
      auto c = req.getCreate();
      auto dir = searchable(ns, txn, c.getParent(), caller);
      KJ_IF_MAYBE (node, existing(ns, txn, c.getParent(), c.getName())) {
        // Without O_EXCL an existing file is opened (O_EXCL: the create says EEXIST).
        if (!(c.getFlags() & O_EXCL)) requireAccess(*node, caller, openMask(c.getFlags()));
      } else {
        requireAccess(dir, caller, MAY_WRITE);
      }
      return;
    }
    case R::UNLINK:
    case R::RMDIR: {
      bool dirs = req.which() == R::RMDIR;
      uint64_t parent = dirs ? req.getRmdir().getParent() : req.getUnlink().getParent();
      auto name = dirs ? req.getRmdir().getName() : req.getUnlink().getName();
      auto dir = searchable(ns, txn, parent, caller);
      requireMayRemove(dir, ns.lookup(txn, parent, name), caller);
      return;
    }
    case R::RENAME: {
      auto r = req.getRename();
      auto from = searchable(ns, txn, r.getParent(), caller);
      auto to = searchable(ns, txn, r.getNewParent(), caller);
      auto moved = ns.lookup(txn, r.getParent(), r.getName());
      requireMayRemove(from, moved, caller);
      KJ_IF_MAYBE (replaced, existing(ns, txn, r.getNewParent(), r.getNewName())) {
        requireMayRemove(to, *replaced, caller);
        // An exchange moves the other one too: its ".." changes as well.
        if ((r.getFlags() & RENAME_EXCHANGE) && replaced->isDir() &&
            r.getParent() != r.getNewParent()) {
          requireAccess(*replaced, caller, MAY_WRITE);
        }
      } else {
        requireAccess(to, caller, MAY_WRITE);
      }
      // A directory moving to another parent rewrites its "..".
      if (moved.isDir() && r.getParent() != r.getNewParent()) {
        requireAccess(moved, caller, MAY_WRITE);
      }
      return;
    }
    case R::GETXATTR:
      requireXattr(ns.get(txn, req.getGetxattr().getIno()), req.getGetxattr().getName(), caller,
                   false);
      return;
    case R::SETXATTR:
      requireXattr(ns.get(txn, req.getSetxattr().getIno()), req.getSetxattr().getName(), caller,
                   true);
      return;
    case R::REMOVEXATTR:
      requireXattr(ns.get(txn, req.getRemovexattr().getIno()), req.getRemovexattr().getName(),
                   caller, true);
      return;
    default:
      // getattr, readlink, statfs, listxattr, layout: nothing beyond the path walk that found
      // the inode. wrote, reserveAppend: writes through a descriptor opened (and checked) for
      // writing. Locks, release, sync: the caller's own opens.
      return;
  }
}

}  // namespace cairn
