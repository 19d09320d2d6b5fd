// The client's open-file table: one entry per FUSE file handle. The handle number is also the
// one the metadata server records, so after a server restart the client re-opens every entry
// under the same handle (open replay) and applications keep their descriptors.
#pragma once

#include <kj/memory.h>

#include <cstdint>
#include <map>

#include "fusefs/inode_table.h"

namespace cairn {

class OpenTable {
public:
  struct File {
    uint64_t ino = 0;
    uint32_t flags = 0;
    kj::Maybe<kj::Own<SharedLayout>> layout;  // regular files
    bool lost = false;  // the server no longer knows the file: every use fails with EIO
    // Its open (or create) has not been answered yet: nothing to replay (the request itself
    // goes out, or again, after the reconnect).
    bool opening = true;
  };

  uint64_t add(File file);
  // From a handover: the entry keeps the handle the kernel knows it by.
  void restore(uint64_t fh, File file) {
    files_.emplace(fh, kj::mv(file));
    next_ = kj::max(next_, fh + 1);
  }
  uint64_t nextHandle() const { return next_; }
  void continueHandles(uint64_t next) { next_ = kj::max(next_, next); }
  kj::Maybe<File&> find(uint64_t fh);
  void remove(uint64_t fh);
  size_t size() const { return files_.size(); }
  std::map<uint64_t, File>& all() { return files_; }

private:
  uint64_t next_ = 1;
  std::map<uint64_t, File> files_;
};

}  // namespace cairn
