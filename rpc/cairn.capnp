# Cairn wire protocol.
#
# Evolution rules (kept from the first release on, checked by tests/unit/schema_test.cc):
# fields and methods are only ever added, with the next free ordinal; nothing is renumbered,
# retyped or removed. Names may change, ordinals never. A peer announces what it understands in
# Hello.features / ServerInfo.features and a newer peer never sends an older one anything else.
#
# Errors that a filesystem returns (ENOENT, EEXIST, ...) travel as `error` in the reply, as Linux
# errno numbers; Cap'n Proto exceptions mean the request itself was bad or the link failed.

@0xcebd11a8229a269f;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("cairn::rpc");

enum TargetKind {
  meta @0;
  data @1;
}

struct Hello {
  clientUuid @0 :Data;         # 16 bytes, fixed for the life of a mount
  softwareVersion @1 :Text;
  features @2 :UInt64;         # Feature bits, see rpc/feature_flags.h
  hostName @3 :Text;
  role @4 :Role;
  enum Role {
    client @0;
    admin @1;
    server @2;
  }
}

struct ServerInfo {
  softwareVersion @0 :Text;
  features @1 :UInt64;
  kind @2 :TargetKind;
  fsName @3 :Text;
  fsUuid @4 :Data;
  targetIndex @5 :UInt32;
  instance @6 :UInt64;         # how many times the target has been started
}

struct Timespec {
  sec @0 :Int64;
  nsec @1 :UInt32;
}

struct Cred {
  uid @0 :UInt32;
  gid @1 :UInt32;
  pid @2 :UInt32;
}

struct Attr {
  ino @0 :UInt64;
  generation @1 :UInt64;
  mode @2 :UInt32;
  nlink @3 :UInt32;
  uid @4 :UInt32;
  gid @5 :UInt32;
  rdev @6 :UInt64;
  size @7 :UInt64;
  blocks @8 :UInt64;           # 512-byte units actually stored
  atime @9 :Timespec;
  mtime @10 :Timespec;
  ctime @11 :Timespec;
  parent @12 :UInt64;          # directories: the parent's ino (for "..")
  noXattrs @13 :Bool;          # the inode has no extended attributes (false: unknown)
}

# Where a regular file's bytes live: stripe k of the file (k = offset / stripeSize) is on data
# target targets[k % len], in object `objectId` at offset (k / len) * stripeSize + offset % stripeSize.
struct Layout {
  objectId @0 :UInt64;
  stripeSize @1 :UInt32;
  targets @2 :List(UInt32);
}

struct DirEntry {
  name @0 :Data;
  cookie @1 :UInt64;           # pass back as `cookie` to continue after this entry
  attr @2 :Attr;
}

struct StatFs {
  blockSize @0 :UInt32;
  totalBlocks @1 :UInt64;
  freeBlocks @2 :UInt64;
  totalInodes @3 :UInt64;
  freeInodes @4 :UInt64;
  nameMax @5 :UInt32;
}

struct TargetAddress {
  index @0 :UInt32;
  kind @1 :TargetKind;
  addresses @2 :List(Text);    # HOST:PORT of every server that may serve the target
}

# setattr's `valid` bits.
const setMode :UInt32 = 1;
const setUid :UInt32 = 2;
const setGid :UInt32 = 4;
const setSize :UInt32 = 8;
const setAtime :UInt32 = 16;
const setMtime :UInt32 = 32;
const setAtimeNow :UInt32 = 128;
const setMtimeNow :UInt32 = 256;
const setCtime :UInt32 = 1024;
const setAccess :UInt32 = 2048;   # with setAtimeNow: a read's atime update; ctime stays

# MetaRequest.wantLocks bits: the caching locks a client asks to be granted with a reply (an
# "intent"). The server grants them only if it can at once (nobody holds or awaits a conflicting
# lock); a client caches only what a granted lock covers.
const wantDir :UInt32 = 1;     # LOOKUP on the directory named (lookup's parent, readdir's ino)
const wantInode :UInt32 = 2;   # ATTR on the inode the reply describes (each entry's, for readdir)
const wantData :UInt32 = 4;    # DATA on the file opened or created: its pages may be cached
const wantNewDir :UInt32 = 8;  # mkdir: LOOKUP on the new directory (known empty)
const wantNewDirPw :UInt32 = 16;  # mkdir: LOOKUP and ATTR on the new directory in PW (features::DIR_ATTRS_AHEAD)

