// The buffers the mount reads FUSE requests into. A large write's buffer goes on with its
// bytes into the write-behind queue instead of being copied (FuseLoop::takeWriteBytes), and
// comes back here once the queue is done with it. A few are kept for the next requests, so
// that the kernel copies into pages already mapped. (Measured, letting libfuse malloc a new
// buffer for each request did as well: the heap reuses freed blocks too, rpc/heap_tuning.h.
// What this adds is an explicit bound on the spares and their release when the mount idles.)
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
