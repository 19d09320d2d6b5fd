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
  help(out, "cairn_client_cache_hits_total", "counter", "getattr and lookup answered locally");
  out.add(kj::str("cairn_client_cache_hits_total ", stats.cacheHits, "\n"));
  help(out, "cairn_client_setid_cleared_total", "counter",
       "set-ID bits cleared on a write, truncate or chown, for the kernel "
       "(FUSE_HANDLE_KILLPRIV_V2)");
  out.add(kj::str("cairn_client_setid_cleared_total ", stats.setidCleared, "\n"));
  help(out, "cairn_client_update_batches_total", "counter",
       "requests carrying several updates: answered ahead, or sent after files' data "
       "(MetaRequest.batch)");
  out.add(kj::str("cairn_client_update_batches_total ", client.batches().batches(), "\n"));
  help(out, "cairn_client_batched_updates_total", "counter", "updates those requests carried");
  out.add(kj::str("cairn_client_batched_updates_total ", client.batches().inBatches(), "\n"));
  help(out, "cairn_client_write_batches_total", "counter",
       "writeMany requests carrying several small files' write-behind writes");
  out.add(kj::str("cairn_client_write_batches_total ", client.dataBatches().batches(), "\n"));
  help(out, "cairn_client_batched_writes_total", "counter",
       "files' writes to a data target those requests carried");
  out.add(kj::str("cairn_client_batched_writes_total ", client.dataBatches().inBatches(), "\n"));
  help(out, "cairn_client_kernel_invalidations_total", "counter",
       "inodes whose attributes or pages the kernel was told to drop (a lock went back)");
  out.add(kj::str("cairn_client_kernel_invalidations_total ", stats.kernelInvalidations, "\n"));
  help(out, "cairn_client_kernel_names_dropped_total", "counter",
       "names the kernel was told to drop (a directory's lock went back)");
  out.add(kj::str("cairn_client_kernel_names_dropped_total ", stats.kernelNamesDropped, "\n"));
  help(out, "cairn_client_kernel_epoch_raises_total", "counter",
       "times every name the kernel holds was made to be checked again (a name may have been in "
       "flight when its lock went back)");
  out.add(kj::str("cairn_client_kernel_epoch_raises_total ", stats.kernelEpochRaises, "\n"));
  help(out, "cairn_client_listing_hits_total", "counter",
       "readdir answered from a listing kept under the directory's lock");
  out.add(kj::str("cairn_client_listing_hits_total ", stats.listingHits, "\n"));
  auto& dirops = client.dirops();
  help(out, "cairn_client_unlinks_ahead_total", "counter",
       "unlinks and rmdirs answered before the server did (PW on the directory's names)");
  out.add(kj::str("cairn_client_unlinks_ahead_total ", stats.removalsAhead, "\n"));
  help(out, "cairn_client_creates_ahead_total", "counter",
       "creates answered before the server did (PW on the directory's names)");
  out.add(kj::str("cairn_client_creates_ahead_total ", stats.createsAhead, "\n"));
  help(out, "cairn_client_dir_attrs_ahead_total", "counter",
       "chmod, chown and utimes of directories answered before the server did (PW on their "
       "attributes)");
  out.add(kj::str("cairn_client_dir_attrs_ahead_total ", stats.dirAttrsAhead, "\n"));
  help(out, "cairn_client_dirops_ahead_failed_total", "counter",
       "of those, refused by the server or not applied (reported at the directory's fsync)");
  out.add(kj::str("cairn_client_dirops_ahead_failed_total ", dirops.failed(), "\n"));
  help(out, "cairn_client_dirops_in_flight", "gauge",
       "creates, unlinks and rmdirs answered ahead, not yet replied");
  out.add(kj::str("cairn_client_dirops_in_flight ", dirops.inFlight(), "\n"));
  help(out, "cairn_client_cache_misses_total", "counter", "getattr and lookup sent to the server");
  out.add(kj::str("cairn_client_cache_misses_total ", stats.cacheMisses, "\n"));
  help(out, "cairn_client_dirty_bytes", "gauge", "writes queued behind, not yet sent");
  out.add(kj::str("cairn_client_dirty_bytes ", client.dirtyBytes(), "\n"));
  help(out, "cairn_client_locks_held", "gauge", "caching locks held on the metadata server");
  out.add(kj::str("cairn_client_locks_held ", client.lockCache().size(), "\n"));
  help(out, "cairn_client_lock_callbacks_total", "counter",
       "blocking callbacks received (a lock wanted elsewhere)");
  out.add(kj::str("cairn_client_lock_callbacks_total ", client.lockCache().callbacks(), "\n"));
  help(out, "cairn_client_locks_forgotten_total", "counter",
       "locks the server dropped because another client destroyed what they covered");
  out.add(kj::str("cairn_client_locks_forgotten_total ", client.lockCache().forgotten(), "\n"));
  help(out, "cairn_client_lock_downgrades_total", "counter",
       "write locks turned into read locks when the last writer closed");
  out.add(kj::str("cairn_client_lock_downgrades_total ", client.lockCache().downgrades(), "\n"));
  help(out, "cairn_client_lock_prolongs_total", "counter",
       "more time asked for locks whose give-back waited on a server");
  out.add(kj::str("cairn_client_lock_prolongs_total ", client.lockCache().prolongs(), "\n"));
  help(out, "cairn_client_cached_names", "gauge",
       "directory entries cached (at most the mount's name_limit)");
  out.add(kj::str("cairn_client_cached_names ", client.metaCache().names(), "\n"));
  help(out, "cairn_client_kernel_names", "gauge",
       "directory entries the kernel was let keep (at most the mount's name_limit)");
  out.add(kj::str("cairn_client_kernel_names ", client.kernelNames(), "\n"));
  help(out, "cairn_client_cached_attrs", "gauge", "inode attributes cached");
  out.add(kj::str("cairn_client_cached_attrs ", client.metaCache().attrs(), "\n"));
  help(out, "cairn_client_open_files", "gauge", "files open through this mount");
  out.add(kj::str("cairn_client_open_files ", client.opens().size(), "\n"));
  return kj::strArray(out, "");
}

}  // namespace cairn
