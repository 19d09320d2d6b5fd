// Client: names and attributes — lookup, getattr, setattr, create, mkdir, unlink, rename,
// readdir, xattrs, statfs, and the updates answered ahead of the servers.
#include "fusefs/client.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <unistd.h>

#include <capnp/orphan.h>
#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <random>

#include "fusefs/client_parts.h"
#include "fusefs/reply_bytes.h"
#include "rpc/errors.h"
#include "rpc/feature_flags.h"
#include "rpc/lock_names.h"
#include "rpc/reply_attrs.h"
#include "rpc/time_order.h"

namespace cairn {

using namespace client_parts;

namespace {
std::string nameOf(kj::ArrayPtr<const kj::byte> name) {
  return std::string(reinterpret_cast<const char*>(name.begin()), name.size());
}
DirItem copyOf(const DirItem& item) {
  return DirItem{kj::heapArray(item.name.asPtr()), item.cookie, item.attr, item.generation};
}
}  // namespace

// Updates that make a name: the reply's inode joins the directory's cached names. A new inode
// (`made`) has no extended attributes, and a new directory no entries.
kj::Promise<Entry> Client::entryCall(MetaBuild build, uint64_t parent, kj::Array<kj::byte> name,
                                     bool made) {
  auto key = nameOf(name);
  auto named = kj::heap<bool>(false);
  bool& nameCached = *named;
  return metaCall(kj::mv(build), true, ServerLink::Class::NORMAL,
                  [this, parent, made, &nameCached,
                   key = kj::mv(key)](rpc::MetaReply::Reader reply) mutable {
                    nameCached = madeEntry(reply, parent, kj::mv(key), made);
                  })
      .then([this, &nameCached](ServerLink::MetaResponse&& resp) {
        auto e = entryOf(resp.getReply());
        e.nameCached = nameCached;
        return e;
      })
      .attach(kj::mv(name), kj::mv(named));
}

bool Client::madeEntry(rpc::MetaReply::Reader reply, uint64_t parent, std::string key, bool made) {
  if (reply.getError() != 0) {
    cache_.dropEntry(parent, key);
    return false;
  }
  bool nameCached = false;
  uint64_t ino = reply.getAttr().getIno();
  if (locks_->held(parent, BIT_LOOKUP) != 0) {
    nameCached = nameForKernel(parent, key);
    cache_.setEntry(parent, kj::mv(key), ino);
  }
  if (made && locks_->held(ino, BIT_ATTR) != 0) cache_.markNoXattrs(ino);
  if (made && locks_->held(ino, BIT_LOOKUP) != 0) cache_.markComplete(ino);
  return nameCached;
}

kj::Maybe<kj::Promise<Entry>> Client::mkdirBeside(uint64_t parent, const kj::Array<kj::byte>& name,
                                                  MetaBuild& build) {
  // Every request about a directory waits for the creates and removals answered ahead in it
  // (afterDirops): they gather for a batch, which is hurried out and answered first. A mkdir
  // does not need that order. The creates and removals ahead are of other names (this one is
  // known free here, and not on its way out), so they commute with it on the server but for
  // the directory's times, which the server keeps from going back (features::MKDIR_BESIDE),
  // and its link count, which the cache keeps below. A change of the directory's attributes
  // answered ahead does not commute: then it waits, as before.
  if (!(meta_->peerFeatures() & features::MKDIR_BESIDE) || !dirops_.pending(parent)) {
    return nullptr;
  }
  auto key = nameOf(name);
  if (attrsAhead_.count(parent) > 0 || removing_.count({parent, key}) > 0) return nullptr;
  KJ_IF_MAYBE (e, cache_.entry(parent, key)) {
    if (*e != 0) return nullptr;  // EEXIST is the server's to say
  } else if (locks_->held(parent, BIT_LOOKUP) == 0 || !cache_.complete(parent)) {
    return nullptr;  // not known free
  }
  ++stats_.mkdirsBeside;
  return meta_->meta(kj::mv(build), true, ServerLink::Class::NORMAL)
      .then([this, parent, key = kj::mv(key)](ServerLink::MetaResponse&& resp) mutable {
        // In the response's first event, as sendMeta's absorb (see there).
        auto reply = resp.getReply();
        if (reply.getError() == 0) {
          // The new directory's ".." links the parent: with creates and removals ahead still
          // on their way, absorb keeps the cache's link count over the reply's, so the cache
          // counts it first.
          KJ_IF_MAYBE (d, cache_.attr(parent)) {
            struct stat st = d->attr;
            ++st.st_nlink;
            cache_.setAttr(st, d->generation);
          }
        }
        absorb(reply);
        bool nameCached = madeEntry(reply, parent, kj::mv(key), true);
        checkErrno(reply.getError());
        auto e = entryOf(reply);
        e.nameCached = nameCached;
        return e;
      });
}

kj::Promise<Entry> Client::getattr(uint64_t ino) {
  KJ_IF_MAYBE (e, cachedEntry(ino)) {
    ++stats_.cacheHits;
    return *e;
  }
  ++stats_.cacheMisses;
  uint32_t want = wantFor(0, ino, false);
  return metaCall(
             [ino, want](rpc::MetaRequest::Builder b) {
               b.setGetattr(ino);
               b.setWantLocks(want);
             },
             false)
      .then([this](ServerLink::MetaResponse&& resp) { return entryOf(resp.getReply()); },
            [this, ino](kj::Exception&& e) -> Entry {
              // Removed on the server while the kernel still holds it (a descriptor of a removed
              // directory, a cwd): what it last was, with no links left, as local filesystems do.
              KJ_IF_MAYBE (inode, inodes_.find(ino)) {
                if (errnoOf(e) == ENOENT && inode->last.st_ino == ino) {
                  Entry gone;
                  gone.attr = inode->last;
                  gone.attr.st_nlink = 0;
                  return gone;
                }
              }
              kj::throwFatalException(kj::mv(e));
            });
}

kj::Promise<Entry> Client::lookup(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name) {
  // The kernel lets FUSE names reach 1,024 bytes; no name here is over 255, and a cached "not
  // there" must not hide that (the server says the same when asked).
  if (name.size() > NAME_MAX) return errnoException(ENAMETOOLONG);
  auto key = nameOf(name);
  if (locks_->held(parent, BIT_LOOKUP) != 0) {
    KJ_IF_MAYBE (ino, cache_.entry(parent, key)) {
      ++stats_.cacheHits;
      if (*ino == 0) return errnoException(ENOENT);
      KJ_IF_MAYBE (e, cachedEntry(*ino)) {
        e->nameCached = nameForKernel(parent, key);
        return *e;
      }
    } else if (cache_.complete(parent)) {
      ++stats_.cacheHits;
      return errnoException(ENOENT);
    }
  }
  ++stats_.cacheMisses;
  uint32_t want = wantFor(parent, 0, false);
  // Decided with the reply's locks, in its first event (see absorb).
  auto named = kj::heap<bool>(false);
  bool& nameCached = *named;
  return metaCall(
             [cred, parent, name = kj::mv(name), want](rpc::MetaRequest::Builder b) {
               setCred(b, cred);
               auto l = b.initLookup();
               l.setParent(parent);
               l.setName(name);
               b.setWantLocks(want);
             },
             false, ServerLink::Class::NORMAL,
             [this, parent, &nameCached, key = kj::mv(key)](rpc::MetaReply::Reader reply) mutable {
               if (locks_->held(parent, BIT_LOOKUP) == 0) return;
               if (reply.getError() == 0) {
                 nameCached = nameForKernel(parent, key);
                 cache_.setEntry(parent, kj::mv(key), reply.getAttr().getIno());
               } else if (reply.getError() == ENOENT) {
                 cache_.setEntry(parent, kj::mv(key), 0);
               }
             })
      .then([this, &nameCached](ServerLink::MetaResponse&& resp) {
        auto e = entryOf(resp.getReply());
        e.nameCached = nameCached;
        return e;
      })
      .attach(kj::mv(named));
}

kj::Promise<kj::Own<SharedLayout>> Client::layoutOf(uint64_t ino, ServerLink::Class cls) {
  KJ_IF_MAYBE (inode, inodes_.find(ino)) {
    KJ_IF_MAYBE (l, inode->layout) {
      return kj::addRef(**l);
    }
  }
  for (auto& [fh, file] : opens_.all()) {
    if (file.ino != ino) continue;
    KJ_IF_MAYBE (l, file.layout) {
      return kj::addRef(**l);
    }
  }
  return metaCall([ino](rpc::MetaRequest::Builder b) { b.setLayout(ino); }, false, cls)
      .then([this, ino](ServerLink::MetaResponse&& resp) {
        auto opened = resp.getReply().getOpened();
        KJ_REQUIRE(opened.hasLayout(), "a regular file without a layout", ino);
        auto layout = toLayout(opened.getLayout());
        KJ_IF_MAYBE (inode, inodes_.find(ino)) {
          inode->layout = kj::addRef(*layout);
        }
        return layout;
      });
}

kj::Promise<void> Client::truncateObjects(const StripeLayout& layout, uint64_t size) {
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(layout.targets.size());
  for (uint32_t slot = 0; slot < layout.targets.size(); ++slot) {
    uint64_t objectSize = objectSizeFor(layout, size, slot);
    uint64_t object = layout.objectId;
    parts.add(dataLink(layout.targets[slot]).then([object, objectSize](ServerLink* link) {
      return link
          ->data(
              [object, objectSize](rpc::DataRequest::Builder b) {
                auto t = b.initTruncate();
                t.setObjectId(object);
                t.setSize(objectSize);
              },
              true)
          .then([](ServerLink::DataResponse&& resp) { checkErrno(resp.getReply().getError()); });
    }));
  }
  return kj::joinPromises(parts.finish());
}

kj::Promise<void> Client::killSuidgid(const Cred& cred, uint64_t ino) {
  return getattr(ino).then([this, cred, ino](Entry e) -> kj::Promise<void> {
    KJ_IF_MAYBE (mode, setidCleared(e.attr, cred, SetidKill::WRITE)) {
      ++stats_.setidCleared;
      SetAttr s;
      s.valid = rpc::SET_MODE;
      s.mode = *mode;
      return setattr(cred, ino, s, nullptr).ignoreResult();
    }
    return kj::READY_NOW;
  });
}

kj::Promise<Entry> Client::setattr(const Cred& cred, uint64_t ino, SetAttr attr,
                                   kj::Maybe<uint64_t> fh) {
  if (attr.kill != SetidKill::NONE) {
    // A chown, or a truncate by a caller without CAP_FSETID: the set-ID bits go in the same
    // change, computed from the mode as it is (held under our lock, or asked for).
    auto kill = attr.kill;
    attr.kill = SetidKill::NONE;
    if (!(attr.valid & rpc::SET_MODE)) {
      return getattr(ino).then([this, cred, ino, attr, fh, kill](Entry e) mutable {
        KJ_IF_MAYBE (mode, setidCleared(e.attr, cred, kill)) {
          ++stats_.setidCleared;
          attr.valid |= rpc::SET_MODE;
          attr.mode = *mode;
        }
        return setattr(cred, ino, attr, fh);
      });
    }
  }
  if (attr.valid & rpc::SET_SIZE) readAhead_.drop(ino);
  KJ_IF_MAYBE (e, setattrBehind(cred, ino, attr)) {
    return *e;
  }
  KJ_IF_MAYBE (e, dirAttrsAhead(cred, ino, attr)) {
    return *e;
  }
  if (wb_.queued(ino)) {
    // Queued writes come before a truncate (and before times set explicitly).
    return flushed(ino, Waiter::APPLICATION).then([this, cred, ino, attr, fh]() {
      return setattr(cred, ino, attr, fh);
    });
  }
  if (!(attr.valid & rpc::SET_SIZE)) return sendSetattr(cred, ino, attr, ServerLink::Class::NORMAL);
  // The data goes first: once the size says "shorter", no byte past it may be readable. So a
  // truncate by path from a root the server squashes asks first whether it may write the file
  // (a descriptor was checked when it was opened).
  kj::Promise<void> allowed = kj::READY_NOW;
  if (fh == nullptr && serverChecks(cred)) allowed = access(cred, ino, W_OK);
  return allowed.then([this, ino]() { return getattr(ino); })
      .then([this, ino, attr](Entry e) -> kj::Promise<void> {
        auto& st = e.attr;
        if (!S_ISREG(st.st_mode)) return kj::READY_NOW;  // the server gives the right error
        if (attr.size >= uint64_t(st.st_size)) return kj::READY_NOW;
        return layoutOf(ino).then([this, attr](kj::Own<SharedLayout> layout) {
          return truncateObjects(layout->layout, attr.size).attach(kj::mv(layout));
        });
      })
      .then([this, cred, ino, attr]() {
        return sendSetattr(cred, ino, attr, ServerLink::Class::NORMAL);
      });
}

kj::Maybe<Entry> Client::setattrBehind(const Cred& cred, uint64_t ino, const SetAttr& attr) {
  // Only under our PW on the attributes (a file this client writes behind), for what the kernel
  // has already checked (default_permissions; not a caller the server checks), and not a size.
  if (!caching() || (attr.valid & rpc::SET_SIZE) || serverChecks(cred)) return nullptr;
  // (A file created ahead: its PW comes with the create's reply; nobody else can see it.)
  if (locks_->heldMode(ino, BIT_ATTR).orDefault(rpc::LockMode::NL) != rpc::LockMode::PW &&
      creating_.count(ino) == 0) {
    return nullptr;
  }
  KJ_IF_MAYBE (c, cache_.attr(ino)) {
    // (A directory's go through its batches instead: dirAttrsAhead.)
    if (!S_ISREG(c->attr.st_mode)) return nullptr;
  } else {
    return nullptr;
  }
  WriteBehind::AttrChange change;
  change.valid = attr.valid;
  change.mode = attr.mode;
  change.uid = attr.uid;
  change.gid = attr.gid;
  change.atime = attr.atime;
  change.mtime = attr.mtime;
  change.callerUid = cred.uid;
  change.callerGid = cred.gid;
  change.callerPid = cred.pid;
  clock_gettime(CLOCK_REALTIME, &change.at);
  // "Now" as this client sees it; the server sets its own when the change lands.
  if (attr.valid & rpc::SET_ATIME_NOW) change.atime = change.at;
  if (attr.valid & rpc::SET_MTIME_NOW) change.mtime = change.at;
  wb_.setAttr(ino, change);
  // Out soon, in the background; what comes meanwhile (tar: chown, chmod, utimes) joins it.
  tasks_.add(io_.provider->getTimer().afterDelay(ATTR_GATHER).then([this, ino]() {
    return flushed(ino, Waiter::BEHIND);
  }));
  return cachedEntry(ino);
}

// Under our PW on a directory's attributes (one we made: features::DIR_ATTRS_AHEAD), a chmod,
// chown or utimes of it is answered from the cache, for what the kernel has already checked, and
// goes behind in the directory's batches, once every operation answered ahead that touches it
// is answered: the creates in it would otherwise set its times after the utimes that should
// come last. tar sets each directory's owner, mode and times after its contents: three round
// trips a directory, before. Until the change is answered, the creates and removals in the
// directory wait for their replies as usual (they would overtake it), and so does every request
// about the directory (afterDirops); a caller of our PW waits for it too (revoke).
kj::Maybe<Entry> Client::dirAttrsAhead(const Cred& cred, uint64_t ino, const SetAttr& attr) {
  constexpr uint32_t AHEAD = rpc::SET_MODE | rpc::SET_UID | rpc::SET_GID | rpc::SET_ATIME |
                             rpc::SET_MTIME | rpc::SET_ATIME_NOW | rpc::SET_MTIME_NOW;
  if (!asyncDirops(cred) || (attr.valid & ~AHEAD) != 0 || dirops_.full()) return nullptr;
  constexpr uint64_t batches = features::BATCH | features::BATCH_ATTRS | features::DIR_ATTRS_AHEAD;
  if ((meta_->peerFeatures() & batches) != batches) return nullptr;
  if (locks_->heldMode(ino, BIT_ATTR).orDefault(rpc::LockMode::NL) != rpc::LockMode::PW ||
      locks_->revoking(ino, BIT_ATTR)) {
    return nullptr;
  }
  MetaCache::Inode cached;
  KJ_IF_MAYBE (c, cache_.attr(ino)) {
    cached = *c;
  } else {
    return nullptr;
  }
  struct stat& st = cached.attr;
  if (!S_ISDIR(st.st_mode)) return nullptr;
  // What the server will make of it ("now" is its own when the change lands; the reply says).
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  if (attr.valid & rpc::SET_MODE) st.st_mode = (st.st_mode & S_IFMT) | (attr.mode & 07777);
  if (attr.valid & rpc::SET_UID) st.st_uid = attr.uid;
  if (attr.valid & rpc::SET_GID) st.st_gid = attr.gid;
  if (attr.valid & rpc::SET_ATIME_NOW) {
    st.st_atim = now;
  } else if (attr.valid & rpc::SET_ATIME) {
    st.st_atim = attr.atime;
  }
  if (attr.valid & rpc::SET_MTIME_NOW) {
    st.st_mtim = now;
  } else if (attr.valid & rpc::SET_MTIME) {
    st.st_mtim = attr.mtime;
  }
  st.st_ctim = now;
  cache_.setAttr(st, cached.generation);
  uint64_t op = dirops_.begin({ino});
  ++stats_.dirAttrsAhead;
  attrsAhead_[ino].insert(op);
  auto doneAhead = [this, ino, op]() {
    auto it = attrsAhead_.find(ino);
    if (it == attrsAhead_.end()) return;
    it->second.erase(op);
    if (it->second.empty()) attrsAhead_.erase(it);
  };
  auto applied = dirops_.settledBefore(ino, op).then([this, cred, ino, attr, op, doneAhead]() {
    return batch_->send(
        ino,
        [cred, ino, attr](rpc::MetaRequest::Builder b) { buildSetattr(b, cred, ino, attr, 0); },
        // The reply is absorbed in its first event, as metaCall does (see there); this change
        // no longer counts as one the reply predates.
        [this, op, doneAhead](rpc::MetaReply::Reader reply) -> kj::Promise<int> {
          doneAhead();
          absorb(reply, op);
          return reply.getError();
        });
  });
  sendBehind(kj::mv(applied), kj::str("change of attributes of directory ", ino),
             [this, ino, op, doneAhead](int err, bool) {
               doneAhead();
               if (err != 0) {
                 // What the kernel and the cache were told did not happen: both ask again.
                 cache_.dropAttr(ino);
                 KJ_IF_MAYBE (kernel, kernel_) {
                   tasks_.add(invalidateInKernel(*kernel, ino, false));
                 }
               }
               dirops_.end(op, {ino}, err);
             });
  return cachedEntry(ino);
}

kj::Promise<Entry> Client::sendSetattr(const Cred& cred, uint64_t ino, const SetAttr& attr,
                                       ServerLink::Class cls) {
  uint32_t want = wantFor(0, ino, false);
  return metaCall([cred, ino, attr,
                   want](rpc::MetaRequest::Builder b) { buildSetattr(b, cred, ino, attr, want); },
                  true, cls)
      .then([this](ServerLink::MetaResponse&& resp) { return entryOf(resp.getReply()); });
}

kj::Promise<Entry> Client::mknod(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                                 uint32_t mode, uint64_t rdev) {
  auto copy = kj::heapArray(name.asPtr());
  uint32_t want = wantFor(parent, 0, false);
  return entryCall(
      [cred, parent, name = kj::mv(name), mode, rdev, want](rpc::MetaRequest::Builder b) {
        setCred(b, cred);
        b.setWantLocks(want);
        auto m = b.initMknod();
        m.setParent(parent);
        m.setName(name);
        m.setMode(mode);
        m.setRdev(rdev);
      },
      parent, kj::mv(copy), true);
}

kj::Promise<Entry> Client::mkdir(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                                 uint32_t mode) {
  auto copy = kj::heapArray(name.asPtr());
  uint32_t want = wantFor(parent, 0, false);
  if (caching()) {
    want |= rpc::WANT_NEW_DIR;
    // Its names and attributes in PW: the creates in it are answered ahead from the first, and
    // so are tar's chown, chmod and utimes of it.
    if (asyncDirops(cred) && (meta_->peerFeatures() & features::DIR_ATTRS_AHEAD)) {
      want |= rpc::WANT_NEW_DIR_PW;
    }
  }
  MetaBuild build = [cred, parent, name = kj::mv(name), mode, want](rpc::MetaRequest::Builder b) {
    setCred(b, cred);
    b.setWantLocks(want);
    auto m = b.initMkdir();
    m.setParent(parent);
    m.setName(name);
    m.setMode(mode);
  };
  KJ_IF_MAYBE (beside, mkdirBeside(parent, copy, build)) {
    return kj::mv(*beside);
  }
  return entryCall(kj::mv(build), parent, kj::mv(copy), true);
}

kj::Promise<Entry> Client::symlink(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                                   kj::Array<kj::byte> target) {
  auto copy = kj::heapArray(name.asPtr());
  uint32_t want = wantFor(parent, 0, false);
  return entryCall(
      [cred, parent, name = kj::mv(name), target = kj::mv(target),
       want](rpc::MetaRequest::Builder b) {
        setCred(b, cred);
        b.setWantLocks(want);
        auto s = b.initSymlink();
        s.setParent(parent);
        s.setName(name);
        s.setTarget(target);
      },
      parent, kj::mv(copy), true);
}

kj::Promise<Entry> Client::link(const Cred& cred, uint64_t ino, uint64_t newParent,
                                kj::Array<kj::byte> newName) {
  auto copy = kj::heapArray(newName.asPtr());
  uint32_t want = wantFor(newParent, ino, false);
  return entryCall(
      [cred, ino, newParent, newName = kj::mv(newName), want](rpc::MetaRequest::Builder b) {
        setCred(b, cred);
        b.setWantLocks(want);
        auto l = b.initLink();
        l.setIno(ino);
        l.setNewParent(newParent);
        l.setNewName(newName);
      },
      newParent, kj::mv(copy), false);
}

kj::Promise<void> Client::unlink(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name) {
  return remove(cred, parent, kj::mv(name), false);
}

kj::Promise<void> Client::rmdir(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name) {
  return remove(cred, parent, kj::mv(name), true);
}

namespace {
// `expect`: the inode the name is known to name, or 0.
void buildRemoval(rpc::MetaRequest::Builder b, const Cred& cred, uint64_t parent,
                  kj::ArrayPtr<const kj::byte> name, bool dir, uint64_t expect) {
  setCred(b, cred);
  if (dir) {
    auto r = b.initRmdir();
    r.setParent(parent);
    r.setName(name);
    r.setExpect(expect);
  } else {
    auto u = b.initUnlink();
    u.setParent(parent);
    u.setName(name);
    u.setExpect(expect);
  }
}
}  // namespace

kj::Promise<void> Client::remove(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                                 bool dir) {
  auto key = nameOf(name);
  KJ_IF_MAYBE (child, removeAhead(cred, parent, key, dir)) {
    removeBehind(cred, parent, kj::mv(name), kj::mv(key), *child, dir);
    return kj::READY_NOW;
  }
  return metaCall([cred, parent, dir, name = kj::mv(name)](
                      rpc::MetaRequest::Builder b) { buildRemoval(b, cred, parent, name, dir, 0); },
                  true, ServerLink::Class::NORMAL,
                  [this, parent, key = kj::mv(key)](rpc::MetaReply::Reader reply) mutable {
                    removed(parent, kj::mv(key), reply.getError());
                  })
      .then([this, cred, parent](ServerLink::MetaResponse&&) { wantDirLock(cred, parent); });
}

bool Client::asyncDirops(const Cred& cred) const {
  // A root the server squashes is checked there, and may be refused after we said yes.
  return options_.asyncDirops && caching() &&
         (meta_->peerFeatures() & features::ASYNC_DIROPS) != 0 && !serverChecks(cred);
}

// One unlink in a directory is often the first of many (rm -r, a cleanup): ask for the
// directory's lookup lock in PW, so that the next ones are answered here. Not for a directory
// another client has wanted lately: the lock would only go back and forth.
void Client::wantDirLock(const Cred& cred, uint64_t dir) {
  if (!asyncDirops(cred) || locks_->contended(dir) || locks_->revoking(dir, BIT_LOOKUP)) return;
  if (locks_->heldMode(dir, BIT_LOOKUP).orDefault(rpc::LockMode::NL) != rpc::LockMode::PR) return;
  tasks_.add(locks_->upgrade(dir, BIT_LOOKUP));
}

kj::Maybe<uint64_t> Client::removeAhead(const Cred& cred, uint64_t parent, const std::string& name,
                                        bool dir) {
  if (!asyncDirops(cred) || dirops_.full()) return nullptr;
  // PW on the directory's names: nobody else can change them, nor read them without calling the
  // lock back, which waits for our removals to be done (so none is answered ahead once that
  // has begun: a stream of them would keep the lock from ever going back).
  if (locks_->heldMode(parent, BIT_LOOKUP).orDefault(rpc::LockMode::NL) != rpc::LockMode::PW ||
      locks_->revoking(parent, BIT_LOOKUP)) {
    return nullptr;
  }
  // A change of the directory's attributes on its way goes first; this would overtake it.
  if (attrsAhead_.count(parent) > 0) return nullptr;
  uint64_t child = cache_.entry(parent, name).orDefault(0);
  if (child == 0) return nullptr;  // not known, or known not to exist: the server says
  bool isDir = false;              // known to be one
  KJ_IF_MAYBE (c, cache_.attr(child)) {
    isDir = S_ISDIR(c->attr.st_mode);
  }
  if (!dir) {
    if (isDir) return nullptr;  // EISDIR is the server's to say
    return child;
  }
  // A directory: known to be one, and known empty under its own lock (whoever would add a name
  // to it calls that lock back, which waits for our rmdir).
  if (!isDir || locks_->held(child, BIT_LOOKUP) == 0 || !cache_.knownEmpty(child)) {
    return nullptr;
  }
  return child;
}

// The caches show at once what the server will once the removal is applied; the request goes
// behind (as a write-back: a server shutting down lets it through before it goes). An rmdir
// leaves once the unlinks in its directory are answered.
void Client::removeBehind(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                          std::string key, uint64_t child, bool dir) {
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  cache_.setEntry(parent, key, 0);
  if (dir) {
    cache_.dropAttr(child);
  } else {
    KJ_IF_MAYBE (c, cache_.attr(child)) {
      struct stat st = c->attr;
      if (st.st_nlink > 0) --st.st_nlink;
      st.st_ctim = now;
      cache_.setAttr(st, c->generation);
    }
  }
  KJ_IF_MAYBE (d, cache_.attr(parent)) {
    struct stat st = d->attr;
    st.st_mtim = st.st_ctim = now;
    if (dir && st.st_nlink > 2) --st.st_nlink;  // the removed directory's ".."
    cache_.setAttr(st, d->generation);
  }
  // (Those in flight now: this rmdir counts on the directory too from here on.)
  uint64_t op = dirops_.begin({parent, child});
  ++stats_.removalsAhead;
  removing_.emplace(parent, key);
  // What touched the inode before goes first: the unlinks in a directory removed, the create
  // of a file made ahead.
  kj::Promise<void> first = dirops_.settledBefore(child, op);
  auto applied =
      first.then([this, cred, parent, dir, child, name = kj::mv(name), op, key]() mutable {
        // With the inode expected: a resend after a restart that lost our lock must not remove a
        // file someone else has made under the name since.
        return batch_->send(
            parent,
            [cred, parent, dir, child, name = kj::mv(name)](rpc::MetaRequest::Builder b) {
              buildRemoval(b, cred, parent, name, dir, child);
            },
            // The reply is absorbed in its first event, as metaCall does (see there).
            [this, op, parent, key](rpc::MetaReply::Reader reply) -> kj::Promise<int> {
              absorb(reply, op);
              int err = reply.getError();
              // Gone already is what the application was told (the request may have been resent
              // after the server lost our lock and someone else removed the name).
              if (err == ENOENT) err = 0;
              removed(parent, key, err);
              return err;
            });
      });
  sendBehind(kj::mv(applied), kj::str("removal of '", key, "' in directory ", parent),
             [this, op, parent, child, key](int err, bool reached) {
               if (!reached) cache_.dropEntry(parent, key);
               removing_.erase(removing_.find({parent, key}));
               dirops_.end(op, {parent, child}, err);
             });
}

// Logs how an operation answered ahead ended, and hands `finish` its errno (EIO if it never
// reached the server: an eviction dropped it) and whether it did.
void Client::sendBehind(kj::Promise<int> applied, kj::String what,
                        kj::Function<void(int err, bool reached)> finish) {
  // Both on the heap, kept by the task: the continuations refer to them, not to this frame.
  struct Behind {
    kj::String what;
    kj::Function<void(int, bool)> finish;
  };
  auto owned = kj::heap<Behind>(Behind{kj::mv(what), kj::mv(finish)});
  auto& behind = *owned;
  tasks_.add(diropsBehind_.wrap(kj::mv(applied))
                 .then(
                     [&behind](int err) {
                       if (err != 0) {
                         spdlog::error("{}, answered ahead, failed on the server: {}",
                                       behind.what.cStr(), strerror(err));
                       }
                       behind.finish(err, true);
                     },
                     [&behind](kj::Exception&& e) {
                       spdlog::error("{}, answered ahead, was not applied: {}", behind.what.cStr(),
                                     e.getDescription().cStr());
                       behind.finish(EIO, false);
                     })
                 .attach(kj::mv(owned)));
}

namespace {
// A name a request reads or changes; the inode it names now is the caller's to resolve.
struct NameOf {
  uint64_t dir;
  std::string name;
  bool removed;  // the request removes it, and is about nothing else there (see UNLINK)
};

// The inodes a request reads or changes, by number, and by name.
void inodesOf(rpc::MetaRequest::Reader req, kj::Vector<uint64_t>& out, kj::Vector<NameOf>& names) {
  using R = rpc::MetaRequest;
  switch (req.which()) {
    case R::GETATTR:
      out.add(req.getGetattr());
      break;
    case R::LOOKUP:
      out.add(req.getLookup().getParent());
      break;
    case R::SETATTR:
      out.add(req.getSetattr().getIno());
      break;
    case R::MKNOD:
      out.add(req.getMknod().getParent());
      break;
    case R::MKDIR:
      out.add(req.getMkdir().getParent());
      break;
    case R::SYMLINK:
      out.add(req.getSymlink().getParent());
      break;
    case R::CREATE:
      out.add(req.getCreate().getParent());
      break;
    case R::LINK:
      out.add(req.getLink().getIno());
      out.add(req.getLink().getNewParent());
      names.add(NameOf{req.getLink().getNewParent(), nameOf(req.getLink().getNewName()), false});
      break;
    // A removal waits for what touches the inode it removes (a directory: the unlinks in it,
    // or it is not empty), not for the removal of other names beside it (`rm -r` removes each
    // directory right after its files). The kernel asks only for names it sees, and it sees
    // none we unlinked; for a name no longer cached it waits for every operation before it
    // (afterDirops).
    case R::UNLINK:
      names.add(NameOf{req.getUnlink().getParent(), nameOf(req.getUnlink().getName()), true});
      break;
    case R::RMDIR:
      names.add(NameOf{req.getRmdir().getParent(), nameOf(req.getRmdir().getName()), true});
      break;
    case R::RENAME:
      out.add(req.getRename().getParent());
      out.add(req.getRename().getNewParent());
      names.add(NameOf{req.getRename().getParent(), nameOf(req.getRename().getName()), false});
      names.add(
          NameOf{req.getRename().getNewParent(), nameOf(req.getRename().getNewName()), false});
      break;
    case R::OPEN:
      out.add(req.getOpen().getIno());
      break;
    case R::READDIR:
      out.add(req.getReaddir().getIno());
      break;
    case R::SETXATTR:
      out.add(req.getSetxattr().getIno());
      break;
    case R::GETXATTR:
      out.add(req.getGetxattr().getIno());
      break;
    case R::LISTXATTR:
      out.add(req.getListxattr());
      break;
    case R::REMOVEXATTR:
      out.add(req.getRemovexattr().getIno());
      break;
    case R::LAYOUT:
      out.add(req.getLayout());
      break;
    case R::ACCESS:
      out.add(req.getAccess().getIno());
      break;
    // About a file only: they wait for its create answered ahead.
    case R::WROTE:
      out.add(req.getWrote().getIno());
      break;
    case R::RESERVE_APPEND:
      out.add(req.getReserveAppend().getIno());
      break;
    case R::SETLK:
      out.add(req.getSetlk().getIno());
      break;
    case R::GETLK:
      out.add(req.getGetlk().getIno());
      break;
    case R::RELEASE_LOCKS:
      out.add(req.getReleaseLocks().getIno());
      break;
    default:
      break;  // sessions, sync: about no inode
  }
}
}  // namespace

kj::Maybe<kj::Promise<void>> Client::afterDirops(rpc::MetaRequest::Reader req) {
  kj::Vector<uint64_t> inos;
  kj::Vector<NameOf> names;
  inodesOf(req, inos, names);
  // A name removed that is no longer cached (dropped after an error, or pushed out of the
  // cache): what it names is unknown (a directory whose unlinks are still on their way?).
  bool unknown = false;
  for (auto& n : names) {
    // A change of the directory's attributes answered ahead: a request about a name in it changes
    // its times and links after that change, not before (dirAttrsAhead).
    if (attrsAhead_.count(n.dir) > 0) inos.add(n.dir);
    uint64_t ino = cache_.entry(n.dir, n.name).orDefault(0);
    if (ino != 0) {
      inos.add(ino);
    } else if (n.removed) {
      unknown = true;
    }
  }
  // Those answered before this request began; not those that come while it waits.
  kj::Vector<kj::Promise<void>> waits;
  uint64_t now = dirops_.next();
  if (unknown) {
    waits.add(dirops_.settledAllBefore(now));
  } else {
    for (uint64_t ino : inos) {
      if (dirops_.pending(ino)) waits.add(dirops_.settledBefore(ino, now));
    }
  }
  if (waits.empty()) return nullptr;
  // They may be gathering for a batch: this request waits on them.
  hurry();
  return kj::joinPromises(waits.releaseAsArray());
}

// Our own removal of a name: the directory's cached names follow (our lock was not called back).
void Client::removed(uint64_t parent, std::string name, int error) {
  if (error == 0 && locks_->held(parent, BIT_LOOKUP) != 0) {
    cache_.setEntry(parent, kj::mv(name), 0);
  } else {
    cache_.dropEntry(parent, name);
  }
}

kj::Promise<void> Client::rename(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                                 uint64_t newParent, kj::Array<kj::byte> newName, uint32_t flags) {
  auto from = nameOf(name), to = nameOf(newName);
  return metaCall(
             [cred, parent, name = kj::mv(name), newParent, newName = kj::mv(newName),
              flags](rpc::MetaRequest::Builder b) {
               setCred(b, cred);
               auto r = b.initRename();
               r.setParent(parent);
               r.setName(name);
               r.setNewParent(newParent);
               r.setNewName(newName);
               r.setFlags(flags);
             },
             true, ServerLink::Class::NORMAL,
             [this, parent, newParent, flags, from = kj::mv(from),
              to = kj::mv(to)](rpc::MetaReply::Reader reply) mutable {
               if (reply.getError() == 0) {
                 // A directory moved to another parent has another "..": listings kept
                 // (by the directory listed, not by its parent) go.
                 if (parent != newParent) dropListings();
                 movedInKernel(newParent, to);
                 if (flags & RENAME_EXCHANGE) movedInKernel(parent, from);
               }
               // The name moves, if we knew what it named; otherwise both are forgotten.
               kj::Maybe<uint64_t> moved = cache_.entry(parent, from);
               bool known = reply.getError() == 0 && !(flags & RENAME_EXCHANGE) &&
                            locks_->held(parent, BIT_LOOKUP) != 0 &&
                            locks_->held(newParent, BIT_LOOKUP) != 0 && moved.orDefault(0) != 0;
               if (!known) {
                 cache_.dropEntry(parent, from);
                 cache_.dropEntry(newParent, to);
                 return;
               }
               cache_.setEntry(parent, kj::mv(from), 0);
               cache_.setEntry(newParent, kj::mv(to), KJ_ASSERT_NONNULL(moved));
             })
      .ignoreResult();
}

kj::Promise<kj::Array<kj::byte>> Client::readlink(uint64_t ino) {
  return metaCall([ino](rpc::MetaRequest::Builder b) { b.setReadlink(ino); }, false)
      .then([](ServerLink::MetaResponse&& resp) {
        return kj::heapArray(resp.getReply().getBytes());
      });
}

kj::Promise<void> Client::opendir(const Cred& cred, uint64_t ino) {
  return serverChecks(cred) ? access(cred, ino, R_OK) : kj::READY_NOW;
}

bool Client::serverChecks(const Cred& cred) const {
  return cred.uid == 0 && meta_->rootSquashed();
}

kj::Promise<void> Client::access(const Cred& cred, uint64_t ino, uint32_t mask) {
  return metaCall(
             [cred, ino, mask](rpc::MetaRequest::Builder b) {
               setCred(b, cred);
               auto access = b.initAccess();
               access.setIno(ino);
               access.setMask(mask);
             },
             false)
      .ignoreResult();
}

kj::Promise<Opened> Client::create(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                                   uint32_t mode, uint32_t flags) {
  KJ_IF_MAYBE (o, createAhead(cred, parent, nameOf(name), mode, flags)) {
    return kj::mv(*o);
  }
  OpenTable::File file;
  file.flags = flags;
  uint64_t fh = opens_.add(kj::mv(file));
  uint32_t want = wantFor(parent, 0, true);
  auto key = nameOf(name);
  auto named = kj::heap<bool>(false);
  bool& nameCached = *named;
  return metaCall(
             [cred, parent, name = kj::mv(name), mode, flags, fh,
              want](rpc::MetaRequest::Builder b) {
               setCred(b, cred);
               b.setWantLocks(want);
               auto c = b.initCreate();
               c.setParent(parent);
               c.setName(name);
               c.setMode(mode);
               c.setFlags(flags);
               c.setHandle(fh);
             },
             true, ServerLink::Class::NORMAL,
             [this, parent, &nameCached, key = kj::mv(key)](rpc::MetaReply::Reader reply) mutable {
               if (reply.getError() != 0) {
                 cache_.dropEntry(parent, key);
               } else if (locks_->held(parent, BIT_LOOKUP) != 0) {
                 nameCached = nameForKernel(parent, key);
                 cache_.setEntry(parent, kj::mv(key), reply.getOpened().getAttr().getIno());
               }
             })
      .then(
          [this, cred, parent, fh, &nameCached](ServerLink::MetaResponse&& resp) {
            auto o = opened(fh, resp);
            o.entry.nameCached = nameCached;
            // The next creates here may be answered ahead.
            wantDirLock(cred, parent);
            return withDataLock(kj::mv(o));
          },
          [this, fh](kj::Exception&& e) -> kj::Promise<Opened> {
            opens_.remove(fh);
            kj::throwFatalException(kj::mv(e));
          })
      .attach(kj::mv(named));
}

// Under PW on the directory's names, a name known not to exist is made here, with an inode
// number the server set aside for us, and opened; the request goes behind. Nobody else reaches
// the new file before the server has it: only its name leads there, and reading the name calls
// our PW back, which waits for the create.
kj::Maybe<Opened> Client::createAhead(const Cred& cred, uint64_t parent, const std::string& name,
                                      uint32_t mode, uint32_t flags) {
  if (!asyncDirops(cred) || !(meta_->peerFeatures() & features::ASYNC_CREATE)) return nullptr;
  reserveInodes();
  if (dirops_.full() || reserved_.empty()) return nullptr;
  // (Not while the PW is being called back: see removeAhead.)
  if (locks_->heldMode(parent, BIT_LOOKUP).orDefault(rpc::LockMode::NL) != rpc::LockMode::PW ||
      locks_->revoking(parent, BIT_LOOKUP)) {
    return nullptr;
  }
  KJ_IF_MAYBE (e, cache_.entry(parent, name)) {
    if (*e != 0) return nullptr;  // it exists: EEXIST, or an open, is the server's to say
  } else if (!cache_.complete(parent)) {
    return nullptr;  // not known
  }
  // A removal of the name on its way goes first, and a change of the directory's attributes;
  // the create would overtake them.
  if (removing_.count({parent, name}) > 0 || attrsAhead_.count(parent) > 0) return nullptr;
  // The new file's group follows the directory's set-group-ID bit, as the server's rule has it.
  if (locks_->held(parent, BIT_ATTR) == 0) return nullptr;
  MetaCache::Inode dir;
  KJ_IF_MAYBE (d, cache_.attr(parent)) {
    dir = *d;
  } else {
    return nullptr;
  }
  auto [ino, layout] = kj::mv(reserved_.front());
  reserved_.pop_front();
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);

