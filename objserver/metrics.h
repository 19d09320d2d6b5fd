// Counters people can watch: each server serves them in Prometheus's text format at
// http://HOST:PORT/metrics (`cairn-server serve --metrics HOST:PORT`), from what the server
// keeps anyway (request counts and latencies by kind, data bytes, locks, evictions, state,
// recovery, LMDB map use).
#pragma once

#include <kj/string.h>

#include <cstdint>

namespace cairn {

class ServerContext;

// Request latency of one kind, in fixed buckets (seconds), as a Prometheus histogram.
struct LatencyHistogram {
  // From 10 µs: most requests are handled within one turn of the event loop, in tens of µs.
  static constexpr double BOUNDS[] = {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
                                      0.0025,  0.005,    0.01,    0.025,  0.05,    0.1,    0.25,
                                      0.5,     1,        2.5,     5,      10};
  static constexpr size_t BUCKETS = sizeof(BOUNDS) / sizeof(BOUNDS[0]);
  uint64_t counts[BUCKETS + 1] = {};  // the last one: above every bound
  uint64_t count = 0;
  double sum = 0;
  void observe(double seconds);
};

// The text of /metrics (served by rpc/metrics_http.h).
kj::String renderMetrics(ServerContext& ctx);
// What a standby (which serves no target) has to say: its state.
kj::String renderStandbyMetrics();

}  // namespace cairn
