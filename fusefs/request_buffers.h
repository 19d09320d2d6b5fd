// The buffers the mount reads FUSE requests into. A large write's buffer goes on with its
// bytes into the write-behind queue instead of being copied (FuseLoop::takeWriteBytes), and
// comes back here once the queue is done with it. A few are kept for the next requests: the
// kernel copies a request into pages that are already mapped, where a freshly allocated MiB
// would be faulted in page by page, which costs as much as the copy saved.
#pragma once

#include <kj/array.h>
#include <kj/refcount.h>
#include <kj/vector.h>

namespace cairn {

class RequestBuffers final : public kj::Refcounted {
public:
  // Every buffer has `size` bytes (at least what libfuse reads a request into).
  explicit RequestBuffers(size_t size) : size_(size) {}
  ~RequestBuffers() noexcept;
  KJ_DISALLOW_COPY(RequestBuffers);

  size_t size() const { return size_; }

  // A buffer of size() bytes from malloc (libfuse may free it), or nullptr when malloc fails.
  void* take();

  // An array over `bytes`, which lie inside `block` (from malloc, of size() bytes): disposing
  // of it gives `block` back.
  kj::Array<kj::byte> lend(void* block, kj::ArrayPtr<kj::byte> bytes);

  // Frees the spares (the mount is idle: IdleHeapTrim).
  void dropSpares();

private:
  class Loan;
  void give(void* block);

  // Spares kept when nothing is waiting for them: a write's burst finds its first buffers
  // ready, and an idle mount holds at most this many.
  static constexpr size_t MAX_SPARES = 8;

  size_t size_;
  kj::Vector<void*> spares_;
};

}  // namespace cairn
