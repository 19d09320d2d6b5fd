#include "fusefs/notifier.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>

#include <unistd.h>

namespace cairn {

struct Notifier::State {
  struct Job {
    uint64_t ino = 0;
    bool pages = false;
    bool entries = false;  // forget `names` of directory `ino` (and with `epoch`, raise it)
    std::vector<std::string> names;
    bool epoch = false;
    kj::Own<kj::CrossThreadPromiseFulfiller<void>> done;
  };
  void attributesOrPages(const Job& job);
  void entries(const Job& job);
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
    state_->jobs.push_back(State::Job{ino, pages, false, {}, false, kj::mv(paf.fulfiller)});
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
    if (job.entries) {
      state->entries(job);
    } else {
      state->attributesOrPages(job);
    }
    job.done->fulfill();
  }
}

void Notifier::State::attributesOrPages(const Job& job) {
  // A negative offset invalidates the attributes only; 0, 0 the pages as well.
  int err = fuse_lowlevel_notify_inval_inode(session, job.ino, job.pages ? 0 : -1, 0);
  // -ENOENT: the kernel had nothing of it cached, which is what we wanted.
  if (err != 0 && err != -ENOENT) {
    spdlog::warn("kernel cache invalidation of inode {} failed: {}", job.ino, strerror(-err));
  }
}

void Notifier::State::entries(const Job& job) {
  for (auto& name : job.names) {
    int err = fuse_lowlevel_notify_inval_entry(session, job.ino, name.data(), name.size());
    if (err != 0 && err != -ENOENT) {
      spdlog::warn("kernel entry invalidation in {} failed: {}", job.ino, strerror(-err));
    }
  }
  if (job.epoch) {
    // FUSE_NOTIFY_INC_EPOCH (protocol 7.44) has no libfuse 3.14 wrapper: a bare notification
    // header. Every entry looked up before it is checked again at its next use.
    struct {
      uint32_t len;
      int32_t error;
      uint64_t unique;
    } header{16, 8, 0};
    ssize_t n = write(fuse_session_fd(session), &header, sizeof(header));
    if (n != ssize_t(sizeof(header))) {
      spdlog::warn("kernel entry epoch could not be raised: {}", strerror(errno));
    }
  }
}

kj::Promise<void> Notifier::forgetNames(uint64_t dir, std::vector<std::string> names, bool epoch) {
  auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->jobs.push_back(
        State::Job{dir, false, true, kj::mv(names), epoch, kj::mv(paf.fulfiller)});
  }
  state_->wake.notify_one();
  return kj::mv(paf.promise);
}

void Notifier::kernelProtocol(unsigned minor) {
  epochs_ = minor >= 44;
  spdlog::info("kernel FUSE protocol 7.{}: directory entries {}", minor,
               epochs_ ? "cached by the kernel under locks" : "answered by the client");
}

}  // namespace cairn
