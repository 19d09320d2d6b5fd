#include "fusefs/inode_table.h"

#include <kj/debug.h>

namespace cairn {

namespace {
constexpr uint64_t ROOT = 1;
}

InodeTable::InodeTable() {
  inodes_[ROOT].nlookup = 1;
}

InodeTable::Inode& InodeTable::remember(uint64_t ino) {
  auto& inode = inodes_[ino];
  ++inode.nlookup;
  return inode;
}

void InodeTable::forget(uint64_t ino, uint64_t n) {
  if (ino == ROOT) return;
  auto it = inodes_.find(ino);
  if (it == inodes_.end()) return;
  // The kernel never forgets more than it was given; if it did, the count stops at zero.
  if (it->second.nlookup <= n) {
    inodes_.erase(it);
  } else {
    it->second.nlookup -= n;
  }
}

kj::Maybe<InodeTable::Inode&> InodeTable::find(uint64_t ino) {
  auto it = inodes_.find(ino);
  if (it == inodes_.end()) return nullptr;
  return it->second;
}

bool InodeTable::sawAttr(struct stat& attr, uint64_t asOf) {
  auto it = inodes_.find(attr.st_ino);
  if (it == inodes_.end()) return true;
  auto& inode = it->second;
  // Equal is not older: a batch's replies share their transaction, each after the one before.
  if (asOf != 0 && asOf < inode.asOf && inode.last.st_ino == attr.st_ino) {
    attr = inode.last;
    return false;
  }
  inode.size = attr.st_size;
  inode.last = attr;
  inode.asOf = kj::max(inode.asOf, asOf);
  return true;
}

void InodeTable::forgetOrder() {
  for (auto& [ino, inode] : inodes_) inode.asOf = 0;
}

}  // namespace cairn
