// Client: construction, unmount, links, metadata calls, and locks with the kernel's caches they
// cover (fusefs/client_parts.h lists the class's other files).
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
kj::Array<kj::byte> randomUuid() {
  std::random_device rd;
  auto uuid = kj::heapArray<kj::byte>(16);
  for (auto& b : uuid) b = kj::byte(rd());
  return uuid;
}
}  // namespace

void attrToStat(rpc::Attr::Reader a, struct stat* st) {
  memset(st, 0, sizeof(*st));
  st->st_ino = a.getIno();
  st->st_mode = a.getMode();
  st->st_nlink = a.getNlink();
  st->st_uid = a.getUid();
  st->st_gid = a.getGid();
  st->st_rdev = a.getRdev();
  st->st_size = a.getSize();
  st->st_blocks = a.getBlocks();
  st->st_blksize = 65536;
  st->st_atim = timespec{time_t(a.getAtime().getSec()), long(a.getAtime().getNsec())};
  st->st_mtim = timespec{time_t(a.getMtime().getSec()), long(a.getMtime().getNsec())};
  st->st_ctim = timespec{time_t(a.getCtime().getSec()), long(a.getCtime().getNsec())};
}

Client::Client(kj::AsyncIoContext& io, kj::Network& network, ClientOptions options)
    : io_(io),
      network_(network),
      options_(kj::mv(options)),
      cache_(options_.maxNames),
      readAhead_([this](uint64_t ino, uint64_t offset, size_t length) {
        return fetchAhead(ino, offset, length);
      }),
      tasks_(errorHandler_) {
  KJ_IF_MAYBE (uuid, options_.uuid) {
    identity_.uuid = kj::heapArray<kj::byte>(*uuid);
  } else {
    identity_.uuid = randomUuid();
  }
  identity_.role = rpc::Hello::Role::CLIENT;
  identity_.hostName = kj::str(options_.hostName);
  auto addresses = kj::heapArrayBuilder<kj::String>(options_.metaAddresses.size());
  for (auto& a : options_.metaAddresses) addresses.add(kj::str(a));
  meta_ = kj::heap<ServerLink>(network_, io.provider->getTimer(), kj::str("meta"),
                               addresses.finish(), identity_);
  meta_->setRecovery([this]() { return recoverMeta(); });
  // Two batches of a directory on their way at once: the server applies one while the next
  // fills.
  batch_ = kj::heap<UpdateBatch>(*meta_, io.provider->getTimer(), 2, UPDATE_GATHER);
  dataBatch_ = kj::heap<DataBatch>(io.provider->getTimer(), UPDATE_GATHER);
  locks_ = kj::heap<LockCache>(
      *meta_, io.provider->getTimer(),
      [this](uint64_t ino, uint64_t bit, bool destroyed) { return revoke(ino, bit, destroyed); },
      options_.lockLimits);
  // A PW called back while no descriptor here can dirty the file and nothing of it is queued
  // (its last writer closed) becomes PR instead of going back (LockCache::blocking).
  locks_->setDowngradable([this](uint64_t ino, uint64_t bit) {
    // A directory's names in PW (removals answered ahead) likewise with none of them in flight.
    if (bit == BIT_LOOKUP) return !dirops_.pending(ino);
    // (Attributes with changes answered ahead on their way go back through revoke, which waits.)
    if (bit == BIT_ATTR && dirops_.pending(ino)) return false;
    return (bit == BIT_DATA || bit == BIT_ATTR) && writers_.count(ino) == 0 && !wb_.queued(ino);
  });
  locks_->setHeldUp([this]() {
    if (meta_->busy()) return true;
    for (auto& [index, link] : data_) {
      if (link->busy()) return true;
    }
    return false;
  });
  meta_->setLockCallback(locks_->callback());
  meta_->setOnDrain([this]() { return drainMeta(); });
  meta_->setOnLost([this]() {
    // The server drops our locks when we come back (or a restarted one never had them):
    // nothing they covered may be trusted from now on.
    locks_->forgetAll();
    cache_.clear();
    readAhead_.clear();
    // Replies from here on may come from a server whose transactions count again from lower.
    inodes_.forgetOrder();
  });
}

Client::~Client() noexcept(false) {}

void Client::ErrorHandler::taskFailed(kj::Exception&& e) {
  spdlog::warn("background request failed: {}", e.getDescription().cStr());
}

