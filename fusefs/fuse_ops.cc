#include "fusefs/fuse_ops.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>

#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include "fusefs/fuse_loop.h"
#include "fusefs/kill_priv.h"
#include "fusefs/notifier.h"
#include "rpc/errors.h"

namespace cairn {

namespace {

// The set-ID bits this request clears (FUSE_HANDLE_KILLPRIV_V2, fusefs/kill_priv.h).
SetidKill killOf(fuse_req_t req) {
  auto* killPriv = static_cast<FuseUserdata*>(fuse_req_userdata(req))->killPriv;
  return killPriv == nullptr ? SetidKill::NONE : killPriv->kill();
}

FuseOps& ops(fuse_req_t req) {
  return *static_cast<FuseUserdata*>(fuse_req_userdata(req))->ops;
}

Client& client(fuse_req_t req) {
  return ops(req).client();
}

Cred credOf(fuse_req_t req) {
  auto* ctx = fuse_req_ctx(req);
  return Cred{uint32_t(ctx->uid), uint32_t(ctx->gid), uint32_t(ctx->pid)};
}

kj::Array<kj::byte> bytes(const char* s) {
  return kj::heapArray<kj::byte>(reinterpret_cast<const kj::byte*>(s), strlen(s));
}

kj::Array<kj::byte> bytes(const char* s, size_t n) {
  return kj::heapArray<kj::byte>(reinterpret_cast<const kj::byte*>(s), n);
}

// The kernel keeps attributes only while a lock covers them (the client drops them from the
// kernel when the lock goes); the timeout only bounds what a lost notification could cost.
// Entries are never kept by the kernel: the client answers repeated LOOKUPs from its own cache,
// which no invalidation can race with (docs/caching.md).
constexpr double CACHED_TIMEOUT = 3600.0;

double attrTimeout(const Entry& e) {
  return e.cached ? CACHED_TIMEOUT : 0.0;
}

void fillEntry(fuse_entry_param* param, const Entry& e) {
  memset(param, 0, sizeof(*param));
  param->ino = e.attr.st_ino;
  param->generation = e.generation;
  param->attr = e.attr;
  param->attr_timeout = attrTimeout(e);
  param->entry_timeout = e.nameCached ? CACHED_TIMEOUT : 0.0;
}

void replyEntry(fuse_req_t req, const Entry& e) {
  fuse_entry_param param;
  fillEntry(&param, e);
  client(req).remember(e);
  fuse_reply_entry(req, &param);
}

struct Interrupt {
  kj::Own<kj::PromiseFulfiller<void>> fulfiller;
};

void onInterrupt(fuse_req_t, void* data) {
  static_cast<Interrupt*>(data)->fulfiller->fulfill();
}

// ---- one handler per operation ----

void opInit(void* userdata, fuse_conn_info* conn) {
  KJ_IF_MAYBE (notifier, kj::_::readMaybe(static_cast<FuseUserdata*>(userdata)->notifier)) {
    notifier->kernelProtocol(conn->proto_minor);
  }
  // A page-cache read waiting on a parked READ cannot be interrupted with async reads on
  // (the reader sleeps on a locked page and no INTERRUPT is sent), so reads are synchronous.
  conn->want &= ~FUSE_CAP_ASYNC_READ;
  conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  // libfuse turns these on by default. Without them the kernel sends O_TRUNC as a setattr
  // before the open (the one setattr path, truncating the data objects first), and set-ID bits
  // are cleared as fusefs/kill_priv.h arranges (FUSE_HANDLE_KILLPRIV_V2, which libfuse 3.14
  // does not know), not as the first version of that feature would have it.
  conn->want &= ~(FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_HANDLE_KILLPRIV);
  conn->max_write = MAX_IO_BYTES;
  conn->max_readahead = MAX_IO_BYTES;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  // READDIRPLUS for every part of a listing, not only the first (the "auto" choice): the
  // attributes come with the names anyway, and a name handed out without them costs a LOOKUP.
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
}

void opLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  ops(req).run(req, [&]() {
    return client(req).lookup(credOf(req), parent, bytes(name)).then([req](Entry e) {
      replyEntry(req, e);
    });
  });
}

void opForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  client(req).forget(ino, nlookup);
  fuse_reply_none(req);
}

void opForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) client(req).forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void opGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  ops(req).run(req, [&]() {
    return client(req).getattr(ino).then(
        [req](Entry e) { fuse_reply_attr(req, &e.attr, attrTimeout(e)); });
  });
}

void opSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int toSet, fuse_file_info* fi) {
  SetAttr s;
  if (toSet & FUSE_SET_ATTR_MODE) {
    s.valid |= rpc::SET_MODE;
    s.mode = attr->st_mode;
  }
  if (toSet & FUSE_SET_ATTR_UID) {
    s.valid |= rpc::SET_UID;
    s.uid = attr->st_uid;
  }
  if (toSet & FUSE_SET_ATTR_GID) {
    s.valid |= rpc::SET_GID;
    s.gid = attr->st_gid;
  }
  if (toSet & FUSE_SET_ATTR_SIZE) {
    s.valid |= rpc::SET_SIZE;
    s.size = attr->st_size;
  }
  if (toSet & FUSE_SET_ATTR_ATIME_NOW) {
    s.valid |= rpc::SET_ATIME_NOW;
  } else if (toSet & FUSE_SET_ATTR_ATIME) {
    s.valid |= rpc::SET_ATIME;
    s.atime = attr->st_atim;
  }
  if (toSet & FUSE_SET_ATTR_MTIME_NOW) {
    s.valid |= rpc::SET_MTIME_NOW;
  } else if (toSet & FUSE_SET_ATTR_MTIME) {
    s.valid |= rpc::SET_MTIME;
    s.mtime = attr->st_mtim;
  }
  s.kill = killOf(req);
  kj::Maybe<uint64_t> fh;
  if (fi != nullptr) fh = fi->fh;
  ops(req).run(req, [&]() {
    return client(req).setattr(credOf(req), ino, s, fh).then([req](Entry e) {
      fuse_reply_attr(req, &e.attr, attrTimeout(e));
    });
  });
}

void opReadlink(fuse_req_t req, fuse_ino_t ino) {
  ops(req).run(req, [&]() {
    return client(req).readlink(ino).then([req](kj::Array<kj::byte> target) {
      auto s = kj::heapString(reinterpret_cast<const char*>(target.begin()), target.size());
      fuse_reply_readlink(req, s.cStr());
    });
  });
}

void opMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  ops(req).run(req, [&]() {
    return client(req).mknod(credOf(req), parent, bytes(name), mode, rdev).then([req](Entry e) {
      replyEntry(req, e);
    });
  });
}

void opMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  ops(req).run(req, [&]() {
    return client(req).mkdir(credOf(req), parent, bytes(name), mode).then([req](Entry e) {
      replyEntry(req, e);
    });
  });
}

void opSymlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  ops(req).run(req, [&]() {
    return client(req)
        .symlink(credOf(req), parent, bytes(name), bytes(target))
        .then([req](Entry e) { replyEntry(req, e); });
  });
}

void opLink(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newParent, const char* newName) {
  ops(req).run(req, [&]() {
    return client(req).link(credOf(req), ino, newParent, bytes(newName)).then([req](Entry e) {
      replyEntry(req, e);
    });
  });
}

void opUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  ops(req).run(req, [&]() {
    return client(req).unlink(credOf(req), parent, bytes(name)).then([req]() {
      fuse_reply_err(req, 0);
    });
  });
}

void opRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  ops(req).run(req, [&]() {
    return client(req).rmdir(credOf(req), parent, bytes(name)).then([req]() {
      fuse_reply_err(req, 0);
    });
  });
}

void opRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newParent,
              const char* newName, unsigned int flags) {
  ops(req).run(req, [&]() {
    return client(req)
        .rename(credOf(req), parent, bytes(name), newParent, bytes(newName), flags)
        .then([req]() { fuse_reply_err(req, 0); });
  });
}

void opOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  fuse_file_info info = *fi;
  Client* c = &client(req);
  ops(req).run(req, [&]() {
    return c->open(credOf(req), ino, fi->flags).then([req, info, c](Opened o) {
      fuse_file_info out = info;
      out.fh = o.fh;
      // O_APPEND writes land where the server says; the page cache cannot know that offset.
      out.direct_io = (info.flags & O_APPEND) != 0;
      // Pages cached before stay only if the DATA lock kept them right meanwhile.
      out.keep_cache = o.keepCache;
      if (fuse_reply_open(req, &out) == -ENOENT) {
        // The opener was interrupted after all: the kernel will never release this handle.
        c->release(o.fh).detach([](kj::Exception&&) {});
      }
    });
  });
}

void opCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
              fuse_file_info* fi) {
  fuse_file_info info = *fi;
  Client* c = &client(req);
  ops(req).run(req, [&]() {
    return c->create(credOf(req), parent, bytes(name), mode, fi->flags)
        .then([req, info, c](Opened o) {
          fuse_file_info out = info;
          out.fh = o.fh;
          out.direct_io = (info.flags & O_APPEND) != 0;
          out.keep_cache = o.keepCache;
          fuse_entry_param param;
          fillEntry(&param, o.entry);
          c->remember(o.entry);  // the reply hands the kernel a reference
          if (fuse_reply_create(req, &param, &out) == -ENOENT) {
            c->release(o.fh).detach([](kj::Exception&&) {});
          }
        });
  });
}

void opRead(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  ops(req).run(req, [&]() {
    return client(req).read(fi->fh, off, size).then([req](kj::Array<kj::byte> data) {
      fuse_reply_buf(req, reinterpret_cast<const char*>(data.begin()), data.size());
    });
  });
}

void opWrite(fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off,
             fuse_file_info* fi) {
  // libfuse reuses `buf` for the next request: take it over, or copy it, before going async.
  kj::Maybe<Cred> kill;
  if (killOf(req) != SetidKill::NONE) kill = credOf(req);
  auto* loop = static_cast<FuseUserdata*>(fuse_req_userdata(req))->loop;
  auto data = loop != nullptr ? loop->takeWriteBytes(buf, size) : bytes(buf, size);
  ops(req).run(req, [&]() {
    return client(req).write(fi->fh, off, kj::mv(data), fi->writepage, kill).then([req](size_t n) {
      fuse_reply_write(req, n);
    });
  });
}

void opFlush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  // close(): writes queued behind go out (close waits for them only when the targets may be
  // short of room: Client::flush), and the closing owner's record locks go (POSIX: any close
  // by the process drops them).
  uint64_t owner = fi->lock_owner, fh = fi->fh;
  Client* c = &client(req);
  ops(req).run(req, [&]() {
    return c->flush(fh)
        .then([c, ino, owner]() { return c->releaseLocks(ino, owner, 0); })
        .then([req]() { fuse_reply_err(req, 0); });
  });
}

void opRelease(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  uint64_t fh = fi->fh, owner = fi->lock_owner;
  bool flock = fi->flock_release;
  Client* c = &client(req);
  ops(req).run(req, [&]() {
    kj::Promise<void> unlock = flock ? c->releaseLocks(ino, owner, 1) : kj::READY_NOW;
    return unlock.then([c, fh]() { return c->release(fh); }).then([req]() {
      fuse_reply_err(req, 0);
    });
  });
}

// struct flock <-> an inclusive range; l_len 0 means "to the end of the file".
Client::AppLock toAppLock(const struct flock* fl) {
  Client::AppLock l;
  l.type = fl->l_type == F_RDLCK ? 0 : fl->l_type == F_WRLCK ? 1 : 2;
  l.start = uint64_t(fl->l_start);
  l.end = fl->l_len == 0 ? ~uint64_t(0) : uint64_t(fl->l_start + fl->l_len - 1);
  l.pid = uint32_t(fl->l_pid);
  return l;
}

