// The kernel's caches of a mount, as the client core sees them: something to invalidate when
// the lock that covered them goes. Implemented by the notifier (FUSE notify calls on a thread of
// their own); the core knows no FUSE types.
#pragma once

#include <kj/async.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cairn {

class KernelCache {
public:
  virtual ~KernelCache() noexcept(false) = default;
  // Drops the kernel's attributes of an inode, and with `pages` its cached pages too (dirty
  // ones are written back through the filesystem first). Resolves when the kernel is done.
  virtual kj::Promise<void> invalidate(uint64_t ino, bool pages) = 0;
  // Whether the kernel can be trusted with directory entries: only where it can also be told
  // to drop lookups still in flight (the epoch, Linux 6.16 and later).
  virtual bool keepsNames() const = 0;
  // Drops the kernel's entries for these names of a directory; with `epoch`, also every entry
  // whose lookup began before now, for the lookups answered but not yet entered by the kernel.
  virtual kj::Promise<void> forgetNames(uint64_t dir, std::vector<std::string> names,
                                        bool epoch) = 0;
  // How many such drops took too long and were done by raising the epoch instead.
  virtual uint64_t epochFallbacks() const = 0;
};

}  // namespace cairn