  // The attributes a reply would carry, converted as a reply's are.
  capnp::MallocMessageBuilder message(64);
  auto a = message.initRoot<rpc::Attr>();
  a.setIno(ino);
  a.setGeneration(1);
  a.setMode(S_IFREG | (mode & 07777));
  a.setNlink(1);
  a.setUid(cred.uid);
  a.setGid((dir.attr.st_mode & S_ISGID) ? dir.attr.st_gid : cred.gid);
  setTime(a.initAtime(), now);
  setTime(a.initMtime(), now);
  setTime(a.initCtime(), now);
  a.setNoXattrs(true);
  Entry entry = toEntry(a.asReader(), 0);  // made here: as of no transaction
  cache_.setEntry(parent, name, ino);
  cache_.setAttr(entry.attr, entry.generation);
  cache_.markNoXattrs(ino);
  dir.attr.st_mtim = dir.attr.st_ctim = now;
  cache_.setAttr(dir.attr, dir.generation);

  OpenTable::File file;
  file.ino = ino;
  file.flags = flags;
  file.layout = kj::addRef(*layout);
  // (`opening` stays set until the server has it: nothing to replay after a restart, where
  // the create itself goes out again.)
  uint64_t fh = opens_.add(kj::mv(file));
  if ((flags & O_ACCMODE) != O_RDONLY && !(flags & O_APPEND)) ++writers_[ino];
  creating_.insert(ino);
  uint64_t op = dirops_.begin({parent, ino});
  ++stats_.createsAhead;

