// The client core: every filesystem operation as a promise, in terms of inode numbers, file
// handles and byte arrays, with no FUSE types (fuse_ops.cc adapts). Filesystem errors reject
// the promise with errnoException(err).
//
// Requests leave only through ServerLinks: one to the metadata server and one per data target,
// learned from the metadata server. A link that loses its server parks requests and reconnects;
// after a reconnect to the metadata server the client re-opens every open file (open replay).
//
// What the metadata server says is cached only under its locks (LockCache, MetaCache): replies
// carry the locks the request asked for, blocking callbacks take them back, and a lost link
// drops them all. The kernel's attribute and page caches follow the same locks (KernelCache).
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <kj/async-io.h>
#include <kj/string.h>
#include <kj/vector.h>

#include <deque>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "fusefs/app_locks.h"
#include "fusefs/async_dirops.h"
#include "fusefs/data_batch.h"
#include "fusefs/inode_table.h"
#include "fusefs/kernel_cache.h"
#include "fusefs/kill_priv.h"
#include "fusefs/lock_cache.h"
#include "fusefs/meta_cache.h"
#include "fusefs/open_table.h"
#include "fusefs/read_ahead.h"
#include "fusefs/update_batch.h"
#include "fusefs/write_behind.h"
#include "rpc/server_link.h"

namespace cairn {

struct ClientOptions {
  kj::Array<kj::String> metaAddresses;
  kj::String hostName;
  bool caching = true;  // ask for caching locks; off: every operation asks the server
  // Creates, unlinks and rmdirs in a directory this client holds PW on answered ahead
  // (fusefs/async_dirops.h).
  bool asyncDirops = true;
  LockCache::Limits lockLimits;
  // Directory entries cached, by the client and (as a record of what to drop) the kernel.
  size_t maxNames = MetaCache::DEFAULT_MAX_NAMES;
  // A process taking a mount over (fusefs/handover.h) goes on as the client that handed it.
  kj::Maybe<kj::Array<kj::byte>> uuid;
};

struct Cred {
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t pid = 0;
};

struct Entry {
  struct stat attr;
  uint64_t generation = 0;
  bool cached = false;      // a lock covers the attributes: the kernel may keep them
  bool nameCached = false;  // a lock covers the name that led here: the kernel may keep it
  uint64_t asOf = 0;        // the metadata target's transaction `attr` is as of (0: unknown)
};

struct Opened {
  uint64_t fh = 0;
  Entry entry;
  bool keepCache = false;  // a lock covers the contents: the kernel may keep its pages
  bool atimeSet = false;   // the open set the access time: the kernel's copy is stale
};

struct DirItem {
  kj::Array<kj::byte> name;
  uint64_t cookie = 0;
  struct stat attr;
  uint64_t generation = 0;
};

struct DirPage {
  kj::Vector<DirItem> items;
  bool eof = false;
  uint64_t parent = 0;
  // From a listing kept under the directory's LOOKUP lock: its names are current, but the
  // attributes of an entry are only if a lock of the entry's own covers them.
  bool cached = false;
};

// What setattr changes (FUSE_SET_ATTR_* bits, translated by the caller).
struct SetAttr {
  uint32_t valid = 0;  // rpc::SET_* bits
  uint32_t mode = 0, uid = 0, gid = 0;
  uint64_t size = 0;
  timespec atime{}, mtime{};
  uint64_t wroteEnd = 0;  // not 0: a write-behind batch's `wrote` goes with it (WROTE_SETATTR)
  SetidKill kill = SetidKill::NONE;  // clear set-ID bits too, as the VFS would (kill_priv.h)
};

class Client {
public:
  // `network`: how the links reach the servers (mutual TLS, or plain text).
  Client(kj::AsyncIoContext& io, kj::Network& network, ClientOptions options);
  ~Client() noexcept(false);
  KJ_DISALLOW_COPY(Client);

  void start();
  // Unmounting: writes still going behind are sent (files closed just before), then every
  // server is told the session ends (best effort, at most `limit`), so that a restart does not
  // wait for this client's recovery.
  kj::Promise<void> leave(kj::Duration limit);
  // Where the kernel's caches are dropped when their locks go (none: nothing kernel-side).
  void setKernelCache(KernelCache& kernel) { kernel_ = kernel; }

