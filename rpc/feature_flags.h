// Feature bits announced in Hello.features / ServerInfo.features. A peer uses a feature only if
// both sides announced it. Bits are never reused.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cairn::features {

constexpr uint64_t BASE = 1 << 0;  // the protocol of release 0.1

// Caching locks: MetaRequest.wantLocks, MetaReply.locks/changed, LockSession.cancelMany.
constexpr uint64_t CACHING_LOCKS = 1 << 1;

// DataRequest.writeMany: a data server applies a batch of writes in one transaction.
constexpr uint64_t WRITE_MANY = 1 << 2;
// What one writeMany may carry: a bounded transaction and message per request.
constexpr size_t MAX_WRITE_MANY_PIECES = 4096;
constexpr size_t MAX_WRITE_MANY_BYTES = 4 << 20;  // read twice, within the 16 MiB traversal limit

// Controlled shutdown: the active-server lock granted at connect (ConnectResults.serverLock),
// Bootstrap.shutdown, recoveryDone, setlk replay.
constexpr uint64_t ACTIVE_SERVER_LOCK = 1 << 3;

// DataRequest.destroyMany: a data server removes many objects in one transaction.
constexpr uint64_t DESTROY_MANY = 1 << 4;
// The most objects one destroyMany may name: a bounded transaction per request.
constexpr size_t MAX_DESTROY_MANY = 1024;
// MetaRequest.releaseMany: a client sends the handles it closed in batches.
constexpr uint64_t RELEASE_MANY = 1 << 5;
// The most handles one releaseMany may name.
constexpr size_t MAX_RELEASE_MANY = 1024;
// LockSession.convert: a granted lock downgraded in place (a writer's PW to PR at its last close).
constexpr uint64_t LOCK_CONVERT = 1 << 6;
// Asynchronous directory operations: LockRequest.replaces (PR on a directory's lookup bit
// upgraded to PW in place); a client's updates pass the locks of another update that waits on
// that client's PW (so it can finish what it answered before giving the PW back); reads of a
// directory call such a PW back first.
constexpr uint64_t ASYNC_DIROPS = 1 << 7;
// Creates answered ahead: MetaRequest.reserveInodes, create.ino/time/layout, and the expected
// inode of an unlink or rmdir (unlink.expect, rmdir.expect).
constexpr uint64_t ASYNC_CREATE = 1 << 8;
// The most inode numbers one reserveInodes may ask for, and one client may hold unused.
constexpr uint32_t MAX_RESERVE_INODES = 1024;
constexpr size_t MAX_RESERVED_INODES = 4096;
// LockSession.prolong, and the callback's timeoutMs: a client whose give-back waits on a server
// that is away asks for more time instead of being evicted.
constexpr uint64_t LOCK_PROLONG = 1 << 9;
// MetaRequest.setattr.wroteEnd: a write-behind batch's size and mtime and the change of
// attributes queued after its writes go in one update (tar: one request a file, not two).
constexpr uint64_t WROTE_SETATTR = 1 << 10;
// MetaRequest.batch: the updates a client answered ahead go several to a request, applied in
// one transaction.
constexpr uint64_t BATCH = 1 << 11;
// The most updates one batch may carry: a bounded transaction, and a bounded wait for the
// locks of all of them.
constexpr size_t MAX_BATCH = 128;
// A batch may carry what write-behind sends after a file's data (`wrote`, and `setattr` with no
// size change): several files' in one request.
constexpr uint64_t BATCH_ATTRS = 1 << 12;
// MetaRequest.wantLocks' wantNewDirPw: a mkdir's reply grants the new directory's names and
// attributes in PW, so that its maker answers the creates in it ahead from the first, and its
// chmod, chown and utimes of it (tar sets every directory's after its contents), sending them
// in the directory's batches.
constexpr uint64_t DIR_ATTRS_AHEAD = 1 << 13;
// A create answered ahead moves its directory's times forward only (to its own time if later):
// a client may then send a mkdir without waiting for the creates ahead in that directory,
// which reach the server after it (tar: a directory made without waiting for the batch of the
// files before it).
constexpr uint64_t MKDIR_BESIDE = 1 << 14;
constexpr uint64_t SUPPORTED = BASE | CACHING_LOCKS | WRITE_MANY | ACTIVE_SERVER_LOCK |
                               DESTROY_MANY | RELEASE_MANY | LOCK_CONVERT | ASYNC_DIROPS |
                               ASYNC_CREATE | LOCK_PROLONG | WROTE_SETATTR | BATCH | BATCH_ATTRS |
                               DIR_ATTRS_AHEAD | MKDIR_BESIDE;

}  // namespace cairn::features
