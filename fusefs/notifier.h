// Makes the FUSE notify calls that drop the kernel's caches, on threads of their own: the kernel
// writes dirty pages back (as WRITE requests to this daemon) before an inode invalidation
// returns, so a call from the event-loop thread, which must answer those WRITEs, would deadlock.
//
// Each kind of drop has its own thread (a lane), because they wait on different things: a page
// drop waits for every READ holding one of the file's pages, an entry drop for LOOKUPs in the
// directory, an attribute drop for nothing. A READ or LOOKUP may itself wait for a lock that the
// server grants only once another of our locks is cancelled; if that cancel waited for the drop
// of attributes queued behind the page drop, nothing would move until the server evicted us.
//
// An entry drop that still waits after ENTRY_DROP_PATIENCE (a lookup of ours in that directory
// waits, and may be what our lock's caller waits for) is done another way: the kernel's epoch
// is raised from the calling thread, which waits for nothing, and every name it holds is
// checked again at its next use. The stuck call ends on its own later.
#pragma once

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <kj/async.h>
#include <kj/timer.h>

#include <memory>
#include <thread>

#include "fusefs/kernel_cache.h"

namespace cairn {

class Notifier final : public KernelCache {
public:
  Notifier(fuse_session* session, kj::Timer& timer);
  ~Notifier() noexcept(false);  // stop(), if not called before
  KJ_DISALLOW_COPY(Notifier);

  // Ends the threads. Returns false if one was still inside a notify call (the kernel waiting
  // for write-backs nobody will answer) and was left to finish on its own: that call still uses
  // the FUSE session, which must then outlive this process's teardown (not be destroyed).
  bool stop();

  kj::Promise<void> invalidate(uint64_t ino, bool pages) override;
  bool keepsNames() const override { return epochs_; }
  kj::Promise<void> forgetNames(uint64_t dir, std::vector<std::string> names, bool epoch) override;
  // Called at FUSE init with the kernel's protocol minor version.
  void kernelProtocol(unsigned minor);
  uint64_t epochFallbacks() const override { return epochFallbacks_; }

private:
  struct Job;
  struct Lane;
  enum LaneKind { ATTRS, PAGES, ENTRIES, LANES };
  kj::Promise<void> post(LaneKind kind, Job job);
  static void run(std::shared_ptr<Lane> lane);
  // Shared with the threads: at unmount a thread may still be inside the kernel, waiting for
  // write-backs nobody will answer, and is then left to finish on its own.
  std::shared_ptr<Lane> lanes_[LANES];
  std::thread threads_[LANES];
  fuse_session* session_;
  kj::Timer& timer_;
  bool epochs_ = false;
  uint64_t epochFallbacks_ = 0;
  bool stopped_ = false;
};

}  // namespace cairn