struct MetaRequest {
  requestId @0 :UInt64;        # per client, increasing; a resend carries the same id
  oldestUnreplied @1 :UInt64;  # the server may forget replies to ids below this
  cred @2 :Cred;
  union {
    getattr @3 :UInt64;
    lookup :group {
      parent @4 :UInt64;
      name @5 :Data;
    }
    setattr :group {
      ino @6 :UInt64;
      valid @7 :UInt32;
      mode @8 :UInt32;
      uid @9 :UInt32;
      gid @10 :UInt32;
      size @11 :UInt64;
      atime @12 :Timespec;
      mtime @13 :Timespec;
      # Not 0: first, as `wrote` does, the data written up to here (features::WROTE_SETATTR): a
      # write-behind batch's `wrote` and the change queued after it, in one update.
      wroteEnd @99 :UInt64;
    }
    mknod :group {             # regular files, fifos, sockets, devices
      parent @14 :UInt64;
      name @15 :Data;
      mode @16 :UInt32;
      rdev @17 :UInt64;
    }
    mkdir :group {
      parent @18 :UInt64;
      name @19 :Data;
      mode @20 :UInt32;
    }
    symlink :group {
      parent @21 :UInt64;
      name @22 :Data;
      target @23 :Data;
    }
    link :group {
      ino @24 :UInt64;
      newParent @25 :UInt64;
      newName @26 :Data;
    }
    unlink :group {
      parent @27 :UInt64;
      name @28 :Data;
      # Non-zero: the inode the client knows by that name (a removal it answered ahead). Another
      # inode there now (made after a restart lost the client's lock) is left alone: ENOENT.
      expect @96 :UInt64;
    }
    rmdir :group {
      parent @29 :UInt64;
      name @30 :Data;
      expect @97 :UInt64;      # as unlink's
    }
    rename :group {
      parent @31 :UInt64;
      name @32 :Data;
      newParent @33 :UInt64;
      newName @34 :Data;
      flags @35 :UInt32;       # RENAME_NOREPLACE / RENAME_EXCHANGE
    }
    open :group {
      ino @36 :UInt64;
      flags @37 :UInt32;
      handle @38 :UInt64;      # chosen by the client, unique per client; replay reuses it
    }
    create :group {
      parent @39 :UInt64;
      name @40 :Data;
      mode @41 :UInt32;
      flags @42 :UInt32;
      handle @43 :UInt64;
      # A create the client answered ahead (features::ASYNC_CREATE): the new inode is `ino`, one
      # reserveInodes gave this client, with these times and `layout` (the one reserved with
      # it), as the client told its application. The name must not exist (EEXIST otherwise,
      # whatever the flags). 0: the server picks the number, the times and the layout.
      ino @93 :UInt64;
      time @94 :Timespec;
      layout @95 :Layout;
    }
    release @44 :UInt64;       # handle
    readdir :group {
      ino @45 :UInt64;
      cookie @46 :UInt64;      # 0 = from the start
      maxEntries @47 :UInt32;
    }
    readlink @48 :UInt64;
    statfs @49 :Void;
    setxattr :group {
      ino @50 :UInt64;
      name @51 :Data;
      value @52 :Data;
      flags @53 :UInt32;       # XATTR_CREATE / XATTR_REPLACE
    }
    getxattr :group {
      ino @54 :UInt64;
      name @55 :Data;
    }
    listxattr @56 :UInt64;
    removexattr :group {
      ino @57 :UInt64;
      name @58 :Data;
    }
    wrote :group {             # data was written up to `end`: extend size, set mtime/ctime
      ino @59 :UInt64;
      end @60 :UInt64;
    }
    reserveAppend :group {     # O_APPEND: take [size, size+length) atomically
      ino @61 :UInt64;
      length @62 :UInt64;
    }
    sync @63 :Void;            # reply once everything committed so far is on disk
    getTargets @64 :Void;
    layout @65 :UInt64;        # -> opened (attr + layout), for truncate without an open file
    setlk :group {             # fcntl F_SETLK(W) / flock: application locks
      ino @66 :UInt64;
      owner @67 :UInt64;       # the kernel's lock owner on this client
      space @68 :UInt32;       # 0 fcntl record locks, 1 flock
      type @69 :UInt32;        # 0 read, 1 write, 2 unlock
      start @70 :UInt64;
      end @71 :UInt64;         # inclusive; the maximum is "to the end of the file"
      pid @72 :UInt32;
      wait @73 :Bool;
    }
    getlk :group {             # -> lock: the first conflicting lock, type 2 if none
      ino @74 :UInt64;
      owner @75 :UInt64;
      space @76 :UInt32;
      type @77 :UInt32;
      start @78 :UInt64;
      end @79 :UInt64;
    }
    releaseLocks :group {      # close: the owner's locks on the file go
      ino @80 :UInt64;
      owner @81 :UInt64;
      space @82 :UInt32;
    }
    # The client has replayed its opens and application locks after a (re)connect: the server
    # stops waiting for it before it lets new application locks be taken.
    recoveryDone @84 :Void;
    # After a restart: this client has sent every replay it has (replayOf below). The server
    # applies the replays of all its returning clients in transaction order once each has.
    replaysSent @87 :Void;
    # The client is unmounting: its session ends now (a restart does not wait for it).
    goodbye @89 :Void;
    # Whether the caller may access inode `ino` (R_OK/W_OK/X_OK bits): the server checks only
    # the callers it squashed (see ConnectResults.rootSquashed); everyone else gets yes. A
    # squashed client asks before it opens a directory, which it answers without the server.
    access :group {
      ino @90 :UInt64;
      mask @91 :UInt32;
    }
    # Handles closed since the last release went out, at most 1,024 (features::RELEASE_MANY).
    releaseMany @92 :List(UInt64);
    # Inode numbers for creates this client will answer ahead (features::ASYNC_CREATE), at most
    # features::MAX_RESERVE_INODES -> reserved. Kept for the client on the target until it uses
    # them or is forgotten; no one else is given them.
    reserveInodes @98 :UInt32;
    # Updates a client answered ahead (unlink, rmdir, create) and, with features::BATCH_ATTRS,
    # what its write-behind sends after files' data (wrote, setattr without a size), at most
    # features::MAX_BATCH, applied in this order in one transaction (features::BATCH): one
    # request, one reply record, one commit for all. Each succeeds or fails alone (its own errno at the same
    # index of the reply's `batch`); the batch's requestId, replayOf and resend are theirs.
    batch @100 :List(MetaRequest);
  }
  wantLocks @83 :UInt32;       # want* bits; 0 from clients that do not cache
  # setlk only: this lock was granted before the server restarted and is being taken again
  # (lock replay). It is granted at once, ahead of new requests.
  replay @85 :Bool;
  # Replay of an update that got a reply (transaction `replayOf`) but that the server lost in a
  # crash: it committed it without syncing it. Applied again, in transaction order.
  replayOf @86 :UInt64;
  # Sent again after a lost connection: the server may have applied it (its reply record then
  # answers) or not.
  resend @88 :Bool;
  # An update (or batch) an fsync waits for: answered once it is on disk, the reply's
  # lastSynced covering it, instead of a `sync` request after its reply. A server before this
  # field answers at once; the client sees lastSynced short of the update and asks for the sync.
  syncAfter @101 :Bool;
}

