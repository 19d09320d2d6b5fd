#include "objserver/namespace.h"

#include <algorithm>
#include <set>

#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <capnp/message.h>
#include <kj/debug.h>

#include "rpc/errors.h"
#include "rpc/time_order.h"

namespace cairn {

namespace {

constexpr kj::StringPtr NEXT_INO_KEY = "nextIno"_kj;

kj::Array<kj::byte> childKey(uint64_t parent, kj::ArrayPtr<const kj::byte> name) {
  auto key = kj::heapArray<kj::byte>(8 + name.size());
  store::writeU64(key.begin(), parent);
  std::copy(name.begin(), name.end(), key.begin() + 8);  // (memcpy from an empty name is UB)
  return key;
}

kj::Array<kj::byte> pairKey(uint64_t a, uint64_t b) {
  auto key = kj::heapArray<kj::byte>(16);
  store::writeU64(key.begin(), a);
  store::writeU64(key.begin() + 8, b);
  return key;
}

}  // namespace

void encodeLayout(const LayoutData& layout, rpc::Layout::Builder out) {
  out.setObjectId(layout.objectId);
  out.setStripeSize(layout.stripeSize);
  auto targets = out.initTargets(layout.targets.size());
  for (auto i : kj::indices(layout.targets)) targets.set(i, layout.targets[i]);
}

LayoutData decodeLayout(rpc::Layout::Reader in) {
  LayoutData layout;
  layout.objectId = in.getObjectId();
  layout.stripeSize = in.getStripeSize();
  layout.targets = kj::heapArray<uint32_t>(in.getTargets().size());
  for (auto i : kj::indices(layout.targets)) layout.targets[i] = in.getTargets()[i];
  return layout;
}

namespace {

timespec fromWire(rpc::Timespec::Reader t) {
  return timespec{static_cast<time_t>(t.getSec()), static_cast<long>(t.getNsec())};
}

void toWire(const timespec& t, rpc::Timespec::Builder out) {
  out.setSec(t.tv_sec);
  out.setNsec(static_cast<uint32_t>(t.tv_nsec));
}

InodeData decodeInode(store::Bytes raw) {
  store::StoredMessage stored(raw);
  auto in = stored.getRoot<rpc::Inode>();
  auto a = in.getAttr();
  InodeData node;
  node.ino = a.getIno();
  node.generation = a.getGeneration();
  node.mode = a.getMode();
  node.nlink = a.getNlink();
  node.uid = a.getUid();
  node.gid = a.getGid();
  node.rdev = a.getRdev();
  node.size = a.getSize();
  node.atime = fromWire(a.getAtime());
  node.mtime = fromWire(a.getMtime());
  node.ctime = fromWire(a.getCtime());
  if (in.hasLayout()) node.layout = decodeLayout(in.getLayout());
  node.symlink = kj::heapArray(in.getSymlink());
  node.nextCookie = in.getNextCookie();
  node.parent = in.getParent();
  return node;
}

}  // namespace

timespec nowTime() {
  timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return t;
}

bool InodeData::isDir() const {
  return S_ISDIR(mode);
}
bool InodeData::isReg() const {
  return S_ISREG(mode);
}

void InodeData::toAttr(rpc::Attr::Builder out) const {
  out.setIno(ino);
  out.setGeneration(generation);
  out.setMode(mode);
  out.setNlink(nlink);
  out.setUid(uid);
  out.setGid(gid);
  out.setRdev(rdev);
  out.setSize(isDir() ? 4096 : size);
  // What a file occupies is known only to the data targets; report its size, rounded up.
  out.setBlocks(isDir() ? 8 : (size + 511) / 512);
  toWire(atime, out.initAtime());
  toWire(mtime, out.initMtime());
  toWire(ctime, out.initCtime());
  if (isDir()) out.setParent(parent);
}

Namespace::Namespace(Target& target, kj::Function<bool(uint64_t)> isOpen)
    : target_(target), isOpen_(kj::mv(isOpen)) {
  meta_ = target.db("namespace");
  inodes_ = target.db("inodes");
  dentries_ = target.db("dentries");
  cookies_ = target.db("cookies");
  xattrs_ = target.db("xattrs");
  orphans_ = target.db("orphans");
  destroy_ = target.db("destroy");
  targets_ = target.db("targets");

  store::Txn txn(target.env(), store::Txn::WRITE);
  if (find(txn, ROOT_INO) == nullptr) {
    InodeData root;
    root.ino = ROOT_INO;
    root.mode = S_IFDIR | 0755;
    root.nlink = 2;
    root.atime = root.mtime = root.ctime = nowTime();
    root.parent = ROOT_INO;
    put(txn, root);
    store::U64Key next(ROOT_INO + 1);
    txn.put(meta_, NEXT_INO_KEY.asBytes(), next.ptr());
    target_.nextTransno(txn);
    txn.commit();
  }
}

kj::Maybe<InodeData> Namespace::find(store::Txn& txn, uint64_t ino) {
  KJ_IF_MAYBE (raw, txn.get(inodes_, store::U64Key(ino).ptr())) {
    return decodeInode(*raw);
  }
  return nullptr;
}

InodeData Namespace::get(store::Txn& txn, uint64_t ino) {
  KJ_IF_MAYBE (node, find(txn, ino)) {
    return kj::mv(*node);
  }
  throw FsError(ENOENT);
}

void Namespace::put(store::Txn& txn, const InodeData& node) {
  capnp::MallocMessageBuilder message;
  auto out = message.initRoot<rpc::Inode>();
  node.toAttr(out.initAttr());
  out.getAttr().setSize(node.size);
  if (node.isReg()) encodeLayout(node.layout, out.initLayout());
  if (node.symlink.size() > 0) out.setSymlink(node.symlink);
  out.setNextCookie(node.nextCookie);
  out.setParent(node.parent);
  txn.putMessage(inodes_, store::U64Key(node.ino).ptr(), message);
}

void Namespace::requireName(kj::ArrayPtr<const kj::byte> name) {
  fsRequire(name.size() > 0, EINVAL);
  fsRequire(name.size() <= NAME_MAX_BYTES, ENAMETOOLONG);
  for (auto c : name) fsRequire(c != '/' && c != '\0', EINVAL);
  bool dot = name.size() == 1 && name[0] == '.';
  bool dotdot = name.size() == 2 && name[0] == '.' && name[1] == '.';
  fsRequire(!dot && !dotdot, EINVAL);
}

InodeData Namespace::requireDir(store::Txn& txn, uint64_t ino) {
  auto node = get(txn, ino);
  fsRequire(node.isDir(), ENOTDIR);
  // A removed directory that a process still has as its cwd takes no new entries.
  fsRequire(node.nlink > 0, ENOENT);
  return node;
}

kj::Maybe<uint64_t> Namespace::entry(store::Txn& txn, uint64_t parent,
                                     kj::ArrayPtr<const kj::byte> name, uint64_t* cookie) {
  KJ_IF_MAYBE (raw, txn.get(dentries_, childKey(parent, name))) {
    if (cookie != nullptr) *cookie = store::readU64(*raw, 8);
    return store::readU64(*raw, 0);
  }
  return nullptr;
}

uint64_t Namespace::requireEntry(store::Txn& txn, uint64_t parent,
                                 kj::ArrayPtr<const kj::byte> name) {
  KJ_IF_MAYBE (ino, entry(txn, parent, name)) {
    return *ino;
  }
  throw FsError(ENOENT);
}

void Namespace::addEntry(store::Txn& txn, InodeData& dir, kj::ArrayPtr<const kj::byte> name,
                         uint64_t ino) {
  uint64_t cookie = dir.nextCookie++;
  txn.put(dentries_, childKey(dir.ino, name), pairKey(ino, cookie));
  txn.put(cookies_, pairKey(dir.ino, cookie), name);
}

void Namespace::removeEntry(store::Txn& txn, uint64_t parent, kj::ArrayPtr<const kj::byte> name) {
  uint64_t cookie = 0;
  KJ_ASSERT(entry(txn, parent, name, &cookie) != nullptr);
  txn.del(dentries_, childKey(parent, name));
  txn.del(cookies_, pairKey(parent, cookie));
}

bool Namespace::dirEmpty(store::Txn& txn, uint64_t ino) {
  store::Cursor cursor(txn, cookies_);
  KJ_IF_MAYBE (item, cursor.seek(pairKey(ino, 0))) {
    return store::readU64(item->key, 0) != ino;
  }
  return true;
}

InodeData Namespace::lookup(store::Txn& txn, uint64_t parent, kj::ArrayPtr<const kj::byte> name) {
  fsRequire(name.size() <= NAME_MAX_BYTES, ENAMETOOLONG);
  auto dir = get(txn, parent);
  fsRequire(dir.isDir(), ENOTDIR);
  KJ_IF_MAYBE (ino, entry(txn, parent, name)) {
    return get(txn, *ino);
  }
  throw FsError(ENOENT);
}

InodeData Namespace::setattr(store::Txn& txn, rpc::MetaRequest::Setattr::Reader req) {
  auto node = get(txn, req.getIno());
  uint32_t valid = req.getValid();
  auto now = nowTime();
  if (valid & rpc::SET_MODE) node.mode = (node.mode & S_IFMT) | (req.getMode() & 07777);
  if (valid & rpc::SET_UID) node.uid = req.getUid();
  if (valid & rpc::SET_GID) node.gid = req.getGid();
  if (valid & rpc::SET_SIZE) {
    fsRequire(!node.isDir(), EISDIR);
    fsRequire(node.isReg(), EINVAL);
    fsRequire(req.getSize() <= uint64_t(INT64_MAX), EFBIG);
    // A size change is a content change (the kernel leaves this to the filesystem).
    if (req.getSize() != node.size) node.mtime = now;
    node.size = req.getSize();
  }
  if (valid & rpc::SET_ATIME_NOW) {
    node.atime = now;
  } else if (valid & rpc::SET_ATIME) {
    node.atime = fromWire(req.getAtime());
  }
  if (valid & rpc::SET_MTIME_NOW) {
    node.mtime = now;
  } else if (valid & rpc::SET_MTIME) {
    node.mtime = fromWire(req.getMtime());
  }
  // An access (relatime after a read) is not a change of the inode; anything else is.
  if (!(valid & rpc::SET_ACCESS)) node.ctime = now;
  put(txn, node);
  return node;
}

uint64_t Namespace::nextIno(store::Txn& txn, uint64_t count) {
  auto raw = KJ_ASSERT_NONNULL(txn.get(meta_, NEXT_INO_KEY.asBytes()));
  uint64_t ino = store::readU64(raw);
  store::U64Key next(ino + count);
  txn.put(meta_, NEXT_INO_KEY.asBytes(), next.ptr());
  return ino;
}

LayoutData Namespace::chooseLayout(store::Txn& txn, uint64_t ino) {
  kj::Vector<uint32_t> all;
  listTargets(txn, [&](rpc::TargetAddress::Reader t) {
    if (t.getKind() == rpc::TargetKind::DATA) all.add(t.getIndex());
  });
  // Without a data target no file can hold data.
  fsRequire(all.size() > 0, ENOSPC);
  size_t count = target_.defaultStripeCount();
  if (count == 0 || count > all.size()) count = all.size();
  LayoutData layout;
  layout.objectId = ino;
  layout.stripeSize = target_.defaultStripeSize();
  layout.targets = kj::heapArray<uint32_t>(count);
  // Start each file on another target, so that small files spread.
  for (size_t i = 0; i < count; ++i) layout.targets[i] = all[(ino + i) % all.size()];
  return layout;
}

kj::Vector<LayoutData> Namespace::reserveInodes(store::Txn& txn, uint32_t count) {
  kj::Vector<LayoutData> out(count);
  uint64_t first = nextIno(txn, count);
  for (uint64_t ino = first; ino < first + count; ++ino) out.add(chooseLayout(txn, ino));
  return out;
}

void Namespace::checkLayout(store::Txn& txn, const LayoutData& layout, uint64_t ino) {
  KJ_REQUIRE(layout.objectId == ino, "a new file's object is its inode", layout.objectId, ino);
  KJ_REQUIRE(layout.stripeSize >= 4096 && layout.stripeSize % 4096 == 0, "bad stripe size",
             layout.stripeSize);
  std::set<uint32_t> data;
  listTargets(txn, [&](rpc::TargetAddress::Reader t) {
    if (t.getKind() == rpc::TargetKind::DATA) data.insert(t.getIndex());
  });
  KJ_REQUIRE(layout.targets.size() > 0 && layout.targets.size() <= data.size(), "bad stripe count",
             layout.targets.size());
  std::set<uint32_t> seen;
  for (uint32_t t : layout.targets) {
    KJ_REQUIRE(data.count(t) > 0 && seen.insert(t).second, "not a data target, or twice", t);
  }
}

InodeData Namespace::make(store::Txn& txn, uint64_t parent, kj::ArrayPtr<const kj::byte> name,
                          uint32_t mode, uint64_t rdev, kj::ArrayPtr<const kj::byte> symlink,
                          const Creds& creds, kj::Maybe<const Preset&> preset) {
  requireName(name);
  auto dir = requireDir(txn, parent);
  fsRequire(entry(txn, parent, name) == nullptr, EEXIST);
  uint32_t type = mode & S_IFMT;
  fsRequire(type == S_IFREG || type == S_IFDIR || type == S_IFLNK || type == S_IFIFO ||
                type == S_IFCHR || type == S_IFBLK || type == S_IFSOCK,
            EINVAL);
  auto now = nowTime();
  InodeData node;
  KJ_IF_MAYBE (p, preset) {
    KJ_REQUIRE(type == S_IFREG, "only regular files are made ahead");
    KJ_REQUIRE(find(txn, p->ino) == nullptr, "a reserved inode number is in use", p->ino);
    checkLayout(txn, p->layout, p->ino);
    node.ino = p->ino;
    now = p->time;
  } else {
    node.ino = nextIno(txn);
  }
  node.mode = mode;
  node.rdev = (type == S_IFCHR || type == S_IFBLK) ? rdev : 0;
  node.uid = creds.uid;
  node.gid = creds.gid;
  // BSD group semantics under a set-group-ID directory; subdirectories inherit the bit.
  if (dir.mode & S_ISGID) {
    node.gid = dir.gid;
    if (type == S_IFDIR) node.mode |= S_ISGID;
  }
  node.atime = node.mtime = node.ctime = now;
  if (type == S_IFDIR) {
    node.nlink = 2;
    node.parent = parent;
    dir.nlink++;
  } else {
    node.nlink = 1;
  }
  if (type == S_IFLNK) {
    fsRequire(symlink.size() > 0, ENOENT);
    fsRequire(symlink.size() < PATH_MAX_BYTES, ENAMETOOLONG);
    node.symlink = kj::heapArray(symlink);
    node.size = symlink.size();
    node.mode = S_IFLNK | 0777;
  }
  if (type == S_IFREG) {
    KJ_IF_MAYBE (p, preset) {
      node.layout.objectId = p->layout.objectId;
      node.layout.stripeSize = p->layout.stripeSize;
      node.layout.targets = kj::heapArray(p->layout.targets.asPtr());
    } else {
      node.layout = chooseLayout(txn, node.ino);
    }
  }
  addEntry(txn, dir, name, node.ino);
  if (preset == nullptr) {
    dir.mtime = dir.ctime = now;
  } else {
    // Made ahead at the client's `now`, and a mkdir sent beside it may have reached us first
    // (features::MKDIR_BESIDE): a time between the two is that mkdir's, and stays. A time
    // past ours is a utimes', which a create overrides as ever.
    auto ours = nowTime();
    for (timespec* t : {&dir.mtime, &dir.ctime}) {
      if (!later(*t, now) || later(*t, ours)) *t = now;
    }
  }
  put(txn, dir);
  put(txn, node);
  return node;
}

InodeData Namespace::link(store::Txn& txn, uint64_t ino, uint64_t newParent,
                          kj::ArrayPtr<const kj::byte> newName) {
  requireName(newName);
  auto node = get(txn, ino);
  fsRequire(!node.isDir(), EPERM);
  fsRequire(node.nlink > 0, ENOENT);
  fsRequire(node.nlink < 65000, EMLINK);
  auto dir = requireDir(txn, newParent);
  fsRequire(entry(txn, newParent, newName) == nullptr, EEXIST);
  auto now = nowTime();
  addEntry(txn, dir, newName, ino);
  dir.mtime = dir.ctime = now;
  put(txn, dir);
  node.nlink++;
  node.ctime = now;
  put(txn, node);
  return node;
}

void Namespace::dropLink(store::Txn& txn, InodeData& node) {
  node.nlink = node.isDir() ? 0 : node.nlink - 1;
  node.ctime = nowTime();
  if (node.nlink > 0) {
    put(txn, node);
  } else if (isOpen_(node.ino)) {
    // Unlinked while open: it lives on, durably listed, until the last close.
    put(txn, node);
    txn.put(orphans_, store::U64Key(node.ino).ptr(), nullptr);
  } else {
    destroyInode(txn, node);
  }
}

void Namespace::destroyInode(store::Txn& txn, const InodeData& node) {
  txn.del(inodes_, store::U64Key(node.ino).ptr());
  txn.del(orphans_, store::U64Key(node.ino).ptr());
  {
    store::Cursor cursor(txn, xattrs_);
    auto start = childKey(node.ino, nullptr);
    for (auto item = cursor.seek(start);; item = cursor.seek(start)) {
      KJ_IF_MAYBE (i, item) {
        if (store::readU64(i->key, 0) != node.ino) break;
        cursor.del();
      } else {
        break;
      }
    }
  }
  if (node.isReg() && node.layout.targets.size() > 0) {
    capnp::MallocMessageBuilder message;
    encodeLayout(node.layout, message.initRoot<rpc::Layout>());
    txn.putMessage(destroy_, store::U64Key(node.ino).ptr(), message);
  }
}

void Namespace::unlink(store::Txn& txn, uint64_t parent, kj::ArrayPtr<const kj::byte> name,
                       bool wantDir, uint64_t expect) {
  fsRequire(name.size() <= NAME_MAX_BYTES, ENAMETOOLONG);
  auto dir = requireDir(txn, parent);
  uint64_t ino = requireEntry(txn, parent, name);
  fsRequire(expect == 0 || ino == expect, ENOENT);
  auto node = get(txn, ino);
  if (wantDir) {
    fsRequire(node.isDir(), ENOTDIR);
    fsRequire(dirEmpty(txn, ino), ENOTEMPTY);
    dir.nlink--;
  } else {
    fsRequire(!node.isDir(), EISDIR);
  }
  removeEntry(txn, parent, name);
  dir.mtime = dir.ctime = nowTime();
  put(txn, dir);
  dropLink(txn, node);
}

void Namespace::rename(store::Txn& txn, uint64_t parent, kj::ArrayPtr<const kj::byte> name,
                       uint64_t newParent, kj::ArrayPtr<const kj::byte> newName, uint32_t flags) {
  fsRequire((flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) == 0, EINVAL);
  fsRequire(!((flags & RENAME_NOREPLACE) && (flags & RENAME_EXCHANGE)), EINVAL);
  fsRequire(name.size() <= NAME_MAX_BYTES, ENAMETOOLONG);
  requireName(newName);
  auto srcDir = requireDir(txn, parent);
  uint64_t srcIno = requireEntry(txn, parent, name);
  auto src = get(txn, srcIno);
  auto dstDirCheck = requireDir(txn, newParent);
  kj::Maybe<uint64_t> dstIno = entry(txn, newParent, newName);
  auto now = nowTime();

  // Moving a directory below itself would cut it off from the tree.
  auto ancestorCheck = [&](const InodeData& moved) {
    if (!moved.isDir() || parent == newParent) return;
    for (uint64_t at = newParent;;) {
      fsRequire(at != moved.ino, EINVAL);
      if (at == ROOT_INO) break;
      at = get(txn, at).parent;
    }
  };

  if (flags & RENAME_EXCHANGE) {
    fsRequire(dstIno != nullptr, ENOENT);
    uint64_t otherIno = KJ_ASSERT_NONNULL(dstIno);
    if (otherIno == srcIno) return;
    auto other = get(txn, otherIno);
    ancestorCheck(src);
    ancestorCheck(other);
    // Both entries keep their names and cookies; only the inodes they point to swap.
    uint64_t srcCookie = 0, dstCookie = 0;
    entry(txn, parent, name, &srcCookie);
    entry(txn, newParent, newName, &dstCookie);
    txn.put(dentries_, childKey(parent, name), pairKey(otherIno, srcCookie));
    txn.put(dentries_, childKey(newParent, newName), pairKey(srcIno, dstCookie));
    if (parent != newParent) {
      auto dstDir = get(txn, newParent);
      if (src.isDir()) {
        src.parent = newParent;
        srcDir.nlink--;
        dstDir.nlink++;
      }
      if (other.isDir()) {
        other.parent = parent;
        dstDir.nlink--;
        srcDir.nlink++;
      }
      dstDir.mtime = dstDir.ctime = now;
      put(txn, dstDir);
    }
    srcDir.mtime = srcDir.ctime = now;
    put(txn, srcDir);
    src.ctime = other.ctime = now;
    put(txn, src);
    put(txn, other);
    return;
  }

  KJ_IF_MAYBE (d, dstIno) {
    fsRequire(!(flags & RENAME_NOREPLACE), EEXIST);
    if (*d == srcIno) return;  // two names of one inode: POSIX says do nothing
    auto victim = get(txn, *d);
    if (src.isDir()) {
      fsRequire(victim.isDir(), ENOTDIR);
      fsRequire(dirEmpty(txn, victim.ino), ENOTEMPTY);
    } else {
      fsRequire(!victim.isDir(), EISDIR);
    }
    ancestorCheck(src);
    removeEntry(txn, newParent, newName);
    if (victim.isDir()) {
      auto dstDir = get(txn, newParent);
      dstDir.nlink--;
      put(txn, dstDir);
    }
    dropLink(txn, victim);
  } else {
    ancestorCheck(src);
  }
  (void)dstDirCheck;

  removeEntry(txn, parent, name);
  // Re-read both directories: removing the victim may have changed the destination.
  auto from = get(txn, parent);
  from.mtime = from.ctime = now;
  if (parent == newParent) {
    addEntry(txn, from, newName, srcIno);
    put(txn, from);
  } else {
    auto to = get(txn, newParent);
    if (src.isDir()) {
      from.nlink--;
      to.nlink++;
      src.parent = newParent;
    }
    addEntry(txn, to, newName, srcIno);
    to.mtime = to.ctime = now;
    put(txn, from);
    put(txn, to);
  }
  src.ctime = now;
  put(txn, src);
}

bool Namespace::readdir(store::Txn& txn, uint64_t ino, uint64_t cookie, uint32_t maxEntries,
                        capnp::List<rpc::DirEntry>::Builder* out, uint32_t* count) {
  auto dir = get(txn, ino);
  fsRequire(dir.isDir(), ENOTDIR);
  *count = 0;
  store::Cursor cursor(txn, cookies_);
  for (auto item = cursor.seek(pairKey(ino, cookie + 1));; item = cursor.next()) {
    KJ_IF_MAYBE (i, item) {
      if (store::readU64(i->key, 0) != ino) return true;
      if (*count == maxEntries) return false;
      uint64_t childCookie = store::readU64(i->key, 8);
      uint64_t child = KJ_ASSERT_NONNULL(entry(txn, ino, i->value));
      auto node = get(txn, child);
      auto e = (*out)[(*count)++];
      e.setName(i->value);
      e.setCookie(childCookie);
      node.toAttr(e.initAttr());
    } else {
      return true;
    }
  }
}

InodeData Namespace::wrote(store::Txn& txn, uint64_t ino, uint64_t end) {
  auto node = get(txn, ino);
  fsRequire(node.isReg(), EINVAL);
  fsRequire(end <= uint64_t(INT64_MAX), EFBIG);
  if (end > node.size) node.size = end;
  node.mtime = node.ctime = nowTime();
  put(txn, node);
  return node;
}

uint64_t Namespace::reserveAppend(store::Txn& txn, uint64_t ino, uint64_t length) {
  auto node = get(txn, ino);
  fsRequire(node.isReg(), EINVAL);
  uint64_t at = node.size;
  fsRequire(at + length >= at && at + length <= uint64_t(INT64_MAX), EFBIG);
  node.size = at + length;
  node.mtime = node.ctime = nowTime();
  put(txn, node);
  return at;
}

namespace {
void requireXattrName(kj::ArrayPtr<const kj::byte> name) {
  fsRequire(name.size() > 0, EINVAL);
  fsRequire(name.size() <= NAME_MAX_BYTES, ERANGE);
  for (auto c : name) fsRequire(c != '\0', EINVAL);
  // ACLs would need kernel support we do not claim; say so rather than store them inertly.
  kj::StringPtr system = "system.";
  fsRequire(
      !(name.size() >= system.size() && memcmp(name.begin(), system.begin(), system.size()) == 0),
      EOPNOTSUPP);
}
}  // namespace

void Namespace::setxattr(store::Txn& txn, uint64_t ino, kj::ArrayPtr<const kj::byte> name,
                         kj::ArrayPtr<const kj::byte> value, uint32_t flags) {
  requireXattrName(name);
  fsRequire(value.size() <= XATTR_VALUE_MAX, E2BIG);
  auto node = get(txn, ino);
  auto key = childKey(ino, name);
  bool exists = txn.get(xattrs_, key) != nullptr;
  if (flags & XATTR_CREATE) fsRequire(!exists, EEXIST);
  if (flags & XATTR_REPLACE) fsRequire(exists, ENODATA);
  if (!exists) {
    size_t listed = name.size() + 1;
    forEachXattrName(txn, ino,
                     [&](kj::ArrayPtr<const kj::byte> other) { listed += other.size() + 1; });
    fsRequire(listed <= XATTR_LIST_MAX_BYTES, ENOSPC);
  }
  txn.put(xattrs_, key, value);
  node.ctime = nowTime();
  put(txn, node);
}

kj::Array<kj::byte> Namespace::getxattr(store::Txn& txn, uint64_t ino,
                                        kj::ArrayPtr<const kj::byte> name) {
  fsRequire(name.size() <= NAME_MAX_BYTES, ERANGE);
  get(txn, ino);
  KJ_IF_MAYBE (value, txn.get(xattrs_, childKey(ino, name))) {
    return kj::heapArray(*value);
  }
  throw FsError(ENODATA);
}

void Namespace::forEachXattrName(store::Txn& txn, uint64_t ino,
                                 kj::FunctionParam<void(kj::ArrayPtr<const kj::byte>)> each) {
  store::Cursor cursor(txn, xattrs_);
  for (auto item = cursor.seek(childKey(ino, nullptr));; item = cursor.next()) {
    KJ_IF_MAYBE (i, item) {
      if (store::readU64(i->key, 0) != ino) break;
      each(i->key.slice(8, i->key.size()));
    } else {
      break;
    }
  }
}

kj::Vector<kj::Array<kj::byte>> Namespace::listxattr(store::Txn& txn, uint64_t ino) {
  get(txn, ino);
  kj::Vector<kj::Array<kj::byte>> names;
  forEachXattrName(txn, ino,
                   [&](kj::ArrayPtr<const kj::byte> name) { names.add(kj::heapArray(name)); });
  return names;
}

bool Namespace::hasXattrs(store::Txn& txn, uint64_t ino) {
  store::Cursor cursor(txn, xattrs_);
  KJ_IF_MAYBE (i, cursor.seek(childKey(ino, nullptr))) {
    return store::readU64(i->key, 0) == ino;
  }
  return false;
}

void Namespace::removexattr(store::Txn& txn, uint64_t ino, kj::ArrayPtr<const kj::byte> name) {
  fsRequire(name.size() <= NAME_MAX_BYTES, ERANGE);
  auto node = get(txn, ino);
  fsRequire(txn.del(xattrs_, childKey(ino, name)), ENODATA);
  node.ctime = nowTime();
  put(txn, node);
}

void Namespace::closed(store::Txn& txn, uint64_t ino) {
  KJ_IF_MAYBE (node, find(txn, ino)) {
    if (node->nlink == 0 && !isOpen_(ino)) destroyInode(txn, *node);
  }
}

bool Namespace::isOrphan(store::Txn& txn, uint64_t ino) {
  return txn.get(orphans_, store::U64Key(ino).ptr()) != nullptr;
}

kj::Vector<uint64_t> Namespace::orphans(store::Txn& txn) {
  kj::Vector<uint64_t> out;
  store::Cursor cursor(txn, orphans_);
  for (auto item = cursor.first();; item = cursor.next()) {
    KJ_IF_MAYBE (i, item) {
      out.add(store::readU64(i->key));
    } else {
      break;
    }
  }
  return out;
}

size_t Namespace::reapOrphans(store::Txn& txn) {
  size_t n = 0;
  for (uint64_t ino : orphans(txn)) {
    if (isOpen_(ino)) continue;
    KJ_IF_MAYBE (node, find(txn, ino)) {
      destroyInode(txn, *node);
    } else {
      txn.del(orphans_, store::U64Key(ino).ptr());
    }
    ++n;
  }
  return n;
}

kj::Vector<Namespace::PendingDestroy> Namespace::pendingDestroys(store::Txn& txn, size_t max) {
  kj::Vector<PendingDestroy> out;
  store::Cursor cursor(txn, destroy_);
  for (auto item = cursor.first(); out.size() < max; item = cursor.next()) {
    KJ_IF_MAYBE (i, item) {
      store::StoredMessage stored(i->value);
      out.add(PendingDestroy{store::readU64(i->key), decodeLayout(stored.getRoot<rpc::Layout>())});
    } else {
      break;
    }
  }
  return out;
}

void Namespace::destroyed(store::Txn& txn, uint64_t ino) {
  txn.del(destroy_, store::U64Key(ino).ptr());
}

void Namespace::registerTarget(store::Txn& txn, rpc::TargetAddress::Reader target) {
  capnp::MallocMessageBuilder message;
  message.setRoot(target);
  txn.putMessage(targets_, store::U64Key(target.getIndex()).ptr(), message);
}

void Namespace::listTargets(store::Txn& txn, kj::Function<void(rpc::TargetAddress::Reader)> each) {
  store::Cursor cursor(txn, targets_);
  for (auto item = cursor.first();; item = cursor.next()) {
    KJ_IF_MAYBE (i, item) {
      store::StoredMessage stored(i->value);
      each(stored.getRoot<rpc::TargetAddress>());
    } else {
      break;
    }
  }
}

uint64_t Namespace::inodeCount(store::Txn& txn) {
  MDB_stat stat;
  store::check(mdb_stat(txn.get(), inodes_, &stat), "mdb_stat");
  return stat.ms_entries;
}

}  // namespace cairn
