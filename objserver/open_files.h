// The open-file table of a metadata server: which client has which inode open, under the handle
// the client chose. It lives in memory only: after a restart clients re-open (open replay) what
// they had open, with the same handles, while the orphans they may hold wait for them.
#pragma once

#include <kj/array.h>
#include <kj/string.h>

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace cairn {

class OpenFiles {
public:
  // Returns false if the client already had this handle open (a replay or a resend).
  bool open(const std::string& client, uint64_t handle, uint64_t ino);
  // Returns the inode the handle had open, or 0 if it was not open.
  uint64_t close(const std::string& client, uint64_t handle);
  // Closes every handle of a client; returns the inodes that were open.
  std::vector<uint64_t> closeAll(const std::string& client);
  bool isOpen(uint64_t ino) const { return counts_.count(ino) > 0; }
  size_t countFor(const std::string& client) const;
  size_t total() const { return handles_.size(); }

private:
  std::map<std::pair<std::string, uint64_t>, uint64_t> handles_;
  std::unordered_map<uint64_t, uint32_t> counts_;
};

}  // namespace cairn
