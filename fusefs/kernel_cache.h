// The kernel's caches of a mount, as the client core sees them: something to invalidate when
// the lock that covered them goes. Implemented by the notifier (FUSE notify calls on a thread of
// their own); the core knows no FUSE types.
#pragma once

#include <kj/async.h>

#include <cstdint>

namespace cairn {

class KernelCache {
public:
  virtual ~KernelCache() noexcept(false) = default;
  // Drops the kernel's attributes of an inode, and with `pages` its cached pages too (dirty
  // ones are written back through the filesystem first). Resolves when the kernel is done.
  virtual kj::Promise<void> invalidate(uint64_t ino, bool pages) = 0;
};

}  // namespace cairn
