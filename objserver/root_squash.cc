#include "objserver/root_squash.h"

#include <kj/debug.h>
#include <kj/vector.h>

namespace cairn {

bool RootSquash::squashes(const Peer& peer) const {
  if (!enabled) return false;
  if (peer.role != Peer::Role::CLIENT) return peer.role == Peer::Role::PLAINTEXT;
  for (auto& name : trusted) {
    if (name == peer.name) return false;
  }
  return true;
}

kj::String RootSquash::describe() const {
  if (!enabled) return kj::str("off");
  if (trusted.size() == 0) return kj::str(uid, ":", gid);
  return kj::str(uid, ":", gid, " (trusted: ", kj::strArray(trusted, ", "), ")");
}

void parseSquashId(kj::StringPtr text, RootSquash& squash) {
  size_t colon = KJ_REQUIRE_NONNULL(text.findFirst(':'), "--squash-id is UID:GID", text);
  // parseAs throws on anything but a whole number in range.
  uint32_t uid = kj::heapString(text.begin(), colon).parseAs<uint32_t>();
  uint32_t gid = text.slice(colon + 1).parseAs<uint32_t>();
  KJ_REQUIRE(uid != 0 && gid != 0, "--squash-id must not be root", text);
  squash.uid = uid;
  squash.gid = gid;
}

}  // namespace cairn
