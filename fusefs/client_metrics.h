// A mount's own counters, in Prometheus's text format, served over HTTP (rpc/metrics_http.h) on
// a local (unix) socket that `cairnctl --mount MNT stats` reads: requests by kind and link, gate
// waits, link states, updates kept for replay, cache hits, dirty bytes, locks held, open files.
#pragma once

#include <kj/string.h>

#include "rpc/stats_socket.h"

namespace cairn {

class Client;

kj::String renderClientMetrics(Client& client);

}  // namespace cairn