  kj::Promise<Entry> getattr(uint64_t ino);
  kj::Promise<Entry> lookup(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name);
  kj::Promise<Entry> setattr(const Cred& cred, uint64_t ino, SetAttr attr, kj::Maybe<uint64_t> fh);
  kj::Promise<Entry> mknod(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                           uint32_t mode, uint64_t rdev);
  kj::Promise<Entry> mkdir(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                           uint32_t mode);
  kj::Promise<Entry> symlink(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                             kj::Array<kj::byte> target);
  kj::Promise<Entry> link(const Cred& cred, uint64_t ino, uint64_t newParent,
                          kj::Array<kj::byte> newName);
  kj::Promise<void> unlink(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name);
  kj::Promise<void> rmdir(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name);
  kj::Promise<void> rename(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                           uint64_t newParent, kj::Array<kj::byte> newName, uint32_t flags);
  kj::Promise<kj::Array<kj::byte>> readlink(uint64_t ino);

  kj::Promise<Opened> open(const Cred& cred, uint64_t ino, uint32_t flags);
  // Directories are opened without the server, except by a root the server squashes: its
  // kernel let it in as root, the server says whether the squash id may read the directory.
  kj::Promise<void> opendir(const Cred& cred, uint64_t ino);
  // Whether the server, not this client's kernel, decides what `cred` may do (a squashed root).
  bool serverChecks(const Cred& cred) const;
  // Asks the server whether `cred` may access `ino` (R_OK/W_OK/X_OK).
  kj::Promise<void> access(const Cred& cred, uint64_t ino, uint32_t mask);
  kj::Promise<Opened> create(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name,
                             uint32_t mode, uint32_t flags);
  kj::Promise<kj::Array<kj::byte>> read(uint64_t fh, uint64_t offset, size_t size);
  // `writeback`: the kernel writing back dirty pages (not an application's write()).
  // `killFor`: the kernel asks for set-ID bits to be cleared first (fusefs/kill_priv.h), by
  // that caller.
  kj::Promise<size_t> write(uint64_t fh, uint64_t offset, kj::Array<kj::byte> data,
                            bool writeback = false, kj::Maybe<Cred> killFor = nullptr);
  kj::Promise<void> fsync(uint64_t fh);
  // close(): a failure of write-behind so far is reported here. What is queued for the file is
  // sent now; close waits for it only while a target may be short of room (roomBehind), so that
  // a full filesystem is still reported to the application that filled it.
  kj::Promise<void> flush(uint64_t fh);
  // Every update of ours answered so far, on every target, on disk.
  kj::Promise<void> syncAll();
  // fsync of a directory: the operations answered ahead are answered by the server first (the
  // first that failed since the last fsync fails this one), then syncAll.
  kj::Promise<void> syncDir();
  kj::Promise<void> release(uint64_t fh);

  // Application locks (fcntl record locks in space 0, flock in space 1). `end` is inclusive,
  // UINT64_MAX meaning "to the end of the file"; type 0 read, 1 write, 2 unlock.
  struct AppLock {
    uint32_t type = 2;
    uint64_t start = 0, end = 0;
    uint32_t pid = 0;
  };
  kj::Promise<void> setlk(uint64_t ino, uint64_t owner, uint32_t space, AppLock lock, bool wait);
  kj::Promise<AppLock> getlk(uint64_t ino, uint64_t owner, uint32_t space, AppLock lock);
  // Close: the owner's locks on the file go (no request if it never took one).
  kj::Promise<void> releaseLocks(uint64_t ino, uint64_t owner, uint32_t space);

  kj::Promise<DirPage> readdir(uint64_t ino, uint64_t cookie, uint32_t maxEntries);
  // What READDIRPLUS hands the kernel for a listed entry (as a LOOKUP of it would: the
  // attributes and name kept as long as locks cover them). The caller adds the reference.
  Entry listedEntry(uint64_t dir, const DirItem& item);
  kj::Promise<struct statvfs> statfs();

  kj::Promise<void> setxattr(uint64_t ino, kj::Array<kj::byte> name, kj::Array<kj::byte> value,
                             uint32_t flags);
  kj::Promise<kj::Array<kj::byte>> getxattr(uint64_t ino, kj::Array<kj::byte> name);
  kj::Promise<kj::Array<kj::byte>> listxattr(uint64_t ino);  // NUL-separated names
  kj::Promise<void> removexattr(uint64_t ino, kj::Array<kj::byte> name);

