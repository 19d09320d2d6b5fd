// The kernel's read-ahead window for this mount. FUSE caps it at the system default (128 KiB):
// the max_readahead a filesystem asks for at FUSE_INIT can only lower the window of the mount's
// backing device, never raise it. With 128 KiB a buffered 1 MiB read became eight READ requests,
// each waiting for the one before (every request a round trip through this process); the
// backing device's read_ahead_kb in sysfs is the one place to raise it.
#pragma once

#include <kj/string.h>

#include <cstdint>

namespace cairn {

// Sets the read-ahead window of the FUSE mount at `mountPoint` (found in /proc/self/mountinfo,
// without a request to the mount itself, which is not served yet) to `kib`. Returns false, after
// logging why, if it could not (not root, no sysfs): the mount works, with smaller reads.
bool setKernelReadahead(kj::StringPtr mountPoint, uint32_t kib);

}  // namespace cairn
