// The namespace of a metadata target: inodes, directory entries, symlinks, xattrs, layouts,
// orphans (unlinked but still open) and the queue of data objects to destroy. Every method runs
// inside a transaction the caller owns, so one request is one LMDB transaction; filesystem
// errors are thrown as FsError and abort it.
//
// Databases:
//   inodes     ino                     -> Inode message
//   dentries   parent ino + name       -> child ino, cookie
//   cookies    parent ino + cookie     -> name (readdir order; a cookie stays valid while
//                                         other entries come and go)
//   xattrs     ino + name              -> value
//   orphans    ino                     -> (empty): nlink 0, kept while open
//   destroy    ino                     -> Layout message: objects to remove from data targets
//   targets    index                   -> TargetAddress message
#pragma once

#include <kj/array.h>
#include <kj/function.h>
#include <kj/vector.h>

#include <ctime>

#include "objserver/store.h"
#include "objserver/target.h"
#include "rpc/cairn.capnp.h"

namespace cairn {

constexpr uint64_t ROOT_INO = 1;
constexpr size_t NAME_MAX_BYTES = 255;
constexpr size_t PATH_MAX_BYTES = 4096;
constexpr size_t XATTR_VALUE_MAX = 65536;
// The most a file's xattr names take in a listxattr reply (each with its NUL): Linux's
// XATTR_LIST_MAX, the largest list the kernel passes back. A name past it is refused with
// ENOSPC, as ext4 refuses one past its block: stored, it would make listxattr fail (E2BIG) for
// good, and with it every tool that copies a file's attributes.
constexpr size_t XATTR_LIST_MAX_BYTES = 65536;

struct LayoutData {
  uint64_t objectId = 0;
  uint32_t stripeSize = 0;
  kj::Array<uint32_t> targets;
};

struct InodeData {
  uint64_t ino = 0;
  uint64_t generation = 1;
  uint32_t mode = 0;
  uint32_t nlink = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t rdev = 0;
  uint64_t size = 0;
  timespec atime{}, mtime{}, ctime{};
  LayoutData layout;
  kj::Array<kj::byte> symlink;
  uint64_t nextCookie = 3;  // 1 and 2 are "." and ".."
  uint64_t parent = 0;

  bool isDir() const;
  bool isReg() const;
  void toAttr(rpc::Attr::Builder out) const;
};

struct Creds {
  uint32_t uid = 0;
  uint32_t gid = 0;
};

// What a create the client answered ahead fixes (MetaRequest.create.ino): the number it was
// given by reserveInodes, its clock, the layout reserved with the number.
struct Preset {
  uint64_t ino = 0;
  timespec time{};
  LayoutData layout;
};

class Namespace {
public:
  // isOpen tells whether any client has the inode open (the open table lives in memory).
  Namespace(Target& target, kj::Function<bool(uint64_t)> isOpen);

  InodeData get(store::Txn& txn, uint64_t ino);  // ENOENT if absent
  kj::Maybe<InodeData> find(store::Txn& txn, uint64_t ino);
  void put(store::Txn& txn, const InodeData& node);

  InodeData lookup(store::Txn& txn, uint64_t parent, kj::ArrayPtr<const kj::byte> name);
  InodeData setattr(store::Txn& txn, rpc::MetaRequest::Setattr::Reader req);
  InodeData make(store::Txn& txn, uint64_t parent, kj::ArrayPtr<const kj::byte> name, uint32_t mode,
                 uint64_t rdev, kj::ArrayPtr<const kj::byte> symlink, const Creds& creds,
                 kj::Maybe<const Preset&> preset = nullptr);
  // `count` inode numbers nobody has used, with the layout each file made with one gets.
  kj::Vector<LayoutData> reserveInodes(store::Txn& txn, uint32_t count);
  InodeData link(store::Txn& txn, uint64_t ino, uint64_t newParent,
                 kj::ArrayPtr<const kj::byte> newName);
  // `expect` non-zero: only if the name still refers to that inode (ENOENT otherwise).
  void unlink(store::Txn& txn, uint64_t parent, kj::ArrayPtr<const kj::byte> name, bool dir,
              uint64_t expect = 0);
  void rename(store::Txn& txn, uint64_t parent, kj::ArrayPtr<const kj::byte> name,
              uint64_t newParent, kj::ArrayPtr<const kj::byte> newName, uint32_t flags);
  // Fills `out` with entries after `cookie`; returns true at the end of the directory.
  bool readdir(store::Txn& txn, uint64_t ino, uint64_t cookie, uint32_t maxEntries,
               capnp::List<rpc::DirEntry>::Builder* out, uint32_t* count);
  InodeData wrote(store::Txn& txn, uint64_t ino, uint64_t end);
  uint64_t reserveAppend(store::Txn& txn, uint64_t ino, uint64_t length);