  // The kernel took a reference (a reply carrying an entry) or dropped some.
  void remember(const Entry& e) {
    inodes_.remember(e.attr.st_ino);
    struct stat attr = e.attr;
    inodes_.sawAttr(attr, e.asOf);
  }
  void forget(uint64_t ino, uint64_t n) { inodes_.forget(ino, n); }

  // True while some server is unreachable (requests to it park at its gate).
  bool outage() const;

  // What the mount did, for its counters (fusefs/client_metrics.cc).
  struct Stats {
    uint64_t cacheHits = 0;            // getattr and lookup answered from the cache
    uint64_t cacheMisses = 0;          // ... that had to ask the metadata server
    uint64_t listingHits = 0;          // readdir answered from a kept listing
    uint64_t removalsAhead = 0;        // unlinks and rmdirs answered ahead
    uint64_t createsAhead = 0;         // creates answered ahead
    uint64_t dirAttrsAhead = 0;        // changes of directories' attributes answered ahead
    uint64_t mkdirsBeside = 0;         // mkdirs sent beside operations answered ahead
    uint64_t setidCleared = 0;         // set-ID bits cleared for the kernel (fusefs/kill_priv.h)
    uint64_t kernelInvalidations = 0;  // inodes' attributes or pages the kernel was told to drop
    uint64_t kernelNamesDropped = 0;   // names the kernel was told to drop
    uint64_t kernelEpochRaises = 0;    // every name the kernel holds made to be checked again
  };
  const AsyncDirops& dirops() const { return dirops_; }
  const UpdateBatch& batches() const { return *batch_; }
  const DataBatch& dataBatches() const { return *dataBatch_; }
  const Stats& stats() const { return stats_; }
  // Every link: the metadata server's first, then the data targets' by index.
  kj::Vector<ServerLink*> links();
  size_t dirtyBytes() const { return wb_.total(); }
  size_t kernelNames() const { return kernelNameCount_; }
  uint64_t kernelEpochFallbacks() const;

  // Client upgrade without unmounting (fusefs/handover.h). The handing process writes back
  // what it queued and lets every link settle (nothing in flight, nothing kept for replay),
  // then describes itself; the new one, before start(), carries on from that description.
  kj::Promise<void> settleForHandover();
  void exportState(rpc::MountHandover::Builder out);
  void importState(rpc::MountHandover::Reader in);
  // Forces every link to reconnect (after a handover that failed once the new process may
  // have spoken to the servers as this client): caches go, recovery runs.
  void reconnectAll(kj::StringPtr why);

