#include "objserver/meta_service.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <kj/debug.h>

#include <spdlog/spdlog.h>
#include "objserver/lock_service.h"

#include "objserver/data_service.h"
#include "objserver/destroyer.h"
#include "objserver/namespace.h"
#include "objserver/open_files.h"
#include "objserver/permission_check.h"
#include "objserver/posix_locks.h"
#include "rpc/feature_flags.h"
#include "rpc/reply_attrs.h"

#include <chrono>
#include <map>

namespace cairn {

namespace {
constexpr uint32_t MAX_READDIR = 4096;

bool isUpdate(rpc::MetaRequest::Which which) {
  using R = rpc::MetaRequest;
  switch (which) {
    case R::SETATTR:
    case R::MKNOD:
    case R::MKDIR:
    case R::SYMLINK:
    case R::LINK:
    case R::UNLINK:
    case R::RMDIR:
    case R::RENAME:
    case R::CREATE:
    case R::SETXATTR:
    case R::REMOVEXATTR:
    case R::WROTE:
    case R::RESERVE_APPEND:
    case R::RESERVE_INODES:
    case R::BATCH:
      return true;
    default:
      return false;
  }
}

// EX on those bits of those inodes, in inode order (the map's).
kj::Vector<LockSpec> exclusive(const std::map<uint64_t, uint64_t>& bits) {
  kj::Vector<LockSpec> specs;
  for (auto& [ino, b] : bits) {
    LockSpec spec;
    spec.resource = ResourceId{RES_INODE, ino};
    spec.mode = LockMode::EX;
    spec.bits = b;
    specs.add(spec);
  }
  return specs;
}

void setOpened(const InodeData& node, rpc::MetaReply::Builder reply) {
  auto opened = reply.initOpened();
  node.toAttr(opened.initAttr());
  if (node.isReg()) encodeLayout(node.layout, opened.initLayout());
}
}  // namespace

MetaService::MetaService(ServerContext& ctx, kj::Own<ClientSession> session)
    : ctx_(ctx),
      ns_(KJ_ASSERT_NONNULL(ctx.ns)),
      opens_(KJ_ASSERT_NONNULL(ctx.opens)),
      session_(kj::mv(session)),
      connection_(ctx, *session_) {}

kj::Promise<void> MetaService::call(CallContext context) {
  auto& kind = ctx_.countRpc("meta", context.getParams().getRequest());
  if (session_->evicted) throwEvicted(*session_);
  if (ctx_.state == ServerState::STOPPED) throwStopped();
  // A request that breaks the protocol is refused with an exception; say so once, here.
  try {
    return ctx_.timed(kind, *session_, [&]() { return dispatch(context); });
  } catch (kj::Exception& e) {
    spdlog::warn("client {}: metadata request refused: {}", session_->key,
                 e.getDescription().cStr());
    throw;
  }
}

kj::Promise<void> MetaService::dispatch(CallContext context) {
  auto req = context.getParams().getRequest();
  using R = rpc::MetaRequest;
  if (req.which() == R::REPLAYS_SENT || req.which() == R::GOODBYE) {
    ctx_.sessionNote(*session_, req.which() == R::GOODBYE);
    context.getResults().initReply().setLastSynced(ctx_.reportedSynced());
    return kj::READY_NOW;
  }
  // Updates are put in order against the replays of a recovery.
  return ctx_.ordered(*session_, req.getReplayOf(), req.getResend(), isUpdate(req.which()),
                      [this, context]() mutable { return run(context); });
}

kj::Promise<void> MetaService::run(CallContext context) {
  auto req = context.getParams().getRequest();
  using R = rpc::MetaRequest;
  if (req.which() == R::SYNC) {
    return ctx_.syncer.syncNow().then([this, context]() mutable {
      context.getResults().initReply().setLastSynced(ctx_.reportedSynced());
    });
  }
  if (req.which() == R::RELEASE || req.which() == R::RELEASE_MANY) {
    bool destroyed = false;
    if (req.which() == R::RELEASE) {
      destroyed = release(req.getRelease());
    } else {
      auto handles = req.getReleaseMany();
      KJ_REQUIRE(handles.size() <= features::MAX_RELEASE_MANY, "too many handles in one release",
                 handles.size());
      for (uint64_t handle : handles) destroyed = release(handle) || destroyed;
    }
    KJ_IF_MAYBE (d, ctx_.destroyer) {
      if (destroyed) d->poke();
    }
    auto reply = context.getResults().initReply();
    reply.setNone();
    reply.setLastSynced(ctx_.reportedSynced());
    return kj::READY_NOW;
  }
  if (req.which() == R::RECOVERY_DONE) {
    ctx_.recoveryDone(*session_);
    context.getResults().initReply().setLastSynced(ctx_.reportedSynced());
    return kj::READY_NOW;
  }
  if (req.which() == R::SETLK || req.which() == R::GETLK || req.which() == R::RELEASE_LOCKS) {
    bool replay = req.which() == R::SETLK && req.getReplay();
    if (ctx_.recovering() > 0 && !replay && req.which() != R::RELEASE_LOCKS) {
      // Locks granted before the restart are being taken again: nothing new until they are.
      return ctx_.recovered().then([this, context]() mutable {
        return applicationLock(context.getParams().getRequest(), context);
      });
    }
    return applicationLock(req, context);
  }
  if (isUpdate(req.which())) {
    // First every other client caching what the update changes is called back and cancels;
    // then the update runs, in one transaction; then the server's locks go. A batch takes the
    // locks of all its updates, as one update would; each reports the inodes it changed.
    kj::Vector<kj::Array<uint64_t>> changed;
    kj::Vector<LockSpec> specs;
    if (req.which() == R::BATCH) {
      specs = batchAffected(req.getBatch(), changed);
    } else {
      specs = affected(req);
      changed.add(KJ_MAP(spec, specs) { return spec.resource.id; });
    }
    return lockFor(kj::mv(specs))
        .then([this, context, changed = kj::mv(changed)](kj::Array<uint64_t> held) mutable {
          // The locks stay held while a checkpoint gives room back first, and go if the call
          // is cancelled meanwhile (a second cancel of a lock is nothing).
          kj::ArrayPtr<const uint64_t> ids = held;  // the heap array stays where it is
          auto release = kj::defer([this, held = kj::mv(held)]() {
            for (uint64_t id : held) ctx_.locks.cancel(ctx_.serverOwner, id);
          });
          return ctx_.room
              .admit([this, context, changed = kj::mv(changed), ids]() mutable {
                applyUpdate(context, changed, ids);
              })
              .attach(kj::mv(release));
        })
        .then([this, context]() mutable -> kj::Promise<void> {
          if (!context.getParams().getRequest().getSyncAfter()) return kj::READY_NOW;
          // An fsync waits for this one: answered once it is on disk (the locks went already).
          return ctx_.syncer.syncNow().then([this, context]() mutable {
            context.getResults().getReply().setLastSynced(ctx_.reportedSynced());
          });
        });
  }
  return readReply(context, 0, nullptr);
}

void MetaService::applyUpdate(CallContext context, kj::ArrayPtr<const kj::Array<uint64_t>> changed,
                              kj::ArrayPtr<const uint64_t> held) {
  using R = rpc::MetaRequest;
  auto req = context.getParams().getRequest();
  capnp::MallocMessageBuilder message;
  {
    KJ_DEFER(for (uint64_t id : held) ctx_.locks.cancel(ctx_.serverOwner, id));
    update(req, message, changed);
  }
  auto reply = context.getResults();
  reply.setReply(message.getRoot<rpc::MetaReply>());
  auto done = [&](rpc::MetaRequest::Reader req, rpc::MetaReply::Builder reply) {
    // Inodes the update destroyed: nobody's locks on them cover anything any more.
    // The requester gives its own back (the reply tells it); others would keep theirs
    // until their caches trim them.
    for (auto a : reply.getChanged()) {
      if (a.getMode() == 0) ctx_.locks.forget(ResourceId{RES_INODE, a.getIno()}, session_.get());
    }
    if (reply.getError() == 0) grant(req, reply);
  };
  if (req.which() == R::BATCH && reply.getReply().isBatch()) {
    auto replies = reply.getReply().getBatch();
    for (auto i : kj::indices(replies)) done(req.getBatch()[i], replies[i]);
  } else {
    done(req, reply.getReply());
  }
  KJ_IF_MAYBE (d, ctx_.destroyer) {
    d->poke();
  }
}

kj::Promise<void> MetaService::readReply(CallContext context, unsigned attempt,
                                         kj::Array<uint64_t> taken) {
  auto req = context.getParams().getRequest();
  auto reply = context.getResults().initReply();
  try {
    read(req, reply);
  } catch (FsError& e) {
    reply.setError(e.err());
  }
  // An inode another client holds for writing (PW on its attributes: it has writes it has
  // not sent yet) may be newer than what was just read, and so may a directory another client
  // holds PW on (its lookup bit: unlinks it answered and has not sent yet). Take PR on it
  // first — the holder is called back and sends them — and read again. On the reader's own
  // behalf: it does not queue behind an update waiting for one of the reader's locks, which
  // the reader may be unable to give back until this read is answered (its kernel drops a
  // directory's names only once the lookups in that directory are done).
  if (attempt < 3) {
    auto busy = heldElsewhere(req, reply);
    if (busy.size() > 0) {
      auto waits = kj::heapArrayBuilder<kj::Promise<uint64_t>>(busy.size());
      for (auto& spec : busy) waits.add(ctx_.locks.enqueue(*session_, spec, session_.get()));
      auto start = std::chrono::steady_clock::now();
      return kj::joinPromises(waits.finish())
          .then([this, context, attempt, taken = kj::mv(taken), busy = kj::mv(busy),
                 start](kj::Array<uint64_t> ids) mutable {
            // A holder slow to give back keeps readers waiting: say for which locks (the
            // request's own line, ServerContext::timed, says only that it was slow).
            auto waited = std::chrono::steady_clock::now() - start;
            if (waited >= std::chrono::seconds(5)) {
              std::string what;
              for (auto& spec : busy) what += (what.empty() ? "" : ", ") + describe(spec);
              spdlog::warn("a read by {} waited {} ms for {}", session_->ownerName().cStr(),
                           std::chrono::duration_cast<std::chrono::milliseconds>(waited).count(),
                           what);
            }
            kj::Vector<uint64_t> all;
            all.addAll(taken);
            all.addAll(ids);
            return readReply(context, attempt + 1, all.releaseAsArray());
          });
    }
  }
  // "No such name" and "no such attribute" are answers worth caching too.
  int err = reply.getError();
  if (err == 0 || err == ENOENT || err == ENODATA) grant(req, reply);
  // The locks taken above served this read only (grant() never hands them out: they may have
  // passed an update under way, which changes what they covered once this read is answered).
  for (uint64_t id : taken) ctx_.locks.cancel(*session_, id);
  reply.setLastSynced(ctx_.reportedSynced());
  return kj::READY_NOW;
}

kj::Vector<LockSpec> MetaService::heldElsewhere(rpc::MetaRequest::Reader req,
                                                rpc::MetaReply::Reader reply) {
  kj::Vector<LockSpec> out;
  auto check = [&](uint64_t ino, uint64_t bit) {
    LockSpec spec;
    spec.resource = ResourceId{RES_INODE, ino};
    spec.mode = LockMode::PR;
    spec.bits = bit;
    if (ino != 0 && ctx_.locks.heldByOthers(spec, *session_)) out.add(spec);
  };
  // Whether the name exists or not: an unlink answered elsewhere may be what decides.
  using R = rpc::MetaRequest;
  if (req.which() == R::LOOKUP) check(req.getLookup().getParent(), BIT_LOOKUP);
  if (req.which() == R::READDIR) check(req.getReaddir().getIno(), BIT_LOOKUP);
  if (reply.getError() == 0)
    forEachAttr(reply, [&](rpc::Attr::Reader a) { check(a.getIno(), BIT_ATTR); });
  return out;
}

namespace {
// The directory whose entries a request reads or adds to (its LOOKUP lock covers the answer).
uint64_t directoryOf(rpc::MetaRequest::Reader req) {
  using R = rpc::MetaRequest;
  switch (req.which()) {
    case R::LOOKUP:
      return req.getLookup().getParent();
    case R::READDIR:
      return req.getReaddir().getIno();
    case R::MKNOD:
      return req.getMknod().getParent();
    case R::MKDIR:
      return req.getMkdir().getParent();
    case R::SYMLINK:
      return req.getSymlink().getParent();
    case R::CREATE:
      return req.getCreate().getParent();
    case R::LINK:
      return req.getLink().getNewParent();
    default:
      return 0;
  }
}
}  // namespace

void MetaService::grant(rpc::MetaRequest::Reader req, rpc::MetaReply::Builder reply) {
  uint32_t want = req.getWantLocks();
  if (want == 0) return;
  struct Granted {
    uint64_t id, ino, bits;
    LockMode mode;
  };
  kj::Vector<Granted> granted;
  auto take = [&](uint64_t ino, uint64_t bits, LockMode mode) {
    LockSpec spec;
    spec.resource = ResourceId{RES_INODE, ino};
    spec.mode = mode;
    spec.bits = bits;
    KJ_IF_MAYBE (id, ctx_.locks.tryGrant(*session_, spec)) {
      granted.add(Granted{*id, ino, bits, mode});
    }
  };
  // A file opened for writing may get dirty pages (a shared mapping) and writes queued behind
  // that readers elsewhere must see: its data and attribute locks are PW, which their PR calls
  // back.
  uint32_t openFlags = req.which() == rpc::MetaRequest::OPEN     ? req.getOpen().getFlags()
                       : req.which() == rpc::MetaRequest::CREATE ? req.getCreate().getFlags()
                                                                 : 0;
  // (O_APPEND descriptors write around the page cache and queue nothing.)
  bool writing = (openFlags & O_ACCMODE) != O_RDONLY && !(openFlags & O_APPEND);
  LockMode dataMode = writing ? LockMode::PW : LockMode::PR;
  // A directory just made: nobody else knows it yet, and its maker may have its names and
  // attributes in PW (features::DIR_ATTRS_AHEAD).
  uint64_t newDirPw = (want & rpc::WANT_NEW_DIR_PW) && req.which() == rpc::MetaRequest::MKDIR &&
                              reply.getError() == 0
                          ? reply.getAttr().getIno()
                          : 0;
  auto inode = [&](rpc::Attr::Reader attr) {
    if (attr.getIno() == 0) return;
    bool reg = S_ISREG(attr.getMode());
    LockMode attrMode = reg ? dataMode : attr.getIno() == newDirPw ? LockMode::PW : LockMode::PR;
    if (want & rpc::WANT_INODE) take(attr.getIno(), BIT_ATTR, attrMode);
    if ((want & rpc::WANT_DATA) && reg) {
      take(attr.getIno(), BIT_DATA, dataMode);
    }
  };
  if (want & rpc::WANT_DIR) {
    uint64_t dir = directoryOf(req);
    if (dir != 0) take(dir, BIT_LOOKUP, LockMode::PR);
  }
  if ((want & rpc::WANT_NEW_DIR) && req.which() == rpc::MetaRequest::MKDIR &&
      reply.getError() == 0) {
    take(reply.getAttr().getIno(), BIT_LOOKUP, newDirPw != 0 ? LockMode::PW : LockMode::PR);
  }
  if (req.which() == rpc::MetaRequest::GETXATTR) {
    if (want & rpc::WANT_INODE) take(req.getGetxattr().getIno(), BIT_ATTR, LockMode::PR);
  } else if (reply.getError() == 0) {
    forEachAttr(reply.asReader(), inode);
  }
  if (granted.empty()) return;
  auto out = reply.initLocks(granted.size());
  for (auto i : kj::indices(granted)) {
    out[i].setLockId(granted[i].id);
    out[i].setIno(granted[i].ino);
    out[i].setBits(granted[i].bits);
    out[i].setMode(static_cast<rpc::LockMode>(granted[i].mode));
  }
}

// Says which inodes of a reply have no extended attributes at all: a client caching them then
// answers the kernel's many xattr questions (ls -l, every write) without asking.
void MetaService::markXattrs(store::Txn& txn, rpc::MetaReply::Builder reply) {
  auto mark = [&](rpc::Attr::Builder attr) {
    if (attr.getIno() != 0) attr.setNoXattrs(!ns_.hasXattrs(txn, attr.getIno()));
  };
  forEachAttr(reply, mark);
}

Caller MetaService::callerOf(rpc::MetaRequest::Reader req) {
  auto cred = req.getCred();
  if (cred.getUid() == 0 && session_->squashRoot) {
    return Caller{ctx_.config.squash.uid, ctx_.config.squash.gid, true};
  }
  return Caller{cred.getUid(), cred.getGid(), false};
}

void MetaService::read(rpc::MetaRequest::Reader req, rpc::MetaReply::Builder reply) {
  // Taken before the transaction opens: it sees that one and every one before (commits run on
  // this thread, so none lands in between).
  reply.setAsOf(ctx_.target.lastCommitted());
  store::Txn txn(ctx_.target.env(), store::Txn::READ);
  auto caller = callerOf(req);
  if (caller.checked) checkPermitted(ns_, txn, req, caller);
  readIn(txn, req, reply);
  if (reply.getError() == 0) markXattrs(txn, reply);
}

void MetaService::readIn(store::Txn& txn, rpc::MetaRequest::Reader req,
                         rpc::MetaReply::Builder reply) {
  using R = rpc::MetaRequest;
  switch (req.which()) {
    case R::GETATTR:
      ns_.get(txn, req.getGetattr()).toAttr(reply.initAttr());
      return;
    case R::LOOKUP:
      ns_.lookup(txn, req.getLookup().getParent(), req.getLookup().getName())
          .toAttr(reply.initAttr());
      return;
    case R::OPEN: {
      auto o = req.getOpen();
      auto node = ns_.get(txn, o.getIno());
      fsRequire(node.isReg() || node.isDir() || S_ISFIFO(node.mode) || S_ISCHR(node.mode) ||
                    S_ISBLK(node.mode) || S_ISSOCK(node.mode),
                EINVAL);
      opens_.open(session_->key, o.getHandle(), node.ino);
      spdlog::debug("client {} opened ino {} as handle {}", session_->key, node.ino, o.getHandle());
      setOpened(node, reply);
      return;
    }
    case R::LAYOUT:
      setOpened(ns_.get(txn, req.getLayout()), reply);
      return;
    case R::READDIR: {
      auto r = req.getReaddir();
      uint32_t max = kj::min(kj::max(r.getMaxEntries(), 1u), MAX_READDIR);
      auto orphan =
          capnp::Orphanage::getForMessageContaining(reply).newOrphan<capnp::List<rpc::DirEntry>>(
              max);
      auto list = orphan.get();
      uint32_t count = 0;
      bool eof = ns_.readdir(txn, r.getIno(), r.getCookie(), max, &list, &count);
      orphan.truncate(count);
      auto entries = reply.initEntries();
      entries.adoptList(kj::mv(orphan));
      entries.setEof(eof);
      return;
    }
    case R::READLINK: {
      auto node = ns_.get(txn, req.getReadlink());
      fsRequire(S_ISLNK(node.mode), EINVAL);
      reply.setBytes(node.symlink);
      return;
    }
    case R::ACCESS:
      reply.setNone();  // read() has checked it, if the caller is one the server checks
      return;
    case R::STATFS: {
      auto s = reply.initStatfs();
      // The blocks are the metadata target's room (clients write behind only while there is
      // plenty); the file data's room is the data targets'.
      targetStatFs(ctx_.target, s);
      uint64_t used = ns_.inodeCount(txn);
      constexpr uint64_t INODE_LIMIT = uint64_t(1) << 32;
      s.setTotalInodes(INODE_LIMIT);
      s.setFreeInodes(INODE_LIMIT > used ? INODE_LIMIT - used : 0);
      s.setNameMax(NAME_MAX_BYTES);
      return;
    }
    case R::GETXATTR:
      reply.setBytes(ns_.getxattr(txn, req.getGetxattr().getIno(), req.getGetxattr().getName()));
      return;
    case R::LISTXATTR: {
      auto names = ns_.listxattr(txn, req.getListxattr());
      auto out = reply.initNames(names.size());
      for (auto i : kj::indices(names)) out.set(i, names[i]);
      return;
    }
    case R::GET_TARGETS: {
      size_t n = 0;
      ns_.listTargets(txn, [&](rpc::TargetAddress::Reader) { ++n; });
      auto out = reply.initTargets(n);
      size_t i = 0;
      ns_.listTargets(txn, [&](rpc::TargetAddress::Reader t) { out.setWithCaveats(i++, t); });
      return;
    }
    default:
      break;
  }
  KJ_UNIMPLEMENTED("unknown metadata request; the client is newer than this server",
                   static_cast<uint>(req.which()));
}

kj::Vector<LockSpec> MetaService::affected(rpc::MetaRequest::Reader req) {
  using R = rpc::MetaRequest;
  std::map<uint64_t, uint64_t> bits;  // ino -> bits; ordered, so locks are taken in ino order
  auto add = [&](uint64_t ino, uint64_t b) { bits[ino] |= b; };
  constexpr uint64_t DIR = BIT_LOOKUP | BIT_ATTR;
  // The inode a name points to now (it may be replaced before the update runs; the update's own
  // checks in its transaction are what count, the lock only calls caches back).
  auto child = [&](uint64_t parent, kj::ArrayPtr<const kj::byte> name) {
    try {
      store::Txn txn(ctx_.target.env(), store::Txn::READ);
      add(ns_.lookup(txn, parent, name).ino, BIT_ATTR | BIT_LOOKUP);
    } catch (FsError&) {
      // No such entry: the update will say so.
    }
  };
  switch (req.which()) {
    case R::SETATTR: {
      // A size change changes the contents too: cached pages past the new end go; so do
      // those of data written (wroteEnd), as for `wrote`.
      auto s = req.getSetattr();
      bool data = (s.getValid() & rpc::SET_SIZE) || s.getWroteEnd() != 0;
      add(s.getIno(), BIT_ATTR | (data ? BIT_DATA : 0));
      break;
    }
    case R::WROTE:
      // Sent after the data reached the data targets: readers drop their pages, then re-read.
      add(req.getWrote().getIno(), BIT_ATTR | BIT_DATA);
      break;
    case R::RESERVE_APPEND:
      add(req.getReserveAppend().getIno(), BIT_ATTR | BIT_DATA);
      break;
    case R::SETXATTR:
      add(req.getSetxattr().getIno(), BIT_ATTR | BIT_XATTR);
      break;
    case R::REMOVEXATTR:
      add(req.getRemovexattr().getIno(), BIT_ATTR | BIT_XATTR);
      break;
    case R::MKNOD:
      add(req.getMknod().getParent(), DIR);
      break;
    case R::MKDIR:
      add(req.getMkdir().getParent(), DIR);
      break;
    case R::SYMLINK:
      add(req.getSymlink().getParent(), DIR);
      break;
    case R::CREATE:
      add(req.getCreate().getParent(), DIR);
      break;
    case R::LINK:
      add(req.getLink().getNewParent(), DIR);
      add(req.getLink().getIno(), BIT_ATTR);
      break;
    case R::UNLINK:
      add(req.getUnlink().getParent(), DIR);
      child(req.getUnlink().getParent(), req.getUnlink().getName());
      break;
    case R::RMDIR:
      add(req.getRmdir().getParent(), DIR);
      child(req.getRmdir().getParent(), req.getRmdir().getName());
      break;
    case R::RENAME: {
      auto r = req.getRename();
      add(r.getParent(), DIR);
      add(r.getNewParent(), DIR);
      child(r.getParent(), r.getName());
      child(r.getNewParent(), r.getNewName());
      break;
    }
    default:
      break;
  }
  return exclusive(bits);
}

kj::Vector<LockSpec> MetaService::batchAffected(capnp::List<rpc::MetaRequest>::Reader batch,
                                                kj::Vector<kj::Array<uint64_t>>& changed) {
  using R = rpc::MetaRequest;
  KJ_REQUIRE(batch.size() > 0 && batch.size() <= features::MAX_BATCH,
             "a batch carries 1 to MAX_BATCH updates", batch.size());
  std::map<uint64_t, uint64_t> bits;  // ino -> bits, over all of them (in ino order)
  for (auto one : batch) {
    auto which = one.which();
    // What a client answers ahead, and what its write-behind sends after a file's data
    // (features::BATCH_ATTRS); a size change truncates data objects first, on its own.
    bool ahead = which == R::UNLINK || which == R::RMDIR || which == R::CREATE;
    bool behind = which == R::WROTE ||
                  (which == R::SETATTR && !(one.getSetattr().getValid() & rpc::SET_SIZE));
    KJ_REQUIRE(ahead || behind,
               "a batch carries unlinks, rmdirs, creates, wrotes and setattrs without a size only",
               static_cast<uint>(which));
    KJ_REQUIRE(one.getRequestId() == 0 && one.getReplayOf() == 0 && !one.getResend(),
               "an update in a batch is numbered by the batch");
    auto specs = affected(one);
    changed.add(KJ_MAP(spec, specs) { return spec.resource.id; });
    for (auto& spec : specs) bits[spec.resource.id] |= spec.bits;
  }
  return exclusive(bits);
}

kj::Promise<kj::Array<uint64_t>> MetaService::lockFor(kj::Vector<LockSpec> specs) {
  // One after another, in inode order: two updates never wait on each other in a cycle.
  // One group: while it waits on a client's lock, that client's own updates pass it.
  kj::Promise<kj::Vector<uint64_t>> chain = kj::Vector<uint64_t>();
  uint64_t group = ctx_.locks.newGroup();
  for (auto& spec : specs) {
    chain = chain.then([this, spec, group](kj::Vector<uint64_t> held) mutable {
      return ctx_.locks.enqueue(ctx_.serverOwner, spec, session_.get(), group)
          .then([held = kj::mv(held)](uint64_t id) mutable {
            held.add(id);
            return kj::mv(held);
          });
    });
  }
  return chain.then([](kj::Vector<uint64_t> held) { return held.releaseAsArray(); });
}

void MetaService::update(rpc::MetaRequest::Reader req, capnp::MallocMessageBuilder& message,
                         kj::ArrayPtr<const kj::Array<uint64_t>> changed) {
  using R = rpc::MetaRequest;
  ctx_.update<rpc::MetaReply>(
      *session_, req.getRequestId(), req.getOldestUnreplied(), message,
      [&](store::Txn& txn, rpc::MetaReply::Builder reply) {
        reply.setAsOf(reply.getTransno());
        if (req.which() != R::BATCH) {
          applyAndDescribe(req, txn, reply, changed[0]);
          return;
        }
        auto batch = req.getBatch();
        auto replies = reply.initBatch(batch.size());
        for (auto i : kj::indices(batch)) {
          // Each in a transaction nested in the batch's: one that fails leaves no trace.
          store::Txn one(txn);
          replies[i].setAsOf(reply.getTransno());
          try {
            applyAndDescribe(batch[i], one, replies[i], changed[i]);
            one.commit();
          } catch (FsError& e) {
            // What it had set of its reply before failing is read by nobody: a client reads
            // only the errno of a reply that has one (`changed` is set last, on success).
            replies[i].setError(e.err());
          }
        }
      },
      req.getReplayOf());
  // The open half of a create lives in memory; a resend registers it again (idempotent).
  auto opened = [&](rpc::MetaRequest::Reader req, rpc::MetaReply::Reader reply) {
    if (req.which() == R::CREATE && reply.getError() == 0) {
      opens_.open(session_->key, req.getCreate().getHandle(), reply.getOpened().getAttr().getIno());
    }
  };
  auto reply = message.getRoot<rpc::MetaReply>().asReader();
  if (req.which() == R::BATCH && reply.isBatch()) {
    for (auto i : kj::indices(reply.getBatch())) opened(req.getBatch()[i], reply.getBatch()[i]);
  } else {
    opened(req, reply);
  }
}

void MetaService::applyAndDescribe(rpc::MetaRequest::Reader req, store::Txn& txn,
                                   rpc::MetaReply::Builder reply,
                                   kj::ArrayPtr<const uint64_t> changed) {
  apply(req, txn, reply);
  markXattrs(txn, reply);
  // What the requester needs to keep its own caches right (its locks were not called back);
  // recorded with the reply, so a resend gets it too.
  auto out = reply.initChanged(changed.size());
  for (auto i : kj::indices(changed)) {
    KJ_IF_MAYBE (node, ns_.find(txn, changed[i])) {
      node->toAttr(out[i]);
    } else {
      out[i].setIno(changed[i]);  // mode 0: gone (every unlink's file: not an exception)
    }
  }
}

void MetaService::requireSpaceFor(rpc::MetaRequest::Reader req, store::Txn& txn) {
  using R = rpc::MetaRequest;
  // Three tiers. What can only shrink the namespace must work on a full target. A create
  // answered ahead was promised its room when its number was reserved: the client told its
  // application the file exists, and an ENOSPC now would take it away. Everything else,
  // reservations included, must leave the deletions' reserve and the promised room alone.
  auto promised = [&]() { return ctx_.room.promised(txn); };
  switch (req.which()) {
    case R::UNLINK:
    case R::RMDIR:
    case R::REMOVEXATTR:
    case R::SETATTR:
    case R::WROTE:
    case R::RENAME:
      return;
    case R::CREATE:
      if (req.getCreate().getIno() != 0) return;
      break;
    case R::RESERVE_INODES:
      ctx_.target.env().requireSpace(txn,
                                     promised() + req.getReserveInodes() * RoomGate::CREATE_ROOM);
      return;
    default:
      break;
  }
  ctx_.target.env().requireSpace(txn, promised() + 4096);
}

void MetaService::apply(rpc::MetaRequest::Reader req, store::Txn& txn,
                        rpc::MetaReply::Builder reply) {
  using R = rpc::MetaRequest;
  requireSpaceFor(req, txn);
  auto caller = callerOf(req);
  if (caller.checked) checkPermitted(ns_, txn, req, caller);
  switch (req.which()) {
    case R::SETATTR: {
      auto s = req.getSetattr();
      // Data written behind, then the change the application made after it.
      if (s.getWroteEnd() != 0) ns_.wrote(txn, s.getIno(), s.getWroteEnd());
      capnp::MallocMessageBuilder adjusted;  // the request with the mode a checked chmod sets
      if (caller.checked && (s.getValid() & rpc::SET_MODE)) {
        uint32_t mode = permittedMode(ns_.get(txn, s.getIno()), caller, s.getMode());
        if (mode != s.getMode()) {
          adjusted.setRoot(req);
          adjusted.getRoot<rpc::MetaRequest>().getSetattr().setMode(mode);
          s = adjusted.getRoot<rpc::MetaRequest>().asReader().getSetattr();
        }
      }
      ns_.setattr(txn, s).toAttr(reply.initAttr());
      return;
    }
    case R::MKNOD: {
      auto m = req.getMknod();
      fsRequire((m.getMode() & S_IFMT) != S_IFDIR && (m.getMode() & S_IFMT) != S_IFLNK, EINVAL);
      ns_.make(txn, m.getParent(), m.getName(), m.getMode(), m.getRdev(), nullptr, caller.creds())
          .toAttr(reply.initAttr());
      return;
    }
    case R::MKDIR: {
      auto m = req.getMkdir();
      ns_.make(txn, m.getParent(), m.getName(), S_IFDIR | (m.getMode() & 07777), 0, nullptr,
               caller.creds())
          .toAttr(reply.initAttr());
      return;
    }
    case R::SYMLINK: {
      auto s = req.getSymlink();
      ns_.make(txn, s.getParent(), s.getName(), S_IFLNK | 0777, 0, s.getTarget(), caller.creds())
          .toAttr(reply.initAttr());
      return;
    }
    case R::LINK: {
      auto l = req.getLink();
      ns_.link(txn, l.getIno(), l.getNewParent(), l.getNewName()).toAttr(reply.initAttr());
      return;
    }
    case R::UNLINK: {
      auto u = req.getUnlink();
      ns_.unlink(txn, u.getParent(), u.getName(), false, u.getExpect());
      reply.setNone();
      return;
    }
    case R::RMDIR: {
      auto r = req.getRmdir();
      ns_.unlink(txn, r.getParent(), r.getName(), true, r.getExpect());
      reply.setNone();
      return;
    }
    case R::RENAME: {
      auto r = req.getRename();
      ns_.rename(txn, r.getParent(), r.getName(), r.getNewParent(), r.getNewName(), r.getFlags());
      reply.setNone();
      return;
    }
    case R::CREATE: {
      auto c = req.getCreate();
      kj::Maybe<InodeData> made;
      if (c.getIno() != 0) {
        // Answered ahead: the client told its application a new empty file was made.
        fsRequire(ctx_.clients.takeReserved(txn, session_->uuid, c.getIno()), EINVAL);
        Preset preset;
        preset.ino = c.getIno();
        KJ_REQUIRE(c.getTime().getNsec() < 1000000000, "bad nanoseconds", c.getTime().getNsec());
        preset.time = timespec{c.getTime().getSec(), long(c.getTime().getNsec())};
        preset.layout = decodeLayout(c.getLayout());
        setOpened(ns_.make(txn, c.getParent(), c.getName(), S_IFREG | (c.getMode() & 07777), 0,
                           nullptr, caller.creds(), preset),
                  reply);
        return;
      }
      try {
        made = ns_.make(txn, c.getParent(), c.getName(), S_IFREG | (c.getMode() & 07777), 0,
                        nullptr, caller.creds());
      } catch (FsError& e) {
        // Another client made it first: without O_EXCL that is an ordinary open.
        if (e.err() != EEXIST || (c.getFlags() & O_EXCL)) throw;
        made = ns_.lookup(txn, c.getParent(), c.getName());
        fsRequire(KJ_ASSERT_NONNULL(made).isReg(), EISDIR);
      }
      auto& node = KJ_ASSERT_NONNULL(made);
      setOpened(node, reply);
      return;
    }
    case R::SETXATTR: {
      auto s = req.getSetxattr();
      ns_.setxattr(txn, s.getIno(), s.getName(), s.getValue(), s.getFlags());
      reply.setNone();
      return;
    }
    case R::REMOVEXATTR:
      ns_.removexattr(txn, req.getRemovexattr().getIno(), req.getRemovexattr().getName());
      reply.setNone();
      return;
    case R::WROTE:
      ns_.wrote(txn, req.getWrote().getIno(), req.getWrote().getEnd()).toAttr(reply.initAttr());
      return;
    case R::RESERVE_APPEND:
      reply.setOffset(ns_.reserveAppend(txn, req.getReserveAppend().getIno(),
                                        req.getReserveAppend().getLength()));
      return;
    case R::RESERVE_INODES: {
      uint32_t count = req.getReserveInodes();
      KJ_REQUIRE(count > 0 && count <= features::MAX_RESERVE_INODES, "bad reserveInodes count",
                 count);
      // A bound on what one client keeps set aside on the target.
      size_t held = ctx_.clients.reservedCount(txn, session_->uuid, features::MAX_RESERVED_INODES);
      fsRequire(held + count <= features::MAX_RESERVED_INODES, EDQUOT);
      auto layouts = ns_.reserveInodes(txn, count);
      auto out = reply.initReserved(layouts.size());
      for (auto i : kj::indices(layouts)) {
        ctx_.clients.reserve(txn, session_->uuid, layouts[i].objectId);
        encodeLayout(layouts[i], out[i]);
      }
      return;
    }
    default:
      KJ_UNREACHABLE;
  }
}

kj::Promise<void> MetaService::applicationLock(rpc::MetaRequest::Reader req, CallContext context) {
  using R = rpc::MetaRequest;
  auto& table = KJ_ASSERT_NONNULL(ctx_.posixLocks);
  auto reply = context.getResults().initReply();
  switch (req.which()) {
    case R::SETLK: {
      auto r = req.getSetlk();
      KJ_REQUIRE(r.getSpace() <= 1, "unknown lock space", r.getSpace());
      PosixLock lock;
      KJ_REQUIRE(r.getType() <= PosixLock::UNLOCK, "unknown lock type", r.getType());
      lock.type = static_cast<PosixLock::Type>(r.getType());
      lock.start = r.getStart();
      lock.end = r.getEnd();
      lock.pid = r.getPid();
      try {
        // A waiting lock ends when the caller gives up (a signal): let the call be cancelled.
        context.allowCancellation();
        // A replayed lock was granted before the restart, so nothing can conflict with it
        // (new locks wait for the replays): never make it wait.
        bool wait = r.getWait() && !req.getReplay();
        return table.set(r.getIno(), r.getSpace(), {session_->key, r.getOwner()}, lock, wait)
            .then([this, context]() mutable {
              context.getResults().getReply().setLastSynced(ctx_.reportedSynced());
            });
      } catch (FsError& e) {
        reply.setError(e.err());
        return kj::READY_NOW;
      }
    }
    case R::GETLK: {
      auto r = req.getGetlk();
      PosixLock want;
      KJ_REQUIRE(r.getType() <= PosixLock::WRITE, "unknown lock type", r.getType());
      want.type = static_cast<PosixLock::Type>(r.getType());
      want.start = r.getStart();
      want.end = r.getEnd();
      auto out = reply.initLock();
      out.setType(PosixLock::UNLOCK);
      KJ_IF_MAYBE (c, table.test(r.getIno(), r.getSpace(), {session_->key, r.getOwner()}, want)) {
        out.setType(c->type);
        out.setStart(c->start);
        out.setEnd(c->end);
        out.setPid(c->pid);
      }
      return kj::READY_NOW;
    }
    case R::RELEASE_LOCKS: {
      auto r = req.getReleaseLocks();
      table.releaseOwner(r.getIno(), r.getSpace(), {session_->key, r.getOwner()});
      reply.setNone();
      return kj::READY_NOW;
    }
    default:
      KJ_UNREACHABLE;
  }
}

bool MetaService::release(uint64_t handle) {
  uint64_t ino = opens_.close(session_->key, handle);
  spdlog::debug("client {} released handle {} (ino {})", session_->key, handle, ino);
  bool orphan = false;
  if (ino != 0 && !opens_.isOpen(ino)) {
    // Most last closes are of linked files: only an orphan's costs a write transaction.
    store::Txn txn(ctx_.target.env(), store::Txn::READ);
    orphan = ns_.isOrphan(txn, ino);
  }
  if (orphan) {
    // The last close of an unlinked file destroys it.
    try {
      ctx_.commit([&](store::Txn& txn) { ns_.closed(txn, ino); });
      ctx_.locks.forget(ResourceId{RES_INODE, ino});
    } catch (FsError& e) {
      // The orphan stays listed and is reaped at the next start.
      spdlog::warn("cannot destroy orphan {}: {}", ino, e.what());
    }
  }
  return orphan;
}

}  // namespace cairn
