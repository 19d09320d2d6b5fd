// The client's inode table: what it knows of each inode the kernel holds a reference to.
// Inode numbers are the metadata target's persistent ids, so they mean the same after a server
// restart or a remount. `nlookup` counts the kernel's references (lookup, create, mknod, mkdir,
// symlink, link replies) and FORGET takes them back; at zero the entry goes, as in libfuse's
// passthrough_hp. The root is pinned.
#pragma once

#include <kj/map.h>
#include <kj/memory.h>
#include <kj/refcount.h>

#include <sys/stat.h>
#include <cstdint>

#include <ctime>
#include <unordered_map>

#include "fusefs/striping.h"

namespace cairn {

// Layouts never change after a file is made, so they are shared, not copied.
struct SharedLayout : public kj::Refcounted {
  StripeLayout layout;
};

class InodeTable {
public:
  struct Inode {
    uint64_t nlookup = 0;
    uint64_t size = 0;          // the latest size any reply reported
    struct stat last {};        // the latest attributes any reply reported
    uint64_t asOf = 0;          // the metadata target's transaction they are as of (0: unknown)
    bool atimePending = false;  // an atime update is on its way
    kj::Maybe<kj::Own<SharedLayout>> layout;
  };

  InodeTable();
  // A reply handed the kernel a reference.
  Inode& remember(uint64_t ino);
  // From a handover: the kernel holds `nlookup` references.
  void restore(uint64_t ino, uint64_t nlookup) { inodes_[ino].nlookup = nlookup; }
  template <typename F>
  void forEach(F f) const {
    for (auto& [ino, inode] : inodes_) f(ino, inode);
  }
  // The kernel dropped n references.
  void forget(uint64_t ino, uint64_t n);
  kj::Maybe<Inode&> find(uint64_t ino);
  // Record what a reply said about an inode the table knows, as of the metadata target's
  // transaction `asOf` (MetaReply.asOf; 0: not known, taken as it comes). Replies can arrive out
  // of order — resends after a reconnect go in no particular order, and one the server had
  // applied gets the reply it recorded then — and one older than what the table holds must not
  // undo it (a size that cuts reads short, say). Such attributes are not recorded: `attr` is
  // set to the newer ones, and the answer is false.
  bool sawAttr(struct stat& attr, uint64_t asOf);
  // The target's transaction numbers may start again lower (it restarted, or its partner took
  // it over): no order is known between what was seen before and what comes next.
  void forgetOrder();
  size_t size() const { return inodes_.size(); }

private:
  std::unordered_map<uint64_t, Inode> inodes_;
};

}  // namespace cairn
