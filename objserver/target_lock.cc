#include "objserver/target_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <cstring>

namespace cairn {

namespace {

// The heartbeat file: two fixed slots of one line each, so that the active server's beats and
// a standby's takeover request never overwrite each other.
constexpr size_t SLOT = 256;
constexpr off_t HEARTBEAT_SLOT = 0;
constexpr off_t TAKEOVER_SLOT = SLOT;

kj::String heartbeatPath(kj::StringPtr dir) {
  return kj::str(dir, "/heartbeat");
}

int openHeartbeat(kj::StringPtr dir) {
  auto path = heartbeatPath(dir);
  int fd = open(path.cStr(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  KJ_REQUIRE(fd >= 0, "cannot open the target's heartbeat record", path, strerror(errno));
  return fd;
}

kj::Maybe<kj::String> readSlot(kj::StringPtr dir, off_t offset) {
  int fd = open(heartbeatPath(dir).cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nullptr;
  KJ_DEFER(close(fd));
  char buf[SLOT + 1] = {};
  ssize_t n = pread(fd, buf, SLOT, offset);
  if (n <= 0) return nullptr;
  return kj::str(buf);
}

// Whole slot, then fdatasync: a partner on another host reads it from the shared storage.
bool writeSlot(int fd, off_t offset, kj::StringPtr line) {
  char buf[SLOT] = {};
  KJ_ASSERT(line.size() < SLOT, "heartbeat record too long", line);
  memcpy(buf, line.begin(), line.size());
  return pwrite(fd, buf, SLOT, offset) == ssize_t(SLOT) && fdatasync(fd) == 0;
}

int64_t steadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

kj::String holderOf(int fd) {
  char buf[32] = {};
  ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
  return kj::str("owner pid ", n > 0 ? kj::StringPtr(buf) : "unknown"_kj);
}

}  // namespace

kj::StringPtr TargetLock::bootId() {
  static const kj::String id = []() {
    char buf[64] = {};
    FILE* f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f != nullptr) {
      if (fgets(buf, sizeof(buf), f) == nullptr) buf[0] = '\0';
      fclose(f);
    }
    buf[strcspn(buf, "\n")] = '\0';
    return kj::str(buf[0] != '\0' ? buf : "unknown");
  }();
  return id;
}

kj::Maybe<kj::Own<TargetLock>> TargetLock::tryTake(kj::StringPtr dir, kj::StringPtr owner) {
  auto path = kj::str(dir, "/owner.lock");
  int fd = open(path.cStr(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  KJ_REQUIRE(fd >= 0, "cannot open the target's owner lock", path, strerror(errno));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int error = errno;
    close(fd);
    KJ_REQUIRE(error == EWOULDBLOCK, "cannot lock the target's owner lock", path, strerror(error));
    return nullptr;
  }
  return kj::heap<TargetLock>(dir, owner, fd);
}

kj::Own<TargetLock> TargetLock::take(kj::StringPtr dir, kj::StringPtr owner) {
  KJ_IF_MAYBE (lock, tryTake(dir, owner)) {
    return kj::mv(*lock);
  }
  int fd = open(kj::str(dir, "/owner.lock").cStr(), O_RDONLY | O_CLOEXEC);
  auto holder = fd >= 0 ? holderOf(fd) : kj::str("owner pid unknown");
  if (fd >= 0) close(fd);
  KJ_FAIL_REQUIRE("the target is being served by another process", dir, holder);
}

TargetLock::TargetLock(kj::StringPtr dir, kj::StringPtr owner, int fd)
    : dir_(kj::str(dir)), owner_(kj::str(owner)), fd_(fd), heartbeatFd_(-1) {
  KJ_ON_SCOPE_FAILURE(close(fd_));
  auto pid = kj::str(getpid(), "\n");
  KJ_SYSCALL(ftruncate(fd_, 0));
  KJ_SYSCALL(pwrite(fd_, pid.begin(), pid.size(), 0));
  KJ_IF_MAYBE (h, readHeartbeat(dir)) {
    sequence_ = h->sequence;
  }
}

TargetLock::~TargetLock() noexcept(false) {
  {
    std::lock_guard<std::mutex> guard(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  KJ_IF_MAYBE (t, thread_) {
    t->join();
  }
  if (heartbeatFd_ >= 0) close(heartbeatFd_);
  close(fd_);
}

void TargetLock::beat(Heartbeat::State state) {
  auto line = kj::str("heartbeat ", ++sequence_, " ",
                      state == Heartbeat::State::ACTIVE ? "active" : "released", " ", bootId(), " ",
                      getpid(), " ", interval_ / kj::MILLISECONDS, " ", owner_, "\n");
  if (writeSlot(heartbeatFd_, HEARTBEAT_SLOT, line)) {
    lastBeat_.store(steadyNs());
  } else {
    int error = errno;
    std::lock_guard<std::mutex> guard(mutex_);
    if (lost_ == nullptr) {
      lost_ = kj::str("cannot write the heartbeat record: ", strerror(error));
    }
  }
}

void TargetLock::startBeating(kj::Duration interval) {
  KJ_REQUIRE(thread_ == nullptr, "already beating");
  interval_ = interval;
  heartbeatFd_ = openHeartbeat(dir_);
  takeoverSeen_ = readTakeover(dir_).generation;
  beat(Heartbeat::State::ACTIVE);
  thread_ = std::thread([this]() { run(); });
}

void TargetLock::run() {
  auto period = std::chrono::milliseconds(interval_ / kj::MILLISECONDS);
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, period, [this]() { return stop_; });
    if (stop_) break;
    lock.unlock();
    // The request is read before the beat: once someone asked, not one more beat says "active".
    auto request = readTakeover(dir_);
    if (request.generation > takeoverSeen_ && request.requester != owner_) {
      lock.lock();
      if (lost_ == nullptr) {
        lost_ = kj::str("takeover requested by ", request.requester);
      }
      break;
    }
    beat(Heartbeat::State::ACTIVE);
    lock.lock();
  }
}

kj::Maybe<kj::String> TargetLock::verify() {
  if (thread_ != nullptr && steadyNs() - lastBeat_.load() > 2 * (interval_ / kj::NANOSECONDS)) {
    auto request = readTakeover(dir_);
    if (request.generation > takeoverSeen_ && request.requester != owner_) {
      std::lock_guard<std::mutex> guard(mutex_);
      if (lost_ == nullptr) lost_ = kj::str("takeover requested by ", request.requester);
    }
  }
  return lost();
}

kj::Maybe<kj::String> TargetLock::lost() {
  std::lock_guard<std::mutex> guard(mutex_);
  KJ_IF_MAYBE (why, lost_) {
    return kj::str(*why);
  }
  return nullptr;
}

void TargetLock::release() {
  {
    std::lock_guard<std::mutex> guard(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  KJ_IF_MAYBE (t, thread_) {
    t->join();
    thread_ = nullptr;
  }
  if (heartbeatFd_ >= 0) beat(Heartbeat::State::RELEASED);
}

kj::Maybe<Heartbeat> TargetLock::readHeartbeat(kj::StringPtr dir) {
  KJ_IF_MAYBE (line, readSlot(dir, HEARTBEAT_SLOT)) {
    unsigned long long sequence = 0;
    char state[16] = {}, boot[64] = {}, owner[SLOT] = {};
    int pid = 0;
    unsigned interval = 0;
    if (sscanf(line->cStr(), "heartbeat %llu %15s %63s %d %u %255s", &sequence, state, boot, &pid,
               &interval, owner) != 6) {
      return nullptr;
    }
    Heartbeat h;
    h.sequence = sequence;
    h.state = strcmp(state, "active") == 0 ? Heartbeat::State::ACTIVE : Heartbeat::State::RELEASED;
    h.bootId = kj::str(boot);
    h.pid = pid;
    h.intervalMs = interval;
    h.owner = kj::str(owner);
    return kj::mv(h);
  }
  return nullptr;
}

TakeoverRequest TargetLock::readTakeover(kj::StringPtr dir) {
  TakeoverRequest request;
  KJ_IF_MAYBE (line, readSlot(dir, TAKEOVER_SLOT)) {
    unsigned long long generation = 0;
    char requester[SLOT] = {};
    if (sscanf(line->cStr(), "takeover %llu %255s", &generation, requester) == 2) {
      request.generation = generation;
      request.requester = kj::str(requester);
    }
  }
  return request;
}

void TargetLock::refuseForeignOwner(kj::StringPtr dir) {
  KJ_IF_MAYBE (before, readHeartbeat(dir)) {
    if (before->state != Heartbeat::State::ACTIVE || before->bootId == bootId()) return;
    spdlog::info("target {}: heartbeat written on another host by {}: watching it for {} ms",
                 dir.cStr(), before->owner.cStr(), 3 * before->intervalMs);
    usleep(3 * before->intervalMs * 1000);
    KJ_IF_MAYBE (after, readHeartbeat(dir)) {
      KJ_REQUIRE(after->sequence == before->sequence,
                 "the target is being served on another host (its heartbeat moves)", dir,
                 after->owner);
    }
  }
}

void TargetLock::requestTakeover(kj::StringPtr dir, kj::StringPtr requester) {
  int fd = openHeartbeat(dir);
  KJ_DEFER(close(fd));
  auto generation = readTakeover(dir).generation + 1;
  auto line = kj::str("takeover ", generation, " ", requester, "\n");
  KJ_REQUIRE(writeSlot(fd, TAKEOVER_SLOT, line), "cannot write the takeover request", dir,
             strerror(errno));
  spdlog::warn("target {}: takeover requested (generation {}) by {}", dir.cStr(), generation,
               requester.cStr());
}

}  // namespace cairn
