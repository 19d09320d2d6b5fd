#include "objserver/metrics.h"

#include <kj/debug.h>

#include "objserver/client_fence.h"
#include "objserver/server.h"

namespace cairn {

void LatencyHistogram::observe(double seconds) {
  size_t i = 0;
  while (i < BUCKETS && seconds > BOUNDS[i]) ++i;
  ++counts[i];
  ++count;
  sum += seconds;
}

namespace {

// One metric family: its HELP and TYPE lines, then its samples.
void family(kj::Vector<kj::String>& out, kj::StringPtr name, kj::StringPtr type,
            kj::StringPtr help) {
  out.add(kj::str("# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n"));
}

void sample(kj::Vector<kj::String>& out, kj::StringPtr name, kj::StringPtr labels, double value) {
  if (labels.size() > 0) {
    out.add(kj::str(name, "{", labels, "} ", value, "\n"));
  } else {
    out.add(kj::str(name, " ", value, "\n"));
  }
}

void gauge(kj::Vector<kj::String>& out, kj::StringPtr name, kj::StringPtr help, double value,
           kj::StringPtr type = "gauge") {
  family(out, name, type, help);
  sample(out, name, "", value);
}

}  // namespace

kj::String renderStandbyMetrics() {
  kj::Vector<kj::String> out;
  family(out, "cairn_server_state", "gauge", "1 for the state the server is in");
  for (auto s : {ServerState::SERVING, ServerState::DRAINING, ServerState::STOPPED}) {
    sample(out, "cairn_server_state", kj::str("state=\"", stateName(s), "\""), 0);
  }
  sample(out, "cairn_server_state", "state=\"standby\"", 1);
  return kj::strArray(out, "");
}

kj::String renderMetrics(ServerContext& ctx) {
  kj::Vector<kj::String> out;
  auto& target = ctx.target;
  auto kind = target.kind() == rpc::TargetKind::META ? "meta" : "data";
  family(out, "cairn_server_info", "gauge", "what this server serves (always 1)");
  sample(out, "cairn_server_info",
         kj::str("kind=\"", kind, "\",target=\"", target.index(), "\",fs=\"", target.fsName(),
                 "\",version=\"", target.softwareVersion(), "\""),
         1);
  family(out, "cairn_server_state", "gauge", "1 for the state the server is in");
  for (auto s : {ServerState::SERVING, ServerState::DRAINING, ServerState::STOPPED}) {
    sample(out, "cairn_server_state", kj::str("state=\"", stateName(s), "\""),
           ctx.state == s ? 1 : 0);
  }
  sample(out, "cairn_server_state", "state=\"standby\"", 0);
  gauge(out, "cairn_uptime_seconds", "seconds since this instance started",
        double((ctx.io.provider->getTimer().now() - ctx.started) / kj::MILLISECONDS) / 1000);
  gauge(out, "cairn_instance", "how many times the target has been started",
        double(target.instance()));

  family(out, "cairn_requests_total", "counter", "requests served, by kind");
  for (auto& [name, kind] : ctx.rpcs) {
    sample(out, "cairn_requests_total", kj::str("kind=\"", name.c_str(), "\""), double(kind.count));
  }
  family(out, "cairn_request_duration_seconds", "histogram",
         "time from a request's arrival to its reply, by kind");
  for (auto& [name, kind] : ctx.rpcs) {
    auto& h = kind.latency;
    if (h.count == 0) continue;
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= LatencyHistogram::BUCKETS; ++i) {
      cumulative += h.counts[i];
      auto le =
          i < LatencyHistogram::BUCKETS ? kj::str(LatencyHistogram::BOUNDS[i]) : kj::str("+Inf");
      sample(out, "cairn_request_duration_seconds_bucket",
             kj::str("kind=\"", name.c_str(), "\",le=\"", le, "\""), double(cumulative));
    }
    sample(out, "cairn_request_duration_seconds_sum", kj::str("kind=\"", name.c_str(), "\""),
           h.sum);
    sample(out, "cairn_request_duration_seconds_count", kj::str("kind=\"", name.c_str(), "\""),
           double(h.count));
  }
  gauge(out, "cairn_data_bytes_in_total", "file data received (writes)", double(ctx.bytesIn),
        "counter");
  gauge(out, "cairn_data_bytes_out_total", "file data sent (reads)", double(ctx.bytesOut),
        "counter");
  gauge(out, "cairn_data_removal_steps_total",
        "transactions that removed part of a large object ahead of its truncate or destroy",
        double(ctx.removalSteps), "counter");
  gauge(out, "cairn_room_checkpoints_total",
        "updates that waited for a checkpoint to give room back on a nearly full map",
        double(ctx.room.checkpointsAsked), "counter");

