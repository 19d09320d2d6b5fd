#include "fusefs/client_metrics.h"

#include "fusefs/client.h"

namespace cairn {

namespace {
kj::StringPtr stateName(ServerLink::State state) {
  switch (state) {
    case ServerLink::State::CONNECTING:
      return "connecting";
    case ServerLink::State::RECOVERING:
      return "recovering";
    case ServerLink::State::ACTIVE:
      return "active";
    case ServerLink::State::DRAINING:
      return "draining";
    case ServerLink::State::READY:
      return "ready";
    case ServerLink::State::DISCONNECTED:
      return "disconnected";
  }
  return "unknown";
}

void help(kj::Vector<kj::String>& out, kj::StringPtr name, kj::StringPtr type, kj::StringPtr text) {
  out.add(kj::str("# HELP ", name, " ", text, "\n# TYPE ", name, " ", type, "\n"));
}

// A metric of one sample without labels: its help and its value.
template <typename T>
void sample(kj::Vector<kj::String>& out, kj::StringPtr name, kj::StringPtr type, kj::StringPtr text,
            T value) {
  help(out, name, type, text);
  out.add(kj::str(name, " ", value, "\n"));
}
}  // namespace

kj::String renderClientMetrics(Client& client) {
  kj::Vector<kj::String> out;
  auto links = client.links();
  help(out, "cairn_client_requests_total", "counter", "requests sent, by server link and kind");
  for (auto* link : links) {
    for (auto& [kind, n] : link->stats().requests) {
      out.add(kj::str("cairn_client_requests_total{link=\"", link->name(), "\",kind=\"",
                      kind.c_str(), "\"} ", n, "\n"));
    }
  }
  help(out, "cairn_client_gate_waits_total", "counter",
       "requests that waited at a link's gate (server away, recovering or shutting down)");
  for (auto* link : links) {
    out.add(kj::str("cairn_client_gate_waits_total{link=\"", link->name(), "\"} ",
                    link->stats().gateWaits, "\n"));
  }
  help(out, "cairn_client_gate_wait_seconds_total", "counter", "time requests spent there");
  for (auto* link : links) {
    out.add(kj::str("cairn_client_gate_wait_seconds_total{link=\"", link->name(), "\"} ",
                    double(link->stats().gateWaited / kj::MICROSECONDS) / 1e6, "\n"));
  }
  help(out, "cairn_client_link_state", "gauge", "1 for the state each link is in");
  for (auto* link : links) {
    out.add(kj::str("cairn_client_link_state{link=\"", link->name(), "\",state=\"",
                    stateName(link->state()), "\"} 1\n"));
  }
  help(out, "cairn_client_replay_kept_bytes", "gauge",
       "updates kept until the server reports them synced, for replay after a crash");
  for (auto* link : links) {
    out.add(kj::str("cairn_client_replay_kept_bytes{link=\"", link->name(), "\"} ",
                    link->keptBytes(), "\n"));
  }
  auto& stats = client.stats();
  sample(out, "cairn_client_cache_hits_total", "counter", "getattr and lookup answered locally",
         stats.cacheHits);
  sample(out, "cairn_client_setid_cleared_total", "counter",
         "set-ID bits cleared on a write, truncate or chown, for the kernel "
         "(FUSE_HANDLE_KILLPRIV_V2)",
         stats.setidCleared);
  sample(out, "cairn_client_update_batches_total", "counter",
         "requests carrying several updates: answered ahead, or sent after files' data "
         "(MetaRequest.batch)",
         client.batches().batches());
  sample(out, "cairn_client_batched_updates_total", "counter", "updates those requests carried",
         client.batches().inBatches());
  sample(out, "cairn_client_write_batches_total", "counter",
         "writeMany requests carrying several small files' write-behind writes",
         client.dataBatches().batches());
  sample(out, "cairn_client_batched_writes_total", "counter",
         "files' writes to a data target those requests carried", client.dataBatches().inBatches());
  sample(out, "cairn_client_kernel_invalidations_total", "counter",
         "inodes whose attributes or pages the kernel was told to drop (a lock went back)",
         stats.kernelInvalidations);
  sample(out, "cairn_client_kernel_names_dropped_total", "counter",
         "names the kernel was told to drop (a directory's lock went back)",
         stats.kernelNamesDropped);
  sample(out, "cairn_client_kernel_epoch_raises_total", "counter",
         "times every name the kernel holds was made to be checked again (a name may have been in "
         "flight when its lock went back)",
         stats.kernelEpochRaises);
  sample(out, "cairn_client_kernel_slow_name_drops_total", "counter",
         "drops of names that still waited after 1 s (on a lookup of ours in that directory) and "
         "were done by raising the epoch instead",
         client.kernelEpochFallbacks());
  sample(out, "cairn_client_listing_hits_total", "counter",
         "readdir answered from a listing kept under the directory's lock", stats.listingHits);
  auto& dirops = client.dirops();
  sample(out, "cairn_client_unlinks_ahead_total", "counter",
         "unlinks and rmdirs answered before the server did (PW on the directory's names)",
         stats.removalsAhead);
  sample(out, "cairn_client_creates_ahead_total", "counter",
         "creates answered before the server did (PW on the directory's names)",
         stats.createsAhead);
  sample(out, "cairn_client_dir_attrs_ahead_total", "counter",
         "chmod, chown and utimes of directories answered before the server did (PW on their "
         "attributes)",
         stats.dirAttrsAhead);
  sample(out, "cairn_client_mkdirs_beside_total", "counter",
         "mkdirs sent without waiting for the creates and removals answered ahead in their "
         "directory",
         stats.mkdirsBeside);
  sample(out, "cairn_client_dirops_ahead_failed_total", "counter",
         "of those, refused by the server or not applied (reported at the directory's fsync)",
         dirops.failed());
  sample(out, "cairn_client_dirops_in_flight", "gauge",
         "creates, unlinks and rmdirs answered ahead, not yet replied", dirops.inFlight());
  sample(out, "cairn_client_cache_misses_total", "counter", "getattr and lookup sent to the server",
         stats.cacheMisses);
  sample(out, "cairn_client_dirty_bytes", "gauge", "writes queued behind, not yet sent",
         client.dirtyBytes());
  sample(out, "cairn_client_locks_held", "gauge", "caching locks held on the metadata server",
         client.lockCache().size());
  sample(out, "cairn_client_lock_bound", "gauge",
         "caching locks held at most: this mount's lock_limit, or the server's share if smaller",
         client.lockCache().bound());
  sample(out, "cairn_client_lock_callbacks_total", "counter",
         "blocking callbacks received (a lock wanted elsewhere)", client.lockCache().callbacks());
  sample(out, "cairn_client_locks_forgotten_total", "counter",
         "locks the server dropped because another client destroyed what they covered",
         client.lockCache().forgotten());
  sample(out, "cairn_client_lock_downgrades_total", "counter",
         "write locks turned into read locks when the last writer closed",
         client.lockCache().downgrades());
  sample(out, "cairn_client_lock_prolongs_total", "counter",
         "more time asked for locks whose give-back waited on a server",
         client.lockCache().prolongs());
  sample(out, "cairn_client_cached_names", "gauge",
         "directory entries cached (at most the mount's name_limit)", client.metaCache().names());
  sample(out, "cairn_client_kernel_names", "gauge",
         "directory entries the kernel was let keep (at most the mount's name_limit)",
         client.kernelNames());
  sample(out, "cairn_client_cached_attrs", "gauge", "inode attributes cached",
         client.metaCache().attrs());
  sample(out, "cairn_client_open_files", "gauge", "files open through this mount",
         client.opens().size());
  return kj::strArray(out, "");
}

}  // namespace cairn