void Client::start() {
  meta_->start();
}

kj::Promise<void> Client::leave(kj::Duration limit) {
  // Files closed just before the unmount may still have writes going behind.
  return flushAll()
      .catch_([](kj::Exception&& e) {
        spdlog::warn("unmounting: write-behind failed: {}", e.getDescription().cStr());
      })
      .exclusiveJoin(io_.provider->getTimer().afterDelay(LEAVE_FLUSH_LIMIT).then([this]() {
        spdlog::error("unmounting: {} files still had writes queued after {} s; they are lost",
                      wb_.files().size(), LEAVE_FLUSH_LIMIT / kj::SECONDS);
      }))
      .then([this, limit]() { return goodbye(limit); });
}

kj::Promise<void> Client::goodbye(kj::Duration limit) {
  kj::Vector<kj::Promise<void>> parts(data_.size() + 1);  // to the links that know goodbye
  auto bye = [](rpc::MetaRequest::Builder b) { b.setGoodbye(); };
  if (meta_->state() == ServerLink::State::ACTIVE &&
      (meta_->peerFeatures() & features::ACTIVE_SERVER_LOCK)) {
    parts.add(meta_->meta(bye, false).ignoreResult());
  }
  for (auto& [index, link] : data_) {
    if (link->state() != ServerLink::State::ACTIVE ||
        !(link->peerFeatures() & features::ACTIVE_SERVER_LOCK)) {
      continue;
    }
    parts.add(
        link->data([](rpc::DataRequest::Builder b) { b.setGoodbye(); }, false).ignoreResult());
  }
  return kj::joinPromises(parts.releaseAsArray())
      .catch_([](kj::Exception&&) {})
      .exclusiveJoin(io_.provider->getTimer().afterDelay(limit));
}

kj::Vector<ServerLink*> Client::links() {
  kj::Vector<ServerLink*> out;
  out.add(meta_.get());
  for (auto& [index, link] : data_) out.add(link.get());
  return out;
}

kj::Promise<ServerLink*> Client::dataLink(uint32_t index) {
  auto it = data_.find(index);
  if (it != data_.end()) return it->second.get();
  // A target we have not heard of yet (added since we connected): ask again.
  return refreshTargets(ServerLink::Class::NORMAL).then([this, index]() -> ServerLink* {
    auto it = data_.find(index);
    if (it == data_.end()) kj::throwFatalException(errnoException(EIO));
    return it->second.get();
  });
}

kj::Promise<ServerLink::MetaResponse> Client::metaCall(MetaBuild build, bool update,
                                                       ServerLink::Class cls) {
  return metaCall(kj::mv(build), update, cls, [](rpc::MetaReply::Reader) {});
}

kj::Promise<ServerLink::MetaResponse> Client::metaCall(MetaBuild build, bool update,
                                                       ServerLink::Class cls, OnReply onReply) {
  KJ_IF_MAYBE (wait, afterDirops(build, cls)) {
    return wait->then(
        [this, build = kj::mv(build), update, cls, onReply = kj::mv(onReply)]() mutable {
          return sendMeta(kj::mv(build), update, cls, kj::mv(onReply));
        });
  }
  return sendMeta(kj::mv(build), update, cls, kj::mv(onReply));
}

kj::Maybe<kj::Promise<void>> Client::afterDirops(MetaBuild& build, ServerLink::Class cls) {
  // Not a recovery request: the removals answered ahead are sent only once recovery is over
  // (open replay of a file unlinked ahead would otherwise wait for ever).
  if (dirops_.inFlight() == 0 || cls == ServerLink::Class::RECOVERY) return nullptr;
  // Built once more to see what it is about (only while removals answered ahead are out).
  capnp::MallocMessageBuilder probe(256);
  auto req = probe.initRoot<rpc::MetaRequest>();
  build(req);
  return afterDirops(req.asReader());
}

kj::Promise<ServerLink::MetaResponse> Client::sendMeta(MetaBuild build, bool update,
                                                       ServerLink::Class cls, OnReply onReply) {
  return meta_->meta(kj::mv(build), update, cls)
      .then([this, onReply = kj::mv(onReply)](ServerLink::MetaResponse&& resp) mutable {
        // Replies and blocking callbacks are handled in the order they left the server as long
        // as each is handled in its first event here; a later event could be overtaken by a
        // callback and cache what it just took back.
        absorb(resp.getReply());
        onReply(resp.getReply());
        checkErrno(resp.getReply().getError());
        return kj::mv(resp);
      });
}

