// Multiple-mount protection: two servers of a failover pair reach one target's storage, and only
// one of them may ever have it open.
//
// Two guards, as ext4's MMP and Lustre's failover use:
//  - the owner lock, an exclusive flock on DIR/owner.lock. Exact on one kernel and released by
//    the kernel when the holder dies, so a standby on the same host takes over at once; but
//    shared storage may not carry it from one host to another.
//  - the heartbeat record, DIR/heartbeat. The serving process rewrites its first slot every
//    interval (a sequence number, its kernel's boot id, its pid and address). A process on
//    another kernel that finds the owner lock free still waits while the sequence moves.
//    The second slot is a takeover request: a standby that cannot reach its active partner
//    while clients come asking for the target bumps it, and the active, which reads it at
//    every beat, stops serving at once. A server that cannot write its heartbeat stops too:
//    a partitioned server fences itself.
#pragma once

#include <kj/memory.h>
#include <kj/string.h>
#include <kj/time.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace cairn {

struct Heartbeat {
  enum class State { ACTIVE, RELEASED };
  uint64_t sequence = 0;
  State state = State::RELEASED;
  kj::String bootId;  // of the kernel the writer ran on
  int pid = 0;
  uint32_t intervalMs = 0;
  kj::String owner;  // the writer's address
};

struct TakeoverRequest {
  uint64_t generation = 0;
  kj::String requester;
};

class TargetLock {
public:
  // Takes the owner lock, or throws naming the process that holds it.
  static kj::Own<TargetLock> take(kj::StringPtr dir, kj::StringPtr owner);
  // Null while another process holds it.
  static kj::Maybe<kj::Own<TargetLock>> tryTake(kj::StringPtr dir, kj::StringPtr owner);

  TargetLock(kj::StringPtr dir, kj::StringPtr owner, int fd);
  ~TargetLock() noexcept(false);
  KJ_DISALLOW_COPY(TargetLock);

  // Serving: a thread rewrites the heartbeat every `interval` and reads the takeover slot.
  // Requests older than this call do not count.
  void startBeating(kj::Duration interval);
  // Why this server must stop serving (another asked for the target, or the heartbeat could not
  // be written), once that has happened; polled by the event loop.
  kj::Maybe<kj::String> lost();
  // lost(), but if the heartbeat thread has not beaten for two intervals (the process was
  // stopped, or starved), reads the takeover slot itself first: a server that wakes up after
  // its partner asked for the target must not serve one more request. Cheap when fresh.
  kj::Maybe<kj::String> verify();
  // Stops beating and writes a last record saying the target was let go (a partner on another
  // kernel need not wait out the heartbeat). Not called when the server was fenced.
  void release();

  static kj::Maybe<Heartbeat> readHeartbeat(kj::StringPtr dir);
  static TakeoverRequest readTakeover(kj::StringPtr dir);
  // Asks whoever serves the target to let go of it (bumps the takeover generation).
  static void requestTakeover(kj::StringPtr dir, kj::StringPtr requester);
  // Throws if another kernel's server keeps the heartbeat moving (waits three of its intervals
  // to see). For a server without a partner, after it took the owner lock.
  static void refuseForeignOwner(kj::StringPtr dir);
  // This kernel's boot id: a record with another one was written on another host.
  static kj::StringPtr bootId();

private:
  void beat(Heartbeat::State state);
  void run();

  kj::String dir_;
  kj::String owner_;
  int fd_;
  int heartbeatFd_;
  uint64_t sequence_ = 0;
  uint64_t takeoverSeen_ = 0;
  kj::Duration interval_ = 0 * kj::SECONDS;

  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  kj::Maybe<kj::String> lost_;        // under mutex_
  std::atomic<int64_t> lastBeat_{0};  // steady clock, ns
  kj::Maybe<std::thread> thread_;
};

}  // namespace cairn