  auto locks = ctx.locks.stats();
  gauge(out, "cairn_locks_granted", "locks granted now", double(locks.granted));
  gauge(out, "cairn_locks_waiting", "lock requests waiting now", double(locks.waiting));
  gauge(out, "cairn_lock_callbacks_total", "blocking callbacks sent", double(locks.callbacks),
        "counter");
  gauge(out, "cairn_evictions_total", "clients evicted for not cancelling a lock",
        double(locks.evictions), "counter");
  gauge(out, "cairn_lock_prolongs_total",
        "lock timeouts restarted for a client whose give-back waits on a server away",
        double(locks.prolonged), "counter");
  gauge(out, "cairn_lock_share",
        "locks each connected client is asked to cache at most (--lock-budget)",
        double(ctx.lockShare()));
  gauge(out, "cairn_locks_held_over",
        "locks of clients that reconnected, kept until they have written back what they covered",
        double(locks.heldOver));
  gauge(out, "cairn_locks_forgotten_total", "locks dropped because what they covered was destroyed",
        double(locks.forgotten), "counter");

  KJ_IF_MAYBE (f, ctx.fence) {
    gauge(out, "cairn_client_fences_owed",
          "evictions not yet taken by a data target that could not be reached", double(f->owed()));
  }

  size_t connected = 0, clients = 0;
  for (auto& [key, s] : ctx.sessions) {
    if (s->role != rpc::Hello::Role::CLIENT) continue;
    ++clients;
    if (s->connections > 0) ++connected;
  }
  gauge(out, "cairn_clients", "client sessions (connected or within their grace period)",
        double(clients));
  gauge(out, "cairn_clients_connected", "client sessions connected now", double(connected));
  gauge(out, "cairn_clients_recovering",
        "clients of the previous instance that have not finished recovery",
        double(ctx.recovering()));
  gauge(out, "cairn_replays_applied_total", "updates replayed by returning clients",
        double(ctx.replaysApplied()), "counter");
  gauge(out, "cairn_replay_duration_seconds", "how long applying the last replays took",
        ctx.replaySeconds());

  gauge(out, "cairn_last_transno", "the last transaction committed",
        double(target.lastCommitted()));
  gauge(out, "cairn_last_synced_transno", "the last transaction on disk",
        double(ctx.reportedSynced()));
  KJ_IF_MAYBE (log, target.env().log()) {
    gauge(out, "cairn_log_syncs_total",
          "syncs a client waited for that the write-ahead log served (one sequential fdatasync)",
          double(log->syncs()), "counter");
    gauge(out, "cairn_log_bytes_total", "bytes appended to the write-ahead log",
          double(log->bytesLogged()), "counter");
    gauge(out, "cairn_log_gaps_total",
          "transactions too large for the log (the syncs after them until the next checkpoint "
          "are LMDB's)",
          double(log->gaps()), "counter");
  }
  gauge(out, "cairn_lmdb_map_used_bytes", "bytes of the LMDB map in use",
        double(target.env().usedBytes()));
  gauge(out, "cairn_lmdb_map_size_bytes", "the LMDB map's size (ENOSPC beyond)",
        double(target.env().mapSize()));
  return kj::strArray(out, "");
}

}  // namespace cairn