  Opened o;
  o.fh = fh;
  o.entry = entry;
  o.entry.cached = true;
  o.entry.nameCached = nameForKernel(parent, name);
  o.keepCache = true;  // an empty file: what pages the kernel gets are our own writes
  createBehind(cred, parent, name, mode, flags, fh, entry.attr, op);
  return o;
}

void Client::createBehind(const Cred& cred, uint64_t parent, std::string name, uint32_t mode,
                          uint32_t flags, uint64_t fh, const struct stat& attr, uint64_t op) {
  uint64_t ino = attr.st_ino;
  auto& file = KJ_ASSERT_NONNULL(opens_.find(fh));
  auto layout = kj::addRef(*KJ_ASSERT_NONNULL(file.layout));
  auto applied = batch_->send(
      parent,
      [cred, parent, name, mode, flags, fh, ino, time = attr.st_mtim,
       layout = kj::mv(layout)](rpc::MetaRequest::Builder b) {
        setCred(b, cred);
        // Our locks on the new file, granted with the reply: nobody else can want them yet.
        b.setWantLocks(rpc::WANT_INODE | rpc::WANT_DATA);
        auto c = b.initCreate();
        c.setParent(parent);
        c.setName(kj::arrayPtr(reinterpret_cast<const kj::byte*>(name.data()), name.size()));
        c.setMode(mode);
        c.setFlags(flags);
        c.setHandle(fh);
        c.setIno(ino);
        setTime(c.initTime(), time);
        auto l = c.initLayout();
        l.setObjectId(layout->layout.objectId);
        l.setStripeSize(layout->layout.stripeSize);
        auto targets = l.initTargets(layout->layout.targets.size());
        for (auto i : kj::indices(layout->layout.targets)) {
          targets.set(i, layout->layout.targets[i]);
        }
      },
      // The reply is absorbed in its first event, as metaCall does (see there).
      [this, op, ino, fh, told = attr](rpc::MetaReply::Reader reply) -> kj::Promise<int> {
        absorb(reply, op);
        int err = reply.getError();
        if (err != 0) return err;
        KJ_IF_MAYBE (f, opens_.find(fh)) {
          f->opening = false;
        }
        // What the kernel was told to keep, it may keep only under the locks that came back, and
        // only if the server made the file so (a chmod g+s of the directory may have come first).
        struct stat made;
        attrToStat(reply.getOpened().getAttr(), &made);
        bool same = made.st_mode == told.st_mode && made.st_uid == told.st_uid &&
                    made.st_gid == told.st_gid;
        bool attr = same && locks_->held(ino, BIT_ATTR) != 0;
        bool data = locks_->held(ino, BIT_DATA) != 0;
        KJ_IF_MAYBE (kernel, kernel_) {
          if (!attr || !data)
            return invalidateInKernel(*kernel, ino, !data).then([]() { return 0; });
        }
        return 0;
      });
  sendBehind(kj::mv(applied), kj::str("create of '", name, "' in directory ", parent),
             [this, op, parent, ino, fh, name](int err, bool) {
               creating_.erase(ino);
               if (err != 0) {
                 // The application holds a file the server never made: every use of it fails.
                 failedCreates_.insert(ino);
                 cache_.dropEntry(parent, name);
                 cache_.dropAttr(ino);
                 KJ_IF_MAYBE (f, opens_.find(fh)) {
                   f->lost = true;
                 }
               }
               dirops_.end(op, {parent, ino}, err);
             });
}