# A caching lock granted with a reply, on `bits` of inode `ino`.
struct GrantedLock {
  lockId @0 :UInt64;
  ino @1 :UInt64;
  bits @2 :UInt64;
  mode @3 :LockMode;   # PR, or PW for the DATA of a file opened for writing
}

struct MetaReply {
  error @0 :Int32;             # 0 or a Linux errno
  transno @1 :UInt64;          # transaction that made the change; 0 for reads
  lastSynced @2 :UInt64;       # every transaction up to this one is on disk
  union {
    none @3 :Void;
    attr @4 :Attr;
    opened :group {
      attr @5 :Attr;
      layout @6 :Layout;
    }
    entries :group {
      list @7 :List(DirEntry);
      eof @8 :Bool;
    }
    bytes @9 :Data;            # readlink, getxattr
    names @10 :List(Data);     # listxattr
    statfs @11 :StatFs;
    targets @12 :List(TargetAddress);
    offset @13 :UInt64;        # reserveAppend
    lock :group {              # getlk
      type @14 :UInt32;
      start @15 :UInt64;
      end @16 :UInt64;
      pid @17 :UInt32;
    }
    reserved @20 :List(Layout);  # reserveInodes: one layout per inode, objectId = the number
    batch @21 :List(MetaReply);  # batch: each request's reply (error, attributes, locks, changed)
  }
  locks @18 :List(GrantedLock);  # granted for `wantLocks`
  # Updates: every inode the update changed, as it is now (mode 0 = removed). The requesting
  # client's own caching locks are not called back for its update; it refreshes from this.
  changed @19 :List(Attr);
  # The attributes in this reply (attr, opened, entries, changed; in a batch, each reply's) are
  # as of this transaction of the target: an update's own, a read's the last committed when it
  # ran. Replies can reach a client out of order (resends after a reconnect go in no particular
  # order, and a resend already applied gets the reply recorded then): the client keeps the
  # newest. 0 from older servers (not known: taken as it comes).
  asOf @22 :UInt64;
}

