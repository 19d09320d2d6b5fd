#include <gtest/gtest.h>

#include "fusefs/striping.h"

namespace cairn {
namespace {

StripeLayout layout(uint32_t stripe, std::initializer_list<uint32_t> targets) {
  StripeLayout l;
  l.objectId = 9;
  l.stripeSize = stripe;
  l.targets = kj::heapArray<uint32_t>(targets.size());
  size_t i = 0;
  for (auto t : targets) l.targets[i++] = t;
  return l;
}

// Where one byte lives, computed the slow way.
std::pair<uint32_t, uint64_t> place(const StripeLayout& l, uint64_t off) {
  uint64_t stripe = off / l.stripeSize;
  uint32_t slot = uint32_t(stripe % l.targets.size());
  return {slot, (stripe / l.targets.size()) * l.stripeSize + off % l.stripeSize};
}

TEST(Striping, PiecesCoverTheRangeInOrderAndMatchBytePlacement) {
  for (auto& l : {layout(4096, {0}), layout(4096, {3, 1, 2}), layout(65536, {0, 1})}) {
    for (uint64_t off : {0ull, 1ull, 4095ull, 4096ull, 100000ull, 1ull << 33}) {
      for (uint64_t len : {1ull, 4096ull, 10000ull, 300000ull}) {
        auto pieces = splitRange(l, off, len);
        uint64_t at = off;
        for (auto& p : pieces) {
          EXPECT_EQ(p.fileOffset, at);
          EXPECT_GT(p.length, 0u);
          EXPECT_LE(p.length, l.stripeSize);
          auto [slot, objOff] = place(l, p.fileOffset);
          EXPECT_EQ(p.slot, slot);
          EXPECT_EQ(p.objectOffset, objOff);
          // The whole piece stays in one stripe.
          EXPECT_EQ(place(l, p.fileOffset + p.length - 1).first, slot);
          at += p.length;
        }
        EXPECT_EQ(at, off + len);
      }
    }
  }
}

TEST(Striping, EmptyRangeHasNoPieces) {
  EXPECT_EQ(splitRange(layout(4096, {0, 1}), 123, 0).size(), 0u);
}

TEST(Striping, ObjectSizesMatchTheLastByteOnEachTarget) {
  for (auto& l : {layout(4096, {0}), layout(4096, {0, 1, 2}), layout(8192, {5, 6})}) {
    for (uint64_t size = 0; size < 5 * 8192 * 3; size += 997) {
      for (uint32_t slot = 0; slot < l.targets.size(); ++slot) {
        uint64_t want = 0;
        // The object ends after the last byte of the file placed on it.
        for (uint64_t off = size; off-- > 0;) {
          auto [s, objOff] = place(l, off);
          if (s == slot) {
            want = objOff + 1;
            break;
          }
          if (size - off > 4 * l.stripeSize) break;
        }
        EXPECT_EQ(objectSizeFor(l, size, slot), want) << size << " slot " << slot;
      }
    }
  }
}

TEST(Striping, RejectsEmptyLayouts) {
  StripeLayout l;
  EXPECT_ANY_THROW(splitRange(l, 0, 10));
}

}  // namespace
}  // namespace cairn
