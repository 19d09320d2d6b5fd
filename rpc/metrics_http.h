// Serves Prometheus's text format at GET /metrics over kj-http: the servers on a TCP port, a
// mount on its local socket. What is served is the caller's `render`, called per request.
#pragma once

#include <kj/async-io.h>
#include <kj/compat/http.h>
#include <kj/function.h>
#include <kj/string.h>

namespace cairn {

class MetricsHttpServer {
public:
  MetricsHttpServer(kj::Timer& timer, kj::Function<kj::String()> render);
  ~MetricsHttpServer() noexcept(false);
  kj::Promise<void> listen(kj::ConnectionReceiver& port);

private:
  class Service;
  kj::HttpHeaderTable table_;
  kj::Own<Service> service_;
  kj::HttpServer server_;
};

}  // namespace cairn
