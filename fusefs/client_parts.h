// What the files of the Client class share: the timings it is tuned by and the small builders
// of requests more than one of them sends. The class is one concept (a mount's dealings with
// the servers); its files split it by what a reader looks for:
//   client.cc            construction, unmount, links, metadata calls, locks and the kernel's
//                        caches (callbacks, invalidation, cached entries)
//   client_recovery.cc   a server away and back: recovery, drains at its controlled shutdown,
//                        new data targets, and the state handed to a new cairn-mount
//   client_namespace.cc  names and attributes: lookup, getattr, setattr, create, mkdir, unlink,
//                        rename, readdir, xattrs, statfs, and what is answered ahead of them
//   client_files.cc      open files: open, read, read-ahead, write-behind, fsync, release,
//                        POSIX locks
#pragma once

#include <kj/async.h>
#include <kj/debug.h>
#include <kj/time.h>

#include <cstdint>

#include "fusefs/client.h"
#include "rpc/cairn.capnp.h"

namespace cairn {
namespace client_parts {

// While the metadata server shuts down, requests the kernel has in progress may wait at the
// gate holding a directory's lock or a page's (a create, a write taking its attribute lock).
// The kernel's names therefore go by one epoch bump, which takes no lock, and its attributes
// and pages are waited for only a moment: what is still queued then is done once the parked
// requests have gone through after the restart.
inline constexpr kj::Duration KERNEL_WAIT_IN_SHUTDOWN = 500 * kj::MILLISECONDS;

// How long a setattr queued behind waits for more of its kind before it leaves: an archiver's
// chown, chmod and utimes of one file come within microseconds of each other.
inline constexpr kj::Duration ATTR_GATHER = 2 * kj::MILLISECONDS;

// How long creates, unlinks and rmdirs answered ahead gather in their directory before they
// leave in one batch (UpdateBatch): `tar x` makes several files, `rm -r` removes many, in this
// time; whoever waits on them hurries them out.
inline constexpr kj::Duration UPDATE_GATHER = 2 * kj::MILLISECONDS;
// Write-behind's updates after files' data (`wrote`, setattr) gather in a lane of their own: no
// directory is inode 0.
inline constexpr uint64_t WRITE_BEHIND_LANE = 0;

// How long a closed handle waits for others to be released with it (Client::release).
inline constexpr kj::Duration RELEASE_GATHER = 5 * kj::MILLISECONDS;

// Close waits for a file's queued writes unless every target had more than ROOM_MARGIN free
// (beyond what this client has queued) at a look less than ROOM_STALE ago; looks are taken at
// most every ROOM_AGE. A target that runs out meanwhile fails a write-behind batch, which the
// next write, fsync or close of the file reports.
inline constexpr uint64_t ROOM_MARGIN = uint64_t(1) << 30;
inline constexpr kj::Duration ROOM_AGE = 1 * kj::SECONDS;
inline constexpr kj::Duration ROOM_STALE = 5 * kj::SECONDS;

// At unmount, how long queued writes may take to leave.
inline constexpr kj::Duration LEAVE_FLUSH_LIMIT = 30 * kj::SECONDS;
// After the metadata server restarted, how long the recovery waits for the writes queued here to
// land before it says recoveryDone (Client::writeBackInRecovery); as long as a drain may take.
inline constexpr kj::Duration RECOVERY_FLUSH_LIMIT = 5 * kj::SECONDS;

inline void setCred(rpc::MetaRequest::Builder b, const Cred& cred) {
  auto c = b.initCred();
  c.setUid(cred.uid);
  c.setGid(cred.gid);
  c.setPid(cred.pid);
}

inline void setTime(rpc::Timespec::Builder out, const timespec& t) {
  out.setSec(t.tv_sec);
  out.setNsec(uint32_t(t.tv_nsec));
}

// Bytes known at once, as a promise. Not through kj's ImmediatePromiseNode<Array>: GCC 12 warns
// (falsely, -Wmaybe-uninitialized) about that node's destructor wherever it is instantiated.
inline kj::Promise<kj::Array<kj::byte>> readyBytes(kj::Array<kj::byte> bytes) {
  return kj::Promise<void>(kj::READY_NOW).then([bytes = kj::mv(bytes)]() mutable {
    return kj::mv(bytes);
  });
}

inline kj::Own<SharedLayout> toLayout(rpc::Layout::Reader in) {
  auto shared = kj::refcounted<SharedLayout>();
  shared->layout.objectId = in.getObjectId();
  shared->layout.stripeSize = in.getStripeSize();
  shared->layout.targets = kj::heapArray<uint32_t>(in.getTargets().size());
  for (auto i : kj::indices(shared->layout.targets)) {
    shared->layout.targets[i] = in.getTargets()[i];
  }
  KJ_REQUIRE(shared->layout.stripeSize > 0 && shared->layout.targets.size() > 0,
             "the server sent an empty layout");
  return shared;
}

// setlk and getlk name a lock the same way.
template <typename Builder>
inline void fillLock(Builder r, uint64_t ino, uint64_t owner, uint32_t space,
                     const Client::AppLock& l) {
  r.setIno(ino);
  r.setOwner(owner);
  r.setSpace(space);
  r.setType(l.type);
  r.setStart(l.start);
  r.setEnd(l.end);
}

inline void buildSetattr(rpc::MetaRequest::Builder b, const Cred& cred, uint64_t ino,
                         const SetAttr& attr, uint32_t want) {
  b.setWantLocks(want);
  setCred(b, cred);
  auto s = b.initSetattr();
  s.setIno(ino);
  s.setValid(attr.valid);
  s.setMode(attr.mode);
  s.setUid(attr.uid);
  s.setGid(attr.gid);
  s.setSize(attr.size);
  setTime(s.initAtime(), attr.atime);
  setTime(s.initMtime(), attr.mtime);
  s.setWroteEnd(attr.wroteEnd);
}

inline void buildWrote(rpc::MetaRequest::Builder b, uint64_t ino, uint64_t end, uint32_t want) {
  b.setWantLocks(want);
  auto w = b.initWrote();
  w.setIno(ino);
  w.setEnd(end);
}

}  // namespace client_parts
}  // namespace cairn
