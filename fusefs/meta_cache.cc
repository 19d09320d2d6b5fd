#include "fusefs/meta_cache.h"

#include <kj/debug.h>

namespace cairn {

kj::Maybe<const MetaCache::Inode&> MetaCache::attr(uint64_t ino) const {
  auto it = attrs_.find(ino);
  if (it == attrs_.end()) return nullptr;
  return it->second;
}

void MetaCache::setAttr(const struct stat& attr, uint64_t generation) {
  attrs_[attr.st_ino] = Inode{attr, generation};
}

void MetaCache::setAtime(uint64_t ino, const timespec& atime) {
  auto it = attrs_.find(ino);
  if (it != attrs_.end()) it->second.attr.st_atim = atime;
}

void MetaCache::dropAttr(uint64_t ino) {
  attrs_.erase(ino);
  xattrs_.erase(ino);
}

kj::Maybe<kj::Maybe<const std::string&>> MetaCache::xattr(uint64_t ino,
                                                          const std::string& name) const {
  using Known = kj::Maybe<kj::Maybe<const std::string&>>;
  auto i = xattrs_.find(ino);
  if (i == xattrs_.end()) return nullptr;
  auto x = i->second.known.find(name);
  if (x == i->second.known.end()) {
    if (i->second.all) return Known(kj::Maybe<const std::string&>(nullptr));
    return nullptr;
  }
  KJ_IF_MAYBE (value, x->second) {
    return kj::Maybe<const std::string&>(*value);
  }
  return Known(kj::Maybe<const std::string&>(nullptr));
}

void MetaCache::markNoXattrs(uint64_t ino) {
  auto& x = xattrs_[ino];
  x.known.clear();
  x.all = true;
}

void MetaCache::setXattr(uint64_t ino, std::string name, kj::Maybe<std::string> value) {
  xattrs_[ino].known[kj::mv(name)] = kj::mv(value);
}

void MetaCache::dropXattr(uint64_t ino, const std::string& name) {
  auto i = xattrs_.find(ino);
  if (i != xattrs_.end()) {
    i->second.known.erase(name);
    i->second.all = false;
  }
}

kj::Maybe<uint64_t> MetaCache::entry(uint64_t dir, const std::string& name) const {
  auto d = dirs_.find(dir);
  if (d == dirs_.end()) return nullptr;
  auto e = d->second.find(name);
  if (e == d->second.end()) return nullptr;
  return e->second;
}

void MetaCache::setEntry(uint64_t dir, std::string name, uint64_t ino) {
  auto& names = dirs_[dir];
  auto it = names.find(name);
  if (it != names.end()) {
    if (it->second != ino) touched(dir);
    it->second = ino;
    return;
  }
  touched(dir);
  if (names_ >= maxNames_) {
    // A name left out: "not found" no longer means "none", not even once a listing ends.
    complete_.erase(dir);
    partial_.insert(dir);
    return;
  }
  names.emplace(kj::mv(name), ino);
  ++names_;
}

void MetaCache::dropEntry(uint64_t dir, const std::string& name) {
  touched(dir);
  auto d = dirs_.find(dir);
  complete_.erase(dir);
  if (d == dirs_.end()) return;
  names_ -= d->second.erase(name);
}

void MetaCache::dropDir(uint64_t dir) {
  // Its stamp goes too: a later one is a new number, so nothing read before matches it.
  stamps_.erase(dir);
  complete_.erase(dir);
  partial_.erase(dir);
  auto d = dirs_.find(dir);
  if (d == dirs_.end()) return;
  names_ -= d->second.size();
  dirs_.erase(d);
}

uint64_t MetaCache::dirStamp(uint64_t dir) const {
  auto it = stamps_.find(dir);
  return it == stamps_.end() ? 0 : it->second;
}

bool MetaCache::knownEmpty(uint64_t dir) const {
  if (complete_.count(dir) == 0) return false;
  auto d = dirs_.find(dir);
  if (d == dirs_.end()) return true;
  for (auto& [name, ino] : d->second) {
    if (ino != 0) return false;
  }
  return true;
}

void MetaCache::markComplete(uint64_t dir) {
  if (partial_.count(dir) > 0) return;
  dirs_[dir];
  complete_.insert(dir);
}

void MetaCache::clear() {
  attrs_.clear();
  xattrs_.clear();
  dirs_.clear();
  complete_.clear();
  partial_.clear();
  names_ = 0;
  stamps_.clear();
}

}  // namespace cairn
