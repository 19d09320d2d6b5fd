#include "fusefs/write_behind.h"

namespace cairn {

size_t WriteBehind::add(uint64_t ino, uint64_t offset, kj::Array<kj::byte> data) {
  auto& f = files_[ino];
  size_t n = data.size();
  f.end = kj::max(f.end, offset + n);
  f.queue.end = kj::max(f.queue.end, offset + n);
  clock_gettime(CLOCK_REALTIME, &f.mtime);
  f.queue.writes.push_back(Write{offset, kj::mv(data)});
  f.bytes += n;
  total_ += n;
  return f.bytes;
}

WriteBehind::Batch WriteBehind::take(uint64_t ino) {
  auto it = files_.find(ino);
  if (it == files_.end()) return {};
  auto& f = it->second;
  Batch out = kj::mv(f.queue);
  f.queue = Batch{};
  f.inFlight += f.bytes;
  f.bytes = 0;
  return out;
}

std::vector<uint64_t> WriteBehind::files() const {
  std::vector<uint64_t> out;
  for (auto& [ino, f] : files_) {
    if (f.bytes > 0 || f.inFlight > 0) out.push_back(ino);
  }
  return out;
}

bool WriteBehind::queued(uint64_t ino) const {
  auto it = files_.find(ino);
  return it != files_.end() && (it->second.bytes > 0 || it->second.inFlight > 0);
}

void WriteBehind::sent(uint64_t ino, size_t bytes, int error) {
  auto it = files_.find(ino);
  if (it == files_.end()) return;
  auto& f = it->second;
  f.inFlight -= kj::min(bytes, f.inFlight);
  total_ -= kj::min(bytes, total_);
  if (error != 0 && f.error == 0) f.error = error;
  // The entry stays until doneSending: its `sending` is the promise running this.
}

int WriteBehind::takeError(uint64_t ino) {
  auto it = files_.find(ino);
  if (it == files_.end()) return 0;
  int e = it->second.error;
  it->second.error = 0;
  return e;
}

void WriteBehind::adjust(struct stat& attr) const {
  auto it = files_.find(attr.st_ino);
  if (it == files_.end() || (it->second.bytes == 0 && it->second.inFlight == 0)) return;
  auto& f = it->second;
  if (f.end > uint64_t(attr.st_size)) attr.st_size = off_t(f.end);
  auto newer = [](const timespec& a, const timespec& b) {
    return a.tv_sec > b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec > b.tv_nsec);
  };
  if (newer(f.mtime, attr.st_mtim)) attr.st_mtim = f.mtime;
  if (newer(f.mtime, attr.st_ctim)) attr.st_ctim = f.mtime;
}

kj::Maybe<kj::ForkedPromise<void>&> WriteBehind::sending(uint64_t ino) {
  auto it = files_.find(ino);
  if (it == files_.end()) return nullptr;
  return it->second.sending;
}

void WriteBehind::setSending(uint64_t ino, kj::ForkedPromise<void> promise) {
  files_[ino].sending = kj::mv(promise);
}

void WriteBehind::doneSending(uint64_t ino) {
  auto it = files_.find(ino);
  if (it == files_.end()) return;
  auto& f = it->second;
  f.sending = nullptr;
  if (f.bytes == 0 && f.inFlight == 0 && f.error == 0) files_.erase(it);
}

}  // namespace cairn
