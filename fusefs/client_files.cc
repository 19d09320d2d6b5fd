// Client: open files — open, read, read-ahead, write-behind, fsync, release, POSIX locks.
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

}  // namespace cairn
