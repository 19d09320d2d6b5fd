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

void InodeTable::sawAttr(const struct stat& attr) {
  auto it = inodes_.find(attr.st_ino);
  if (it == inodes_.end()) return;
  it->second.size = attr.st_size;
  it->second.last = attr;
}

}  // namespace cairn