namespace {
// What creates and removals answered ahead did to `cached` (link counts, times), over `st`;
// and, with `attrs` (a change of attributes answered ahead, Client::dirAttrsAhead, on its way),
// what that did: owner, mode and times as the cache has them.
void keepAnsweredAhead(struct stat& st, const struct stat& cached, bool attrs) {
  st.st_nlink = cached.st_nlink;
  if (attrs) {
    st.st_mode = cached.st_mode;
    st.st_uid = cached.st_uid;
    st.st_gid = cached.st_gid;
    st.st_atim = cached.st_atim;
    st.st_mtim = cached.st_mtim;
    st.st_ctim = cached.st_ctim;
    return;
  }
  if (later(cached.st_mtim, st.st_mtim)) st.st_mtim = cached.st_mtim;
  if (later(cached.st_ctim, st.st_ctim)) st.st_ctim = cached.st_ctim;
}
}  // namespace

void Client::absorb(rpc::MetaReply::Reader reply, uint64_t op) {
  if (reply.hasLocks()) locks_->granted(reply.getLocks());
  auto see = [this, op, asOf = reply.getAsOf()](rpc::Attr::Reader a) {
    struct stat st;
    attrToStat(a, &st);
    // Creates and removals answered ahead after this request left (any request about an inode
    // waits for those before it): the reply predates them, the cache shows them. They change a
    // link count and times only; the rest is the reply's.
    uint64_t ino = a.getIno();
    if (op != 0 ? dirops_.later(ino, op) : dirops_.pending(ino)) {
      KJ_IF_MAYBE (c, cache_.attr(ino)) {
        keepAnsweredAhead(st, c->attr, attrsAhead_.count(ino) > 0);
      }
    }
    // Overtaken by a newer reply (InodeTable::sawAttr): what that one said stays.
    if (!inodes_.sawAttr(st, asOf)) return;
    if (locks_->held(a.getIno(), BIT_ATTR) != 0) {
      cache_.setAttr(st, a.getGeneration());
      if (a.getNoXattrs()) cache_.markNoXattrs(a.getIno());
    } else {
      cache_.dropAttr(a.getIno());
    }
  };
  // Our own update: our locks were not called back, so what it changed is refreshed here.
  for (auto a : reply.getChanged()) {
    if (a.getMode() == 0) {
      cache_.dropAttr(a.getIno());
      // Removed by our own update: its locks cover nothing any more, and the kernel holds
      // nothing of it to drop. The update came through this kernel (an unlink, rmdir or
      // rename over it), which dropped the inode's link and attributes itself, and the inode
      // was open nowhere (or the server would keep it): its pages go when the kernel evicts
      // it. A directory removed so has no name left for the kernel to drop, nor one on its
      // way there: it was empty, and the kernel held it locked against lookups while removing
      // it. (Telling the kernel anyway cost two thread hand-offs an unlink, each answered
      // "no such inode".)
      locks_->giveBackInode(a.getIno());
    } else {
      see(a);
    }
  }
  if (reply.getError() == 0) forEachAttr(reply, see);
}

bool Client::caching() const {
  return options_.caching && (meta_->peerFeatures() & features::CACHING_LOCKS) != 0;
}

uint32_t Client::wantFor(uint64_t dir, uint64_t ino, bool data) {
  if (!caching()) return 0;
  uint32_t want = 0;
  if (dir != 0 && locks_->held(dir, BIT_LOOKUP) == 0) want |= rpc::WANT_DIR;
  if (ino == 0 || locks_->held(ino, BIT_ATTR) == 0) want |= rpc::WANT_INODE;
  if (data && (ino == 0 || locks_->held(ino, BIT_DATA) == 0)) want |= rpc::WANT_DATA;
  return want;
}

bool Client::nameForKernel(uint64_t parent, const std::string& name) {
  KJ_IF_MAYBE (kernel, kernel_) {
    if (!kernel->keepsNames() || locks_->held(parent, BIT_LOOKUP) == 0) return false;
    auto& names = kernelNames_[parent];
    if (names.count(name) == 0) {
      // As many as the client's own cache of names at most (a listing hands out every name of
      // a directory): past that the kernel keeps no more, and asks again, answered from there.
      if (kernelNameCount_ >= cache_.maxNames()) return false;
      names.insert(name);
      ++kernelNameCount_;
    }
    lastNameReply_.insert_or_assign(parent, io_.provider->getTimer().now());
    return true;
  }
  return false;
}

