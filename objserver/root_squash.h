// Root squash, a setting of the metadata server and so of its filesystem (`--root-squash`):
// uid 0 asserted by a client that is not trusted (`--trust-root NAME`, the name in the
// client's certificate) acts as an unprivileged id (`--squash-id`, 65534:65534 by default).
//
// Why the server checks permissions for squashed callers only: clients mount with
// default_permissions, so their kernel has checked every other caller already, with the
// supplementary groups the server never sees. A squashed root passed its kernel's check as
// root; only the server knows it is somebody else now, and that somebody (nobody:nogroup) has
// no supplementary groups, so the server's check is exact (objserver/permission_check.h).
#pragma once

#include <kj/array.h>
#include <kj/string.h>

#include <cstdint>

#include "rpc/transport.h"

namespace cairn {

struct RootSquash {
  bool enabled = false;
  uint32_t uid = 65534;
  uint32_t gid = 65534;
  kj::Array<kj::String> trusted;  // client names whose root stays root

  // Whether the root of a client connecting as `peer` is squashed. In plain text nobody's
  // name is known, so every client's is (when enabled).
  bool squashes(const Peer& peer) const;
  // "off", or "65534:65534 (trusted: a, b)" for the start-up log.
  kj::String describe() const;
};

// Parses "UID:GID".
void parseSquashId(kj::StringPtr text, RootSquash& squash);

}  // namespace cairn