void opGetlk(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock) {
  auto want = toAppLock(lock);
  uint64_t owner = fi->lock_owner;
  ops(req).run(req, [&]() {
    return client(req).getlk(ino, owner, 0, want).then([req](Client::AppLock got) {
      struct flock out;
      memset(&out, 0, sizeof(out));
      out.l_type = got.type == 0 ? F_RDLCK : got.type == 1 ? F_WRLCK : F_UNLCK;
      out.l_whence = SEEK_SET;
      if (got.type != 2) {
        out.l_start = off_t(got.start);
        out.l_len = got.end >= uint64_t(INT64_MAX) ? 0 : off_t(got.end - got.start + 1);
        out.l_pid = pid_t(got.pid);
      }
      fuse_reply_lock(req, &out);
    });
  });
}

void opSetlk(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock, int sleep) {
  auto want = toAppLock(lock);
  uint64_t owner = fi->lock_owner;
  auto start = [&]() {
    return client(req).setlk(ino, owner, 0, want, sleep != 0).then([req]() {
      fuse_reply_err(req, 0);
    });
  };
  if (sleep) {
    ops(req).runAbortable(req, start);
  } else {
    ops(req).run(req, start);
  }
}

void opFlock(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, int op) {
  Client::AppLock want;
  want.type = (op & LOCK_SH) ? 0 : (op & LOCK_EX) ? 1 : 2;
  want.start = 0;
  want.end = ~uint64_t(0);
  want.pid = uint32_t(fuse_req_ctx(req)->pid);
  bool wait = !(op & LOCK_NB) && want.type != 2;
  uint64_t owner = fi->lock_owner;
  auto start = [&]() {
    return client(req).setlk(ino, owner, 1, want, wait).then([req]() { fuse_reply_err(req, 0); });
  };
  if (wait) {
    ops(req).runAbortable(req, start);
  } else {
    ops(req).run(req, start);
  }
}

void opFsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info* fi) {
  ops(req).run(
      req, [&]() { return client(req).fsync(fi->fh).then([req]() { fuse_reply_err(req, 0); }); });
}

void opOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  fuse_file_info info = *fi;
  info.fh = 0;
  ops(req).run(req, [&]() {
    return client(req).opendir(credOf(req), ino).then([req, info]() {
      fuse_file_info out = info;
      fuse_reply_open(req, &out);
    });
  });
}

void opReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  uint32_t max = uint32_t(size / 32 + 2);
  ops(req).run(req, [&]() {
    return client(req).readdir(ino, off, max).then([req, ino, size, off](DirPage page) {
      auto buf = kj::heapArray<char>(size);
      size_t used = 0;
      auto add = [&](const char* name, uint64_t entryIno, uint32_t mode, uint64_t next) {
        struct stat st;
        memset(&st, 0, sizeof(st));
        st.st_ino = entryIno;
        st.st_mode = mode;
        size_t need = fuse_add_direntry(req, buf.begin() + used, size - used, name, &st, next);
        if (need > size - used) return false;
        used += need;
        return true;
      };
      // Offsets: 1 and 2 follow "." and ".."; after that an entry's offset is its cookie.
      bool room = true;
      if (off < 1) room = add(".", ino, S_IFDIR, 1);
      if (room && off < 2) room = add("..", page.parent != 0 ? page.parent : ino, S_IFDIR, 2);
      for (auto& item : page.items) {
        if (!room) break;
        auto name =
            kj::heapString(reinterpret_cast<const char*>(item.name.begin()), item.name.size());
        room = add(name.cStr(), item.attr.st_ino, item.attr.st_mode, item.cookie);
      }
      fuse_reply_buf(req, buf.begin(), used);
    });
  });
}