// The kernel moves its dentry on our own rename, keeping the timeout it had: the new name is
// the kernel's now, and must go with the new directory's lock. Without that lock, every entry
// looked up so far is made to be checked again instead (the move may not have happened yet,
// so dropping the one name could miss it).
void Client::movedInKernel(uint64_t dir, const std::string& name) {
  KJ_IF_MAYBE (kernel, kernel_) {
    if (!kernel->keepsNames()) return;
    if (!nameForKernel(dir, name)) tasks_.add(forgetInKernel(*kernel, dir, {}, true));
  }
}

// A LOOKUP answer is entered into the kernel's dentry cache by the task that looked up, after
// the daemon has written it: an entry invalidation sent in between finds nothing to drop. So if
// a name of the directory was handed out lately, the kernel's epoch is raised as well: every
// lookup begun before it is checked again at its next use.
constexpr kj::Duration NAME_IN_FLIGHT = 2 * kj::SECONDS;

std::vector<std::string> Client::forgetKernelNames(uint64_t dir) {
  std::vector<std::string> names;
  auto it = kernelNames_.find(dir);
  if (it != kernelNames_.end()) {
    names.assign(it->second.begin(), it->second.end());
    kernelNameCount_ -= it->second.size();
    kernelNames_.erase(it);
  }
  return names;
}

kj::Promise<void> Client::invalidateInKernel(KernelCache& kernel, uint64_t ino, bool pages) {
  ++stats_.kernelInvalidations;
  return kernel.invalidate(ino, pages);
}

kj::Promise<void> Client::forgetInKernel(KernelCache& kernel, uint64_t dir,
                                         std::vector<std::string> names, bool epoch) {
  stats_.kernelNamesDropped += names.size();
  if (epoch) ++stats_.kernelEpochRaises;
  return kernel.forgetNames(dir, kj::mv(names), epoch);
}

uint64_t Client::kernelEpochFallbacks() const {
  KJ_IF_MAYBE (kernel, kernel_) {
    return kernel->epochFallbacks();
  }
  return 0;
}

kj::Promise<void> Client::revoke(uint64_t ino, uint64_t bit, bool destroyed) {
  if (bit == BIT_ATTR && dirops_.pending(ino)) {
    // Whoever called the attributes back must find what we answered ahead about them done: the
    // changes of a directory's (dirAttrsAhead), the creates and removals in it. Those answered
    // before now (more creates may come meanwhile; they change only times the server sets).
    hurry();
    return dirops_.settledBefore(ino, dirops_.next()).then([this, ino, destroyed]() {
      return revokeCached(ino, BIT_ATTR, destroyed);
    });
  }
  if (bit == BIT_LOOKUP && dirops_.pending(ino)) {
    // Whoever called the lock back must find our unlinks in the directory done.
    hurry();
    return dirops_.settled(ino).then(
        [this, ino, bit, destroyed]() { return revoke(ino, bit, destroyed); });
  }
  if (bit == BIT_LOOKUP) {
    cache_.dropDir(ino);
    if (destroyed) {
      // Nothing to tell the kernel (see absorb); raising its epoch would make it check every
      // name it holds, as `rm -r` removing directory after directory did.
      forgetKernelNames(ino);
      lastNameReply_.erase(ino);
      return kj::READY_NOW;
    }
    std::vector<std::string> names = forgetKernelNames(ino);
    bool epoch = false;
    auto last = lastNameReply_.find(ino);
    if (last != lastNameReply_.end()) {
      epoch = io_.provider->getTimer().now() - last->second < NAME_IN_FLIGHT;
      lastNameReply_.erase(last);
    }
    if (draining_) return kj::READY_NOW;  // one epoch bump at the end drops them all
    KJ_IF_MAYBE (kernel, kernel_) {
      if (!names.empty() || epoch) return forgetInKernel(*kernel, ino, kj::mv(names), epoch);
    }
    return kj::READY_NOW;
  }
  return revokeCached(ino, bit, destroyed);
}

