#include "fusefs/open_table.h"

namespace cairn {

uint64_t OpenTable::add(File file) {
  uint64_t fh = next_++;
  files_.emplace(fh, kj::mv(file));
  return fh;
}

kj::Maybe<OpenTable::File&> OpenTable::find(uint64_t fh) {
  auto it = files_.find(fh);
  if (it == files_.end()) return nullptr;
  return it->second;
}

void OpenTable::remove(uint64_t fh) {
  files_.erase(fh);
}

}  // namespace cairn