// As READDIR, with each entry's attributes: the kernel makes its dentries and inodes from them,
// so `rm -r`, `ls -l` or `du` after a listing send no LOOKUP per name.
void opReaddirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  // An entry takes 160 bytes or more (attributes and name): more than fit are asked for, and
  // the client keeps the rest for the next request.
  uint32_t max = uint32_t(size / 96 + 2);
  ops(req).run(req, [&]() {
    return client(req).readdir(ino, off, max).then([req, ino, size, off](DirPage page) {
      auto& c = client(req);
      auto buf = kj::heapArray<char>(size);
      size_t used = 0;
      // "." and "..": the kernel takes no reference for them (no inode number given).
      auto addDot = [&](const char* name, uint64_t entryIno, uint64_t next) {
        fuse_entry_param e;
        memset(&e, 0, sizeof(e));
        e.attr.st_ino = entryIno;
        e.attr.st_mode = S_IFDIR;
        size_t need = fuse_add_direntry_plus(req, buf.begin() + used, size - used, name, &e, next);
        if (need > size - used) return false;
        used += need;
        return true;
      };
      bool room = true;
      if (off < 1) room = addDot(".", ino, 1);
      if (room && off < 2) room = addDot("..", page.parent != 0 ? page.parent : ino, 2);
      for (auto& item : page.items) {
        if (!room) break;
        auto name =
            kj::heapString(reinterpret_cast<const char*>(item.name.begin()), item.name.size());
        // Sized first: an entry that does not fit is not handed out, and takes no reference.
        size_t need = fuse_add_direntry_plus(req, nullptr, 0, name.cStr(), nullptr, 0);
        if (need > size - used) break;
        fuse_entry_param param;
        auto entry = c.listedEntry(ino, item);
        if (page.cached && !entry.cached) {
          // A kept listing's copy of these attributes may be old (no lock of ours covers
          // them any more): the name alone, node 0, and the kernel asks when it needs more.
          memset(&param, 0, sizeof(param));
          param.attr.st_ino = item.attr.st_ino;
          param.attr.st_mode = item.attr.st_mode & S_IFMT;
        } else {
          fillEntry(&param, entry);
          c.remember(entry);
        }
        used += fuse_add_direntry_plus(req, buf.begin() + used, size - used, name.cStr(), &param,
                                       item.cookie);
      }
      fuse_reply_buf(req, buf.begin(), used);
    });
  });
}

void opReleasedir(fuse_req_t req, fuse_ino_t, fuse_file_info*) {
  fuse_reply_err(req, 0);
}

void opFsyncdir(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) {
  ops(req).run(req,
               [&]() { return client(req).syncDir().then([req]() { fuse_reply_err(req, 0); }); });
}

void opStatfs(fuse_req_t req, fuse_ino_t) {
  ops(req).run(req, [&]() {
    return client(req).statfs().then([req](struct statvfs s) { fuse_reply_statfs(req, &s); });
  });
}

void opSetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
                int flags) {
  ops(req).run(req, [&]() {
    return client(req)
        .setxattr(ino, bytes(name), bytes(value, size), uint32_t(flags))
        .then([req]() { fuse_reply_err(req, 0); });
  });
}

void replySized(fuse_req_t req, size_t size, const kj::Array<kj::byte>& data) {
  if (size == 0) {
    fuse_reply_xattr(req, data.size());
  } else if (data.size() > size) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, reinterpret_cast<const char*>(data.begin()), data.size());
  }
}

void opGetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  ops(req).run(req, [&]() {
    return client(req).getxattr(ino, bytes(name)).then([req, size](kj::Array<kj::byte> value) {
      replySized(req, size, value);
    });
  });
}

void opListxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  ops(req).run(req, [&]() {
    return client(req).listxattr(ino).then(
        [req, size](kj::Array<kj::byte> names) { replySized(req, size, names); });
  });
}

void opRemovexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  ops(req).run(req, [&]() {
    return client(req).removexattr(ino, bytes(name)).then([req]() { fuse_reply_err(req, 0); });
  });
}

