// The heap both sides run with. Every data message (up to a few MiB: a 1 MiB read reply, a
// 4 MiB writeMany, LMDB's dirty pages of a commit) is a large allocation. By default glibc maps
// each from the kernel and unmaps it when freed, so every byte moved first costs a page fault and
// the zeroing of a fresh page: on these VMs ~20% of a sequential write's time. Kept in the heap
// instead, the buffers are reused. What stays mapped is bounded by the peak of what was in use.
#pragma once

#include <malloc.h>

namespace cairn {

inline void keepLargeBuffers() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);   // glibc's largest; larger ones are rare (a bulk read)
  mallopt(M_TRIM_THRESHOLD, 128 << 20);  // free space at the heap's top kept for reuse
}

}  // namespace cairn
