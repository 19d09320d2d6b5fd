// Client: a server away and back — recovery, drains at its controlled shutdown, new data
// targets, and the state handed over to a new cairn-mount.
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
    meta_->forgetWriteback();
    for (auto& [index, link] : data_) link->forgetWriteback();
    for (uint64_t ino : wb_.files()) wb_.fail(ino, EIO);
    spdlog::warn(
        "evicted by the metadata server: {} open files now return EIO, {} "
        "application locks lost",
        n, appLocks_.size());
    appLocks_.clear();
  }
  metaSession_ = meta_->session();
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
    // back, an administrator evicted us, or the metadata server fenced us off it). A file with
    // writes still queued here wrote them under locks we no longer hold: it can only fail now.
    // So can every file with a stripe there if the target lost updates it had answered, as we
    // cannot tell whose they were. Files that only read there, or whose writes had all landed,
    // carry on in the new session: among them those opened after the eviction, which never
    // used the old one.
    // A fence of a metadata session we have already left behind (told of its eviction there
    // first, recoverMeta dropped what was written in it) took nothing from what is queued now:
    // that was written in our later session, under its locks.
    bool earlier = eviction->session != 0 && eviction->session < metaSession_;
    if (!earlier) link.forgetWriteback();
    size_t n = 0;
    for (auto& [fh, file] : opens_.all()) {
      KJ_IF_MAYBE (l, file.layout) {
        auto& targets = (*l)->layout.targets;
        bool there = std::find(targets.begin(), targets.end(), index) != targets.end();
        bool lostHere = eviction->lostAnswered || (!earlier && wb_.queued(file.ino));
        if (!file.lost && there && lostHere) {
          file.lost = true;
          wb_.fail(file.ino, EIO);  // written under locks gone with the eviction: not sent
          ++n;
        }
      }
    }
    auto fence =
        earlier ? kj::str(", the fence of our session ", eviction->session,
                          " at the metadata server, which we have left (now ", metaSession_, ")")
                : kj::str();
    spdlog::warn("evicted by data target {}{}: {} open files with writes lost there now return EIO",
                 index, fence.cStr(), n);
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
