#include "rpc/busy_poll.h"

namespace cairn {

namespace {
thread_local uint64_t arrivals = 0;

// A window that grows from nothing starts here: an application's turnaround between two FUSE
// requests is a few microseconds, an RPC's reply on loopback takes tens.
constexpr kj::Duration GROW_START = 10 * kj::MICROSECONDS;
}  // namespace

void SpinWindow::slept(kj::Duration howLong) {
  if (limit_ == 0 * kj::NANOSECONDS) return;
  if (howLong < limit_) {
    // Work came within the largest window: a longer spin would have caught it.
    current_ = current_ < GROW_START ? kj::min(GROW_START, limit_) : kj::min(current_ * 2, limit_);
  } else {
    // Nothing came within the largest window: spinning was (and would have been) in vain.
    current_ = current_ / 2 < GROW_START ? 0 * kj::NANOSECONDS : current_ / 2;
  }
}

BusyPoll::BusyPoll(kj::UnixEventPort& port, kj::WaitScope& waitScope, kj::Duration limit)
    : port_(port), waitScope_(waitScope), window_(limit) {}

void BusyPoll::arrived() {
  ++arrivals;
}

void BusyPoll::idle(kj::FunctionParam<bool()> poll) {
  auto& clock = kj::systemPreciseMonotonicClock();
  auto window = window_.current();
  if (window > 0 * kj::NANOSECONDS) {
    ++stats_.spins;
    uint64_t seen = arrivals;
    auto start = clock.now();
    auto until = start + window;
    do {
      // Runs whatever has arrived (the port is polled without sleeping).
      if (poll() || arrivals != seen) {
        ++stats_.caught;
        return;
      }
    } while (clock.now() < until);
    stats_.wastedNanos += (clock.now() - start) / kj::NANOSECONDS;
  }
  ++stats_.sleeps;
  auto before = clock.now();
  // The loop learns from the port's answer that another thread queued work for it (its
  // Executor); taken from the port here, that news is passed on by waking the port again.
  if (port_.wait()) port_.wake();
  window_.slept(clock.now() - before);
}

kj::String BusyPoll::metrics(kj::StringPtr prefix) const {
  auto one = [&](kj::StringPtr name, kj::StringPtr type, kj::StringPtr help, auto value) {
    return kj::str("# HELP ", prefix, "_poll_", name, " ", help, "\n# TYPE ", prefix, "_poll_",
                   name, " ", type, "\n", prefix, "_poll_", name, " ", value, "\n");
  };
  return kj::str(one("spins_total", "counter", "idle moments the event loop spun before sleeping",
                     stats_.spins),
                 one("caught_total", "counter",
                     "spins that saw work arrive (a sleep and a wake-up saved)", stats_.caught),
                 one("sleeps_total", "counter", "times the event loop slept", stats_.sleeps),
                 one("wasted_seconds_total", "counter", "time spent spinning for nothing",
                     double(stats_.wastedNanos) / 1e9),
                 one("window_seconds", "gauge", "how long the loop spins now before it sleeps",
                     double(window_.current() / kj::NANOSECONDS) / 1e9));
}

}  // namespace cairn
