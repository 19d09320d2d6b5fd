#include "objserver/open_files.h"

namespace cairn {

bool OpenFiles::open(const std::string& client, uint64_t handle, uint64_t ino) {
  auto [it, added] = handles_.emplace(std::make_pair(client, handle), ino);
  if (added) counts_[ino]++;
  return added;
}

uint64_t OpenFiles::close(const std::string& client, uint64_t handle) {
  auto it = handles_.find(std::make_pair(client, handle));
  if (it == handles_.end()) return 0;
  uint64_t ino = it->second;
  handles_.erase(it);
  if (--counts_[ino] == 0) counts_.erase(ino);
  return ino;
}

std::vector<uint64_t> OpenFiles::closeAll(const std::string& client) {
  std::vector<uint64_t> inos;
  auto it = handles_.lower_bound(std::make_pair(client, uint64_t(0)));
  while (it != handles_.end() && it->first.first == client) {
    inos.push_back(it->second);
    if (--counts_[it->second] == 0) counts_.erase(it->second);
    it = handles_.erase(it);
  }
  return inos;
}

size_t OpenFiles::countFor(const std::string& client) const {
  size_t n = 0;
  for (auto it = handles_.lower_bound(std::make_pair(client, uint64_t(0)));
       it != handles_.end() && it->first.first == client; ++it) {
    ++n;
  }
  return n;
}

}  // namespace cairn