struct DataRequest {
  requestId @0 :UInt64;
  oldestUnreplied @1 :UInt64;
  union {
    write :group {
      objectId @2 :UInt64;
      offset @3 :UInt64;
      data @4 :Data;
    }
    read :group {
      objectId @5 :UInt64;
      offset @6 :UInt64;
      length @7 :UInt32;
    }
    truncate :group {
      objectId @8 :UInt64;
      size @9 :UInt64;
    }
    destroy @10 :UInt64;
    statfs @11 :Void;
    sync @12 :Void;
    recoveryDone @13 :Void;    # as MetaRequest.recoveryDone
    replaysSent @14 :Void;     # as MetaRequest.replaysSent
    goodbye @17 :Void;         # as MetaRequest.goodbye
    destroyMany @18 :List(UInt64);  # objects, at most 1,024 (features::DESTROY_MANY)
    writeMany @19 :List(WritePiece);  # applied in order, in one transaction (features::WRITE_MANY)
  }
  replayOf @15 :UInt64;        # as MetaRequest.replayOf
  resend @16 :Bool;            # as MetaRequest.resend
}

# One write of a writeMany.
struct WritePiece {
  objectId @0 :UInt64;
  offset @1 :UInt64;
  data @2 :Data;
}

struct DataReply {
  error @0 :Int32;
  transno @1 :UInt64;
  lastSynced @2 :UInt64;
  union {
    none @3 :Void;
    data @4 :Data;             # read: may be shorter than asked; the rest is a hole
    statfs @5 :StatFs;
    stored @6 :UInt64;         # write/truncate: bytes the object now holds on this target
  }
}

interface MetaSession {
  call @0 (request :MetaRequest) -> (reply :MetaReply);
}

interface DataSession {
  call @0 (request :DataRequest) -> (reply :DataReply);
}

enum LockMode {
  nl @0;
  cr @1;
  cw @2;
  pr @3;
  pw @4;
  ex @5;
}

struct LockRequest {
  type @0 :UInt32;             # 1 inode, 2 object, 3 the active-server lock
  id @1 :UInt64;
  mode @2 :LockMode;
  bits @3 :UInt64 = 0xffffffffffffffff;   # inode bits: lookup 1, attributes 2, layout 4, xattrs 8,
                                          # data 16 (file contents, for page caching)
  start @4 :UInt64;                       # byte extent, inclusive
  end @5 :UInt64 = 0xffffffffffffffff;
  replaces @6 :UInt64;                    # features::ASYNC_DIROPS: a lock of ours on the same
                                          # resource, gone once this one is granted (an upgrade
                                          # that keeps what it covered cached meanwhile)
}

# Given by a client at connect; the server calls it when a lock the client holds is wanted.
interface LockCallback {
  # `timeoutMs`: how long the client has to cancel (0 from servers before features::LOCK_PROLONG).
  # `gone`: what the lock covered was destroyed and the server has dropped the lock already;
  # the client drops what it cached under it and sends no cancel (a client that does not know
  # `gone` takes it for a callback and cancels an id the server ignores).
  blocking @0 (lockId :UInt64, timeoutMs :UInt32, gone :Bool) -> ();
  # The server has just evicted this client (its locks are gone): the client reconnects at once
  # instead of learning it at its next request, so that nothing it wrote under those locks
  # leaves meanwhile. A client without it fails the call; the server ignores that.
  evicted @1 (why :Text) -> ();
  # The server's share of its lock budget for this client (`--lock-budget` divided among the
  # clients connected): cache under at most this many locks on this server, giving back the least
  # recently used beyond it. Sent at connect and whenever the share changes by a tenth. A client
  # without it fails the call; the server ignores that (the client's own bound still holds).
  share @2 (maxLocks :UInt32) -> ();
}