void Client::reserveInodes() {
  if (reserving_ || reserved_.size() >= RESERVE_LOW) return;
  reserving_ = true;
  using Reserved = kj::Vector<std::pair<uint64_t, kj::Own<SharedLayout>>>;
  tasks_.add(metaCall([](rpc::MetaRequest::Builder b) { b.setReserveInodes(RESERVE_BATCH); }, true)
                 .then([this](ServerLink::MetaResponse&& resp) {
                   Reserved got;
                   for (auto l : resp.getReply().getReserved())
                     got.add(l.getObjectId(), toLayout(l));
                   // On disk before any is used: a reservation the server lost in a crash would be
                   // replayed, and after a gap (a client that never came back) get other numbers.
                   return metaCall([](rpc::MetaRequest::Builder b) { b.setSync(); }, false)
                       .then([got = kj::mv(got)](ServerLink::MetaResponse&&) mutable {
                         return kj::mv(got);
                       });
                 })
                 .then(
                     [this](Reserved got) -> kj::Promise<void> {
                       reserving_ = false;
                       for (auto& r : got) reserved_.push_back(kj::mv(r));
                       return kj::READY_NOW;
                     },
                     [this](kj::Exception&& e) {
                       // (A full target says ENOSPC here, not to a create already answered.)
                       // Creates wait for the server meanwhile; asking again at once would
                       // send a refused request per create.
                       spdlog::warn("inode numbers for creates ahead not reserved: {}",
                                    e.getDescription().cStr());
                       return io_.provider->getTimer().afterDelay(RESERVE_RETRY).then([this]() {
                         reserving_ = false;
                       });
                     }));
}

