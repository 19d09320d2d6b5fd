// The metadata service: one capability per connected client session. A thin layer that turns a
// MetaRequest into calls on the Namespace (the logic) inside one transaction, and the result or
// the FsError into a MetaReply.
#pragma once

#include "objserver/permission_check.h"
#include "objserver/server.h"

namespace cairn {

class MetaService final : public rpc::MetaSession::Server {
public:
  MetaService(ServerContext& ctx, kj::Own<ClientSession> session);

  kj::Promise<void> call(CallContext context) override;

private:
  kj::Promise<void> dispatch(CallContext context);
  kj::Promise<void> run(CallContext context);
  // A read; it waits for writers elsewhere of what it read to send their writes, and reads
  // again (`taken`: the locks it took for that).
  kj::Promise<void> readReply(CallContext context, unsigned attempt, kj::Array<uint64_t> taken);
  // The PR locks a read must take first: what it read is held for writing elsewhere.
  kj::Vector<LockSpec> heldElsewhere(rpc::MetaRequest::Reader req, rpc::MetaReply::Reader reply);
  // Who the request acts as: its credentials, or the squash id for a squashed root.
  Caller callerOf(rpc::MetaRequest::Reader req);
  void read(rpc::MetaRequest::Reader req, rpc::MetaReply::Builder reply);
  void readIn(store::Txn& txn, rpc::MetaRequest::Reader req, rpc::MetaReply::Builder reply);
  void markXattrs(store::Txn& txn, rpc::MetaReply::Builder reply);
  // Runs an update under the server's locks `held` (released after its transaction, before
  // the reply's own locks are granted), and sets the call's reply.
  void applyUpdate(CallContext context, kj::ArrayPtr<const kj::Array<uint64_t>> changed,
                   kj::ArrayPtr<const uint64_t> held);
  // Runs an update, or a batch of them; `changed` are the inodes each may change, reported
  // back as they end up.
  void update(rpc::MetaRequest::Reader req, capnp::MallocMessageBuilder& message,
              kj::ArrayPtr<const kj::Array<uint64_t>> changed);
  // One update in `txn`, and the inodes `changed` as they are after it.
  void applyAndDescribe(rpc::MetaRequest::Reader req, store::Txn& txn,
                        rpc::MetaReply::Builder reply, kj::ArrayPtr<const uint64_t> changed);
  void apply(rpc::MetaRequest::Reader req, store::Txn& txn, rpc::MetaReply::Builder reply);
  // Throws ENOSPC if the target has no room for the update (see the tiers in it).
  void requireSpaceFor(rpc::MetaRequest::Reader req, store::Txn& txn);
  // Adds to a successful reply the caching locks the request asked for and can have at once.
  void grant(rpc::MetaRequest::Reader req, rpc::MetaReply::Builder reply);
  // What an update changes, as the EX locks the server takes before applying it.
  kj::Vector<LockSpec> affected(rpc::MetaRequest::Reader req);
  // A batch's: the locks of all its updates (checked to be ones a batch may carry), and the
  // inodes each changes, in `changed`.
  kj::Vector<LockSpec> batchAffected(capnp::List<rpc::MetaRequest>::Reader batch,
                                     kj::Vector<kj::Array<uint64_t>>& changed);
  kj::Promise<kj::Array<uint64_t>> lockFor(kj::Vector<LockSpec> specs);
  // Closes one handle of this session; true if that was the last close of an orphan (its
  // objects are now queued for the destroyer).
  bool release(uint64_t handle);
  kj::Promise<void> applicationLock(rpc::MetaRequest::Reader req, CallContext context);

  ServerContext& ctx_;
  Namespace& ns_;
  OpenFiles& opens_;
  kj::Own<ClientSession> session_;
  ServerContext::Connection connection_;  // after session_: goes before it
};

}  // namespace cairn