interface LockSession {
  # Resolves once granted; may wait while others are asked to cancel theirs.
  enqueue @0 (request :LockRequest) -> (lockId :UInt64);
  cancel @1 (lockId :UInt64) -> ();
  cancelMany @2 (lockIds :List(UInt64)) -> ();
  # Downgrades granted locks in place (features::LOCK_CONVERT), each to `mode`, which must
  # conflict with no more than its mode did (PW or EX to PR, EX to PW). A client that stopped
  # writing keeps what it caches without keeping readers elsewhere waiting. Unknown ids
  # (cancelled, dropped) are ignored, as cancels are.
  convertMany @3 (lockIds :List(UInt64), mode :LockMode) -> ();
  # More time to give back locks called back (features::LOCK_PROLONG): the client is working on
  # it, but its write-back waits on something it does not control (a data server away). Each
  # call restarts their timeouts, up to the server's limit counted from the callback. Unknown
  # ids, and locks not called back, are ignored.
  prolong @4 (lockIds :List(UInt64)) -> ();
}

struct ClientStatus {
  uuid @0 :Data;
  hostName @1 :Text;
  softwareVersion @2 :Text;
  connected @3 :Bool;
  lastRequestId @4 :UInt64;
  openFiles @5 :UInt32;
  locks @6 :UInt32;
  recovery @7 :Text;           # how its last (re)connect went: "new", "recovering",
                               # "recovered in N ms", "evicted: why"
}

struct RpcCount {
  name @0 :Text;               # e.g. "meta.lookup", "data.write"
  count @1 :UInt64;
}

struct ServerStatus {
  info @0 :ServerInfo;
  address @1 :Text;
  state @2 :Text;              # serving, draining, stopped, standby
  uptimeMs @3 :UInt64;
  lastTransno @4 :UInt64;
  lastSynced @5 :UInt64;
  mapUsedBytes @6 :UInt64;
  mapSizeBytes @7 :UInt64;
  clients @8 :List(ClientStatus);
  rpcCount @9 :UInt64;
  targets @10 :List(TargetAddress);
  orphans @11 :UInt64;         # meta: inodes unlinked while open
  destroyQueue @12 :UInt64;    # meta: files whose data objects are still to be removed
  chunks @13 :UInt64;          # data: stored chunks
  openFiles @14 :UInt64;       # meta: open handles of all clients
  locksGranted @15 :UInt64;
  locksWaiting @16 :UInt64;
  lockCallbacks @17 :UInt64;   # blocking callbacks sent since start
  evictions @18 :UInt64;       # clients evicted since start
  rpcs @19 :List(RpcCount);    # requests served since start, by kind
  recovering @20 :UInt32;      # clients of the previous instance not yet recovered
  startReason @21 :Text;       # why the start-up check let this instance start
  metricsAddress @22 :Text;    # HOST:PORT of its Prometheus /metrics, if it serves them
  partner @23 :Text;           # HOST:PORT of its failover partner ("" if it has none)
  standbyNote @24 :Text;       # standby: why it is not serving (partner active, start refused)
}