kj::Maybe<kj::Promise<void>> Client::whileCreating(uint64_t ino, Waiter who) {
  if (creating_.count(ino) == 0) return nullptr;
  if (who == Waiter::APPLICATION) hurry();
  return dirops_.settled(ino);
}

kj::Promise<DirPage> Client::readdir(uint64_t ino, uint64_t cookie, uint32_t maxEntries) {
  uint64_t from = kj::max(cookie, uint64_t(2));
  KJ_IF_MAYBE (page, listedPage(ino, cookie, maxEntries)) {
    ++stats_.listingHits;
    return kj::mv(*page);
  }
  // From the start, ".." needs the parent, which the directory's own attributes carry.
  kj::Promise<uint64_t> parent = uint64_t(0);
  if (cookie < 2) {
    parent = metaCall([ino](rpc::MetaRequest::Builder b) { b.setGetattr(ino); }, false)
                 .then([](ServerLink::MetaResponse&& resp) {
                   return resp.getReply().getAttr().getParent();
                 });
  }
  // The names and attributes of a batch come with the locks that cover them: an `ls -l` then
  // costs one round trip per batch, the per-name LOOKUPs are answered from the cache.
  uint32_t want = caching() ? (rpc::WANT_DIR | rpc::WANT_INODE) : 0;
  uint32_t ask = caching() ? kj::max(maxEntries, READDIR_BATCH) : maxEntries;
  auto entries =
      metaCall(
          [ino, from, ask, want](rpc::MetaRequest::Builder b) {
            b.setWantLocks(want);
            auto r = b.initReaddir();
            r.setIno(ino);
            r.setCookie(from);
            r.setMaxEntries(ask);
          },
          false, ServerLink::Class::NORMAL,
          [this, ino, cookie](rpc::MetaReply::Reader reply) { listed(ino, cookie, reply); })
          .then([](ServerLink::MetaResponse&& resp) {
            auto entries = resp.getReply().getEntries();
            DirPage page;
            page.eof = entries.getEof();
            auto list = entries.getList();
            for (auto e : list) {
              DirItem item;
              item.name = kj::heapArray(e.getName());
              item.cookie = e.getCookie();
              attrToStat(e.getAttr(), &item.attr);
              item.generation = e.getAttr().getGeneration();
              page.items.add(kj::mv(item));
            }
            return page;
          });
  return parent.then(
      [this, ino, from, maxEntries, entries = kj::mv(entries)](uint64_t parent) mutable {
        return entries.then([this, ino, from, maxEntries, parent](DirPage&& page) {
          page.parent = parent;
          if (keepListing(ino, from, page) && page.items.size() > maxEntries) {
            // The kernel continues from the last entry its reader took, which may be any of
            // those it was given: the rest answers it from what was kept.
            page.items.truncate(maxEntries);
            page.eof = false;
          }
          return kj::mv(page);
        });
      });
}

