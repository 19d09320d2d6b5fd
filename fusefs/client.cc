#include "fusefs/client.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <unistd.h>

#include <capnp/orphan.h>
#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <random>

#include "fusefs/reply_bytes.h"
#include "rpc/errors.h"
#include "rpc/feature_flags.h"
#include "rpc/lock_names.h"
#include "rpc/reply_attrs.h"
#include "rpc/time_order.h"

namespace cairn {

namespace {

// While the metadata server shuts down, requests the kernel has in progress may wait at the
// gate holding a directory's lock or a page's (a create, a write taking its attribute lock).
// The kernel's names therefore go by one epoch bump, which takes no lock, and its attributes
// and pages are waited for only a moment: what is still queued then is done once the parked
// requests have gone through after the restart.
constexpr kj::Duration KERNEL_WAIT_IN_SHUTDOWN = 500 * kj::MILLISECONDS;

// How long a setattr queued behind waits for more of its kind before it leaves: an archiver's
// chown, chmod and utimes of one file come within microseconds of each other.
constexpr kj::Duration ATTR_GATHER = 2 * kj::MILLISECONDS;

// How long creates, unlinks and rmdirs answered ahead gather in their directory before they
// leave in one batch (UpdateBatch): `tar x` makes several files, `rm -r` removes many, in this
// time; whoever waits on them hurries them out.
constexpr kj::Duration UPDATE_GATHER = 2 * kj::MILLISECONDS;
// Write-behind's updates after files' data (`wrote`, setattr) gather in a lane of their own: no
// directory is inode 0.
constexpr uint64_t WRITE_BEHIND_LANE = 0;

// How long a closed handle waits for others to be released with it (Client::release).
constexpr kj::Duration RELEASE_GATHER = 5 * kj::MILLISECONDS;

// Close waits for a file's queued writes unless every target had more than ROOM_MARGIN free
// (beyond what this client has queued) at a look less than ROOM_STALE ago; looks are taken at
// most every ROOM_AGE. A target that runs out meanwhile fails a write-behind batch, which the
// next write, fsync or close of the file reports.
constexpr uint64_t ROOM_MARGIN = uint64_t(1) << 30;
constexpr kj::Duration ROOM_AGE = 1 * kj::SECONDS;
constexpr kj::Duration ROOM_STALE = 5 * kj::SECONDS;

// At unmount, how long queued writes may take to leave.
constexpr kj::Duration LEAVE_FLUSH_LIMIT = 30 * kj::SECONDS;
// After the metadata server restarted, how long the recovery waits for the writes queued here to
// land before it says recoveryDone (Client::writeBackInRecovery); as long as a drain may take.
constexpr kj::Duration RECOVERY_FLUSH_LIMIT = 5 * kj::SECONDS;

kj::Array<kj::byte> randomUuid() {
  std::random_device rd;
  auto uuid = kj::heapArray<kj::byte>(16);
  for (auto& b : uuid) b = kj::byte(rd());
  return uuid;
}

void setCred(rpc::MetaRequest::Builder b, const Cred& cred) {
  auto c = b.initCred();
  c.setUid(cred.uid);
  c.setGid(cred.gid);
  c.setPid(cred.pid);
}

void setTime(rpc::Timespec::Builder out, const timespec& t) {
  out.setSec(t.tv_sec);
  out.setNsec(uint32_t(t.tv_nsec));
}

// Bytes known at once, as a promise. Not through kj's ImmediatePromiseNode<Array>: GCC 12 warns
// (falsely, -Wmaybe-uninitialized) about that node's destructor wherever it is instantiated.
kj::Promise<kj::Array<kj::byte>> readyBytes(kj::Array<kj::byte> bytes) {
  return kj::Promise<void>(kj::READY_NOW).then([bytes = kj::mv(bytes)]() mutable {
    return kj::mv(bytes);
  });
}

kj::Own<SharedLayout> toLayout(rpc::Layout::Reader in) {
  auto shared = kj::refcounted<SharedLayout>();
  shared->layout.objectId = in.getObjectId();
  shared->layout.stripeSize = in.getStripeSize();
  shared->layout.targets = kj::heapArray<uint32_t>(in.getTargets().size());
  for (auto i : kj::indices(shared->layout.targets)) {
    shared->layout.targets[i] = in.getTargets()[i];
  }
  KJ_REQUIRE(shared->layout.stripeSize > 0 && shared->layout.targets.size() > 0,
             "the server sent an empty layout");
  return shared;
}

}  // namespace

namespace {
// setlk and getlk name a lock the same way.
template <typename Builder>
void fillLock(Builder r, uint64_t ino, uint64_t owner, uint32_t space, const Client::AppLock& l) {
  r.setIno(ino);
  r.setOwner(owner);
  r.setSpace(space);
  r.setType(l.type);
  r.setStart(l.start);
  r.setEnd(l.end);
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

bool Client::outage() const {
  if (meta_->state() != ServerLink::State::ACTIVE) return true;
  for (auto& [index, link] : data_) {
    if (link->state() != ServerLink::State::ACTIVE) return true;
  }
  return false;
}

// After every (re)connect to the metadata server: learn the data targets, then re-open every
// open file under its handle, so the server knows them (and keeps unlinked-but-open files).
kj::Promise<void> Client::recoverMeta() {
  if (meta_->takeEviction() != nullptr) {
    // Operations answered ahead that the server has not applied are not sent to the new session:
    // what they were answered under is gone, and someone may have made the name again since.
    // The directory's next fsync reports EIO.
    if (!diropsBehind_.isEmpty()) {
      spdlog::warn(
          "evicted by the metadata server: {} creates and removals answered ahead are dropped",
          dirops_.inFlight());
      diropsBehind_.cancel("evicted by the metadata server");
    }
    // The numbers set aside for us went with the session.
    reserved_.clear();
    // Evicted: the server forgot our opens. Those descriptors can only fail (EIO); the mount
    // itself carries on and new opens work.
    size_t n = 0;
    for (auto& [fh, file] : opens_.all()) {
      if (file.opening) continue;  // its request goes out to the new session
      if (!file.lost) ++n;
      file.lost = true;
    }
    // The data locks were the metadata server's to give: what was written under them and not
    // yet sent must not reach the data servers now, after another client's writes. Queued
    // writes fail here (EIO at the next flush or fsync); those being sent fail at their link.
    ++metaEvictions_;
    for (auto& [index, link] : data_) link->forgetWriteback();
    for (uint64_t ino : wb_.files()) wb_.fail(ino, EIO);
    spdlog::warn(
        "evicted by the metadata server: {} open files now return EIO, {} "
        "application locks lost",
        n, appLocks_.size());
    appLocks_.clear();
  }
  return refreshTargets(ServerLink::Class::RECOVERY).then([this]() {
    auto started = io_.provider->getTimer().now();
    kj::Vector<kj::Promise<void>> replays(opens_.size());  // lost and opening ones skipped
    for (auto& [fh, file] : opens_.all()) {
      if (file.lost || file.opening) continue;
      uint64_t handle = fh, ino = file.ino;
      uint32_t flags = file.flags;
      replays.add(metaCall(
                      [=](rpc::MetaRequest::Builder b) {
                        auto o = b.initOpen();
                        o.setIno(ino);
                        o.setFlags(flags);
                        o.setHandle(handle);
                      },
                      false, ServerLink::Class::RECOVERY)
                      .then([](auto&&) {},
                            [this, handle](kj::Exception&& e) {
                              // The file is gone on the server: this descriptor can only fail.
                              if (errnoOf(e) != ENOENT) kj::throwFatalException(kj::mv(e));
                              KJ_IF_MAYBE (f, opens_.find(handle)) {
                                f->lost = true;
                              }
                              spdlog::warn("open replay: handle {} lost its file", handle);
                            }));
    }
    size_t count = replays.size();
    return kj::joinPromises(replays.releaseAsArray())
        .then([this, count, started]() {
          if (count > 0) {
            spdlog::info("open replay: {} files re-opened in {} ms", count,
                         (io_.provider->getTimer().now() - started) / kj::MILLISECONDS);
          }
          return replayAppLocks();
        })
        .then([this]() -> kj::Promise<void> {
          if (!(meta_->peerFeatures() & features::ACTIVE_SERVER_LOCK)) return kj::READY_NOW;
          // Updates cut off with the connection (creates and unlinks answered ahead, what
          // write-behind sent) go again now, in the order they were made, and the server
          // applies them before any other client's new ones (ServerLink::resendCutOff). So do
          // those answered ahead that had not left yet: still gathering, or held behind their
          // lane's batches on their way (each lane otherwise sends two at a time).
          batch_->sendAll();
          return meta_->resendCutOff()
              .then([this]() { return writeBackInRecovery(); })
              .then([this]() {
                return metaCall([](rpc::MetaRequest::Builder b) { b.setRecoveryDone(); }, false,
                                ServerLink::Class::RECOVERY)
                    .ignoreResult();
              });
        });
  });
}

// The connection to the metadata server went: our locks went with it (we forgot them), and the
// writes queued here were made under them. Someone else must not lock, read or change those files
// before the writes land. The server holds that off until we say recoveryDone: a server back from
// a crash holds every other client's requests (ServerContext::waitsForOthers), the same instance
// holds our old locks over (LockManager::holdOver). So they land first: the data, then each
// file's size and mtime (write-back passes the gate once resendCutOff has run). Bounded, as a
// drain is: a data target that does not answer must not keep the mount in recovery.
kj::Promise<void> Client::writeBackInRecovery() {
  size_t files = wb_.files().size();
  if (files == 0 && dirops_.inFlight() == 0) return kj::READY_NOW;
  auto started = io_.provider->getTimer().now();
  return flushAll()
      .then(
          [this, files, started]() {
            spdlog::info("recovery: queued writes of {} files written back in {} ms", files,
                         (io_.provider->getTimer().now() - started) / kj::MILLISECONDS);
          },
          [](kj::Exception&& e) {
            spdlog::warn("recovery: write-back failed: {}", e.getDescription().cStr());
          })
      .exclusiveJoin(io_.provider->getTimer().afterDelay(RECOVERY_FLUSH_LIMIT).then([this]() {
        spdlog::warn("recovery: {} files still had writes queued after {} s; they go after it",
                     wb_.files().size(), RECOVERY_FLUSH_LIMIT / kj::SECONDS);
      }));
}

// Application locks live in the metadata server's memory: after it restarted (or after a
// reconnect to one that dropped our session) each is taken again, ahead of any new one.
kj::Promise<void> Client::replayAppLocks() {
  if (appLocks_.size() == 0 || !(meta_->peerFeatures() & features::ACTIVE_SERVER_LOCK)) {
    return kj::READY_NOW;
  }
  auto started = io_.provider->getTimer().now();
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(appLocks_.size());
  for (auto& [key, ranges] : appLocks_.all()) {
    auto [ino, owner, space] = key;
    for (auto& r : ranges) {
      parts.add(metaCall(
                    [ino = ino, owner = owner, space = space, r](rpc::MetaRequest::Builder b) {
                      b.setReplay(true);
                      auto l = b.initSetlk();
                      fillLock(l, ino, owner, space, AppLock{r.type, r.start, r.end, r.pid});
                      l.setPid(r.pid);
                    },
                    false, ServerLink::Class::RECOVERY)
                    .then([](auto&&) {},
                          [ino = ino](kj::Exception&& e) {
                            // Someone else holds it now (the server forgot us for too long):
                            // nothing we can do but say so.
                            if (errnoOf(e) == 0) kj::throwFatalException(kj::mv(e));
                            spdlog::error(
                                "lock replay: a lock on inode {} could not be taken "
                                "again: {}",
                                ino, e.getDescription().cStr());
                          }));
    }
  }
  size_t n = appLocks_.size();
  return kj::joinPromises(parts.finish()).then([this, n, started]() {
    spdlog::info("lock replay: {} application locks taken again in {} ms", n,
                 (io_.provider->getTimer().now() - started) / kj::MILLISECONDS);
  });
}

kj::Promise<void> Client::recoverData(ServerLink& link, uint32_t index) {
  KJ_IF_MAYBE (eviction, link.takeEviction()) {
    // The target dropped what it had of ours (say, it was shut down while we could not write
    // back, or an administrator evicted us). A file with writes still queued here wrote them
    // under locks we no longer hold: it can only fail now. So can every file with a stripe
    // there if the target lost updates it had answered, as we cannot tell whose they were.
    // Files that only read there, or whose writes had all landed, carry on in the new
    // session: among them those opened after the eviction, which never used the old one.
    size_t n = 0;
    for (auto& [fh, file] : opens_.all()) {
      KJ_IF_MAYBE (l, file.layout) {
        auto& targets = (*l)->layout.targets;
        bool there = std::find(targets.begin(), targets.end(), index) != targets.end();
        if (!file.lost && there && (eviction->lostAnswered || wb_.queued(file.ino))) {
          file.lost = true;
          wb_.fail(file.ino, EIO);  // written under locks gone with the eviction: not sent
          ++n;
        }
      }
    }
    spdlog::warn("evicted by data target {}: {} open files with writes lost there now return EIO",
                 index, n);
  }
  if (!(link.peerFeatures() & features::ACTIVE_SERVER_LOCK)) return kj::READY_NOW;
  // Writes cut off with the connection go again first (ServerLink::resendCutOff).
  return link.resendCutOff().then([&link]() {
    return link
        .data([](rpc::DataRequest::Builder b) { b.setRecoveryDone(); }, false,
              ServerLink::Class::RECOVERY)
        .ignoreResult();
  });
}

kj::Promise<void> Client::flushAll() {
  auto files = wb_.files();
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(files.size() + 2);
  for (uint64_t ino : files) parts.add(flushed(ino, Waiter::APPLICATION));
  parts.add(sendReleases());
  hurry();
  parts.add(dirops_.settledAll());
  return kj::joinPromises(parts.finish());
}

kj::Promise<void> Client::drainMeta() {
  auto started = io_.provider->getTimer().now();
  size_t queued = wb_.files().size();
  draining_ = true;
  // Giving a lock back drops what it covered, writing back first (queued writes, the kernel's
  // dirty pages): so every lock goes back, then nothing cached from this server is left.
  return flushAll()
      .then([this]() { return locks_->giveBackAll(); })
      .then([this]() -> kj::Promise<void> {
        KJ_IF_MAYBE (kernel, kernel_) {
          if (kernel->keepsNames()) {
            return forgetInKernel(*kernel, 1, {}, true)
                .exclusiveJoin(io_.provider->getTimer().afterDelay(KERNEL_WAIT_IN_SHUTDOWN));
          }
        }
        return kj::READY_NOW;
      })
      .attach(kj::defer([this]() { draining_ = false; }))
      .then([this, started, queued]() {
        cache_.clear();
        readAhead_.clear();
        spdlog::info(
            "metadata server shutting down: {} files written back, caches dropped in {} "
            "ms",
            queued, (io_.provider->getTimer().now() - started) / kj::MILLISECONDS);
      });
}

kj::Promise<void> Client::drainData(uint32_t index) {
  auto started = io_.provider->getTimer().now();
  // What this client holds for a data target is its queued writes and its read-ahead chunks.
  // The pages the kernel caches are covered by the metadata server's DATA locks, which a data
  // target's restart does not touch (it commits everything first), so they stay. (Dropping
  // them here could also wait for ever: a READ blocked at this very gate holds its page.)
  readAhead_.clear();
  size_t queued = wb_.files().size();
  return flushAll().then([this, index, started, queued]() {
    spdlog::info("data target {} shutting down: {} files written back in {} ms", index, queued,
                 (io_.provider->getTimer().now() - started) / kj::MILLISECONDS);
  });
}

kj::Promise<void> Client::refreshTargets(ServerLink::Class cls) {
  return metaCall([](rpc::MetaRequest::Builder b) { b.setGetTargets(); }, false, cls)
      .then([this](ServerLink::MetaResponse&& resp) {
        for (auto t : resp.getReply().getTargets()) {
          if (t.getKind() != rpc::TargetKind::DATA || t.getAddresses().size() == 0) continue;
          auto addresses = kj::heapArrayBuilder<kj::String>(t.getAddresses().size());
          for (auto a : t.getAddresses()) addresses.add(kj::str(a));
          auto it = data_.find(t.getIndex());
          if (it != data_.end()) {
            it->second->setAddresses(addresses.finish());
            continue;
          }
          auto link =
              kj::heap<ServerLink>(network_, io_.provider->getTimer(),
                                   kj::str("data", t.getIndex()), addresses.finish(), identity_);
          auto handed = handedRequestIds_.find(link->name().cStr());
          if (handed != handedRequestIds_.end()) link->continueRequestIds(handed->second);
          uint32_t index = t.getIndex();
          auto& ref = *link;
          link->setRecovery([this, &ref, index]() { return recoverData(ref, index); });
          link->setOnDrain([this, index]() { return drainData(index); });
          link->start();
          data_.emplace(t.getIndex(), kj::mv(link));
        }
      });
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

namespace {
void buildSetattr(rpc::MetaRequest::Builder b, const Cred& cred, uint64_t ino, const SetAttr& attr,
                  uint32_t want) {
  b.setWantLocks(want);
  setCred(b, cred);
  auto s = b.initSetattr();
  s.setIno(ino);
  s.setValid(attr.valid);
  s.setMode(attr.mode);
  s.setUid(attr.uid);
  s.setGid(attr.gid);
  s.setSize(attr.size);
  setTime(s.initAtime(), attr.atime);
  setTime(s.initMtime(), attr.mtime);
  s.setWroteEnd(attr.wroteEnd);
}

void buildWrote(rpc::MetaRequest::Builder b, uint64_t ino, uint64_t end, uint32_t want) {
  b.setWantLocks(want);
  auto w = b.initWrote();
  w.setIno(ino);
  w.setEnd(end);
}
}  // namespace

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

// An open or create was answered: the file table entry gets its inode and layout.
Opened Client::opened(uint64_t fh, ServerLink::MetaResponse& resp) {
  auto opened = resp.getReply().getOpened();
  Opened out;
  out.fh = fh;
  out.entry = entryOf(opened.getAttr(), resp.getReply().getAsOf());
  uint64_t ino = opened.getAttr().getIno();

  auto& file = KJ_ASSERT_NONNULL(opens_.find(fh));
  file.ino = ino;
  file.opening = false;
  if ((file.flags & O_ACCMODE) != O_RDONLY && !(file.flags & O_APPEND)) ++writers_[ino];
  out.keepCache = locks_->held(ino, BIT_DATA) != 0;
  // Reads the page cache answers never reach us (FUSE inodes are S_NOATIME in the kernel):
  // the access time a read would set is set at the open for reading instead.
  if (out.keepCache && (file.flags & O_ACCMODE) != O_WRONLY && !(file.flags & O_NOATIME)) {
    out.atimeSet = touchAtime(ino);
  }
  if (opened.hasLayout()) {
    auto layout = toLayout(opened.getLayout());
    file.layout = kj::addRef(*layout);
    KJ_IF_MAYBE (inode, inodes_.find(ino)) {
      inode->layout = kj::mv(layout);
    }
  }
  return out;
}

kj::Promise<Opened> Client::open(const Cred& cred, uint64_t ino, uint32_t flags) {
  OpenTable::File file;
  file.ino = ino;
  file.flags = flags;
  uint64_t fh = opens_.add(kj::mv(file));
  uint32_t want = wantFor(0, ino, true);
  return metaCall(
             [cred, ino, flags, fh, want](rpc::MetaRequest::Builder b) {
               setCred(b, cred);
               b.setWantLocks(want);
               auto o = b.initOpen();
               o.setIno(ino);
               o.setFlags(flags);
               o.setHandle(fh);
             },
             false)
      .then([this, fh](ServerLink::MetaResponse&& resp) { return withDataLock(opened(fh, resp)); },
            [this, fh](kj::Exception&& e) -> kj::Promise<Opened> {
              opens_.remove(fh);
              kj::throwFatalException(kj::mv(e));
            });
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

OpenTable::File& Client::openFile(uint64_t fh) {
  auto& file = KJ_REQUIRE_NONNULL(opens_.find(fh), "unknown file handle", fh);
  if (file.lost) kj::throwFatalException(errnoException(EIO));
  return file;
}

kj::Promise<kj::Array<kj::byte>> Client::read(uint64_t fh, uint64_t offset, size_t size) {
  // What is read lands in the kernel's page cache: only under the file's DATA lock (O_APPEND
  // handles bypass the page cache).
  auto& file = openFile(fh);
  KJ_IF_MAYBE (wait, whileCreating(file.ino, Waiter::APPLICATION)) {
    return wait->then([this, fh, offset, size]() { return read(fh, offset, size); });
  }
  if (wb_.queued(file.ino)) {
    return flushed(file.ino, Waiter::APPLICATION).then([this, fh, offset, size]() {
      return read(fh, offset, size);
    });
  }
  if (file.flags & O_APPEND) return readUnlocked(fh, offset, size);
  return dataLock(file.ino).then(
      [this, fh, offset, size]() { return readUnlocked(fh, offset, size); });
}

kj::Promise<kj::Array<kj::byte>> Client::readUnlocked(uint64_t fh, uint64_t offset, size_t size) {
  auto& file = openFile(fh);
  auto& shared = *KJ_REQUIRE_NONNULL(file.layout, "read of a file without a layout");
  uint64_t known = 0;
  KJ_IF_MAYBE (inode, inodes_.find(file.ino)) {
    known = inode->size;
  }
  // The kernel asks for attributes before it reads past the size it knows, so `known` is
  // at least as fresh as the kernel's idea of the end of the file.
  if (offset >= known || size == 0) return readyBytes(kj::heapArray<kj::byte>(0));
  uint64_t end = kj::min(offset + size, known);
  uint64_t ino = file.ino;
  bool noatime = file.flags & O_NOATIME;
  // Fetching ahead only under the DATA lock: what it brings in is dropped with the lock.
  bool ahead = caching() && locks_->held(ino, BIT_DATA) != 0 && !(file.flags & O_APPEND);
  kj::Promise<kj::Array<kj::byte>> data = nullptr;
  KJ_IF_MAYBE (prefetched, readAhead_.read(ino, offset, end - offset, known, ahead)) {
    data = kj::mv(*prefetched);
  } else {
    data = fetch(shared.layout, offset, end - offset).attach(kj::addRef(shared));
  }
  return data.then([this, fh, ino, noatime](kj::Array<kj::byte> buffer) {
    // The read may be what told a data server's link of an eviction that failed this file
    // (its bytes then come from a target that lost our writes): it fails as later ones will.
    openFile(fh);
    if (!noatime) touchAtime(ino);
    return kj::mv(buffer);
  });
}

namespace {

// The read request of one piece of a file.
kj::Function<void(rpc::DataRequest::Builder)> readRequest(uint64_t object, const Piece& p) {
  return [object, p](rpc::DataRequest::Builder b) {
    auto r = b.initRead();
    r.setObjectId(object);
    r.setOffset(p.objectOffset);
    r.setLength(uint32_t(p.length));
  };
}

// Copies a piece's reply to `out`; zeros what the reply leaves out (a hole at the end).
void fillPiece(ServerLink::DataResponse& resp, kj::ArrayPtr<kj::byte> out) {
  auto reply = resp.getReply();
  checkErrno(reply.getError());
  auto data = reply.getData();
  size_t n = kj::min(data.size(), out.size());
  memcpy(out.begin(), data.begin(), n);
  memset(out.begin() + n, 0, out.size() - n);
}

}  // namespace

kj::Promise<kj::Array<kj::byte>> Client::fetch(const StripeLayout& layout, uint64_t offset,
                                               size_t length) {
  auto pieces = splitRange(layout, offset, length);
  uint64_t object = layout.objectId;
  if (pieces.size() == 1) {
    // Within one stripe (a read-ahead chunk, any read of a stripe or less): the reply's own
    // bytes are the buffer, kept alive with the reply. A copy here was one of the five passes
    // the mount's one thread made over each byte of a sequential read.
    auto p = pieces[0];
    return dataLink(layout.targets[p.slot]).then([object, p](ServerLink* link) {
      return link->data(readRequest(object, p), false)
          .then([p](ServerLink::DataResponse&& resp) -> kj::Array<kj::byte> {
            auto reply = resp.getReply();
            if (reply.getError() == 0 && reply.getData().size() == p.length) {
              return replyBytes(kj::mv(resp));
            }
            auto buffer = kj::heapArray<kj::byte>(p.length);
            fillPiece(resp, buffer);
            return buffer;
          });
    });
  }
  // Not zeroed first: each piece fills its part, and zeros only what its reply leaves out.
  auto buffer = kj::heapArray<kj::byte>(length);
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(pieces.size());
  for (auto& p : pieces) {
    auto out = buffer.slice(p.fileOffset - offset, p.fileOffset - offset + p.length);
    parts.add(dataLink(layout.targets[p.slot]).then([object, p, out](ServerLink* link) {
      return link->data(readRequest(object, p), false).then([out](ServerLink::DataResponse&& resp) {
        fillPiece(resp, out);
      });
    }));
  }
  return kj::joinPromises(parts.finish()).then([buffer = kj::mv(buffer)]() mutable {
    return kj::mv(buffer);
  });
}

namespace {

// The requests a target's pieces go in: as few writeMany requests as the limits allow, or one
// write each (`many` false).
kj::Vector<kj::ArrayPtr<const StorePiece>> groupPieces(kj::ArrayPtr<const StorePiece> pieces,
                                                       bool many) {
  kj::Vector<kj::ArrayPtr<const StorePiece>> groups;
  for (size_t i = 0; i < pieces.size();) {
    size_t j = i + 1, bytes = pieces[i].data.size();
    while (many && j < pieces.size() && j - i < features::MAX_WRITE_MANY_PIECES &&
           bytes + pieces[j].data.size() <= features::MAX_WRITE_MANY_BYTES) {
      bytes += pieces[j++].data.size();
    }
    groups.add(pieces.slice(i, j));
    i = j;
  }
  return groups;
}

// `keeps`: owns the pieces' bytes (a batch's), so that the copy kept for replay references
// them instead of copying them (ServerLink::data).
kj::Promise<void> sendGroup(ServerLink& link, uint64_t object, kj::ArrayPtr<const StorePiece> group,
                            ServerLink::Class cls,
                            kj::Maybe<kj::Own<kj::Refcounted>> keeps = nullptr) {
  return link
      .data([write = ObjectPieces{object, group}](
                rpc::DataRequest::Builder b) { buildWrites(b, kj::arrayPtr(&write, 1)); },
            true, cls, kj::mv(keeps))
      .then([](ServerLink::DataResponse&& resp) { checkErrno(resp.getReply().getError()); });
}

// Pieces with the buffers of those joined.
struct Joined {
  kj::Array<StorePiece> pieces;
  kj::Vector<kj::Array<kj::byte>> buffers;
};

// Every byte a batch's requests reference: the batch's writes (through `writes`) and the pieces
// joined from them. Shared by the requests, and by their copies kept for replay until synced.
struct BatchBytes : public kj::Refcounted {
  kj::Own<kj::Refcounted> writes;
  kj::Array<Joined> joined;
};

// Small pieces that follow each other in the object (tar's 10 KiB writes) become one: the
// server then rewrites each 64 KiB chunk once, not once per piece. Large pieces are not copied.
Joined joinSmall(kj::Array<StorePiece> pieces) {
  constexpr size_t SMALL = 64 << 10, MAX_JOINED = 1 << 20;
  Joined out;
  kj::Vector<StorePiece> result(pieces.size());
  for (size_t i = 0; i < pieces.size();) {
    size_t j = i + 1, bytes = pieces[i].data.size();
    while (j < pieces.size() && pieces[j - 1].data.size() < SMALL &&
           pieces[j].data.size() < SMALL &&
           pieces[j].offset == pieces[j - 1].offset + pieces[j - 1].data.size() &&
           bytes + pieces[j].data.size() <= MAX_JOINED) {
      bytes += pieces[j++].data.size();
    }
    if (j == i + 1) {
      result.add(pieces[i]);
    } else {
      auto buffer = kj::heapArray<kj::byte>(bytes);
      size_t at = 0;
      for (size_t k = i; k < j; k++) {
        memcpy(buffer.begin() + at, pieces[k].data.begin(), pieces[k].data.size());
        at += pieces[k].data.size();
      }
      result.add(StorePiece{pieces[i].offset, buffer});
      out.buffers.add(kj::mv(buffer));
    }
    i = j;
  }
  out.pieces = result.releaseAsArray();
  return out;
}

}  // namespace

kj::Promise<void> Client::store(const StripeLayout& layout, uint64_t offset,
                                kj::ArrayPtr<const kj::byte> data, ServerLink::Class cls) {
  auto pieces = splitRange(layout, offset, data.size());
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(pieces.size());
  uint64_t object = layout.objectId;
  for (auto& p : pieces) {
    auto piece = kj::heap(StorePiece{
        p.objectOffset, data.slice(p.fileOffset - offset, p.fileOffset - offset + p.length)});
    parts.add(dataLink(layout.targets[p.slot])
                  .then([object, piece = kj::mv(piece), cls](ServerLink* link) mutable {
                    kj::ArrayPtr<const StorePiece> one(piece.get(), 1);
                    return sendGroup(*link, object, one, cls).attach(kj::mv(piece));
                  }));
  }
  return kj::joinPromises(parts.finish());
}

kj::Promise<void> Client::storeBatch(uint64_t ino, const StripeLayout& layout,
                                     kj::ArrayPtr<const WriteBehind::Write> writes,
                                     kj::Own<kj::Refcounted> owner, ServerLink::Class cls) {
  std::map<uint32_t, kj::Vector<StorePiece>> byTarget;
  for (auto& w : writes) {
    for (auto& p : splitRange(layout, w.offset, w.data.size())) {
      auto bytes = w.data.slice(p.fileOffset - w.offset, p.fileOffset - w.offset + p.length);
      byTarget[layout.targets[p.slot]].add(StorePiece{p.objectOffset, bytes});
    }
  }
  auto joined = kj::heapArrayBuilder<Joined>(byTarget.size());
  auto links = kj::heapArrayBuilder<kj::Promise<ServerLink*>>(byTarget.size());
  auto targets = kj::heapArrayBuilder<uint32_t>(byTarget.size());
  for (auto& [target, list] : byTarget) {
    joined.add(joinSmall(list.releaseAsArray()));
    links.add(dataLink(target));
    targets.add(target);
  }
  uint64_t object = layout.objectId;
  auto bytes = kj::refcounted<BatchBytes>();
  bytes->writes = kj::mv(owner);
  bytes->joined = joined.finish();
  return kj::joinPromises(links.finish())
      .then([this, ino, object, cls, targets = targets.finish(),
             bytes = kj::mv(bytes)](kj::Array<ServerLink*> links) mutable {
        auto& joined = bytes->joined;
        // Each target's requests in order on its connection (the server applies them so: where
        // pieces overlap, the later lands last), and the targets' requests taking turns: every
        // target starts on its share while the next requests are being encrypted and sent.
        size_t n = links.size();
        auto many = kj::heapArray<bool>(n);
        auto groups = kj::heapArrayBuilder<kj::Vector<kj::ArrayPtr<const StorePiece>>>(n);
        auto sent = kj::heapArray<kj::Vector<kj::Promise<void>>>(n);
        size_t rounds = 0;
        bool gathered = false;
        for (size_t t = 0; t < n; t++) {
          many[t] = links[t]->peerFeatures() & features::WRITE_MANY;
          if (many[t] && cls == ServerLink::Class::WRITEBACK &&
              DataBatch::gathers(joined[t].pieces)) {
            // A small file's share of a target gathers with other files' (DataBatch).
            sent[t].add(dataBatch_->send(*links[t], targets[t], object, joined[t].pieces,
                                         kj::addRef(*bytes)));
            groups.add();
            gathered = true;
          } else {
            groups.add(groupPieces(joined[t].pieces, many[t]));
          }
          rounds = kj::max(rounds, groups[t].size());
        }
        auto groupsOf = groups.finish();
        if (gathered && hurried_.count(ino) > 0) dataBatch_->hurry();
        for (size_t r = 0; r < rounds; r++) {
          for (size_t t = 0; t < n; t++) {
            if (r < groupsOf[t].size()) {
              sent[t].add(sendGroup(*links[t], object, groupsOf[t][r], cls, kj::addRef(*bytes)));
            }
          }
        }
        auto done = kj::heapArrayBuilder<kj::Promise<void>>(n);
        for (size_t t = 0; t < n; t++) {
          ServerLink* link = links[t];
          kj::ArrayPtr<const StorePiece> all = joined[t].pieces;
          bool batched = many[t];
          done.add(kj::joinPromises(sent[t].releaseAsArray())
                       .catch_([link, object, all, cls, batched, bytes = kj::addRef(*bytes)](
                                   kj::Exception&& e) mutable -> kj::Promise<void> {
                         // The connection went meanwhile to a server of an older release (an
                         // upgrade rolled back), which refused writeMany: all of them again, one
                         // write each and in order (the same bytes written twice are the same
                         // file).
                         if (!batched || (link->peerFeatures() & features::WRITE_MANY)) {
                           return kj::mv(e);
                         }
                         auto again = groupPieces(all, false);
                         auto each = kj::heapArrayBuilder<kj::Promise<void>>(again.size());
                         for (auto group : again) {
                           each.add(sendGroup(*link, object, group, cls, kj::addRef(*bytes)));
                         }
                         return kj::joinPromises(each.finish());
                       }));
        }
        return kj::joinPromises(done.finish()).attach(kj::mv(bytes));
      });
}

// Size and mtime on the metadata target, once the data is in place: that update calls back the
// other clients' cached pages, and what they read after that must be the new bytes.
kj::Promise<void> Client::wrote(uint64_t ino, uint64_t end, ServerLink::Class cls) {
  uint32_t want = wantFor(0, ino, false);
  return metaCall([ino, end, want](rpc::MetaRequest::Builder b) { buildWrote(b, ino, end, want); },
                  true, cls)
      .ignoreResult();
}

kj::Promise<void> Client::updateBehind(uint64_t ino, MetaBuild build, bool sync) {
  constexpr auto cls = ServerLink::Class::WRITEBACK;
  constexpr uint64_t batches = features::BATCH | features::BATCH_ATTRS;
  if ((meta_->peerFeatures() & batches) != batches) {
    return metaCall(answeredOnDisk(kj::mv(build), sync), true, cls).ignoreResult();
  }
  // As metaCall does: after the creates and removals answered ahead that touch the file.
  kj::Promise<void> first = afterDirops(build, cls).orDefault(kj::READY_NOW);
  return first.then([this, ino, sync, build = kj::mv(build)]() mutable {
    auto sent = batch_->send(
        WRITE_BEHIND_LANE, kj::mv(build),
        // The reply is absorbed in its first event, as metaCall does (see there).
        [this](rpc::MetaReply::Reader reply) -> kj::Promise<int> {
          absorb(reply);
          return reply.getError();
        },
        sync);
    if (hurried_.count(ino) > 0) batch_->hurry();
    return sent.then([](int err) {
      if (err != 0) kj::throwFatalException(errnoException(err));
    });
  });
}

// Read-ahead's fetches: by inode, through the layout the inode table keeps.
kj::Promise<kj::Array<kj::byte>> Client::fetchAhead(uint64_t ino, uint64_t offset, size_t length) {
  return layoutOf(ino).then([this, offset, length](kj::Own<SharedLayout> layout) {
    auto& ref = layout->layout;
    return fetch(ref, offset, length).attach(kj::mv(layout));
  });
}

// relatime, the Linux default: a read updates atime if it is not newer than mtime or ctime,
// or is a day old. The update is not waited for; it leaves on the metadata link before any
// later request, so a stat after the read sees it.
bool Client::touchAtime(uint64_t ino) {
  auto* found = inodes_.find(ino).map([](InodeTable::Inode& i) { return &i; }).orDefault(nullptr);
  if (found == nullptr) return false;
  auto& inode = *found;
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  // With what is queued behind (a utimes, a write) as the server will have it.
  struct stat a = inode.last;
  wb_.adjust(a);
  bool stale = !later(a.st_atim, a.st_mtim) || !later(a.st_atim, a.st_ctim) ||
               now.tv_sec - a.st_atim.tv_sec >= 24 * 3600;
  if (!stale || inode.atimePending) return false;
  // A stat right after the read must see it, before the server's answer is back.
  inode.last.st_atim = now;
  cache_.setAtime(ino, now);
  if (wb_.queued(ino)) {
    // Behind what is queued, in the same queue: a stat meanwhile shows the queued changes
    // applied in order (a queued utimes would otherwise hide this access from it).
    WriteBehind::AttrChange change;
    change.valid = rpc::SET_ATIME_NOW | rpc::SET_ACCESS;
    change.atime = change.at = now;
    wb_.setAttr(ino, change);
    tasks_.add(io_.provider->getTimer().afterDelay(ATTR_GATHER).then([this, ino]() {
      return flushed(ino, Waiter::BEHIND);
    }));
    return true;
  }
  inode.atimePending = true;
  // After what is queued for the file: a utimes queued before must not land after this.
  tasks_.add(flushed(ino, Waiter::BEHIND)
                 .then([this, ino]() {
                   return metaCall(
                       [ino](rpc::MetaRequest::Builder b) {
                         auto s = b.initSetattr();
                         s.setIno(ino);
                         s.setValid(rpc::SET_ATIME_NOW | rpc::SET_ACCESS);
                       },
                       true);
                 })
                 .then(
                     [this, ino](ServerLink::MetaResponse&& resp) {
                       toEntry(resp.getReply().getAttr(), resp.getReply().getAsOf());
                       KJ_IF_MAYBE (i, inodes_.find(ino)) {
                         i->atimePending = false;
                       }
                     },
                     [this, ino](kj::Exception&&) {
                       KJ_IF_MAYBE (i, inodes_.find(ino)) {
                         i->atimePending = false;
                       }
                     }));
  return true;
}

kj::Promise<size_t> Client::write(uint64_t fh, uint64_t offset, kj::Array<kj::byte> data,
                                  bool writeback, kj::Maybe<Cred> killFor) {
  auto& file = openFile(fh);
  KJ_IF_MAYBE (cred, killFor) {
    // Set-ID bits go before the write lands (a caller without CAP_FSETID). Most files have
    // none, and their mode is cached under our lock: nothing to wait for then.
    bool clean = false;
    KJ_IF_MAYBE (e, cachedEntry(file.ino)) {
      clean = !(e->attr.st_mode & (S_ISUID | S_ISGID));
    }
    if (!clean) {
      return killSuidgid(*cred, file.ino)
          .then([this, fh, offset, data = kj::mv(data), writeback]() mutable {
            return write(fh, offset, kj::mv(data), writeback);
          });
    }
  }
  if (creating_.count(file.ino) > 0 && !(file.flags & O_APPEND)) {
    // Made ahead: nobody else can see the file, and its locks come with the create's reply.
    // The write goes behind (sent once the create is answered).
    return queueWrite(file.ino, offset, kj::mv(data));
  }
  KJ_IF_MAYBE (wait, whileCreating(file.ino, Waiter::APPLICATION)) {
    return wait->then([this, fh, offset, data = kj::mv(data), writeback]() mutable {
      return write(fh, offset, kj::mv(data), writeback);
    });
  }
  // The kernel writing dirty pages back (a shared mapping) takes part in a shutdown's
  // write-back: it passes a draining gate, as the write-behind queue does.
  auto cls = writeback ? ServerLink::Class::WRITEBACK : ServerLink::Class::NORMAL;
  uint64_t ino = file.ino;
  if (file.flags & O_APPEND) {
    // Direct I/O: the kernel's pages of this file (other descriptors) may now be stale, and
    // our own update does not call our lock back: drop them before write() returns.
    // Writes queued through other descriptors go first.
    return flushed(ino, Waiter::APPLICATION)
        .then([this, fh, offset, data = kj::mv(data)]() mutable {
          return writeUnlocked(fh, offset, kj::mv(data), ServerLink::Class::NORMAL);
        })
        .then([this, ino](size_t n) -> kj::Promise<size_t> {
          KJ_IF_MAYBE (kernel, kernel_) {
            return invalidateInKernel(*kernel, ino, true).then([n]() { return n; });
          }
          return n;
        });
  }
  return dataLock(ino)
      .then([this, ino]() { return writeBehindLock(ino); })
      .then([this, fh, ino, offset, cls,
             data = kj::mv(data)](bool behind) mutable -> kj::Promise<size_t> {
        if (behind) return queueWrite(ino, offset, kj::mv(data));
        return flushed(ino, Waiter::APPLICATION)
            .then([this, fh, offset, cls, data = kj::mv(data)]() mutable {
              return writeUnlocked(fh, offset, kj::mv(data), cls);
            });
      });
}

kj::Promise<bool> Client::writeBehindLock(uint64_t ino) {
  auto pw = [this, ino](uint64_t bit) {
    return locks_->heldMode(ino, bit).orDefault(rpc::LockMode::NL) == rpc::LockMode::PW;
  };
  // PW on the data comes with a descriptor open for writing (withDataLock); never upgraded here.
  if (!caching() || !pw(BIT_DATA)) return false;
  if (pw(BIT_ATTR)) return true;
  // Giving our PR on the attributes back touches no page: safe inside a WRITE.
  return locks_->acquire(ino, BIT_ATTR, rpc::LockMode::PW).then([pw]() {
    return pw(BIT_DATA) && pw(BIT_ATTR);
  });
}

kj::Promise<size_t> Client::queueWrite(uint64_t ino, uint64_t offset, kj::Array<kj::byte> data) {
  // An earlier queued write failed: this write() reports it (as close and fsync would).
  int err = wb_.takeError(ino);
  if (err != 0) return kj::Promise<size_t>(errnoException(err));
  if (wb_.attrQueued(ino)) {
    // A chmod or utimes queued before this write lands before it.
    return flushed(ino, Waiter::APPLICATION)
        .then([this, ino, offset, data = kj::mv(data)]() mutable {
          return queueWrite(ino, offset, kj::mv(data));
        });
  }
  size_t n = data.size();
  if (n == 0) return size_t(0);
  if (offset > uint64_t(INT64_MAX) - n) return kj::Promise<size_t>(errnoException(EFBIG));
  readAhead_.drop(ino);
  wb_.add(ino, offset, kj::mv(data));
  KJ_IF_MAYBE (inode, inodes_.find(ino)) {
    inode->size = kj::max(inode->size, offset + n);
  }
  sendAhead(ino, WriteBehind::FILE_BATCH);
  return queueRoom(ino).then([n]() { return n; });
}

// Past the bound, a writer waits for its file's batches on their way, one at a time, until the
// queues are back under it (memory stays bounded, and the batches still on their way keep the
// targets busy meanwhile); with none of its own on its way, for its file to be sent.
void Client::hurry() {
  batch_->hurry();
  dataBatch_->hurry();
}

kj::Promise<void> Client::queueRoom(uint64_t ino) {
  if (wb_.total() <= WriteBehind::MAX_QUEUED) return kj::READY_NOW;
  KJ_IF_MAYBE (first, wb_.firstSent(ino)) {
    return first->then([this, ino]() { return queueRoom(ino); });
  }
  return flushed(ino, Waiter::APPLICATION);
}

// Counts a wait on `ino` in `waits` until what it returns is dropped (attached to the wait).
kj::Own<void> Client::countWaiter(std::unordered_map<uint64_t, uint32_t>& waits, uint64_t ino) {
  ++waits[ino];
  return kj::heap(kj::defer([&waits, ino]() {
    auto it = waits.find(ino);
    if (it != waits.end() && --it->second == 0) waits.erase(it);
  }));
}

bool Client::lastOfAnFsync(uint64_t ino, uint64_t id) const {
  return fsyncing_.count(ino) > 0 && wb_.last(ino, id);
}

// Sends what is queued for the file, and whatever is queued meanwhile, until nothing is left:
// up to MAX_FLIGHTS batches at once, each leaving as soon as WriteBehind::mustWait allows.
kj::Promise<void> Client::flushed(uint64_t ino, Waiter who) {
  if (who == Waiter::APPLICATION && wb_.queued(ino)) {
    // While this wait lasts, the file's updates leave without gathering (updateBehind).
    auto counted = countWaiter(hurried_, ino);
    hurry();
    return flushed(ino, Waiter::BEHIND).attach(kj::mv(counted));
  }
  KJ_IF_MAYBE (wait, wb_.mustWait(ino)) {
    return wait->then([this, ino]() { return flushed(ino, Waiter::BEHIND); });
  }
  auto batch = wb_.take(ino, WriteBehind::FILE_BATCH);
  if (batch.writes.empty() && batch.attr == nullptr) {
    KJ_IF_MAYBE (all, wb_.allSent(ino)) {
      return all->then([this, ino]() { return flushed(ino, Waiter::BEHIND); });
    }
    return kj::READY_NOW;
  }
  return startBatch(ino, kj::mv(batch)).then([this, ino]() {
    return flushed(ino, Waiter::BEHIND);
  });
}

// What is queued for a file leaves in the background as soon as it may: a batch's worth at the
// WRITE that completes it, and, at the reply of a batch on its way, whatever the WRITEs queued
// meanwhile (the targets stay busy: a window refilled only in whole batches ran ~13% slower).
// Nothing waits for it here (flushed does, for those who must).
void Client::sendAhead(uint64_t ino, size_t atLeast) {
  while (wb_.queuedBytes(ino) >= atLeast && wb_.mayLeave(ino)) {
    startBatch(ino, wb_.take(ino, WriteBehind::FILE_BATCH));
  }
}

// Puts a batch on its way; the promise resolves once it is sent (or failed: WriteBehind keeps
// the error). The sending itself belongs to the write-behind queue, not to the promise.
kj::Promise<void> Client::startBatch(uint64_t ino, WriteBehind::Batch batch) {
  uint64_t id = wb_.newFlight();
  WriteBehind::Span span(batch);
  auto sending = sendBatch(ino, id, kj::mv(batch)).fork();
  auto branch = sending.addBranch();
  wb_.setSending(ino, id, span, kj::mv(sending));
  return branch;
}

kj::Promise<void> Client::sendBatch(uint64_t ino, uint64_t id, WriteBehind::Batch batch) {
  KJ_IF_MAYBE (wait, whileCreating(ino, Waiter::BEHIND)) {
    // No data for a file the server does not have yet (an eviction would leave it nowhere).
    return wait->then([this, ino, id, batch = kj::mv(batch)]() mutable {
      return sendBatch(ino, id, kj::mv(batch));
    });
  }
  size_t bytes = 0;
  for (auto& w : batch.writes) bytes += w.data.size();
  bool attr = batch.attr != nullptr;
  if (failedCreates_.count(ino) > 0) {
    // The server never made the file (an eviction dropped its create): the data goes nowhere.
    wb_.sent(ino, bytes, attr, EIO);
    tasks_.add(kj::evalLater([this, ino, id]() { wb_.doneSending(ino, id); }));
    return kj::READY_NOW;
  }
  auto own = kj::refcounted<OwnedBatch>();
  own->batch = kj::mv(batch);
  auto& b = own->batch;
  // Queued writes are dirty data: they pass a gate that a controlled shutdown closed.
  constexpr auto cls = ServerLink::Class::WRITEBACK;
  // They were made under the file's DATA lock, which the metadata server holds for us: they
  // leave while that session is known to be there (its link lets write-back through), never
  // after an eviction took the lock away — the data servers do not see the locks.
  kj::Promise<void> data =
      meta_->server(cls).then([this, evictions = metaEvictions_](rpc::Bootstrap::Client&&) {
        if (metaEvictions_ != evictions) kj::throwFatalException(errnoException(EIO));
      });
  // Size and mtime and the change queued after the writes, in one update where the server can
  // (and that in a batch with other files': updateBehind).
  bool joined = !b.writes.empty() && b.attr != nullptr &&
                (meta_->peerFeatures() & features::WROTE_SETATTR) != 0;
  if (!b.writes.empty()) {
    data = data.then([this, ino]() { return layoutOf(ino, cls); })
               .then([this, ino, id, &b, &own = *own, joined](kj::Own<SharedLayout> layout) {
                 // As for a write-through: size and mtime once the data is in place.
                 auto& ref = layout->layout;
                 return storeBatch(ino, ref, kj::arrayPtr(b.writes.data(), b.writes.size()),
                                   kj::addRef(own), cls)
                     .then([this, ino, id, end = b.end, joined, &ref, &own]() -> kj::Promise<void> {
                       // An fsync waits and this is the last of it: the targets put the data
                       // on disk while the size goes, instead of after it (one round trip less
                       // for a small file's fsync). Not for each of a large file's batches: a
                       // sync each would cost more than the round trip.
                       bool sync = lastOfAnFsync(ino, id);
                       if (sync) own.dataSynced = syncDataTargets(ref);
                       if (joined) return kj::READY_NOW;
                       uint32_t want = wantFor(0, ino, false);
                       return updateBehind(
                           ino,
                           [ino, end, want](rpc::MetaRequest::Builder r) {
                             buildWrote(r, ino, end, want);
                           },
                           sync);
                     })
                     .attach(kj::mv(layout));
               });
  }
  return data
      .then([this, ino, id, &b, joined]() -> kj::Promise<void> {
        KJ_IF_MAYBE (a, b.attr) {
          Cred cred{a->callerUid, a->callerGid, a->callerPid};
          SetAttr set;
          set.valid = a->valid;
          set.mode = a->mode;
          set.uid = a->uid;
          set.gid = a->gid;
          set.atime = a->atime;
          set.mtime = a->mtime;
          if (joined) set.wroteEnd = b.end;
          uint32_t want = wantFor(0, ino, false);
          return updateBehind(
              ino,
              [cred, ino, set, want](rpc::MetaRequest::Builder r) {
                buildSetattr(r, cred, ino, set, want);
              },
              lastOfAnFsync(ino, id));
        }
        return kj::READY_NOW;
      })
      .then([&own = *own]() { return kj::mv(own.dataSynced); })
      .then([this, ino, bytes, attr]() { wb_.sent(ino, bytes, attr, 0); },
            [this, ino, bytes, attr](kj::Exception&& e) {
              int err = errnoOf(e);
              spdlog::warn("write-behind of inode {} failed: {}", ino, e.getDescription().cStr());
              wb_.sent(ino, bytes, attr, err != 0 ? err : EIO);
            })
      .then([this, ino, id]() {
        // Not from inside the promise the entry holds: in an event of its own.
        tasks_.add(kj::evalLater([this, ino, id]() {
          wb_.doneSending(ino, id);
          sendAhead(ino, 1);
        }));
      })
      .attach(kj::mv(own));
}

kj::Promise<void> Client::flush(uint64_t fh) {
  auto& file = KJ_REQUIRE_NONNULL(opens_.find(fh), "unknown file handle", fh);
  uint64_t ino = file.ino;
  if (wb_.queued(ino) && roomBehind()) {
    // Flush-behind: the data leaves now and the release waits for it (and an fsync, and any
    // other client's access through the locks), but the application goes on.
    int err = wb_.takeError(ino);
    if (err != 0) return kj::Promise<void>(errnoException(err));
    tasks_.add(flushed(ino, Waiter::BEHIND));
    return kj::READY_NOW;
  }
  return flushed(ino, Waiter::APPLICATION).then([this, ino]() {
    int err = wb_.takeError(ino);
    if (err != 0) kj::throwFatalException(errnoException(err));
  });
}

bool Client::roomBehind() {
  auto now = io_.provider->getTimer().now();
  bool fresh = false, stale = true;
  KJ_IF_MAYBE (at, roomAt_) {
    fresh = now - *at < ROOM_AGE;
    stale = now - *at > ROOM_STALE;
  }
  if (!fresh && !roomLooking_) tasks_.add(lookAtRoom());
  return !stale && roomFree_ > ROOM_MARGIN + wb_.total();
}

kj::Promise<void> Client::lookAtRoom() {
  roomLooking_ = true;
  return statfsAll()
      .then([this](StatfsReplies&& replies) {
        auto freeOf = [](rpc::StatFs::Reader s) {
          // A server of an older release tells the metadata target's inodes only: no limit.
          return s.getTotalBlocks() == 0 ? UINT64_MAX : s.getFreeBlocks() * s.getBlockSize();
        };
        roomFree_ = freeOf(replies.meta.getReply().getStatfs());
        for (auto& r : replies.data) {
          roomFree_ = kj::min(roomFree_, freeOf(r.getReply().getStatfs()));
        }
        roomAt_ = io_.provider->getTimer().now();
      })
      .catch_([](kj::Exception&&) {})  // no look: the last one goes stale, closes wait
      .attach(kj::defer([this]() { roomLooking_ = false; }));
}

kj::Promise<size_t> Client::writeUnlocked(uint64_t fh, uint64_t offset, kj::Array<kj::byte> data,
                                          ServerLink::Class cls) {
  auto& file = openFile(fh);
  readAhead_.drop(file.ino);
  auto layout = kj::addRef(*KJ_REQUIRE_NONNULL(file.layout, "write to a file without a layout"));
  uint64_t ino = file.ino;
  size_t length = data.size();
  kj::Promise<uint64_t> where = offset;
  if (file.flags & O_APPEND) {
    // Appends from every client go to distinct ranges: the server hands out the offset.
    where = metaCall(
                [ino, length](rpc::MetaRequest::Builder b) {
                  auto r = b.initReserveAppend();
                  r.setIno(ino);
                  r.setLength(length);
                },
                true)
                .then([](ServerLink::MetaResponse&& resp) { return resp.getReply().getOffset(); });
  }
  return where.then([this, ino, cls, layout = kj::mv(layout),
                     data = kj::mv(data)](uint64_t at) mutable -> kj::Promise<size_t> {
    if (data.size() == 0) return size_t(0);
    if (at > uint64_t(INT64_MAX) - data.size()) {
      return kj::Promise<size_t>(errnoException(EFBIG));
    }
    uint64_t end = at + data.size();
    size_t n = data.size();
    return store(layout->layout, at, data, cls)
        .then([this, ino, end, cls]() { return wrote(ino, end, cls); })
        .then([n]() { return n; })
        .attach(kj::mv(data), kj::mv(layout));
  });
}

kj::Promise<void> Client::syncTargets(const StripeLayout& layout) {
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(2);
  parts.add(syncMeta());
  parts.add(syncDataTargets(layout));
  return kj::joinPromises(parts.finish());
}

kj::Promise<void> Client::syncDataTargets(const StripeLayout& layout) {
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(layout.targets.size());
  for (uint32_t t : layout.targets) {
    parts.add(dataLink(t).then([this](ServerLink* link) { return syncData(*link); }));
  }
  return kj::joinPromises(parts.finish());
}

// A server that has on disk every update of ours it answered is not asked: a small file's
// fsync goes to the target its bytes went to, not to every target of its layout.
kj::Promise<void> Client::syncMeta() {
  if (meta_->allSynced()) return kj::READY_NOW;
  return metaCall([](rpc::MetaRequest::Builder b) { b.setSync(); }, false).ignoreResult();
}

kj::Promise<void> Client::syncData(ServerLink& link) {
  if (link.allSynced()) return kj::READY_NOW;
  return link.data([](rpc::DataRequest::Builder b) { b.setSync(); }, false).ignoreResult();
}

kj::Promise<void> Client::fsync(uint64_t fh) {
  auto& file = openFile(fh);
  KJ_IF_MAYBE (wait, whileCreating(file.ino, Waiter::APPLICATION)) {
    return wait->then([this, fh]() { return fsync(fh); });
  }
  if (wb_.queued(file.ino)) {
    auto counted = countWaiter(fsyncing_, file.ino);  // before any of its batches can land
    return flushed(file.ino, Waiter::APPLICATION).attach(kj::mv(counted)).then([this, fh]() {
      return fsync(fh);
    });
  }
  int err = wb_.takeError(file.ino);
  if (err != 0) return kj::Promise<void>(errnoException(err));
  KJ_IF_MAYBE (l, file.layout) {
    auto layout = kj::addRef(**l);
    auto& ref = layout->layout;
    return syncTargets(ref).attach(kj::mv(layout));
  }
  return syncMeta();
}

kj::Promise<void> Client::syncDir() {
  hurry();
  return dirops_.settledAll().then([this]() {
    int err = dirops_.takeError();
    if (err != 0) kj::throwFatalException(errnoException(err));
    return syncAll();
  });
}

kj::Promise<void> Client::syncAll() {
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(data_.size() + 1);
  parts.add(syncMeta());
  for (auto& [index, link] : data_) parts.add(syncData(*link));
  return kj::joinPromises(parts.finish());
}

kj::Promise<void> Client::release(uint64_t fh) {
  auto& queued = KJ_REQUIRE_NONNULL(opens_.find(fh), "unknown file handle", fh);
  KJ_IF_MAYBE (wait, whileCreating(queued.ino, Waiter::BEHIND)) {
    // The server registers the open with the create: a release before it would be lost.
    return wait->then([this, fh]() { return release(fh); });
  }
  if (wb_.queued(queued.ino)) {
    // The server forgets the open (an unlinked file goes with its last one): data first.
    return flushed(queued.ino, Waiter::BEHIND).then([this, fh]() { return release(fh); });
  }
  auto& file = KJ_REQUIRE_NONNULL(opens_.find(fh), "unknown file handle", fh);
  bool lost = file.lost;
  uint64_t ino = file.ino;
  readAhead_.drop(ino);
  if ((file.flags & O_ACCMODE) != O_RDONLY && !(file.flags & O_APPEND)) {
    auto w = writers_.find(file.ino);
    if (w != writers_.end() && --w->second <= 0) {
      writers_.erase(w);
      // The last descriptor that could dirty the file is gone and what it queued was sent
      // (above; its mappings were written back before the kernel let it go): PW has nothing
      // left to protect. As PR it keeps our cached pages and attributes valid while readers
      // elsewhere share it, instead of waiting for a callback to us at their next read. Done
      // now for a file other clients have wanted lately (a message; most files written are
      // read by nobody else), else when a reader's request calls the lock back.
      if (locks_->contended(file.ino)) {
        locks_->downgrade(file.ino, BIT_DATA);
        locks_->downgrade(file.ino, BIT_ATTR);
        locks_->flushConverts();
      }
    }
  }
  opens_.remove(fh);
  if (lost) {
    failedCreates_.erase(ino);
    return kj::READY_NOW;
  }
  if (meta_->peerFeatures() & features::RELEASE_MANY) {
    // Nobody waits for a release (the kernel sends it after close() has returned): handles
    // closed within RELEASE_GATHER of each other go in one request.
    releases_.push_back(fh);
    if (releases_.size() >= features::MAX_RELEASE_MANY) {
      tasks_.add(sendReleases());
    } else if (!releaseScheduled_) {
      releaseScheduled_ = true;
      tasks_.add(io_.provider->getTimer().afterDelay(RELEASE_GATHER).then([this]() {
        releaseScheduled_ = false;
        return sendReleases();
      }));
    }
    return kj::READY_NOW;
  }
  return metaCall([fh](rpc::MetaRequest::Builder b) { b.setRelease(fh); }, false).ignoreResult();
}

kj::Promise<void> Client::sendReleases() {
  if (releases_.empty()) return kj::READY_NOW;
  auto handles = kj::heapArray<uint64_t>(releases_.begin(), releases_.end());
  releases_.clear();
  // A resend after a lost connection, or a handle the server no longer knows (it restarted,
  // and the open replay skipped what was closed), is a harmless no-op there. Releases are what
  // a controlled shutdown writes back, so they pass its gate.
  return metaCall(
             [handles = kj::mv(handles)](rpc::MetaRequest::Builder b) {
               auto list = b.initReleaseMany(handles.size());
               for (auto i : kj::indices(handles)) list.set(i, handles[i]);
             },
             false, ServerLink::Class::WRITEBACK)
      .ignoreResult();
}

kj::Promise<void> Client::setlk(uint64_t ino, uint64_t owner, uint32_t space, AppLock lock,
                                bool wait) {
  return metaCall(
             [=](rpc::MetaRequest::Builder b) {
               auto r = b.initSetlk();
               fillLock(r, ino, owner, space, lock);
               r.setPid(lock.pid);
               r.setWait(wait);
             },
             false)
      .then([this, ino, owner, space, lock](ServerLink::MetaResponse&&) {
        appLocks_.set({ino, owner, space},
                      AppLocks::Range{lock.start, lock.end, lock.type, lock.pid});
      });
}

kj::Promise<Client::AppLock> Client::getlk(uint64_t ino, uint64_t owner, uint32_t space,
                                           AppLock lock) {
  return metaCall(
             [=](rpc::MetaRequest::Builder b) { fillLock(b.initGetlk(), ino, owner, space, lock); },
             false)
      .then([](ServerLink::MetaResponse&& resp) {
        auto l = resp.getReply().getLock();
        AppLock out;
        out.type = l.getType();
        out.start = l.getStart();
        out.end = l.getEnd();
        out.pid = l.getPid();
        return out;
      });
}

kj::Promise<void> Client::releaseLocks(uint64_t ino, uint64_t owner, uint32_t space) {
  if (!appLocks_.holds({ino, owner, space})) return kj::READY_NOW;
  appLocks_.release({ino, owner, space});
  return metaCall(
             [=](rpc::MetaRequest::Builder b) {
               auto r = b.initReleaseLocks();
               r.setIno(ino);
               r.setOwner(owner);
               r.setSpace(space);
             },
             false)
      .ignoreResult();
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

kj::Promise<void> Client::settleForHandover() {
  KJ_REQUIRE(!outage(), "a server is unreachable: hand over once every server serves");
  return flushAll().then([this]() {
    auto parts = kj::heapArrayBuilder<kj::Promise<void>>(data_.size() + 1);
    parts.add(meta_->settle());
    for (auto& [index, link] : data_) parts.add(link->settle());
    return kj::joinPromises(parts.finish());
  });
}

void Client::exportState(rpc::MountHandover::Builder out) {
  out.setClientUuid(identity_.uuid);
  auto all = links();
  auto links = out.initLinks(all.size());
  for (auto i : kj::indices(all)) {
    links[i].setName(all[i]->name());
    links[i].setNextRequestId(all[i]->nextRequestId());
  }
  size_t count = 0;
  inodes_.forEach([&](uint64_t, const InodeTable::Inode&) { ++count; });
  auto inodes = out.initInodes(count);
  size_t i = 0;
  inodes_.forEach([&](uint64_t ino, const InodeTable::Inode& inode) {
    inodes[i].setIno(ino);
    inodes[i].setNlookup(inode.nlookup);
    ++i;
  });
  auto opens = out.initOpens(opens_.size());
  i = 0;
  for (auto& [fh, file] : opens_.all()) {
    auto o = opens[i++];
    o.setHandle(fh);
    o.setIno(file.ino);
    o.setFlags(file.flags);
    o.setLost(file.lost);
    KJ_IF_MAYBE (l, file.layout) {
      auto layout = o.initLayout();
      layout.setObjectId((*l)->layout.objectId);
      layout.setStripeSize((*l)->layout.stripeSize);
      auto targets = layout.initTargets((*l)->layout.targets.size());
      for (auto t : kj::indices((*l)->layout.targets)) targets.set(t, (*l)->layout.targets[t]);
    }
  }
  out.setNextHandle(opens_.nextHandle());
  auto locks = out.initAppLocks(appLocks_.size());
  i = 0;
  for (auto& [key, ranges] : appLocks_.all()) {
    for (auto& r : ranges) {
      auto l = locks[i++];
      l.setIno(std::get<0>(key));
      l.setOwner(std::get<1>(key));
      l.setSpace(std::get<2>(key));
      l.setStart(r.start);
      l.setEnd(r.end);
      l.setType(r.type);
      l.setPid(r.pid);
    }
  }
}

void Client::importState(rpc::MountHandover::Reader in) {
  for (auto l : in.getLinks()) {
    if (l.getName() == meta_->name()) {
      meta_->continueRequestIds(l.getNextRequestId());
    } else {
      handedRequestIds_[l.getName().cStr()] = l.getNextRequestId();
    }
  }
  for (auto inode : in.getInodes()) inodes_.restore(inode.getIno(), inode.getNlookup());
  for (auto o : in.getOpens()) {
    OpenTable::File file;
    file.ino = o.getIno();
    file.flags = o.getFlags();
    file.lost = o.getLost();
    file.opening = false;
    if (o.hasLayout()) file.layout = toLayout(o.getLayout());
    if ((file.flags & O_ACCMODE) != O_RDONLY && !(file.flags & O_APPEND)) ++writers_[file.ino];
    opens_.restore(o.getHandle(), kj::mv(file));
  }
  opens_.continueHandles(in.getNextHandle());
  for (auto l : in.getAppLocks()) {
    appLocks_.set(AppLocks::Key(l.getIno(), l.getOwner(), l.getSpace()),
                  AppLocks::Range{l.getStart(), l.getEnd(), l.getType(), l.getPid()});
  }
  spdlog::info("took over: {} inodes the kernel holds, {} open files, {} application locks",
               in.getInodes().size(), opens_.size(), appLocks_.size());
}

void Client::reconnectAll(kj::StringPtr why) {
  for (auto* link : links()) link->disconnected(link->generation(), why);
}

}  // namespace cairn
