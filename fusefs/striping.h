// Where a file's bytes live. Stripe k of a file (k = offset / stripeSize) is on data target
// targets[k % n]; within that target's object it sits at (k / n) * stripeSize. Pure arithmetic,
// tested on its own (tests/unit/striping_test.cc).
#pragma once

#include <kj/array.h>
#include <kj/vector.h>

#include <cstdint>

namespace cairn {

struct StripeLayout {
  uint64_t objectId = 0;
  uint32_t stripeSize = 0;
  kj::Array<uint32_t> targets;  // data target indices
};

struct Piece {
  uint32_t slot;          // position in StripeLayout::targets
  uint64_t objectOffset;  // offset within that target's object
  uint64_t fileOffset;
  uint64_t length;
};

// Splits [offset, offset + length) into per-target pieces, in file order; adjacent stripes on
// the same target are not merged (each piece is at most one stripe).
kj::Vector<Piece> splitRange(const StripeLayout& layout, uint64_t offset, uint64_t length);

// How many bytes the object in `slot` holds when the file is `fileSize` bytes long.
uint64_t objectSizeFor(const StripeLayout& layout, uint64_t fileSize, uint32_t slot);

}  // namespace cairn
