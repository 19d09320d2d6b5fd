// A mount's own counters, in Prometheus's text format, served over HTTP on a local (unix)
// socket that `cairnctl --mount MNT stats` reads: requests by kind and link, gate waits, link
// states, updates kept for replay, cache hits, dirty bytes, locks held, open files.
#pragma once

#include <kj/async-io.h>
#include <kj/compat/http.h>
#include <kj/string.h>

#include "rpc/stats_socket.h"

namespace cairn {

class Client;

kj::String renderClientMetrics(Client& client);

class ClientMetricsServer {
public:
  ClientMetricsServer(Client& client, kj::Timer& timer);
  ~ClientMetricsServer() noexcept(false);
  kj::Promise<void> listen(kj::ConnectionReceiver& port);

private:
  class Service;
  kj::HttpHeaderTable table_;
  kj::Own<Service> service_;
  kj::HttpServer server_;
};

}  // namespace cairn
