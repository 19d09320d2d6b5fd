// The order of two timespecs, to the nanosecond: one comparison for every place that keeps a
// time from going back (the server's directory times, the mount's caches) and for the tests
// that check it.
#pragma once

#include <time.h>

namespace cairn {

// Whether a is later than b.
inline bool later(const timespec& a, const timespec& b) {
  return a.tv_sec > b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec > b.tv_nsec);
}

}  // namespace cairn
