#include "fusefs/app_locks.h"

namespace cairn {

void AppLocks::set(const Key& key, const Range& range) {
  std::vector<Range> kept;
  auto it = held_.find(key);
  if (it != held_.end()) {
    for (const Range& r : it->second) {
      if (r.end < range.start || r.start > range.end) {
        kept.push_back(r);
        continue;
      }
      // What sticks out on either side of the new range stays as it was.
      if (r.start < range.start) kept.push_back(Range{r.start, range.start - 1, r.type, r.pid});
      if (r.end > range.end) kept.push_back(Range{range.end + 1, r.end, r.type, r.pid});
    }
  }
  if (range.type != UNLOCK) kept.push_back(range);
  if (kept.empty()) {
    held_.erase(key);
  } else {
    held_[key] = std::move(kept);
  }
}

size_t AppLocks::size() const {
  size_t n = 0;
  for (auto& [key, ranges] : held_) n += ranges.size();
  return n;
}

}  // namespace cairn