  InodeTable& inodes() { return inodes_; }
  OpenTable& opens() { return opens_; }
  ServerLink& meta() { return *meta_; }
  LockCache& lockCache() { return *locks_; }
  MetaCache& metaCache() { return cache_; }

private:
  // Who waits on work going on behind (a create answered ahead, writes queued behind): an
  // application, which hurries that work out of the batch it gathers for, or more such work.
  enum class Waiter { APPLICATION, BEHIND };
  using MetaBuild = kj::Function<void(rpc::MetaRequest::Builder)>;
  // Runs on the reply before anything else does (and before an error is thrown), in the same
  // event as the locks it carries are recorded: what it caches is covered by them.
  using OnReply = kj::Function<void(rpc::MetaReply::Reader)>;
  kj::Promise<ServerLink::MetaResponse> metaCall(MetaBuild build, bool update,
                                                 ServerLink::Class cls = ServerLink::Class::NORMAL);
  kj::Promise<ServerLink::MetaResponse> metaCall(MetaBuild build, bool update,
                                                 ServerLink::Class cls, OnReply onReply);
  kj::Promise<ServerLink::MetaResponse> sendMeta(MetaBuild build, bool update,
                                                 ServerLink::Class cls, OnReply onReply);
  kj::Promise<Entry> entryCall(MetaBuild build, uint64_t parent, kj::Array<kj::byte> name,
                               bool made);
  // The caches after the reply to a request that made or linked `key` in `parent` (entryCall);
  // whether the kernel may keep the name.
  bool madeEntry(rpc::MetaReply::Reader reply, uint64_t parent, std::string key, bool made);
  // A mkdir in a directory with creates or removals answered ahead on their way, sent at once
  // beside them (null: it waits for them, entryCall).
  kj::Maybe<kj::Promise<Entry>> mkdirBeside(uint64_t parent, const kj::Array<kj::byte>& name,
                                            MetaBuild& build);
  void listed(uint64_t dir, uint64_t cookie, rpc::MetaReply::Reader reply);
  // Locks and attributes a reply brings. What creates and removals answered ahead after the
  // request (after `op`, for the reply of one of them) did to an inode — its link count, its
  // times — stays as the cache shows it: the reply predates them (an unlink's reply would bring
  // back the link a later unlink took).
  void absorb(rpc::MetaReply::Reader reply, uint64_t op = 0);
  // The want* bits for a request about `ino` (and the directory `dir`, if any).
  uint32_t wantFor(uint64_t dir, uint64_t ino, bool data);
  bool caching() const;  // asked for, and the metadata server can
  // What a lock on (ino, bit) covered goes: the client's copies, then the kernel's (unless our
  // own update `destroyed` the inode: see absorb).
  kj::Promise<void> revoke(uint64_t ino, uint64_t bit, bool destroyed = false);
  // The rest of revoke for attributes and data: what they cover goes (queued writes first).
  kj::Promise<void> revokeCached(uint64_t ino, uint64_t bit, bool destroyed);
  // The kernel's copy of an inode's attributes (and its pages, if `pages`) goes; counted.
  kj::Promise<void> invalidateInKernel(KernelCache& kernel, uint64_t ino, bool pages);
  // The kernel's entries for `names` of `dir` go (with `epoch`, every lookup begun before);
  // counted.
  kj::Promise<void> forgetInKernel(KernelCache& kernel, uint64_t dir,
                                   std::vector<std::string> names, bool epoch);
  // Pages of `ino` may be cached by the kernel only under its DATA lock: take it first.
  kj::Promise<void> dataLock(uint64_t ino);
  kj::Promise<Opened> withDataLock(Opened o);
  kj::Promise<bool> writeBehindLock(uint64_t ino);
  kj::Promise<size_t> queueWrite(uint64_t ino, uint64_t offset, kj::Array<kj::byte> data);
  // Someone waits for what is gathering (UpdateBatch, DataBatch): it all leaves now.
  void hurry();
  // Sends what is queued for the file and waits until it is sent. An application waiting on it
  // hurries the file's writes and updates out of their batches' gathering (hurried_).
  kj::Promise<void> flushed(uint64_t ino, Waiter who);
  static kj::Own<void> countWaiter(std::unordered_map<uint64_t, uint32_t>& waits, uint64_t ino);
  // Batch `id` of the file is the last of what an fsync waits for: it asks for the syncs.
  bool lastOfAnFsync(uint64_t ino, uint64_t id) const;
  kj::Promise<void> queueRoom(uint64_t ino);
  void sendAhead(uint64_t ino, size_t atLeast);
  kj::Promise<void> startBatch(uint64_t ino, WriteBehind::Batch batch);
  // A setattr answered from here and queued behind (WriteBehind::setAttr), if it may be.
  kj::Maybe<Entry> setattrBehind(const Cred& cred, uint64_t ino, const SetAttr& attr);
  // A directory's chmod, chown or utimes answered from here and sent behind, if it may be.
  kj::Maybe<Entry> dirAttrsAhead(const Cred& cred, uint64_t ino, const SetAttr& attr);
  // Clears set-ID bits on `ino` as a write by `cred` does (before it is queued or sent).
  kj::Promise<void> killSuidgid(const Cred& cred, uint64_t ino);
  kj::Promise<Entry> sendSetattr(const Cred& cred, uint64_t ino, const SetAttr& attr,
                                 ServerLink::Class cls);
  kj::Promise<void> sendBatch(uint64_t ino, uint64_t id, WriteBehind::Batch batch);
  // What write-behind sends after a file's data (a `wrote`, a setattr): in a batch with other
  // files' where the server takes them (features::BATCH_ATTRS), alone otherwise; fails with the
  // server's errno.
  // `sync`: an fsync waits for it (MetaRequest.syncAfter).
  kj::Promise<void> updateBehind(uint64_t ino, MetaBuild build, bool sync = false);
  kj::Maybe<Entry> cachedEntry(uint64_t ino);
  void removed(uint64_t parent, std::string name, int error);
  // unlink (false) or rmdir (true).
  kj::Promise<void> remove(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name, bool dir);
  // Asynchronous unlink and rmdir (fusefs/async_dirops.h): the inode `name` names, if its
  // removal may be answered here; the removal, answered; PW asked for on a directory removed in.
  kj::Maybe<uint64_t> removeAhead(const Cred& cred, uint64_t parent, const std::string& name,
                                  bool dir);
  void removeBehind(const Cred& cred, uint64_t parent, kj::Array<kj::byte> name, std::string key,
                    uint64_t child, bool dir);
  // An operation answered ahead goes behind: see the definition.
  void sendBehind(kj::Promise<int> applied, kj::String what,
                  kj::Function<void(int err, bool reached)> finish);
  void wantDirLock(const Cred& cred, uint64_t dir);
  bool asyncDirops(const Cred& cred) const;
  // Asynchronous create: the file made and opened here, if it may be; its request, behind.
  kj::Maybe<Opened> createAhead(const Cred& cred, uint64_t parent, const std::string& name,
                                uint32_t mode, uint32_t flags);
  void createBehind(const Cred& cred, uint64_t parent, std::string name, uint32_t mode,
                    uint32_t flags, uint64_t fh, const struct stat& attr, uint64_t op);
  // Keeps inode numbers reserved on the server for creates answered ahead.
  void reserveInodes();
  // A file created ahead is not on the server yet: what needs it there (its data, its
  // release) waits for the create's reply. An application waiting on it hurries the create
  // out (UpdateBatch::hurry); work going on behind lets it gather with others.
  kj::Maybe<kj::Promise<void>> whileCreating(uint64_t ino, Waiter who);
  // A request about an inode an operation answered ahead touches waits for its reply.
  kj::Maybe<kj::Promise<void>> afterDirops(rpc::MetaRequest::Reader req);
  // The same for the request `build` makes, sent as `cls` (recovery requests wait for nothing).
  kj::Maybe<kj::Promise<void>> afterDirops(MetaBuild& build, ServerLink::Class cls);
  // The kernel may keep the name `e` was reached by, if its directory's lock is held: noted,
  // so that the name is dropped from the kernel with the lock.
  bool nameForKernel(uint64_t parent, const std::string& name);
  // Takes a directory's names out of the record of those the kernel keeps; returns them.
  std::vector<std::string> forgetKernelNames(uint64_t dir);
  void movedInKernel(uint64_t dir, const std::string& name);
  Entry entryOf(rpc::Attr::Reader attr, uint64_t asOf);
  Entry entryOf(rpc::MetaReply::Reader reply) { return entryOf(reply.getAttr(), reply.getAsOf()); }
  kj::Promise<ServerLink*> dataLink(uint32_t index);
  kj::Promise<void> refreshTargets(ServerLink::Class cls);
  kj::Promise<void> recoverMeta();
  kj::Promise<void> replayAppLocks();
  kj::Promise<void> writeBackInRecovery();
  kj::Promise<void> recoverData(ServerLink& link, uint32_t index);
  // A controlled shutdown of the metadata server, or of data target `index`: write back what
  // is queued for it (and the kernel's dirty pages), drop what was cached from it.
  kj::Promise<void> drainMeta();
  kj::Promise<void> drainData(uint32_t index);
  // Sends everything held back: queued writes and attribute changes, handles not yet released.
  kj::Promise<void> flushAll();
  kj::Promise<kj::Own<SharedLayout>> layoutOf(uint64_t ino,
                                              ServerLink::Class cls = ServerLink::Class::NORMAL);
  kj::Promise<void> truncateObjects(const StripeLayout& layout, uint64_t size);
  kj::Promise<void> syncTargets(const StripeLayout& layout);
  kj::Promise<void> syncMeta();
  kj::Promise<void> syncData(ServerLink& link);
  kj::Promise<void> syncDataTargets(const StripeLayout& layout);
  kj::Promise<kj::Array<kj::byte>> readUnlocked(uint64_t fh, uint64_t offset, size_t size);
  // The bytes of [offset, offset + length) of a file, holes as zeros.
  kj::Promise<kj::Array<kj::byte>> fetch(const StripeLayout& layout, uint64_t offset,
                                         size_t length);
  kj::Promise<kj::Array<kj::byte>> fetchAhead(uint64_t ino, uint64_t offset, size_t length);
  // Writes bytes of a file to its data targets (the caller keeps them alive meanwhile).
  kj::Promise<void> store(const StripeLayout& layout, uint64_t offset,
                          kj::ArrayPtr<const kj::byte> data, ServerLink::Class cls);
  // A write-behind batch's writes: each target gets its pieces in the order they were made,
  // in as few requests as it takes (writeMany), so in one transaction per request.
  // `owner` keeps `writes` alive (and with them what is kept for replay until synced).
  kj::Promise<void> storeBatch(uint64_t ino, const StripeLayout& layout,
                               kj::ArrayPtr<const WriteBehind::Write> writes,
                               kj::Own<kj::Refcounted> owner, ServerLink::Class cls);
  struct OwnedBatch : public kj::Refcounted {
    WriteBehind::Batch batch;
    kj::Promise<void> dataSynced = kj::READY_NOW;  // its targets' sync, for an fsync waiting
  };
  kj::Promise<void> wrote(uint64_t ino, uint64_t end, ServerLink::Class cls);
  kj::Promise<size_t> writeUnlocked(uint64_t fh, uint64_t offset, kj::Array<kj::byte> data,
                                    ServerLink::Class cls);
  OpenTable::File& openFile(uint64_t fh);
  bool touchAtime(uint64_t ino);  // true if it sets the access time
  Entry toEntry(rpc::Attr::Reader attr, uint64_t asOf);
  Opened opened(uint64_t fh, ServerLink::MetaResponse& resp);