void opAccess(fuse_req_t req, fuse_ino_t, int) {
  // Permissions are the kernel's (default_permissions); without it, everything is allowed.
  fuse_reply_err(req, 0);
}

fuse_lowlevel_ops makeTable() {
  fuse_lowlevel_ops t;
  memset(&t, 0, sizeof(t));
  t.init = opInit;
  t.lookup = opLookup;
  t.forget = opForget;
  t.forget_multi = opForgetMulti;
  t.getattr = opGetattr;
  t.setattr = opSetattr;
  t.readlink = opReadlink;
  t.mknod = opMknod;
  t.mkdir = opMkdir;
  t.symlink = opSymlink;
  t.link = opLink;
  t.unlink = opUnlink;
  t.rmdir = opRmdir;
  t.rename = opRename;
  t.open = opOpen;
  t.create = opCreate;
  t.read = opRead;
  t.write = opWrite;
  t.flush = opFlush;
  t.release = opRelease;
  t.fsync = opFsync;
  t.opendir = opOpendir;
  t.readdir = opReaddir;
  t.readdirplus = opReaddirplus;
  t.releasedir = opReleasedir;
  t.fsyncdir = opFsyncdir;
  t.statfs = opStatfs;
  t.setxattr = opSetxattr;
  t.getxattr = opGetxattr;
  t.listxattr = opListxattr;
  t.removexattr = opRemovexattr;
  t.access = opAccess;
  t.getlk = opGetlk;
  t.setlk = opSetlk;
  t.flock = opFlock;
  return t;
}

}  // namespace

FuseOps::FuseOps(Client& client, kj::Timer& timer)
    : client_(client), timer_(timer), tasks_(errorHandler_) {}

FuseOps::~FuseOps() noexcept(false) {}

const fuse_lowlevel_ops& FuseOps::table() {
  static const fuse_lowlevel_ops t = makeTable();
  return t;
}

kj::Promise<void> FuseOps::untilOutage() {
  if (client_.outage()) return kj::READY_NOW;
  return timer_.afterDelay(100 * kj::MILLISECONDS).then([this]() { return untilOutage(); });
}

void FuseOps::ErrorHandler::taskFailed(kj::Exception&& e) {
  spdlog::error("request task failed: {}", e.getDescription().cStr());
}

kj::Promise<void> FuseOps::idle() {
  if (inFlight_ == 0) return kj::READY_NOW;
  auto paf = kj::newPromiseAndFulfiller<void>();
  idleWaiters_.add(kj::mv(paf.fulfiller));
  return kj::mv(paf.promise);
}

void FuseOps::done() {
  if (--inFlight_ > 0) return;
  for (auto& w : idleWaiters_) w->fulfill();
  idleWaiters_.clear();
}

void FuseOps::runPromise(fuse_req_t req, kj::Promise<void> work, bool abortable) {
  ++inFlight_;
  auto interrupt = kj::heap<Interrupt>();
  auto paf = kj::newPromiseAndFulfiller<void>();
  interrupt->fulfiller = kj::mv(paf.fulfiller);
  // Calls onInterrupt at once if the request was already interrupted. libfuse forgets the hook
  // when the request is answered, so `interrupt` may go with the task.
  fuse_req_interrupt_func(req, onInterrupt, interrupt.get());
  // After an interrupt, end the request as soon as (or once) a server is unreachable.
  auto interrupted =
      paf.promise.then([this, abortable]() { return abortable ? kj::READY_NOW : untilOutage(); })
          .then([req]() { fuse_reply_err(req, EINTR); });
  tasks_.add(work.catch_([req](kj::Exception&& e) {
                   int err = errnoOf(e);
                   if (err == EIO) spdlog::warn("request failed: {}", e.getDescription().cStr());
                   fuse_reply_err(req, err);
                 })
                 .exclusiveJoin(kj::mv(interrupted))
                 .attach(kj::mv(interrupt), kj::defer([this]() { done(); })));
}

}  // namespace cairn
