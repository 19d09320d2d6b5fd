// Makes the FUSE notify calls that drop the kernel's caches, on a thread of its own: the kernel
// writes dirty pages back (as WRITE requests to this daemon) before an inode invalidation
// returns, so a call from the event-loop thread, which must answer those WRITEs, would deadlock.
#pragma once

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <kj/async.h>

#include <memory>
#include <thread>

#include "fusefs/kernel_cache.h"

namespace cairn {

class Notifier final : public KernelCache {
public:
  explicit Notifier(fuse_session* session);
  ~Notifier() noexcept(false);
  KJ_DISALLOW_COPY(Notifier);

  kj::Promise<void> invalidate(uint64_t ino, bool pages) override;
  bool keepsNames() const override { return epochs_; }
  kj::Promise<void> forgetNames(uint64_t dir, std::vector<std::string> names, bool epoch) override;
  // Called at FUSE init with the kernel's protocol minor version.
  void kernelProtocol(unsigned minor);

private:
  struct State;
  static void run(std::shared_ptr<State> state);
  // Shared with the thread: at unmount the thread may still be inside the kernel, waiting for
  // write-backs nobody will answer, and is then left to finish on its own.
  std::shared_ptr<State> state_;
  std::thread thread_;
  bool epochs_ = false;
};

}  // namespace cairn