kj::Maybe<DirPage> Client::listedPage(uint64_t ino, uint64_t cookie, uint32_t maxEntries) {
  auto it = listedAhead_.find(ino);
  if (it == listedAhead_.end()) return nullptr;
  auto& a = it->second;
  if (!current(ino, a)) {
    dropListing(it);
    return nullptr;
  }
  uint64_t from = kj::max(cookie, uint64_t(2));
  size_t at = a.items.size() + 1;  // where `from` continues, if among the items
  if (a.from == from) {
    at = 0;
  } else if (a.served > 0 && a.served <= a.items.size() && a.items[a.served - 1].cookie == from) {
    at = a.served;  // the kernel goes on where the last page ended: no search
  } else {
    for (size_t i = 0; i < a.items.size(); i++) {
      if (a.items[i].cookie == from) at = i + 1;
    }
  }
  if (at > a.items.size() || (at == a.items.size() && !a.eof)) return nullptr;
  if (cookie < 2 && a.parent == 0) return nullptr;  // ".." unknown
  DirPage page;
  page.cached = true;
  page.parent = cookie < 2 ? a.parent : 0;
  size_t end = kj::min(a.items.size(), at + maxEntries);
  for (size_t i = at; i < end; i++) page.items.add(copyOf(a.items[i]));
  page.eof = a.eof && end == a.items.size();
  a.served = end;
  return kj::mv(page);
}