kj::Promise<void> Client::revokeCached(uint64_t ino, uint64_t bit, bool destroyed) {
  if (bit == BIT_ATTR) cache_.dropAttr(ino);
  if (bit == BIT_DATA) readAhead_.drop(ino);
  if (bit != BIT_ATTR && bit != BIT_DATA) return kj::READY_NOW;
  // Writes queued behind these locks go out before the locks do.
  return flushed(ino, Waiter::APPLICATION).then([this, ino, bit, destroyed]() -> kj::Promise<void> {
    if (destroyed) return kj::READY_NOW;
    KJ_IF_MAYBE (kernel, kernel_) {
      auto dropped = invalidateInKernel(*kernel, ino, bit == BIT_DATA);
      if (!draining_) return dropped;
      return dropped.exclusiveJoin(io_.provider->getTimer().afterDelay(KERNEL_WAIT_IN_SHUTDOWN));
    }
    return kj::READY_NOW;
  });
}

// A file this client may dirty pages of (open for writing: a shared mapping writes behind our
// back) holds its data lock in PW, so that readers elsewhere call the dirty pages back. It is
// taken at the open, where this request holds no page of the file locked: in a READ or WRITE,
// giving our own PR back to get PW could wait on the very page that request has locked.
kj::Promise<Opened> Client::withDataLock(Opened o) {
  if (o.atimeSet) {
    // The kernel keeps the attributes, and is not told of an access time it did not set.
    KJ_IF_MAYBE (kernel, kernel_) {
      o.atimeSet = false;
      uint64_t ino = o.entry.attr.st_ino;
      return invalidateInKernel(*kernel, ino, false).then([this, o]() { return withDataLock(o); });
    }
  }
  auto& file = KJ_ASSERT_NONNULL(opens_.find(o.fh));
  bool mayDirty = (file.flags & O_ACCMODE) != O_RDONLY && !(file.flags & O_APPEND);
  if (!caching() || !mayDirty || !S_ISREG(o.entry.attr.st_mode)) return o;
  uint64_t ino = o.entry.attr.st_ino;
  return locks_->acquire(ino, BIT_DATA, rpc::LockMode::PW).then([this, o, ino]() mutable {
    o.keepCache = locks_->held(ino, BIT_DATA) != 0;
    return o;
  });
}

kj::Promise<void> Client::dataLock(uint64_t ino) {
  // Any mode will do here (PR or PW): see withDataLock for why there is no upgrade.
  if (!caching() || locks_->held(ino, BIT_DATA) != 0) return kj::READY_NOW;
  if (locks_->revoking(ino, BIT_DATA)) {
    // The kernel may be waiting on this very request to finish dropping the pages (a locked
    // page, a write-back): waiting for a new lock here would never end. Go ahead, and have
    // the revocation drop what this brings in once more.
    locks_->usedWhileRevoking(ino, BIT_DATA);
    return kj::READY_NOW;
  }
  auto writers = writers_.find(ino);
  bool mayDirty = writers != writers_.end() && writers->second > 0;
  return locks_->acquire(ino, BIT_DATA, mayDirty ? rpc::LockMode::PW : rpc::LockMode::PR);
}

kj::Maybe<Entry> Client::cachedEntry(uint64_t ino) {
  // (A file created ahead: nobody else can change it before its locks come with the reply.)
  if (locks_->held(ino, BIT_ATTR) == 0 && creating_.count(ino) == 0) return nullptr;
  KJ_IF_MAYBE (c, cache_.attr(ino)) {
    Entry e;
    e.attr = c->attr;
    e.generation = c->generation;
    e.cached = true;
    wb_.adjust(e.attr);
    return e;
  }
  return nullptr;
}

Entry Client::entryOf(rpc::Attr::Reader attr, uint64_t asOf) {
  Entry e = toEntry(attr, asOf);
  wb_.adjust(e.attr);
  e.cached = locks_->held(attr.getIno(), BIT_ATTR) != 0 && cache_.attr(attr.getIno()) != nullptr;
  return e;
}

Entry Client::toEntry(rpc::Attr::Reader attr, uint64_t asOf) {
  Entry e;
  attrToStat(attr, &e.attr);
  e.generation = attr.getGeneration();
  e.asOf = asOf;
  if (!inodes_.sawAttr(e.attr, asOf)) {
    // e.attr is now the newer attributes the table holds, as of its transaction.
    KJ_IF_MAYBE (inode, inodes_.find(attr.getIno())) {
      e.asOf = inode->asOf;
    }
  }
  return e;
}

}  // namespace cairn