  kj::AsyncIoContext& io_;
  kj::Network& network_;
  ClientOptions options_;
  LinkIdentity identity_;
  InodeTable inodes_;
  OpenTable opens_;
  MetaCache cache_;
  struct Listing {
    uint64_t lock;        // the LOOKUP lock the batches so far came under
    uint64_t nextCookie;  // where the next batch must start to continue them
  };
  std::map<uint64_t, Listing> listings_;
  // A directory's listing (its batches from the server, joined while they follow each other),
  // kept while its names are unchanged under the same LOOKUP lock (MetaCache::dirStamp). A readdir
  // asks the server for more entries than the kernel's buffer takes (READDIRPLUS entries are large:
  // ~40 to a request), and the rest answers the kernel's next requests; a directory listed whole is
  // listed again (a `find` after the kernel dropped its caches, the final empty request of every
  // listing) without a request to the server.
  struct ListedAhead {
    uint64_t stamp;
    uint64_t from;    // the cookie the first item continues
    uint64_t parent;  // for "..", if the batch is the first (0: unknown)
    kj::Vector<DirItem> items;
    bool eof;
    size_t served;  // where the last page handed out ended (the kernel's next request)
  };
  // A page of a kept listing, if it has the one asked for.
  kj::Maybe<DirPage> listedPage(uint64_t ino, uint64_t cookie, uint32_t maxEntries);
  // Keeps a batch from the server (under the directory's LOOKUP lock only).
  bool keepListing(uint64_t ino, uint64_t from, const DirPage& page);
  void dropListing(std::unordered_map<uint64_t, ListedAhead>::iterator it);
  void dropListings();
  // Still true: the directory's names unchanged under the lock the listing came with.
  bool current(uint64_t ino, const ListedAhead& a);
  // A batch from `from` continues what was kept of the listing.
  static bool extendedBy(const ListedAhead& a, uint64_t from);
  std::unordered_map<uint64_t, ListedAhead> listedAhead_;
  size_t listedItems_ = 0;
  static constexpr uint32_t READDIR_BATCH = 2048;
  // Past either bound every kept listing goes (~250 bytes an entry: ~8 MiB at most).
  static constexpr size_t MAX_LISTED_DIRS = 8192;
  static constexpr size_t MAX_LISTED_ITEMS = 32768;
  std::map<uint64_t, int> writers_;  // ino -> open handles that may dirty its pages
  bool draining_ = false;            // the metadata server is shutting down: everything goes back
  // Names the kernel keeps, by directory, and when a lookup in it was last answered.
  std::unordered_map<uint64_t, std::unordered_set<std::string>> kernelNames_;
  size_t kernelNameCount_ = 0;  // over all directories
  std::unordered_map<uint64_t, kj::TimePoint> lastNameReply_;
  ReadAhead readAhead_;
  WriteBehind wb_;
  AsyncDirops dirops_;
  // The operations answered ahead still on their way: an eviction drops them (the server's state
  // was not kept for us, so they are not sent to it after the fact) and reports EIO.
  kj::Canceler diropsBehind_;
  // Names whose removal answered ahead is on its way: a create of the name waits for it.
  std::multiset<std::pair<uint64_t, std::string>> removing_;
  std::unordered_set<uint64_t> creating_;  // inodes created ahead, their create on its way
  // Directories with changes of attributes answered ahead on their way (dirAttrsAhead), and
  // those operations: a reply that predates one shows attributes the cache has moved past.
  std::unordered_map<uint64_t, std::set<uint64_t>> attrsAhead_;
  // Files an application waits on the write-behind of (fsync, a read, a lock called back...),
  // by the number of such waits: their updates leave without gathering.
  std::unordered_map<uint64_t, uint32_t> hurried_;
  // Files an fsync waits on the write-behind of, by the number of such waits: their data
  // targets sync while the `wrote` goes, and the `wrote` is answered once on disk.
  std::unordered_map<uint64_t, uint32_t> fsyncing_;
  std::unordered_set<uint64_t> failedCreates_;  // ... that the server never made (until released)
  uint64_t metaEvictions_ = 0;  // the metadata server's evictions of this client, as learned
  // Our session at the metadata server (ServerLink::session), taken in recoverMeta once what
  // an eviction there took away is dropped: a data server's fence of an earlier session was
  // dealt with then (recoverData).
  uint64_t metaSession_ = 0;
  // Inode numbers the server set aside for us, each with its file's layout.
  std::deque<std::pair<uint64_t, kj::Own<SharedLayout>>> reserved_;
  bool reserving_ = false;
  // Below this many numbers in hand, more are asked for (a batch of RESERVE_BATCH).
  static constexpr size_t RESERVE_LOW = 256;
  static constexpr uint32_t RESERVE_BATCH = 512;
  // After a refusal (a full metadata target, say), how long before asking again.
  static constexpr kj::Duration RESERVE_RETRY = 1 * kj::SECONDS;
  kj::Maybe<KernelCache&> kernel_;
  kj::Own<ServerLink> meta_;
  std::map<uint32_t, kj::Own<ServerLink>> data_;
  kj::Own<LockCache> locks_;      // the metadata server's; after meta_: it goes first
  kj::Own<UpdateBatch> batch_;    // updates answered ahead, on their way (after meta_ too)
  kj::Own<DataBatch> dataBatch_;  // small files' writes, on their way (after data_)
  AppLocks appLocks_;             // granted application locks, replayed after a restart
  std::map<std::string, uint64_t> handedRequestIds_;  // by link name, from a handover
  class ErrorHandler : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&& e) override;
  };
  ErrorHandler errorHandler_;
  kj::TaskSet tasks_;  // requests nobody waits for (atime updates)

  // Room on the targets, looked at (statfs) at most every ROOM_AGE while writes go behind.
  bool roomBehind();
  // Handles closed and not yet released (releaseMany), and whether a send is scheduled.
  kj::Promise<void> sendReleases();
  std::vector<uint64_t> releases_;
  bool releaseScheduled_ = false;
  kj::Promise<void> goodbye(kj::Duration limit);
  kj::Promise<void> lookAtRoom();
  // statfs of the metadata target and of every data target.
  struct StatfsReplies {
    ServerLink::MetaResponse meta;
    kj::Array<ServerLink::DataResponse> data;
  };
  kj::Promise<StatfsReplies> statfsAll();
  uint64_t roomFree_ = 0;  // the least free bytes of any target at the last look
  kj::Maybe<kj::TimePoint> roomAt_;
  bool roomLooking_ = false;
  Stats stats_;
};

void attrToStat(rpc::Attr::Reader attr, struct stat* st);

}  // namespace cairn