bool Client::current(uint64_t ino, const ListedAhead& a) {
  return a.stamp != 0 && a.stamp == cache_.dirStamp(ino) && locks_->held(ino, BIT_LOOKUP) != 0;
}

bool Client::extendedBy(const ListedAhead& a, uint64_t from) {
  return !a.eof && !a.items.empty() && a.items.back().cookie == from;
}

bool Client::keepListing(uint64_t ino, uint64_t from, const DirPage& page) {
  auto it = listedAhead_.find(ino);
  if (it != listedAhead_.end()) {
    auto& a = it->second;
    // The next batch of a kept listing joins it: a large directory is kept whole (within the
    // bound), so that it too is listed again without a request.
    if (current(ino, a) && extendedBy(a, from) &&
        listedItems_ + page.items.size() <= MAX_LISTED_ITEMS) {
      for (auto& item : page.items) a.items.add(copyOf(item));
      a.eof = page.eof;
      listedItems_ += page.items.size();
      return true;
    }
    dropListing(it);
  }
  if (!caching() || locks_->held(ino, BIT_LOOKUP) == 0) return false;
  if (listedAhead_.size() >= MAX_LISTED_DIRS ||
      listedItems_ + page.items.size() > MAX_LISTED_ITEMS) {
    dropListings();
  }
  ListedAhead a{cache_.dirStamp(ino), from, page.parent, {}, page.eof, 0};
  for (auto& item : page.items) a.items.add(copyOf(item));
  listedItems_ += a.items.size();
  listedAhead_.emplace(ino, kj::mv(a));
  return true;
}