  void setxattr(store::Txn& txn, uint64_t ino, kj::ArrayPtr<const kj::byte> name,
                kj::ArrayPtr<const kj::byte> value, uint32_t flags);
  kj::Array<kj::byte> getxattr(store::Txn& txn, uint64_t ino, kj::ArrayPtr<const kj::byte> name);
  kj::Vector<kj::Array<kj::byte>> listxattr(store::Txn& txn, uint64_t ino);
  bool hasXattrs(store::Txn& txn, uint64_t ino);
  void removexattr(store::Txn& txn, uint64_t ino, kj::ArrayPtr<const kj::byte> name);

  // The last open of an inode was closed: an orphan is destroyed now.
  void closed(store::Txn& txn, uint64_t ino);
  // Unlinked while open (closed() has work to do); a read transaction will do.
  bool isOrphan(store::Txn& txn, uint64_t ino);
  // Destroys every orphan nobody has open (after the recovery window, when clients had their
  // chance to re-open what they had open). Returns how many were destroyed.
  size_t reapOrphans(store::Txn& txn);
  kj::Vector<uint64_t> orphans(store::Txn& txn);

  // Data objects waiting to be destroyed on the data targets.
  struct PendingDestroy {
    uint64_t ino;
    LayoutData layout;
  };
  kj::Vector<PendingDestroy> pendingDestroys(store::Txn& txn, size_t max);
  void destroyed(store::Txn& txn, uint64_t ino);

  void registerTarget(store::Txn& txn, rpc::TargetAddress::Reader target);
  void listTargets(store::Txn& txn, kj::Function<void(rpc::TargetAddress::Reader)> each);
  uint64_t inodeCount(store::Txn& txn);

private:
  // Calls `each` with every xattr name of `ino`, in key order (the names lie in the
  // transaction's map: valid only within the call).
  void forEachXattrName(store::Txn& txn, uint64_t ino,
                        kj::FunctionParam<void(kj::ArrayPtr<const kj::byte>)> each);
  void requireName(kj::ArrayPtr<const kj::byte> name);
  InodeData requireDir(store::Txn& txn, uint64_t ino);
  kj::Maybe<uint64_t> entry(store::Txn& txn, uint64_t parent, kj::ArrayPtr<const kj::byte> name,
                            uint64_t* cookie = nullptr);
  uint64_t requireEntry(store::Txn& txn, uint64_t parent, kj::ArrayPtr<const kj::byte> name);
  void addEntry(store::Txn& txn, InodeData& dir, kj::ArrayPtr<const kj::byte> name, uint64_t ino);
  void removeEntry(store::Txn& txn, uint64_t parent, kj::ArrayPtr<const kj::byte> name);
  bool dirEmpty(store::Txn& txn, uint64_t ino);
  // One link fewer; at zero the inode becomes an orphan (open) or is destroyed.
  void dropLink(store::Txn& txn, InodeData& node);
  void destroyInode(store::Txn& txn, const InodeData& node);
  LayoutData chooseLayout(store::Txn& txn, uint64_t ino);
  uint64_t nextIno(store::Txn& txn, uint64_t count = 1);
  // A layout a client made a file with: on this target's data targets, for that inode.
  void checkLayout(store::Txn& txn, const LayoutData& layout, uint64_t ino);

  Target& target_;
  kj::Function<bool(uint64_t)> isOpen_;
  MDB_dbi meta_, inodes_, dentries_, cookies_, xattrs_, orphans_, destroy_, targets_;
};

timespec nowTime();
void encodeLayout(const LayoutData& layout, rpc::Layout::Builder out);
LayoutData decodeLayout(rpc::Layout::Reader in);

}  // namespace cairn
