// Read-ahead for sequential reads: when a READ continues where the last one of the file ended,
// the next chunks are fetched from the data targets at once, so that they work while the kernel
// copies (the kernel sends one READ at a time: asynchronous reads are off, see fuse_ops.cc).
//
// What is fetched ahead belongs to the file's DATA lock, like the kernel's pages: the client
// drops it when the lock goes, and whenever it changes the file itself.
#pragma once

#include <kj/async.h>
#include <kj/function.h>
#include <kj/refcount.h>

#include <cstdint>
#include <map>
#include <unordered_map>

namespace cairn {

class ReadAhead {
public:
  static constexpr uint64_t CHUNK = 1 << 20;
  static constexpr uint64_t WINDOW = 4;     // chunks fetched ahead of a sequential reader
  static constexpr size_t MAX_CHUNKS = 64;  // over all files: bounds the memory used

  // Fetches [offset, offset + length) of a file (the length already cut at its size).
  using Fetch =
      kj::Function<kj::Promise<kj::Array<kj::byte>>(uint64_t ino, uint64_t offset, size_t length)>;
  explicit ReadAhead(Fetch fetch);
  KJ_DISALLOW_COPY(ReadAhead);

  // A READ of [offset, offset + length) of `ino`, whose size is `size`. Returns the bytes when
  // chunks fetched ahead cover the range (waiting for those still on their way); otherwise null,
  // and the caller reads as usual. With `ahead`, a read that continues the last one starts the
  // fetching of the chunks after it.
  kj::Maybe<kj::Promise<kj::Array<kj::byte>>> read(uint64_t ino, uint64_t offset, size_t length,
                                                   uint64_t size, bool ahead);
  void drop(uint64_t ino);
  void clear();
  size_t chunks() const { return total_; }

private:
  struct Chunk : public kj::Refcounted {
    kj::Array<kj::byte> data;
    kj::ForkedPromise<void> done = nullptr;
  };
  struct File {
    uint64_t lastEnd = 0;
    std::map<uint64_t, kj::Own<Chunk>> chunks;  // by chunk index
  };
  void prefetch(uint64_t ino, File& file, uint64_t from, uint64_t size);

  Fetch fetch_;
  std::unordered_map<uint64_t, File> files_;
  size_t total_ = 0;
};

}  // namespace cairn