void Client::dropListing(std::unordered_map<uint64_t, ListedAhead>::iterator it) {
  listedItems_ -= it->second.items.size();
  listedAhead_.erase(it);
}

void Client::dropListings() {
  listedAhead_.clear();
  listedItems_ = 0;
}

Entry Client::listedEntry(uint64_t dir, const DirItem& item) {
  Entry e;
  KJ_IF_MAYBE (cached, cachedEntry(item.attr.st_ino)) {
    e = *cached;
  } else {
    e.attr = item.attr;
    e.generation = item.generation;
    wb_.adjust(e.attr);
  }
  e.nameCached = nameForKernel(dir, nameOf(item.name));
  return e;
}

// A batch of a directory's names. Batches that follow each other from the first to the last
// under one LOOKUP lock make the cached names the whole directory.
void Client::listed(uint64_t dir, uint64_t cookie, rpc::MetaReply::Reader reply) {
  uint64_t lock = locks_->held(dir, BIT_LOOKUP);
  if (reply.getError() != 0 || lock == 0) {
    listings_.erase(dir);
    return;
  }
  auto entries = reply.getEntries();
  uint64_t from = kj::max(cookie, uint64_t(2));
  uint64_t before = cache_.dirStamp(dir);
  for (auto e : entries.getList()) {
    cache_.setEntry(dir, nameOf(e.getName()), e.getAttr().getIno());
  }
  // The names this batch brought in change the directory's stamp, yet leave the kept part of
  // the same listing, which this batch continues, as true as it was (keepListing joins them).
  auto kept = listedAhead_.find(dir);
  if (kept != listedAhead_.end() && kept->second.stamp != 0 && kept->second.stamp == before &&
      extendedBy(kept->second, from)) {
    kept->second.stamp = cache_.dirStamp(dir);
  }
  auto it = listings_.find(dir);
  bool continues = cookie < 2 || (it != listings_.end() && it->second.lock == lock &&
                                  it->second.nextCookie == from);
  if (!continues) {
    if (it != listings_.end()) listings_.erase(it);
    return;
  }
  auto list = entries.getList();
  uint64_t next = list.size() > 0 ? list[list.size() - 1].getCookie() : from;
  if (entries.getEof()) {
    listings_.erase(dir);
    cache_.markComplete(dir);
  } else {
    listings_[dir] = Listing{lock, next};
  }
}

kj::Promise<Client::StatfsReplies> Client::statfsAll() {
  auto parts = kj::heapArrayBuilder<kj::Promise<ServerLink::DataResponse>>(data_.size());
  for (auto& [index, link] : data_) {
    parts.add(link->data([](rpc::DataRequest::Builder b) { b.setStatfs(); }, false));
  }
  return metaCall([](rpc::MetaRequest::Builder b) { b.setStatfs(); }, false)
      .then([parts = parts.finish()](ServerLink::MetaResponse&& meta) mutable {
        return kj::joinPromises(kj::mv(parts))
            .then([meta = kj::mv(meta)](kj::Array<ServerLink::DataResponse>&& data) mutable {
              return StatfsReplies{kj::mv(meta), kj::mv(data)};
            });
      });
}

kj::Promise<struct statvfs> Client::statfs() {
  return statfsAll().then([](StatfsReplies&& replies) {
    auto m = replies.meta.getReply().getStatfs();
    struct statvfs out;
    memset(&out, 0, sizeof(out));
    out.f_bsize = out.f_frsize = 4096;
    out.f_files = m.getTotalInodes();
    out.f_ffree = out.f_favail = m.getFreeInodes();
    out.f_namemax = m.getNameMax();
    // The file data's room is the data targets' (the metadata target's is its own).
    for (auto& r : replies.data) {
      auto s = r.getReply().getStatfs();
      uint64_t scale = s.getBlockSize() / 4096;
      out.f_blocks += s.getTotalBlocks() * scale;
      out.f_bfree += s.getFreeBlocks() * scale;
    }
    out.f_bavail = out.f_bfree;
    return out;
  });
}

kj::Promise<void> Client::setxattr(uint64_t ino, kj::Array<kj::byte> name,
                                   kj::Array<kj::byte> value, uint32_t flags) {
  auto key = nameOf(name);
  return metaCall(
             [ino, name = kj::mv(name), value = kj::mv(value), flags](rpc::MetaRequest::Builder b) {
               auto s = b.initSetxattr();
               s.setIno(ino);
               s.setName(name);
               s.setValue(value);
               s.setFlags(flags);
             },
             true, ServerLink::Class::NORMAL,
             // After the reply, not before the request: a read answered before our change
             // may still be on its way.
             [this, ino, key = kj::mv(key)](rpc::MetaReply::Reader) { cache_.dropXattr(ino, key); })
      .ignoreResult();
}

kj::Promise<kj::Array<kj::byte>> Client::getxattr(uint64_t ino, kj::Array<kj::byte> name) {
  // The kernel asks on every write (security.capability) and `ls -l` on every name: mostly
  // for attributes that do not exist, which the cache remembers too.
  auto key = nameOf(name);
  if (locks_->held(ino, BIT_ATTR) != 0 || creating_.count(ino) > 0) {
    KJ_IF_MAYBE (known, cache_.xattr(ino, key)) {
      KJ_IF_MAYBE (value, *known) {
        return readyBytes(kj::heapArray<kj::byte>(reinterpret_cast<const kj::byte*>(value->data()),
                                                  value->size()));
      }
      return errnoException(ENODATA);
    }
  }
  uint32_t want = wantFor(0, ino, false);
  return metaCall(
             [ino, name = kj::mv(name), want](rpc::MetaRequest::Builder b) {
               b.setWantLocks(want);
               auto g = b.initGetxattr();
               g.setIno(ino);
               g.setName(name);
             },
             false, ServerLink::Class::NORMAL,
             [this, ino, key = kj::mv(key)](rpc::MetaReply::Reader reply) mutable {
               if (locks_->held(ino, BIT_ATTR) == 0) return;
               if (reply.getError() == 0) {
                 auto v = reply.getBytes();
                 cache_.setXattr(ino, kj::mv(key),
                                 std::string(reinterpret_cast<const char*>(v.begin()), v.size()));
               } else if (reply.getError() == ENODATA) {
                 cache_.setXattr(ino, kj::mv(key), nullptr);
               }
             })
      .then([](ServerLink::MetaResponse&& resp) {
        return kj::heapArray(resp.getReply().getBytes());
      });
}

kj::Promise<kj::Array<kj::byte>> Client::listxattr(uint64_t ino) {
  return metaCall([ino](rpc::MetaRequest::Builder b) { b.setListxattr(ino); }, false)
      .then([](ServerLink::MetaResponse&& resp) {
        kj::Vector<kj::byte> out;
        for (auto name : resp.getReply().getNames()) {
          out.addAll(name);
          out.add(0);
        }
        return out.releaseAsArray();
      });
}

kj::Promise<void> Client::removexattr(uint64_t ino, kj::Array<kj::byte> name) {
  auto key = nameOf(name);
  return metaCall(
             [ino, name = kj::mv(name)](rpc::MetaRequest::Builder b) {
               auto r = b.initRemovexattr();
               r.setIno(ino);
               r.setName(name);
             },
             true, ServerLink::Class::NORMAL,
             [this, ino, key = kj::mv(key)](rpc::MetaReply::Reader) { cache_.dropXattr(ino, key); })
      .ignoreResult();
}

}  // namespace cairn
