// Busy polling: before the event loop's thread goes to sleep, it keeps looking for work a little
// while.
//
// Cairn's conversations are short ping-pongs: the kernel hands the mount a FUSE request, the
// mount answers, the application makes its next call a few microseconds later; a client sends an
// RPC and the reply comes tens of microseconds later. On a virtual machine a sleeping CPU is
// expensive to wake (measured here: a pipe ping-pong between two processes on different CPUs
// takes 40 µs a round trip, 6 µs when one side polls instead of sleeping), so a thread that
// sleeps between the two halves of such a conversation pays most of the conversation's time
// in wake-ups.
//
// The window adapts as the guest kernel's haltpoll governor does: a spin that sees work arrive
// keeps its window; a sleep shorter than the largest window grows it (a longer spin would have
// caught that work); a longer sleep shrinks it, down to not spinning at all. A process with
// nothing to do spends nothing; one with sparse work spends little.
#pragma once

#include <kj/async-unix.h>
#include <kj/async.h>
#include <kj/function.h>
#include <kj/string.h>
#include <kj/time.h>

#include <cstdint>

namespace cairn {

// How long to spin: the policy alone (no clock, no loop), so that it can be tested as such.
class SpinWindow {
public:
  // `limit` is the largest window; zero: never spin.
  explicit SpinWindow(kj::Duration limit) : limit_(limit), current_(limit) {}
  kj::Duration current() const { return current_; }
  // The thread slept this long after spinning `current()` in vain.
  void slept(kj::Duration howLong);

private:
  kj::Duration limit_;
  kj::Duration current_;
};

class BusyPoll {
public:
  // `limit` is the largest window; zero turns polling off (Promise::wait's behaviour).
  BusyPoll(kj::UnixEventPort& port, kj::WaitScope& waitScope, kj::Duration limit);
  KJ_DISALLOW_COPY(BusyPoll);

  // Work from outside arrived on this thread (a FUSE request, bytes on a connection): what tells
  // a spin that it was worth it. Cheap; callable whether or not a BusyPoll exists.
  static void arrived();

  // As promise.wait(waitScope), polling before each sleep.
  template <typename T>
  T wait(kj::Promise<T>&& promise) {
    run(promise);
    return promise.wait(waitScope_);
  }

  kj::Duration window() const { return window_.current(); }

  // Counters, for the process's metrics.
  struct Stats {
    uint64_t spins = 0;        // idle moments that spun
    uint64_t caught = 0;       // ... and saw work arrive
    uint64_t sleeps = 0;       // times the thread slept
    uint64_t wastedNanos = 0;  // time spent spinning in vain
  };
  const Stats& stats() const { return stats_; }
  // Those counters and the window, in Prometheus's text format, named PREFIX_poll_*.
  kj::String metrics(kj::StringPtr prefix) const;

private:
  template <typename T>
  void run(kj::Promise<T>& promise) {
    while (!promise.poll(waitScope_)) idle([&]() { return promise.poll(waitScope_); });
  }
  // The loop has nothing to run: spin while `poll` (which runs whatever arrives) finds nothing
  // and the window lasts, then sleep until an event.
  void idle(kj::FunctionParam<bool()> poll);

  kj::UnixEventPort& port_;
  kj::WaitScope& waitScope_;
  SpinWindow window_;
  Stats stats_;
};

}  // namespace cairn
