#include "fusefs/notifier.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>

#include <unistd.h>

namespace cairn {
namespace {
constexpr auto SLOW_CALL = std::chrono::seconds(2);
// Longer than a drop takes when only our own lookups, answered at once, are in its way.
constexpr kj::Duration ENTRY_DROP_PATIENCE = 1 * kj::SECONDS;

// FUSE_NOTIFY_INC_EPOCH (protocol 7.44) has no libfuse 3.14 wrapper: a bare notification header.
// Every entry looked up before it is checked again at its next use. The kernel only counts it:
// no lock is taken, nothing is waited for.
bool raiseEpoch(fuse_session* session) {
  struct {
    uint32_t len;
    int32_t error;
    uint64_t unique;
  } header{16, 8, 0};
  return write(fuse_session_fd(session), &header, sizeof(header)) == ssize_t(sizeof(header));
}
}  // namespace

struct Notifier::Job {
  uint64_t ino = 0;
  bool pages = false;
  bool entries = false;  // forget `names` of directory `ino` (and with `epoch`, raise it)
  std::vector<std::string> names;
  bool epoch = false;
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> done;
};

struct Notifier::Lane {
  // Each returns what went wrong ("" if nothing), for run() to log while the lane may still.
  std::string attributesOrPages(const Job& job);
  std::string entries(const Job& job);
  fuse_session* session;
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Job> jobs;  // guarded by mutex
  bool stop = false;     // guarded by mutex
  bool busy = false;     // guarded by mutex: a notify call is under way
};

Notifier::Notifier(fuse_session* session, kj::Timer& timer) : session_(session), timer_(timer) {
  for (int i = 0; i < LANES; ++i) {
    lanes_[i] = std::make_shared<Lane>();
    lanes_[i]->session = session;
    threads_[i] = std::thread(run, lanes_[i]);
  }
}

Notifier::~Notifier() noexcept(false) {
  stop();
}

bool Notifier::stop() {
  if (stopped_) return true;
  stopped_ = true;
  bool allJoined = true;
  for (int i = 0; i < LANES; ++i) {
    bool busy;
    {
      std::lock_guard<std::mutex> lock(lanes_[i]->mutex);
      lanes_[i]->stop = true;
      lanes_[i]->jobs.clear();
      busy = lanes_[i]->busy;
    }
    lanes_[i]->wake.notify_all();
    if (busy) {
      threads_[i].detach();
      allJoined = false;
    } else {
      threads_[i].join();
    }
  }
  return allJoined;
}

kj::Promise<void> Notifier::post(LaneKind kind, Job job) {
  auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
  job.done = kj::mv(paf.fulfiller);
  auto& lane = *lanes_[kind];
  {
    std::lock_guard<std::mutex> lock(lane.mutex);
    lane.jobs.push_back(kj::mv(job));
  }
  lane.wake.notify_one();
  return kj::mv(paf.promise);
}

kj::Promise<void> Notifier::invalidate(uint64_t ino, bool pages) {
  Job job;
  job.ino = ino;
  job.pages = pages;
  return post(pages ? PAGES : ATTRS, kj::mv(job));
}

kj::Promise<void> Notifier::forgetNames(uint64_t dir, std::vector<std::string> names, bool epoch) {
  Job job;
  job.ino = dir;
  job.entries = true;
  job.names = kj::mv(names);
  job.epoch = epoch;
  auto dropped = post(ENTRIES, kj::mv(job));
  if (!epochs_) return dropped;
  return dropped.exclusiveJoin(timer_.afterDelay(ENTRY_DROP_PATIENCE).then([this, dir]() {
    ++epochFallbacks_;
    if (raiseEpoch(session_)) {
      spdlog::info("kernel entry drop in directory {} still waiting after {} ms: epoch raised", dir,
                   ENTRY_DROP_PATIENCE / kj::MILLISECONDS);
    } else {
      spdlog::warn("kernel entry epoch could not be raised: {}", strerror(errno));
    }
  }));
}

void Notifier::run(std::shared_ptr<Lane> lane) {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(lane->mutex);
      lane->busy = false;
      lane->wake.wait(lock, [&]() { return lane->stop || !lane->jobs.empty(); });
      if (lane->stop) return;
      job = kj::mv(lane->jobs.front());
      lane->jobs.pop_front();
      lane->busy = true;
    }
    auto start = std::chrono::steady_clock::now();
    auto problem = job.entries ? lane->entries(job) : lane->attributesOrPages(job);
    // A drop this slow waited on requests of ours the kernel had under way: worth a line, for
    // a chain of waits that ends in a lock not given back in time.
    auto took = std::chrono::steady_clock::now() - start;
    if (took >= SLOW_CALL) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(took).count();
      std::string what =
          job.entries ? fmt::format("of {} name(s) in directory {}", job.names.size(), job.ino)
          : job.pages ? fmt::format("of the pages of inode {}", job.ino)
                      : fmt::format("of the attributes of inode {}", job.ino);
      problem +=
          fmt::format("{}kernel cache drop {} took {} ms", problem.empty() ? "" : "; ", what, ms);
    }
    // Under the lock: stop() cannot return (and the process go on tearing down) meanwhile.
    std::lock_guard<std::mutex> lock(lane->mutex);
    // Stopped while this call was inside the kernel: this thread was let go, and the logger and
    // the event loop may be gone. Touch nothing more.
    if (lane->stop) return;
    if (!problem.empty()) spdlog::warn("{}", problem);
    job.done->fulfill();
  }
}

std::string Notifier::Lane::attributesOrPages(const Job& job) {
  // A negative offset invalidates the attributes only; 0, 0 the pages as well.
  int err = fuse_lowlevel_notify_inval_inode(session, job.ino, job.pages ? 0 : -1, 0);
  // -ENOENT: the kernel had nothing of it cached, which is what we wanted.
  if (err != 0 && err != -ENOENT) {
    return fmt::format("kernel cache invalidation of inode {} failed: {}", job.ino, strerror(-err));
  }
  return "";
}

std::string Notifier::Lane::entries(const Job& job) {
  std::string problem;
  for (auto& name : job.names) {
    int err = fuse_lowlevel_notify_inval_entry(session, job.ino, name.data(), name.size());
    if (err != 0 && err != -ENOENT && problem.empty()) {
      problem = fmt::format("kernel entry invalidation in {} failed: {}", job.ino, strerror(-err));
    }
  }
  if (job.epoch && !raiseEpoch(session) && problem.empty()) {
    problem = fmt::format("kernel entry epoch could not be raised: {}", strerror(errno));
  }
  return problem;
}

void Notifier::kernelProtocol(unsigned minor) {
  epochs_ = minor >= 44;
  spdlog::info("kernel FUSE protocol 7.{}: directory entries {}", minor,
               epochs_ ? "cached by the kernel under locks" : "answered by the client");
}

}  // namespace cairn
