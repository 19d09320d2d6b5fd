#include "fusefs/striping.h"

#include <kj/debug.h>

namespace cairn {

kj::Vector<Piece> splitRange(const StripeLayout& layout, uint64_t offset, uint64_t length) {
  KJ_REQUIRE(layout.stripeSize > 0 && layout.targets.size() > 0, "empty layout");
  const uint64_t s = layout.stripeSize;
  const uint64_t n = layout.targets.size();
  kj::Vector<Piece> pieces;
  uint64_t pos = offset, end = offset + length;
  while (pos < end) {
    uint64_t stripe = pos / s;
    uint64_t within = pos % s;
    uint64_t len = kj::min(s - within, end - pos);
    pieces.add(Piece{uint32_t(stripe % n), (stripe / n) * s + within, pos, len});
    pos += len;
  }
  return pieces;
}

uint64_t objectSizeFor(const StripeLayout& layout, uint64_t fileSize, uint32_t slot) {
  const uint64_t s = layout.stripeSize;
  const uint64_t n = layout.targets.size();
  KJ_REQUIRE(s > 0 && slot < n, "bad layout or slot", s, slot, n);
  uint64_t full = fileSize / s;  // complete stripes
  uint64_t rem = fileSize % s;
  // Complete stripes that fall on this slot, each a whole stripe of its object.
  uint64_t mine = full / n + (slot < full % n ? 1 : 0);
  uint64_t size = mine * s;
  // The partial last stripe, if it is ours, sits right after them.
  if (rem > 0 && full % n == slot) size = (full / n) * s + rem;
  return size;
}

}  // namespace cairn
