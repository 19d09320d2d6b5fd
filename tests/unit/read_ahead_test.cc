// Read-ahead alone, with a fake fetch: what it fetches, what it serves, what it drops.
#include <gtest/gtest.h>

#include <kj/async.h>
#include <kj/debug.h>

#include <string>
#include <vector>

#include "fusefs/read_ahead.h"

namespace cairn {
namespace {

constexpr uint64_t MiB = ReadAhead::CHUNK;

// A file whose byte at offset o is o % 251, fetched through a counter.
struct Fake {
  std::vector<std::pair<uint64_t, size_t>> fetched;
  ReadAhead ahead{[this](uint64_t, uint64_t offset, size_t length) {
    fetched.emplace_back(offset, length);
    auto out = kj::heapArray<kj::byte>(length);
    for (size_t i = 0; i < length; ++i) out[i] = kj::byte((offset + i) % 251);
    return kj::Promise<kj::Array<kj::byte>>(kj::mv(out));
  }};
};

bool right(const kj::Array<kj::byte>& data, uint64_t offset) {
  for (size_t i = 0; i < data.size(); ++i) {
    if (data[i] != kj::byte((offset + i) % 251)) return false;
  }
  return true;
}

TEST(ReadAhead, ASequentialReaderIsServedFromChunksFetchedAhead) {
  kj::EventLoop loop;
  kj::WaitScope ws(loop);
  Fake f;
  uint64_t size = 10 * MiB + 123;
  // The first read is the caller's; the second, continuing it, starts the window.
  EXPECT_TRUE(f.ahead.read(1, 0, MiB, size, true) == nullptr);
  EXPECT_TRUE(f.ahead.read(1, MiB, MiB, size, true) == nullptr);
  ASSERT_EQ(f.fetched.size(), ReadAhead::WINDOW);
  EXPECT_EQ(f.fetched[0].first, 2 * MiB);
  for (uint64_t at = 2 * MiB; at < size; at += MiB) {
    auto got = f.ahead.read(1, at, MiB, size, true);
    ASSERT_TRUE(got != nullptr) << at;
    auto data = KJ_ASSERT_NONNULL(kj::mv(got)).wait(ws);
    EXPECT_EQ(data.size(), kj::min(MiB, size - at));
    EXPECT_TRUE(right(data, at));
  }
  // Every byte fetched once, the tail cut at the size.
  uint64_t total = 0;
  for (auto& [o, n] : f.fetched) total += n;
  EXPECT_EQ(total, size - 2 * MiB);
  EXPECT_LE(f.ahead.chunks(), ReadAhead::WINDOW);
}

TEST(ReadAhead, RandomReadsFetchNothingAheadAndDropForgets) {
  kj::EventLoop loop;
  kj::WaitScope ws(loop);
  Fake f;
  uint64_t size = 100 * MiB;
  EXPECT_TRUE(f.ahead.read(1, 5 * MiB, 4096, size, true) == nullptr);
  EXPECT_TRUE(f.ahead.read(1, 50 * MiB, 4096, size, true) == nullptr);
  EXPECT_TRUE(f.fetched.empty());
  // Without the lock (`ahead` false) nothing starts either.
  EXPECT_TRUE(f.ahead.read(2, 0, MiB, size, false) == nullptr);
  EXPECT_TRUE(f.ahead.read(2, MiB, MiB, size, false) == nullptr);
  EXPECT_TRUE(f.fetched.empty());
  EXPECT_TRUE(f.ahead.read(2, 2 * MiB, MiB, size, true) == nullptr);
  EXPECT_EQ(f.fetched.size(), ReadAhead::WINDOW);
  f.ahead.drop(2);
  EXPECT_EQ(f.ahead.chunks(), 0u);
  EXPECT_TRUE(f.ahead.read(2, 3 * MiB, MiB, size, false) == nullptr);
}

TEST(ReadAhead, ReadsAcrossChunks) {
  kj::EventLoop loop;
  kj::WaitScope ws(loop);
  Fake f;
  uint64_t size = 8 * MiB;
  f.ahead.read(3, 0, 100, size, true);
  f.ahead.read(3, 100, 100, size, true);  // fetches chunks 0..3
  auto got = f.ahead.read(3, MiB - 10, 20, size, true);
  ASSERT_TRUE(got != nullptr);
  auto data = KJ_ASSERT_NONNULL(kj::mv(got)).wait(ws);
  EXPECT_EQ(data.size(), 20u);
  EXPECT_TRUE(right(data, MiB - 10));
}

}  // namespace
}  // namespace cairn
