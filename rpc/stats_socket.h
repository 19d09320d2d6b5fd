// Where a mount serves its counters: one local socket per mount point, known to the mount
// (fusefs/client_metrics.cc) and to `cairnctl --mount MNT stats` alike.
#pragma once

#include <kj/string.h>
#include <kj/vector.h>

namespace cairn {

// "/mnt/cairn" -> "/run/cairn/mnt_cairn.sock".
inline kj::String statsSocketPath(kj::StringPtr mountPoint) {
  kj::Vector<char> name;
  for (char c : mountPoint) {
    if (c == '/') {
      if (name.size() > 0) name.add('_');
    } else {
      name.add(c);
    }
  }
  return kj::str("/run/cairn/", name.releaseAsArray(), ".sock");
}

}  // namespace cairn
