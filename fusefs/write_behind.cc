#include "fusefs/write_behind.h"

#include <kj/debug.h>

#include "rpc/cairn.capnp.h"
#include "rpc/time_order.h"

namespace cairn {

void WriteBehind::add(uint64_t ino, uint64_t offset, kj::Array<kj::byte> data) {
  auto& f = files_[ino];
  size_t n = data.size();
  f.end = kj::max(f.end, offset + n);
  f.queue.begin = kj::min(f.queue.begin, offset);
  f.queue.end = kj::max(f.queue.end, offset + n);
  clock_gettime(CLOCK_REALTIME, &f.queuedMtime);
  f.queue.writes.push_back(Write{offset, kj::mv(data)});
  f.bytes += n;
  total_ += n;
}

void WriteBehind::setAttr(uint64_t ino, const AttrChange& change) {
  auto& f = files_[ino];
  KJ_IF_MAYBE (queued, f.queue.attr) {
    auto& a = *queued;
    constexpr uint32_t ATIME = rpc::SET_ATIME | rpc::SET_ATIME_NOW;
    constexpr uint32_t MTIME = rpc::SET_MTIME | rpc::SET_MTIME_NOW;
    // An access-time update alone is no change of the inode; with anything else it is.
    bool accessOnly = (a.valid & rpc::SET_ACCESS) && (change.valid & rpc::SET_ACCESS);
    a.valid &= ~rpc::SET_ACCESS;
    // A time set again replaces the earlier one, explicit or "now".
    if (change.valid & ATIME) {
      a.valid &= ~ATIME;
      a.atime = change.atime;
    }
    if (change.valid & MTIME) {
      a.valid &= ~MTIME;
      a.mtime = change.mtime;
    }
    if (change.valid & rpc::SET_MODE) a.mode = change.mode;
    if (change.valid & rpc::SET_UID) a.uid = change.uid;
    if (change.valid & rpc::SET_GID) a.gid = change.gid;
    a.valid |= (change.valid & ~rpc::SET_ACCESS) | (accessOnly ? rpc::SET_ACCESS : 0);
    // A read's access time joins a change someone asked for as theirs (they could set the
    // time themselves), and does not change the inode.
    if (change.valid & rpc::SET_ACCESS) return;
    a.callerUid = change.callerUid;
    a.callerGid = change.callerGid;
    a.callerPid = change.callerPid;
    a.at = change.at;
  } else {
    f.queue.attr = change;
  }
}

bool WriteBehind::attrQueued(uint64_t ino) const {
  auto it = files_.find(ino);
  return it != files_.end() && it->second.queue.attr != nullptr;
}

WriteBehind::Batch WriteBehind::take(uint64_t ino, size_t limit) {
  auto it = files_.find(ino);
  if (it == files_.end()) return {};
  auto& f = it->second;
  // The first writes, up to the limit (whole writes, at least one); a change of attributes
  // goes with the last of them.
  auto& queued = f.queue.writes;
  size_t n = 0, taken = 0;
  while (n < queued.size() && taken < limit) taken += queued[n++].data.size();
  Batch out;
  if (n == queued.size()) {
    out = kj::mv(f.queue);
    f.queue = Batch{};
  } else {
    out.writes.reserve(n);
    for (size_t i = 0; i < n; i++) out.writes.push_back(kj::mv(queued[i]));
    queued.erase(queued.begin(), queued.begin() + n);
    auto span = [](Batch& b) {
      b.begin = UINT64_MAX;
      b.end = 0;
      for (auto& w : b.writes) {
        b.begin = kj::min(b.begin, w.offset);
        b.end = kj::max(b.end, w.offset + w.data.size());
      }
    };
    span(out);
    span(f.queue);
  }
  if (taken > 0) f.flightMtime = f.queuedMtime;
  f.inFlight += taken;
  f.bytes -= taken;
  KJ_IF_MAYBE (a, out.attr) {
    f.attrInFlight = *a;
  }
  return out;
}

std::vector<uint64_t> WriteBehind::files() const {
  std::vector<uint64_t> out;
  for (auto& [ino, f] : files_) {
    if (f.pending()) out.push_back(ino);
  }
  return out;
}

size_t WriteBehind::queuedBytes(uint64_t ino) const {
  auto it = files_.find(ino);
  return it == files_.end() ? 0 : it->second.bytes;
}

bool WriteBehind::last(uint64_t ino, uint64_t id) const {
  auto it = files_.find(ino);
  if (it == files_.end()) return false;
  auto& f = it->second;
  return f.bytes == 0 && f.queue.attr == nullptr && f.flights.size() == 1 && f.flights[0].id == id;
}

bool WriteBehind::queued(uint64_t ino) const {
  auto it = files_.find(ino);
  return it != files_.end() && it->second.pending();
}

void WriteBehind::sent(uint64_t ino, size_t bytes, bool attr, int error) {
  auto it = files_.find(ino);
  if (it == files_.end()) return;
  auto& f = it->second;
  f.inFlight -= kj::min(bytes, f.inFlight);
  if (attr) f.attrInFlight = nullptr;
  total_ -= kj::min(bytes, total_);
  if (error != 0 && f.error == 0) f.error = error;
  // The entry stays until doneSending: its `sending` is the promise running this.
}

void WriteBehind::fail(uint64_t ino, int error) {
  auto it = files_.find(ino);
  if (it == files_.end()) return;
  size_t bytes = it->second.bytes;
  bool attr = it->second.queue.attr != nullptr;
  if (bytes == 0 && !attr) return;
  take(ino);
  sent(ino, bytes, attr, error);
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
  if (it == files_.end() || !it->second.pending()) return;
  auto& f = it->second;
  if (f.bytes > 0 || f.inFlight > 0) {
    if (f.end > uint64_t(attr.st_size)) attr.st_size = off_t(f.end);
  }
  auto wrote = [&](const timespec& at) {
    if (later(at, attr.st_mtim)) attr.st_mtim = at;
    if (later(at, attr.st_ctim)) attr.st_ctim = at;
  };
  auto changed = [&](const AttrChange& a) {
    if (a.valid & rpc::SET_MODE) attr.st_mode = (attr.st_mode & S_IFMT) | (a.mode & 07777);
    if (a.valid & rpc::SET_UID) attr.st_uid = a.uid;
    if (a.valid & rpc::SET_GID) attr.st_gid = a.gid;
    if (a.valid & (rpc::SET_ATIME | rpc::SET_ATIME_NOW)) attr.st_atim = a.atime;
    if (a.valid & (rpc::SET_MTIME | rpc::SET_MTIME_NOW)) attr.st_mtim = a.mtime;
    if (!(a.valid & rpc::SET_ACCESS) && later(a.at, attr.st_ctim)) attr.st_ctim = a.at;
  };
  // In the order the application made them: a batch's writes come before its change (a write
  // after a queued change starts a batch of its own), and the batch being sent before the queue.
  if (f.inFlight > 0) wrote(f.flightMtime);
  KJ_IF_MAYBE (a, f.attrInFlight) {
    changed(*a);
  }
  if (f.bytes > 0) wrote(f.queuedMtime);
  KJ_IF_MAYBE (a, f.queue.attr) {
    changed(*a);
  }
}

WriteBehind::Wait WriteBehind::waitFor(const File& f) const {
  if (f.flights.empty() || (f.bytes == 0 && f.queue.attr == nullptr)) return Wait::NONE;
  bool ordered = f.queue.attr != nullptr;
  for (auto& flight : f.flights) {
    auto& s = flight.span;
    ordered = ordered || s.attr || (f.bytes > 0 && s.begin < f.queue.end && f.queue.begin < s.end);
  }
  if (ordered) return Wait::ALL;
  return f.flights.size() >= MAX_FLIGHTS ? Wait::FIRST : Wait::NONE;
}

bool WriteBehind::mayLeave(uint64_t ino) const {
  auto it = files_.find(ino);
  return it == files_.end() || waitFor(it->second) == Wait::NONE;
}

kj::Maybe<kj::Promise<void>> WriteBehind::mustWait(uint64_t ino) {
  auto it = files_.find(ino);
  if (it == files_.end()) return nullptr;
  switch (waitFor(it->second)) {
    case Wait::NONE:
      return nullptr;
    case Wait::FIRST:
      return firstSent(ino);
    case Wait::ALL:
      return allSent(ino);
  }
  KJ_UNREACHABLE;
}

kj::Maybe<kj::Promise<void>> WriteBehind::firstSent(uint64_t ino) {
  auto it = files_.find(ino);
  if (it == files_.end() || it->second.flights.empty()) return nullptr;
  return it->second.flights.front().done.addBranch();
}

kj::Maybe<kj::Promise<void>> WriteBehind::allSent(uint64_t ino) {
  auto it = files_.find(ino);
  if (it == files_.end() || it->second.flights.empty()) return nullptr;
  auto branches = kj::heapArrayBuilder<kj::Promise<void>>(it->second.flights.size());
  for (auto& flight : it->second.flights) branches.add(flight.done.addBranch());
  return kj::joinPromises(branches.finish());
}

void WriteBehind::setSending(uint64_t ino, uint64_t id, Span span, kj::ForkedPromise<void> done) {
  files_[ino].flights.push_back(Flight{id, span, kj::mv(done)});
}

void WriteBehind::doneSending(uint64_t ino, uint64_t id) {
  auto it = files_.find(ino);
  if (it == files_.end()) return;
  auto& f = it->second;
  auto& flights = f.flights;
  for (auto i = flights.begin(); i != flights.end(); ++i) {
    if (i->id == id) {
      flights.erase(i);
      break;
    }
  }
  if (flights.empty() && !f.pending() && f.error == 0) files_.erase(it);
}

}  // namespace cairn
