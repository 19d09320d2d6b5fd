// sessionload: many clients holding many locks on one server, and what that costs it in memory.
// Opens N client sessions (each its own connection, mutual TLS as a mount makes them), has each
// take M caching locks (PR on inodes of its own, so that none conflicts), reads the server's
// resident memory, then ends every session with a goodbye and reads it again.
//
//   sessionload --server HOST:PORT --pid PID [--tls DIR] [--clients N] [--locks M]
//
// Prints one line: clients, locks, the server's RSS before, with the locks and after, and the
// cost per lock. For tools/bench ("servers stay bounded in memory under many clients and locks").
#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/vector.h>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include "rpc/cairn.capnp.h"
#include "rpc/feature_flags.h"
#include "rpc/lock_names.h"
#include "rpc/transport.h"

namespace {

// VmRSS of a process, in KiB (0 if it cannot be read).
uint64_t rssKib(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  }
  return 0;
}

// Nobody else asks for these locks; a callback would only come from a shutdown, which this
// tool does not expect to outlast.
class IgnoreCallbacks final : public cairn::rpc::LockCallback::Server {};

struct Session {
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyClient> client;
  cairn::rpc::MetaSession::Client meta = nullptr;
  cairn::rpc::LockSession::Client locks = nullptr;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Many client sessions holding many locks, and the server's memory"};
  std::string server, tls;
  int pid = 0;
  unsigned clients = 100, locks = 1000;
  if (const char* env = getenv("CAIRN_TLS")) tls = env;
  app.add_option("--server", server, "HOST:PORT of the server")->required();
  app.add_option("--pid", pid, "the server's pid (for its memory)")->required();
  app.add_option("--tls", tls, "client credentials directory (default $CAIRN_TLS; none: plain)");
  app.add_option("--clients", clients, "sessions to open");
  app.add_option("--locks", locks, "locks each session takes");
  CLI11_PARSE(app, argc, argv);

  try {
    auto io = kj::setupAsyncIo();
    auto transport = tls.empty() ? cairn::Transport::plaintext(io)
                                 : cairn::Transport::tls(io, tls.c_str(), nullptr);
    std::mt19937_64 random(std::random_device{}());
    uint64_t before = rssKib(pid);
    kj::Vector<Session> sessions;
    for (unsigned c = 0; c < clients; ++c) {
      Session s;
      s.stream = transport->network()
                     .parseAddress(server)
                     .then([](kj::Own<kj::NetworkAddress> a) { return a->connect(); })
                     .wait(io.waitScope);
      s.client = kj::heap<capnp::TwoPartyClient>(*s.stream);
      auto req = s.client->bootstrap().castAs<cairn::rpc::Bootstrap>().connectRequest();
      auto hello = req.initHello();
      auto uuid = kj::heapArray<kj::byte>(16);
      for (auto& b : uuid) b = kj::byte(random());
      hello.setClientUuid(uuid);
      hello.setSoftwareVersion("sessionload");
      hello.setHostName("sessionload");
      hello.setFeatures(cairn::features::SUPPORTED);
      req.setCallback(kj::heap<IgnoreCallbacks>());
      auto reply = req.send().wait(io.waitScope);
      s.meta = reply.getMeta();
      s.locks = reply.getLocks();
      // Inodes of its own, far above any real one: no two sessions' locks conflict.
      uint64_t base = (uint64_t(1) << 40) + uint64_t(c) * locks;
      constexpr unsigned BATCH = 512;  // requests in flight per session
      for (unsigned first = 0; first < locks; first += BATCH) {
        auto batch = kj::heapArrayBuilder<kj::Promise<void>>(kj::min(BATCH, locks - first));
        for (unsigned k = first; k < first + batch.capacity(); ++k) {
          auto lock = s.locks.enqueueRequest();
          auto r = lock.initRequest();
          r.setType(cairn::RES_INODE);
          r.setId(base + k);
          r.setMode(cairn::rpc::LockMode::PR);
          r.setBits(cairn::BIT_ATTR);
          batch.add(lock.send().ignoreResult());
        }
        kj::joinPromises(batch.finish()).wait(io.waitScope);
      }
      sessions.add(kj::mv(s));
    }
    uint64_t held = rssKib(pid);
    for (auto& s : sessions) {
      auto bye = s.meta.callRequest();
      bye.initRequest().setGoodbye();
      bye.send().ignoreResult().wait(io.waitScope);
    }
    sessions.clear();
    io.provider->getTimer().afterDelay(500 * kj::MILLISECONDS).wait(io.waitScope);
    uint64_t after = rssKib(pid);
    uint64_t total = uint64_t(clients) * locks;
    printf(
        "sessionload: %u clients, %llu locks held: server RSS %.1f MiB before, %.1f MiB with "
        "them, %.1f MiB after their goodbyes; %.0f bytes per lock\n",
        clients, static_cast<unsigned long long>(total), before / 1024.0, held / 1024.0,
        after / 1024.0, total > 0 ? double(held - kj::min(held, before)) * 1024.0 / total : 0.0);
    return 0;
  } catch (kj::Exception& e) {
    fprintf(stderr, "sessionload: %s\n", e.getDescription().cStr());
    return 1;
  }
}
