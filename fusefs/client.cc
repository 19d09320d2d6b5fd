#include "fusefs/client.h"

#include <fcntl.h>
#include <unistd.h>

#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include <random>

#include "rpc/errors.h"

namespace cairn {

namespace {

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

Client::Client(kj::AsyncIoContext& io, ClientOptions options)
    : io_(io), options_(kj::mv(options)), tasks_(errorHandler_) {
  identity_.uuid = randomUuid();
  identity_.role = rpc::Hello::Role::CLIENT;
  identity_.hostName = kj::str(options_.hostName);
  auto addresses = kj::heapArrayBuilder<kj::String>(options_.metaAddresses.size());
  for (auto& a : options_.metaAddresses) addresses.add(kj::str(a));
  meta_ = kj::heap<ServerLink>(io.provider->getNetwork(), io.provider->getTimer(), kj::str("meta"),
                               addresses.finish(), identity_);
  meta_->setRecovery([this]() { return recoverMeta(); });
}

Client::~Client() noexcept(false) {}

void Client::ErrorHandler::taskFailed(kj::Exception&& e) {
  spdlog::warn("background request failed: {}", e.getDescription().cStr());
}

void Client::start() {
  meta_->start();
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
  if (meta_->takeEvicted()) {
    // Evicted: the server forgot our opens. Those descriptors can only fail (EIO); the mount
    // itself carries on and new opens work.
    size_t n = 0;
    for (auto& [fh, file] : opens_.all()) {
      if (!file.lost) ++n;
      file.lost = true;
    }
    spdlog::warn("evicted by the metadata server: {} open files now return EIO", n);
  }
  return refreshTargets(ServerLink::Class::RECOVERY).then([this]() {
    auto started = io_.provider->getTimer().now();
    auto replays = kj::heapArrayBuilder<kj::Promise<void>>(opens_.size());
    for (auto& [fh, file] : opens_.all()) {
      if (file.lost) continue;
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
    return kj::joinPromises(replays.finish()).then([this, count, started]() {
      if (count > 0) {
        spdlog::info("open replay: {} files re-opened in {} ms", count,
                     (io_.provider->getTimer().now() - started) / kj::MILLISECONDS);
      }
    });
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
              kj::heap<ServerLink>(io_.provider->getNetwork(), io_.provider->getTimer(),
                                   kj::str("data", t.getIndex()), addresses.finish(), identity_);
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
  return meta_->meta(kj::mv(build), update, cls).then([](ServerLink::MetaResponse&& resp) {
    checkErrno(resp.getReply().getError());
    return kj::mv(resp);
  });
}

Entry Client::toEntry(rpc::Attr::Reader attr) {
  Entry e;
  attrToStat(attr, &e.attr);
  e.generation = attr.getGeneration();
  inodes_.sawAttr(e.attr);
  return e;
}

kj::Promise<Entry> Client::entryCall(MetaBuild build) {
  return metaCall(kj::mv(build), true).then([this](ServerLink::MetaResponse&& resp) {
    return toEntry(resp.getReply().getAttr());
  });
}

kj::Promise<struct stat> Client::getattr(uint64_t ino) {
  return metaCall([ino](rpc::MetaRequest::Builder b) { b.setGetattr(ino); }, false)
      .then(
          [this](ServerLink::MetaResponse&& resp) {
            return toEntry(resp.getReply().getAttr()).attr;
          },
          [ this, ino ](kj::Exception && e) -> struct stat {
            // Removed on the server while the kernel still holds it (a descriptor of a removed
            // directory, a cwd): what it last was, with no links left, as local filesystems do.
            KJ_IF_MAYBE (inode, inodes_.find(ino)) {
              if (errnoOf(e) == ENOENT && inode->last.st_ino == ino) {
                auto st = inode->last;
                st.st_nlink = 0;
                return st;
              }
            }
            kj::throwFatalException(kj::mv(e));
          });
}

kj::Promise<Entry> Client::lookup(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name) {
  return metaCall(
             [cred, parent, name = kj::mv(name)](rpc::MetaRequest::Builder b) {
               setCred(b, cred);
               auto l = b.initLookup();
               l.setParent(parent);
               l.setName(name);
             },
             false)
      .then([this](ServerLink::MetaResponse&& resp) { return toEntry(resp.getReply().getAttr()); });
}

kj::Promise<kj::Own<SharedLayout>> Client::layoutOf(uint64_t ino) {
  KJ_IF_MAYBE (inode, inodes_.find(ino)) {
    KJ_IF_MAYBE (l, inode->layout) {
      return kj::addRef(**l);
    }
  }
  return metaCall([ino](rpc::MetaRequest::Builder b) { b.setLayout(ino); }, false)
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

kj::Promise<struct stat> Client::setattr(const Cred& cred, uint64_t ino, SetAttr attr,
                                         kj::Maybe<uint64_t> fh) {
  (void)fh;
  auto send = [this, cred, ino, attr]() {
    return metaCall(
               [cred, ino, attr](rpc::MetaRequest::Builder b) {
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
               },
               true)
        .then([this](ServerLink::MetaResponse&& resp) {
          return toEntry(resp.getReply().getAttr()).attr;
        });
  };
  if (!(attr.valid & rpc::SET_SIZE)) return send();
  // The data goes first: once the size says "shorter", no byte past it may be readable.
  return getattr(ino)
      .then([this, ino, attr](struct stat st) -> kj::Promise<void> {
        if (!S_ISREG(st.st_mode)) return kj::READY_NOW;  // the server gives the right error
        if (attr.size >= uint64_t(st.st_size)) return kj::READY_NOW;
        return layoutOf(ino).then([this, attr](kj::Own<SharedLayout> layout) {
          return truncateObjects(layout->layout, attr.size).attach(kj::mv(layout));
        });
      })
      .then(kj::mv(send));
}

kj::Promise<Entry> Client::mknod(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                                 uint32_t mode, uint64_t rdev) {
  return entryCall([cred, parent, name = kj::mv(name), mode, rdev](rpc::MetaRequest::Builder b) {
    setCred(b, cred);
    auto m = b.initMknod();
    m.setParent(parent);
    m.setName(name);
    m.setMode(mode);
    m.setRdev(rdev);
  });
}

kj::Promise<Entry> Client::mkdir(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                                 uint32_t mode) {
  return entryCall([cred, parent, name = kj::mv(name), mode](rpc::MetaRequest::Builder b) {
    setCred(b, cred);
    auto m = b.initMkdir();
    m.setParent(parent);
    m.setName(name);
    m.setMode(mode);
  });
}

kj::Promise<Entry> Client::symlink(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                                   kj::Array<kj::byte> target) {
  return entryCall(
      [cred, parent, name = kj::mv(name), target = kj::mv(target)](rpc::MetaRequest::Builder b) {
        setCred(b, cred);
        auto s = b.initSymlink();
        s.setParent(parent);
        s.setName(name);
        s.setTarget(target);
      });
}

kj::Promise<Entry> Client::link(const Cred& cred, uint64_t ino, uint64_t newParent,
                                kj::Array<kj::byte> newName) {
  return entryCall([cred, ino, newParent, newName = kj::mv(newName)](rpc::MetaRequest::Builder b) {
    setCred(b, cred);
    auto l = b.initLink();
    l.setIno(ino);
    l.setNewParent(newParent);
    l.setNewName(newName);
  });
}

kj::Promise<void> Client::unlink(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name) {
  return metaCall(
             [cred, parent, name = kj::mv(name)](rpc::MetaRequest::Builder b) {
               setCred(b, cred);
               auto u = b.initUnlink();
               u.setParent(parent);
               u.setName(name);
             },
             true)
      .ignoreResult();
}

kj::Promise<void> Client::rmdir(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name) {
  return metaCall(
             [cred, parent, name = kj::mv(name)](rpc::MetaRequest::Builder b) {
               setCred(b, cred);
               auto r = b.initRmdir();
               r.setParent(parent);
               r.setName(name);
             },
             true)
      .ignoreResult();
}

kj::Promise<void> Client::rename(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                                 uint64_t newParent, kj::Array<kj::byte> newName, uint32_t flags) {
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
             true)
      .ignoreResult();
}

kj::Promise<kj::Array<kj::byte>> Client::readlink(uint64_t ino) {
  return metaCall([ino](rpc::MetaRequest::Builder b) { b.setReadlink(ino); }, false)
      .then([](ServerLink::MetaResponse&& resp) {
        return kj::heapArray(resp.getReply().getBytes());
      });
}

// An open or create was answered: the file table entry gets its inode and layout.
Opened Client::opened(uint64_t fh, ServerLink::MetaResponse& resp) {
  auto opened = resp.getReply().getOpened();
  Opened out;
  out.fh = fh;
  out.entry = toEntry(opened.getAttr());
  uint64_t ino = opened.getAttr().getIno();
  auto& file = KJ_ASSERT_NONNULL(opens_.find(fh));
  file.ino = ino;
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
  return metaCall(
             [cred, ino, flags, fh](rpc::MetaRequest::Builder b) {
               setCred(b, cred);
               auto o = b.initOpen();
               o.setIno(ino);
               o.setFlags(flags);
               o.setHandle(fh);
             },
             false)
      .then([this, fh](ServerLink::MetaResponse&& resp) { return opened(fh, resp); },
            [this, fh](kj::Exception&& e) -> Opened {
              opens_.remove(fh);
              kj::throwFatalException(kj::mv(e));
            });
}

kj::Promise<Opened> Client::create(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                                   uint32_t mode, uint32_t flags) {
  OpenTable::File file;
  file.flags = flags;
  uint64_t fh = opens_.add(kj::mv(file));
  return metaCall(
             [cred, parent, name = kj::mv(name), mode, flags, fh](rpc::MetaRequest::Builder b) {
               setCred(b, cred);
               auto c = b.initCreate();
               c.setParent(parent);
               c.setName(name);
               c.setMode(mode);
               c.setFlags(flags);
               c.setHandle(fh);
             },
             true)
      .then([this, fh](ServerLink::MetaResponse&& resp) { return opened(fh, resp); },
            [this, fh](kj::Exception&& e) -> Opened {
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
  auto& file = openFile(fh);
  auto& shared = *KJ_REQUIRE_NONNULL(file.layout, "read of a file without a layout");
  uint64_t known = 0;
  KJ_IF_MAYBE (inode, inodes_.find(file.ino)) {
    known = inode->size;
  }
  // The kernel asks for attributes before it reads past the size it knows, so `known` is
  // at least as fresh as the kernel's idea of the end of the file.
  if (offset >= known || size == 0) return kj::heapArray<kj::byte>(0);
  uint64_t end = kj::min(offset + size, known);
  auto buffer = kj::heapArray<kj::byte>(end - offset);
  memset(buffer.begin(), 0, buffer.size());
  auto pieces = splitRange(shared.layout, offset, end - offset);
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(pieces.size());
  uint64_t object = shared.layout.objectId;
  for (auto& p : pieces) {
    kj::byte* out = buffer.begin() + (p.fileOffset - offset);
    parts.add(dataLink(shared.layout.targets[p.slot]).then([object, p, out](ServerLink* link) {
      return link
          ->data(
              [object, p](rpc::DataRequest::Builder b) {
                auto r = b.initRead();
                r.setObjectId(object);
                r.setOffset(p.objectOffset);
                r.setLength(uint32_t(p.length));
              },
              false)
          .then([p, out](ServerLink::DataResponse&& resp) {
            auto reply = resp.getReply();
            checkErrno(reply.getError());
            auto data = reply.getData();
            // Shorter than asked: the rest is a hole and stays zero.
            memcpy(out, data.begin(), kj::min(data.size(), size_t(p.length)));
          });
    }));
  }
  uint64_t ino = file.ino;
  bool noatime = file.flags & O_NOATIME;
  return kj::joinPromises(parts.finish())
      .then([this, ino, noatime, buffer = kj::mv(buffer)]() mutable {
        if (!noatime) touchAtime(ino);
        return kj::mv(buffer);
      })
      .attach(kj::addRef(shared));
}

namespace {
bool notAfter(const timespec& a, const timespec& b) {
  return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec <= b.tv_nsec);
}
}  // namespace

// relatime, the Linux default: a read updates atime if it is not newer than mtime or ctime,
// or is a day old. The update is not waited for; it leaves on the metadata link before any
// later request, so a stat after the read sees it.
void Client::touchAtime(uint64_t ino) {
  auto* found = inodes_.find(ino).map([](InodeTable::Inode& i) { return &i; }).orDefault(nullptr);
  if (found == nullptr) return;
  auto& inode = *found;
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  const auto& a = inode.last;
  bool stale = notAfter(a.st_atim, a.st_mtim) || notAfter(a.st_atim, a.st_ctim) ||
               now.tv_sec - a.st_atim.tv_sec >= 24 * 3600;
  if (!stale || inode.atimePending) return;
  inode.atimePending = true;
  tasks_.add(metaCall(
                 [ino](rpc::MetaRequest::Builder b) {
                   auto s = b.initSetattr();
                   s.setIno(ino);
                   s.setValid(rpc::SET_ATIME_NOW);
                 },
                 true)
                 .then(
                     [this, ino](ServerLink::MetaResponse&& resp) {
                       toEntry(resp.getReply().getAttr());
                       KJ_IF_MAYBE (i, inodes_.find(ino)) {
                         i->atimePending = false;
                       }
                     },
                     [this, ino](kj::Exception&&) {
                       KJ_IF_MAYBE (i, inodes_.find(ino)) {
                         i->atimePending = false;
                       }
                     }));
}

kj::Promise<size_t> Client::write(uint64_t fh, uint64_t offset, kj::Array<kj::byte> data) {
  auto& file = openFile(fh);
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
  return where.then([this, ino, layout = kj::mv(layout),
                     data = kj::mv(data)](uint64_t at) mutable -> kj::Promise<size_t> {
    if (data.size() == 0) return size_t(0);
    if (at > uint64_t(INT64_MAX) - data.size()) {
      return kj::Promise<size_t>(errnoException(EFBIG));
    }
    auto pieces = splitRange(layout->layout, at, data.size());
    auto parts = kj::heapArrayBuilder<kj::Promise<void>>(pieces.size() + 1);
    uint64_t object = layout->layout.objectId;
    auto* base = data.begin();
    for (auto& p : pieces) {
      auto bytes = kj::arrayPtr(base + (p.fileOffset - at), p.length);
      parts.add(dataLink(layout->layout.targets[p.slot]).then([object, p, bytes](ServerLink* link) {
        return link
            ->data(
                [object, p, bytes](rpc::DataRequest::Builder b) {
                  auto w = b.initWrite();
                  w.setObjectId(object);
                  w.setOffset(p.objectOffset);
                  w.setData(bytes);
                },
                true)
            .then([](ServerLink::DataResponse&& resp) { checkErrno(resp.getReply().getError()); });
      }));
    }
    uint64_t end = at + data.size();
    // Size and mtime on the metadata target, in parallel with the data.
    parts.add(
        metaCall(
            [ino, end](rpc::MetaRequest::Builder b) {
              auto w = b.initWrote();
              w.setIno(ino);
              w.setEnd(end);
            },
            true)
            .then([this](ServerLink::MetaResponse&& resp) { toEntry(resp.getReply().getAttr()); }));
    size_t n = data.size();
    return kj::joinPromises(parts.finish())
        .then([n]() { return n; })
        .attach(kj::mv(data), kj::mv(layout));
  });
}

kj::Promise<void> Client::syncTargets(const StripeLayout& layout) {
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(layout.targets.size() + 1);
  parts.add(metaCall([](rpc::MetaRequest::Builder b) { b.setSync(); }, false).ignoreResult());
  for (uint32_t t : layout.targets) {
    parts.add(dataLink(t).then([](ServerLink* link) {
      return link->data([](rpc::DataRequest::Builder b) { b.setSync(); }, false).ignoreResult();
    }));
  }
  return kj::joinPromises(parts.finish());
}

kj::Promise<void> Client::fsync(uint64_t fh) {
  auto& file = openFile(fh);
  KJ_IF_MAYBE (l, file.layout) {
    auto layout = kj::addRef(**l);
    auto& ref = layout->layout;
    return syncTargets(ref).attach(kj::mv(layout));
  }
  return metaCall([](rpc::MetaRequest::Builder b) { b.setSync(); }, false).ignoreResult();
}

kj::Promise<void> Client::syncAll() {
  auto parts = kj::heapArrayBuilder<kj::Promise<void>>(data_.size() + 1);
  parts.add(metaCall([](rpc::MetaRequest::Builder b) { b.setSync(); }, false).ignoreResult());
  for (auto& [index, link] : data_) {
    parts.add(link->data([](rpc::DataRequest::Builder b) { b.setSync(); }, false).ignoreResult());
  }
  return kj::joinPromises(parts.finish());
}

kj::Promise<void> Client::release(uint64_t fh) {
  auto& file = KJ_REQUIRE_NONNULL(opens_.find(fh), "unknown file handle", fh);
  bool lost = file.lost;
  opens_.remove(fh);
  if (lost) return kj::READY_NOW;
  return metaCall([fh](rpc::MetaRequest::Builder b) { b.setRelease(fh); }, false).ignoreResult();
}

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
        if (lock.type != 2) lockHolders_.emplace(ino, owner, space);
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
  if (lockHolders_.erase(std::make_tuple(ino, owner, space)) == 0) return kj::READY_NOW;
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
  // From the start, ".." needs the parent, which the directory's own attributes carry.
  kj::Promise<uint64_t> parent = uint64_t(0);
  if (cookie < 2) {
    parent = metaCall([ino](rpc::MetaRequest::Builder b) { b.setGetattr(ino); }, false)
                 .then([](ServerLink::MetaResponse&& resp) {
                   return resp.getReply().getAttr().getParent();
                 });
  }
  auto entries = metaCall(
                     [ino, cookie, maxEntries](rpc::MetaRequest::Builder b) {
                       auto r = b.initReaddir();
                       r.setIno(ino);
                       r.setCookie(kj::max(cookie, uint64_t(2)));
                       r.setMaxEntries(maxEntries);
                     },
                     false)
                     .then([](ServerLink::MetaResponse&& resp) {
                       auto entries = resp.getReply().getEntries();
                       DirPage page;
                       page.eof = entries.getEof();
                       for (auto e : entries.getList()) {
                         DirItem item;
                         item.name = kj::heapArray(e.getName());
                         item.cookie = e.getCookie();
                         attrToStat(e.getAttr(), &item.attr);
                         page.items.add(kj::mv(item));
                       }
                       return page;
                     });
  return parent.then([entries = kj::mv(entries)](uint64_t parent) mutable {
    return entries.then([parent](DirPage&& page) {
      page.parent = parent;
      return kj::mv(page);
    });
  });
}

kj::Promise<struct statvfs> Client::statfs() {
  auto parts = kj::heapArrayBuilder<kj::Promise<ServerLink::DataResponse>>(data_.size());
  for (auto& [index, link] : data_) {
    parts.add(link->data([](rpc::DataRequest::Builder b) { b.setStatfs(); }, false));
  }
  return metaCall([](rpc::MetaRequest::Builder b) { b.setStatfs(); }, false)
      .then([parts = parts.finish()](ServerLink::MetaResponse&& meta) mutable {
        auto m = meta.getReply().getStatfs();
        struct statvfs out;
        memset(&out, 0, sizeof(out));
        out.f_bsize = out.f_frsize = 4096;
        out.f_files = m.getTotalInodes();
        out.f_ffree = out.f_favail = m.getFreeInodes();
        out.f_namemax = m.getNameMax();
        return kj::joinPromises(kj::mv(parts))
            .then([out](kj::Array<ServerLink::DataResponse>&& replies) mutable {
              for (auto& r : replies) {
                auto s = r.getReply().getStatfs();
                uint64_t scale = s.getBlockSize() / 4096;
                out.f_blocks += s.getTotalBlocks() * scale;
                out.f_bfree += s.getFreeBlocks() * scale;
              }
              out.f_bavail = out.f_bfree;
              return out;
            });
      });
}

kj::Promise<void> Client::setxattr(uint64_t ino, kj::Array<kj::byte> name,
                                   kj::Array<kj::byte> value, uint32_t flags) {
  return metaCall(
             [ino, name = kj::mv(name), value = kj::mv(value), flags](rpc::MetaRequest::Builder b) {
               auto s = b.initSetxattr();
               s.setIno(ino);
               s.setName(name);
               s.setValue(value);
               s.setFlags(flags);
             },
             true)
      .ignoreResult();
}

kj::Promise<kj::Array<kj::byte>> Client::getxattr(uint64_t ino, kj::Array<kj::byte> name) {
  return metaCall(
             [ino, name = kj::mv(name)](rpc::MetaRequest::Builder b) {
               auto g = b.initGetxattr();
               g.setIno(ino);
               g.setName(name);
             },
             false)
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
  return metaCall(
             [ino, name = kj::mv(name)](rpc::MetaRequest::Builder b) {
               auto r = b.initRemovexattr();
               r.setIno(ino);
               r.setName(name);
             },
             true)
      .ignoreResult();
}

}  // namespace cairn
