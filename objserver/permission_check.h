// POSIX permission rules, applied by the metadata server to the callers it checks: clients of
// a filesystem with root squash whose root it maps to an unprivileged id (objserver/
// root_squash.h). Every other caller was checked by its own kernel (default_permissions).
//
// The caller is an ordinary user with no supplementary groups and no capabilities, so each
// rule is the plain one: owner, then group, then other bits; EACCES for missing bits, EPERM for
// what only an owner or root may do (chmod, chown, explicit times, sticky directories, trusted
// xattrs, device nodes). The order of checks follows Linux where a script can tell the
// difference: `mkdir -p` over an existing directory gets EEXIST, not EACCES.
#pragma once

#include <cstdint>

#include "objserver/namespace.h"
#include "rpc/cairn.capnp.h"

namespace cairn {

// Who a metadata request acts as.
struct Caller {
  uint32_t uid = 0;
  uint32_t gid = 0;
  bool checked = false;  // the server checks its permissions (a squashed root)

  Creds creds() const { return Creds{uid, gid}; }
};

// Throws FsError (EACCES, EPERM, or what the lookup along the way found) unless `caller` may
// make `req`. Runs in the request's own transaction, before the request changes anything.
void checkPermitted(Namespace& ns, store::Txn& txn, rpc::MetaRequest::Reader req,
                    const Caller& caller);

// The mode a chmod by `caller` really sets: the set-group-ID bit goes when the caller is not in
// the file's group (Linux clears it quietly rather than failing).
uint32_t permittedMode(const InodeData& node, const Caller& caller, uint32_t mode);

}  // namespace cairn