interface Bootstrap {
  # Starts (or resumes, for a known clientUuid) a session. Exactly one of meta/data is set,
  # by the target's kind.
  connect @0 (hello :Hello, callback :LockCallback)
      -> (info :ServerInfo, meta :MetaSession, data :DataSession, locks :LockSession,
          evicted :Bool,     # this client was evicted since it last connected
          serverLock :UInt64,  # the active-server lock, granted PR with the session (0: none)
          lastTransno :UInt64,   # every transaction up to this one is on disk: a client
                                 # replays what it holds beyond it, and forgets the rest
          rootSquashed :Bool,    # this filesystem squashes this client's root: uid 0 acts
                                 # as an unprivileged id, whose permissions the server checks
          session :UInt64,       # metadata server: names this client's session there (new
                                 # with each session, larger than any before it; 0: unknown)
          evictedSession :UInt64);  # data server, with `evicted`: the metadata server's
                                 # session whose eviction fenced this client off here (0:
                                 # unknown, or an eviction of this server's own). A client
                                 # that has learned of that eviction already and started a
                                 # later session keeps what it wrote since.
  status @1 () -> (status :ServerStatus);
  # A data server announces where it serves; the metadata server records it for clients.
  registerTarget @2 (fsUuid :Data, target :TargetAddress) -> ();
  # Liveness: Cap'n Proto has no keepalive, so links ping and give up on a silent peer.
  ping @3 () -> ();
  # Controlled shutdown (an administrator's request; SIGTERM does the same): the server takes
  # its active-server lock in EX, which calls every client back; once each has written back,
  # dropped its caches and cancelled its PR (or been evicted), the server commits, marks the
  # target clean and exits. Resolves just before it exits.
  shutdown @4 () -> ();
  # Test hook (servers started with --test-replay-barrier): from now on what the target commits
  # is discarded when it next starts, as a host crash would discard unsynced commits, and the
  # server reports nothing after this point as synced. Returns the barrier's transaction.
  replayBarrier @5 () -> (transno :UInt64);
  # Failover pairs. On the active server: a controlled shutdown as above, after which the
  # process stays up as its partner's standby instead of exiting. On a standby: take over now
  # (asks the active partner to fail over; one that cannot be reached is fenced through the
  # target's heartbeat record). Resolves when this server has done its part.
  failover @6 () -> ();
  # Upgrade in place: checks that `binary` is a cairn-server this host can run, then shuts down
  # as `shutdown` does (a standby: at once) and replaces the process with it: same pid, same
  # arguments, same port. `versionOverride` (test hook) is the version the new image acts as
  # ("": its own). Resolves just before the exec.
  restart @7 (binary :Text, versionOverride :Text) -> (version :Text);  # the new binary's
  # Whether this peer may mount (its certificate, --allow-client), without starting a session:
  # a mount asks before it mounts, so that a refusal fails the mount command.
  mayMount @8 () -> ();
  # An administrator evicts a client from this server (a client that hangs, a host taken away):
  # its session, locks and opens go, and it is told so when it comes back (its old descriptors
  # fail with EIO; new opens work). `evicted`: false if this server knew nothing of it (a client
  # that joined its target but has no session now is marked, and told at its return).
  # `session`: from the metadata server's fence, the session of the client's there that was
  # evicted (see `connect`'s `evictedSession`); 0 from an administrator.
  evict @9 (clientUuid :Data, session :UInt64) -> (evicted :Bool);
}

# What the target keeps about itself (the LMDB "header" record).
struct TargetHeader {
  fsName @0 :Text;
  fsUuid @1 :Data;
  kind @2 :TargetKind;
  index @3 :UInt32;
  formatVersion @4 :UInt32;    # on-disk layout version
  softwareVersion @5 :Text;    # of the last instance that opened it
  cleanShutdown @6 :Bool;
  instance @7 :UInt64;
  lastTransno @8 :UInt64;
  features @9 :UInt64;
  defaultStripeSize @10 :UInt32;
  defaultStripeCount @11 :UInt32;
  nextIno @12 :UInt64;         # meta only
  chunkSize @13 :UInt32;       # data: bytes per stored chunk (format 2; format 1 kept 65536)
}

# A metadata target's inode record.
struct Inode {
  attr @0 :Attr;
  layout @1 :Layout;           # regular files
  symlink @2 :Data;            # symlinks
  nextCookie @3 :UInt64;       # directories: next readdir cookie
  parent @4 :UInt64;           # directories: for ".." and the rename loop check
}

struct DirentValue {
  ino @0 :UInt64;
  cookie @1 :UInt64;
}

# Client upgrade without unmounting: what a running cairn-mount hands a new one over a local
# socket, with the /dev/fuse descriptor (fusefs/handover.*). The new process carries on as the
# same client (same uuid, request ids continuing), with the kernel's inode references and the
# applications' open files and locks.
struct MountHandover {
  softwareVersion @0 :Text;      # of the process handing over
  argv @1 :List(Text);           # its command line (options, addresses, mount point)
  clientUuid @2 :Data;
  initRequest @3 :Data;          # the kernel's FUSE_INIT request, as first received
  links @4 :List(LinkState);
  inodes @5 :List(HandedInode);
  opens @6 :List(HandedOpen);
  nextHandle @7 :UInt64;
  appLocks @8 :List(HandedAppLock);

  struct LinkState {
    name @0 :Text;               # "meta", "data3"
    nextRequestId @1 :UInt64;
  }
  struct HandedInode {
    ino @0 :UInt64;
    nlookup @1 :UInt64;
  }
  struct HandedOpen {
    handle @0 :UInt64;
    ino @1 :UInt64;
    flags @2 :UInt32;
    lost @3 :Bool;
    layout @4 :Layout;           # regular files
  }
  struct HandedAppLock {
    ino @0 :UInt64;
    owner @1 :UInt64;
    space @2 :UInt32;
    start @3 :UInt64;
    end @4 :UInt64;
    type @5 :UInt32;
    pid @6 :UInt32;
  }
}
