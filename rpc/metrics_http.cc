#include "rpc/metrics_http.h"

namespace cairn {

class MetricsHttpServer::Service final : public kj::HttpService {
public:
  Service(kj::HttpHeaderTable& table, kj::Function<kj::String()> render)
      : table_(table), render_(kj::mv(render)) {}

  kj::Promise<void> request(kj::HttpMethod method, kj::StringPtr url, const kj::HttpHeaders&,
                            kj::AsyncInputStream&, Response& response) override {
    if (method != kj::HttpMethod::GET || (url != "/metrics" && !url.startsWith("/metrics?"))) {
      return response.sendError(404, "Not Found", table_);
    }
    auto body = render_();
    kj::HttpHeaders headers(table_);
    headers.set(kj::HttpHeaderId::CONTENT_TYPE, "text/plain; version=0.0.4");
    auto stream = response.send(200, "OK", headers, body.size());
    auto write = stream->write(body.begin(), body.size());
    return write.attach(kj::mv(stream), kj::mv(body));
  }

private:
  kj::HttpHeaderTable& table_;
  kj::Function<kj::String()> render_;
};

MetricsHttpServer::MetricsHttpServer(kj::Timer& timer, kj::Function<kj::String()> render)
    : service_(kj::heap<Service>(table_, kj::mv(render))), server_(timer, table_, *service_) {}

MetricsHttpServer::~MetricsHttpServer() noexcept(false) {}

kj::Promise<void> MetricsHttpServer::listen(kj::ConnectionReceiver& port) {
  return server_.listenHttp(port);
}

}  // namespace cairn
