// RequestBuffers: the buffers FUSE requests are read into, a large write's handed on with its
// bytes and given back when the write-behind queue lets go of them.
#include "fusefs/request_buffers.h"

#include <gtest/gtest.h>

#include <kj/string.h>

#include <cstring>
#include <set>
#include <string>

namespace cairn {
namespace {

constexpr size_t SIZE = 64 * 1024;

// A block from the pool with `text` at `offset`, lent out as the bytes of a write.
kj::Array<kj::byte> lendWrite(RequestBuffers& pool, void*& block, size_t offset,
                              kj::StringPtr text) {
  block = pool.take();
  EXPECT_NE(block, nullptr);
  auto* at = static_cast<kj::byte*>(block) + offset;
  memcpy(at, text.begin(), text.size());
  return pool.lend(block, kj::arrayPtr(at, text.size()));
}

TEST(RequestBuffers, ALentArrayIsTheWritesBytesInPlace) {
  auto pool = kj::refcounted<RequestBuffers>(SIZE);
  void* block;
  auto bytes = lendWrite(*pool, block, 80, "the bytes of a write");
  EXPECT_EQ(bytes.begin(), static_cast<kj::byte*>(block) + 80);
  // (Not a kj::StringPtr: the block's next byte is whatever malloc left there, not a NUL.)
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size()),
            "the bytes of a write");
}

TEST(RequestBuffers, ABlockComesBackWhenItsArrayGoes) {
  auto pool = kj::refcounted<RequestBuffers>(SIZE);
  void* block;
  auto bytes = lendWrite(*pool, block, 0, "x");
  bytes = nullptr;
  // The next request is read into the block given back, not a fresh one.
  void* next = pool->take();
  EXPECT_EQ(next, block);
  free(next);
}

TEST(RequestBuffers, AtMostEightSparesAreKept) {
  auto pool = kj::refcounted<RequestBuffers>(SIZE);
  kj::Vector<kj::Array<kj::byte>> loans;
  kj::Vector<void*> blocks;
  for (int i = 0; i < 12; ++i) {
    void* block;
    loans.add(lendWrite(*pool, block, 0, "x"));
    blocks.add(block);
  }
  for (auto& loan : loans) loan = nullptr;  // in order: the first eight kept, the rest freed
  std::set<void*> kept(blocks.begin(), blocks.begin() + 8);
  kj::Vector<void*> taken;
  for (int i = 0; i < 8; ++i) {
    taken.add(pool->take());
    EXPECT_EQ(kept.count(taken.back()), 1u) << i;
  }
  for (void* block : taken) free(block);
  // An idle mount frees what is left (ASan: each block once).
  pool->dropSpares();
}

TEST(RequestBuffers, ALoanOutlivesTheLoopThatMadeIt) {
  // The mount's loop goes before its client, whose queue may still hold a write's bytes.
  auto pool = kj::refcounted<RequestBuffers>(SIZE);
  void* block;
  auto bytes = lendWrite(*pool, block, 16, "still here");
  pool = nullptr;
  EXPECT_EQ(memcmp(bytes.begin(), "still here", bytes.size()), 0);
  bytes = nullptr;  // gives the block back to a pool only the loan kept (ASan: no leak, no use
                    // after free)
}

}  // namespace
}  // namespace cairn
