#include "fusefs/notifier.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>

namespace cairn {

struct Notifier::State {
  struct Job {
    uint64_t ino = 0;
    bool pages = false;
    kj::Own<kj::CrossThreadPromiseFulfiller<void>> done;
  };
  fuse_session* session;
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Job> jobs;  // guarded by mutex
  bool stop = false;     // guarded by mutex
  bool busy = false;     // guarded by mutex: a notify call is under way
};

Notifier::Notifier(fuse_session* session) : state_(std::make_shared<State>()) {
  state_->session = session;
  thread_ = std::thread(run, state_);
}

Notifier::~Notifier() noexcept(false) {
  bool busy;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->stop = true;
    state_->jobs.clear();
    busy = state_->busy;
  }
  state_->wake.notify_all();
  if (busy) {
    thread_.detach();
  } else {
    thread_.join();
  }
}

kj::Promise<void> Notifier::invalidate(uint64_t ino, bool pages) {
  auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->jobs.push_back(State::Job{ino, pages, kj::mv(paf.fulfiller)});
  }
  state_->wake.notify_one();
  return kj::mv(paf.promise);
}

void Notifier::run(std::shared_ptr<State> state) {
  for (;;) {
    State::Job job;
    {
      std::unique_lock<std::mutex> lock(state->mutex);
      state->busy = false;
      state->wake.wait(lock, [&]() { return state->stop || !state->jobs.empty(); });
      if (state->stop) return;
      job = kj::mv(state->jobs.front());
      state->jobs.pop_front();
      state->busy = true;
    }
    // A negative offset invalidates the attributes only; 0, 0 the pages as well.
    int err = fuse_lowlevel_notify_inval_inode(state->session, job.ino, job.pages ? 0 : -1, 0);
    // -ENOENT: the kernel had nothing of it cached, which is what we wanted.
    if (err != 0 && err != -ENOENT) {
      spdlog::warn("kernel cache invalidation of inode {} failed: {}", job.ino, strerror(-err));
    }
    job.done->fulfill();
  }
}

}  // namespace cairn
