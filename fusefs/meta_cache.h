// What the client keeps of the metadata server's state, each piece valid only while the lock
// that covers it is held (LockCache): inode attributes under the inode's ATTR lock, a
// directory's names under its LOOKUP lock (an inode number, or 0 for "no such entry"). With
// these the kernel's repeated LOOKUP and GETATTR requests are answered without an RPC.
//
// The kernel is given entry timeouts of 0 on purpose: an entry invalidation can overtake a
// lookup reply on its way into the dentry cache (docs/caching.md), while a LOOKUP answered
// here, on the one thread that also handles callbacks, can never see a dropped name.
#pragma once

#include <sys/stat.h>

#include <kj/common.h>

#include <cstdint>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace cairn {

class MetaCache {
public:
  // Bounds memory whatever the locks allow: past the limit, new names are simply not cached.
  static constexpr size_t DEFAULT_MAX_NAMES = 200000;
  explicit MetaCache(size_t maxNames = DEFAULT_MAX_NAMES) : maxNames_(maxNames) {}
  size_t maxNames() const { return maxNames_; }

  struct Inode {
    struct stat attr;
    uint64_t generation;
  };
  kj::Maybe<const Inode&> attr(uint64_t ino) const;
  void setAttr(const struct stat& attr, uint64_t generation);
  // Also drops the inode's extended attributes: one lock covers both.
  void dropAttr(uint64_t ino);
  // Our own atime update, ahead of the server's reply.
  void setAtime(uint64_t ino, const timespec& atime);

  // An extended attribute's value, or null for "no such attribute", if known. Valid under the
  // inode's ATTR lock (every xattr change takes it).
  kj::Maybe<kj::Maybe<const std::string&>> xattr(uint64_t ino, const std::string& name) const;
  void setXattr(uint64_t ino, std::string name, kj::Maybe<std::string> value);
  void dropXattr(uint64_t ino, const std::string& name);

  // The inode `name` in `dir` names (0: none), if known.
  kj::Maybe<uint64_t> entry(uint64_t dir, const std::string& name) const;
  void setEntry(uint64_t dir, std::string name, uint64_t ino);
  void dropEntry(uint64_t dir, const std::string& name);
  void dropDir(uint64_t dir);
  // Changes whenever one of the directory's cached names does (0: nothing cached since the
  // directory was last dropped): what was read of it alongside is still the directory while
  // this is, and not 0.
  uint64_t dirStamp(uint64_t dir) const;
  // Every name of the directory is cached: a name not found does not exist. Ignored once a
  // name of it was left out for want of room (until the directory is dropped).
  void markComplete(uint64_t dir);
  bool complete(uint64_t dir) const { return complete_.count(dir) > 0; }
  // Complete, and every name known not to exist: the directory is empty.
  bool knownEmpty(uint64_t dir) const;
  // The inode has no extended attributes at all (it was just made).
  void markNoXattrs(uint64_t ino);

  void clear();
  size_t attrs() const { return attrs_.size(); }
  size_t names() const { return names_; }

private:
  std::unordered_map<uint64_t, Inode> attrs_;
  struct Xattrs {
    std::unordered_map<std::string, kj::Maybe<std::string>> known;
    bool all = false;  // `known` is every attribute there is
  };
  std::unordered_map<uint64_t, Xattrs> xattrs_;
  std::unordered_map<uint64_t, std::unordered_map<std::string, uint64_t>> dirs_;
  std::unordered_set<uint64_t> complete_;
  std::unordered_set<uint64_t> partial_;  // some name left out since last dropped
  size_t maxNames_;
  size_t names_ = 0;
  void touched(uint64_t dir) { stamps_[dir] = ++changes_; }
  // Only for directories with something cached (they go with dropDir): bounded by the locks,
  // not by how many directories were ever looked at.
  std::unordered_map<uint64_t, uint64_t> stamps_;
  uint64_t changes_ = 0;  // never reset: a stamp once handed out is never handed out again
};

}  // namespace cairn
