// The heap both sides run with. Every data message (up to a few MiB: a 1 MiB read reply, a
// 4 MiB writeMany, LMDB's dirty pages of a commit) is a large allocation. By default glibc maps
// each from the kernel and unmaps it when freed, so every byte moved first costs a page fault and
// the zeroing of a fresh page: on these VMs ~20% of a sequential write's time. Kept in the heap
// instead, the buffers are reused. What stays mapped is bounded by the peak of what was in use,
// until the process has been idle a while (IdleHeapTrim).
#pragma once

#include <malloc.h>

#include <kj/async.h>
#include <kj/function.h>
#include <kj/timer.h>

namespace cairn {

inline void keepLargeBuffers() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);   // glibc's largest; larger ones are rare (a bulk read)
  mallopt(M_TRIM_THRESHOLD, 128 << 20);  // free space at the heap's top kept for reuse
}

// Gives the heap's free pages back to the kernel once the process has done nothing for a while,
// so that the buffers kept for reuse while data moves are not held by an idle process for ever
// (a mount after a 512 MiB write: 150 MiB anonymous, 12 MiB after a trim). `activity` counts
// the work done so far; `release` frees what is kept for reuse elsewhere first. A trim walks
// the heap (milliseconds): it runs once per idle spell, never while work comes in.
class IdleHeapTrim {
public:
  // Idle: no activity over one whole period, after some since the last trim.
  static constexpr kj::Duration PERIOD = 5 * kj::SECONDS;

  IdleHeapTrim(kj::Timer& timer, kj::Function<uint64_t()> activity, kj::Function<void()> release)
      : timer_(timer), activity_(kj::mv(activity)), release_(kj::mv(release)) {}
  KJ_DISALLOW_COPY(IdleHeapTrim);

  kj::Promise<void> run() {
    return timer_.afterDelay(PERIOD).then([this]() {
      uint64_t now = activity_();
      if (now != seen_) {
        seen_ = now;
        worked_ = true;
      } else if (worked_) {
        release_();
        malloc_trim(0);
        worked_ = false;
        ++trims_;
      }
      return run();
    });
  }
  uint64_t trims() const { return trims_; }

private:
  kj::Timer& timer_;
  kj::Function<uint64_t()> activity_;
  kj::Function<void()> release_;
  uint64_t seen_ = 0;
  bool worked_ = false;
  uint64_t trims_ = 0;
};

}  // namespace cairn
