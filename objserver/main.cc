// cairn-server: formats a target, or serves one. Wiring only; the logic lives in the classes.
#include <sys/stat.h>
#include <unistd.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/debug.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <random>

#include "objserver/client_fence.h"
#include "objserver/data_links.h"
#include "objserver/data_service.h"
#include "objserver/destroyer.h"
#include "objserver/metrics.h"
#include "objserver/namespace.h"
#include "objserver/object_store.h"
#include "objserver/open_files.h"
#include "objserver/posix_locks.h"
#include "objserver/registrar.h"
#include "objserver/server.h"
#include "objserver/standby.h"
#include "rpc/heap_tuning.h"
#include "rpc/metrics_http.h"
#include "rpc/transport.h"
#include "rpc/version.h"

namespace cairn {
namespace {

struct ServeOptions {
  std::string dir;
  std::string kind = "meta";
  std::string listen = "127.0.0.1:0";
  std::string advertise;
  std::string mgs;
  std::string portFile;
  std::string fsName;
  std::string versionOverride;
  uint64_t mapSize = uint64_t(1) << 40;
  double disconnectGrace = 30;
  double recoveryWindow = 30;
  double lockTimeout = 10;
  double lockProlongLimit = 60;
  size_t lockBudget = 2000000;
  bool force = false;
  bool testReplayBarrier = false;
  std::string metrics;
  std::string partner;
  double failoverTimeout = 2;
  std::string tls;
  bool trustedNetwork = false;
  bool plaintext = false;
  std::vector<std::string> allowClients;
  size_t maxConnections = 4096;
  bool rootSquash = false;
  std::string squashId = "65534:65534";
  std::vector<std::string> trustRoot;
  // Off by default: with several servers and the clients on a small machine, servers that spin
  // take the CPU the others need (measured on 2 cores with clients spinning 200 µs: random reads
  // and creates fell by half when the servers spun 200 µs too), while a client's spin pays
  // (fusefs/main.cc).
  unsigned pollUs = 0;
};

AccessPolicy accessPolicy(const ServeOptions& o) {
  auto names = kj::heapArrayBuilder<kj::String>(o.allowClients.size());
  for (auto& n : o.allowClients) names.add(kj::str(n.c_str()));
  return AccessPolicy(names.finish());
}

RootSquash rootSquash(const ServeOptions& o) {
  RootSquash squash;
  squash.enabled = o.rootSquash;
  parseSquashId(o.squashId.c_str(), squash);
  auto names = kj::heapArrayBuilder<kj::String>(o.trustRoot.size());
  for (auto& n : o.trustRoot) names.add(kj::str(n.c_str()));
  squash.trusted = names.finish();
  return squash;
}

bool loopback(kj::StringPtr host) {
  return host.startsWith("127.") || host == "[::1]" || host == "::1" || host == "localhost";
}

rpc::TargetKind parseKind(const std::string& kind) {
  if (kind == "meta") return rpc::TargetKind::META;
  if (kind == "data") return rpc::TargetKind::DATA;
  KJ_FAIL_REQUIRE("--kind is meta or data", kind.c_str());
}

kj::String hostPart(kj::StringPtr address) {
  KJ_IF_MAYBE (colon, address.findLast(':')) {
    return kj::heapString(address.slice(0, *colon));
  }
  return kj::str(address);
}

// Written with a rename, so a reader never sees half a file.
void writePortFile(const std::string& path, uint port) {
  auto tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << port << "\n";
    KJ_REQUIRE(out.good(), "cannot write the port file", tmp.c_str());
  }
  KJ_SYSCALL(rename(tmp.c_str(), path.c_str()));
}

kj::Array<kj::byte> serverUuid() {
  std::random_device rd;
  auto uuid = kj::heapArray<kj::byte>(16);
  for (auto& b : uuid) b = kj::byte(rd());
  return uuid;
}

// What the process keeps across its phases (serving, standing by): its address, its identity
// towards other servers, the metrics port.
struct Process {
  const ServeOptions& options;
  kj::ArrayPtr<const kj::String> argv;  // as started: an upgrade in place runs it again
  kj::AsyncIoContext& io;
  Transport& transport;  // mutual TLS, or plain text
  kj::Own<kj::ConnectionReceiver> listener;
  kj::String advertise;
  LinkIdentity identity;
  kj::String metricsAddress;
  kj::Maybe<ServerContext&> serving;  // what /metrics reports on
  BusyPoll& busy;                     // runs the event loop while serving
  bool announced = false;

  // The port file is written once the server serves or stands by, so that a tool waiting for it
  // sees a target that failed to open as an exit instead.
  void announce() {
    if (announced) return;
    announced = true;
    if (!options.portFile.empty()) writePortFile(options.portFile, listener->getPort());
  }
  kj::Promise<int> signalled() {
    return io.unixEventPort.onSignal(SIGTERM)
        .exclusiveJoin(io.unixEventPort.onSignal(SIGINT))
        .then([](siginfo_t info) { return info.si_signo; });
  }
};

constexpr kj::Duration HEARTBEAT_INTERVAL = 200 * kj::MILLISECONDS;
// After letting the target go, a server leaves it to its partner this long before it would
// take it back (the partner may be slow, or gone).
constexpr kj::Duration HANDOFF_HOLD_OFF = 3 * kj::SECONDS;
// How often the credentials directory's crl.pem is read again (a small file; see serveTarget).
constexpr kj::Duration REVOCATION_CHECK = 2 * kj::SECONDS;

// How one period of serving ended.
struct Ending {
  enum Kind { EXIT_CLEAN, EXIT_UNCLEAN, STAND_BY, REEXEC } kind;
  kj::String note;  // why standing by
  kj::Duration holdOff = 0 * kj::SECONDS;
  kj::Maybe<Reexec> reexec;

  static Ending exit(bool clean) {
    return Ending{clean ? EXIT_CLEAN : EXIT_UNCLEAN, nullptr, 0 * kj::SECONDS, nullptr};
  }
  static Ending standBy(kj::String note, kj::Duration holdOff) {
    return Ending{STAND_BY, kj::mv(note), holdOff, nullptr};
  }
  static Ending restart(Reexec how) {
    return Ending{REEXEC, nullptr, 0 * kj::SECONDS, kj::mv(how)};
  }
};

// Polls the owner lock's heartbeat thread: resolves with the reason once this server must stop.
kj::Promise<kj::String> whenFenced(kj::Timer& timer, TargetLock& lock) {
  return timer.afterDelay(100 * kj::MILLISECONDS)
      .then([&timer, &lock]() -> kj::Promise<kj::String> {
        KJ_IF_MAYBE (why, lock.lost()) {
          return kj::mv(*why);
        }
        return whenFenced(timer, lock);
      });
}

Ending serveTarget(Process& p, kj::Own<TargetLock> lock) {
  const ServeOptions& o = p.options;
  auto& io = p.io;
  OpenOptions open;
  open.force = o.force;
  open.mapSize = o.mapSize;
  open.lock = kj::mv(lock);
  if (!o.fsName.empty()) open.expectFsName = kj::str(o.fsName.c_str());
  if (!o.versionOverride.empty()) open.versionOverride = kj::str(o.versionOverride.c_str());
  kj::Own<Target> owned;
  try {
    owned = kj::heap<Target>(o.dir.c_str(), parseKind(o.kind), kj::mv(open));
  } catch (kj::Exception& e) {
    if (o.partner.empty()) throw;
    // A standby that may not open the target (the start-up rule refused it) keeps standing by:
    // the administrator can start the version that may, or force it.
    spdlog::error("cannot take the target over: {}", e.getDescription().cStr());
    return Ending::standBy(kj::str("cannot open the target: ", e.getDescription()),
                           5 * kj::SECONDS);
  }
  Target& target = *owned;
  target.lock().startBeating(HEARTBEAT_INTERVAL);

  ServerConfig config;
  config.advertise = kj::str(p.advertise);
  config.disconnectGrace = int64_t(o.disconnectGrace * 1000) * kj::MILLISECONDS;
  config.recoveryWindow = int64_t(o.recoveryWindow * 1000) * kj::MILLISECONDS;
  config.lockTimeout = int64_t(o.lockTimeout * 1000) * kj::MILLISECONDS;
  config.lockProlongLimit = int64_t(o.lockProlongLimit * 1000) * kj::MILLISECONDS;
  config.lockBudget = o.lockBudget;
  config.testReplayBarrier = o.testReplayBarrier;
  config.partner = kj::str(o.partner.c_str());
  config.access = accessPolicy(o);
  config.squash = rootSquash(o);
  if (target.kind() == rpc::TargetKind::META) {
    spdlog::info("root squash: {}", config.squash.describe().cStr());
  }
  ServerContext ctx(io, p.transport.network(), target, kj::mv(config));
  ctx.metricsAddress = kj::str(p.metricsAddress);
  p.serving = ctx;
  KJ_DEFER(p.serving = nullptr);

  ctx.startRecovery();

  kj::Maybe<kj::Own<OpenFiles>> opens;
  kj::Maybe<kj::Own<PosixLocks>> posixLocks;
  kj::Maybe<kj::Own<Namespace>> ns;
  kj::Maybe<kj::Own<DataLinks>> dataLinks;
  kj::Maybe<kj::Own<Destroyer>> destroyer;
  kj::Maybe<kj::Own<ClientFence>> fence;
  kj::Maybe<kj::Own<ObjectStore>> objects;
  kj::Maybe<kj::Own<Registrar>> registrar;
  kj::Promise<void> reaper = kj::READY_NOW;
  // Clients of the previous instance get the recovery window to come back.
  kj::Promise<void> forgetter =
      io.provider->getTimer()
          .afterDelay(ctx.config.recoveryWindow)
          .then([&]() { ctx.expireAbsentClients(); })
          .eagerlyEvaluate([](kj::Exception&& e) {
            spdlog::error("expiring clients: {}", e.getDescription().cStr());
          });

  if (target.kind() == rpc::TargetKind::META) {
    auto& of = *opens.emplace(kj::heap<OpenFiles>());
    auto& n =
        *ns.emplace(kj::heap<Namespace>(target, [&of](uint64_t ino) { return of.isOpen(ino); }));
    auto& links = *dataLinks.emplace(kj::heap<DataLinks>(ctx, n, p.identity));
    auto& d = *destroyer.emplace(kj::heap<Destroyer>(ctx, n, links));
    ctx.ns = n;
    ctx.opens = of;
    ctx.destroyer = d;
    auto& f = *fence.emplace(kj::heap<ClientFence>(ctx, links));
    ctx.fence = f;
    f.start();  // the fences owed when the server last stopped
    ctx.posixLocks = *posixLocks.emplace(kj::heap<PosixLocks>());
    d.start();
    size_t orphanCount;
    {
      store::Txn txn(target.env(), store::Txn::READ);
      orphanCount = n.orphans(txn).size();
    }
    if (orphanCount > 0) {
      spdlog::info("{} orphans (unlinked while open) wait {} s for their clients to re-open them",
                   orphanCount, o.recoveryWindow);
      reaper = io.provider->getTimer()
                   .afterDelay(ctx.config.recoveryWindow)
                   .then([&]() {
                     size_t reaped = 0;
                     ctx.commit([&](store::Txn& txn) { reaped = n.reapOrphans(txn); });
                     spdlog::info("recovery window over: destroyed {} orphans", reaped);
                     d.poke();
                   })
                   .eagerlyEvaluate([](kj::Exception&& e) {
                     spdlog::error("reaping orphans: {}", e.getDescription().cStr());
                   });
    }
  } else {
    KJ_REQUIRE(!o.mgs.empty(), "a data server needs --mgs, the metadata server's address");
    ctx.objects = *objects.emplace(kj::heap<ObjectStore>(target));
    spdlog::info("objects kept in chunks of {} bytes", target.chunkSize());
    // The metadata target keeps both addresses of a pair and gives them to clients.
    auto addresses = kj::heapArrayBuilder<kj::String>(o.partner.empty() ? 1 : 2);
    addresses.add(kj::str(p.advertise));
    if (!o.partner.empty()) addresses.add(kj::str(o.partner.c_str()));
    auto& r = *registrar.emplace(kj::heap<Registrar>(io, p.transport.network(), target,
                                                     splitAddresses(o.mgs.c_str()),
                                                     addresses.finish(), p.identity));
    r.start();
  }

  RpcServer::Limits limits;
  limits.connections = o.maxConnections;
  RpcServer server(
      p.transport,
      [&ctx](const Peer& peer) -> kj::Own<capnp::Capability::Server> {
        return kj::heap<ServerImpl>(ctx, peer.clone());
      },
      limits);
  // Whatever ends the serving, the requests still under way end here, before what they use.
  KJ_DEFER(ctx.cancelCalls());
  auto listening = server.listen(*p.listener);
  // `cairnctl cert revoke`'s list, copied beside ca.crt, takes effect within REVOCATION_CHECK:
  // the revoked peers' connections are closed and their handshakes refused from then on.
  auto revocations =
      p.transport
          .watchRevocations(
              io.provider->getTimer(), REVOCATION_CHECK,
              [&]() {
                server.cutRevoked();
                ctx.evictRevoked([&](kj::StringPtr serial) { return p.transport.revoked(serial); });
              })
          .eagerlyEvaluate([](kj::Exception&& e) {
            spdlog::error("TLS: revocations no longer applied: {}", e.getDescription().cStr());
          });
  spdlog::info("cairn-server {} serving {} target {} of {} on {}", target.softwareVersion().cStr(),
               o.kind, target.index(), target.fsName().cStr(), p.advertise.cStr());
  p.announce();

  // SIGTERM (or SIGINT) starts a controlled shutdown, as `cairnctl shutdown` does; a second one
  // while clients are still writing back stops at once, and the target is not marked clean.
  enum End { CLEAN, UNCLEAN, FENCED };
  auto onSignal = p.signalled().then([&](int signo) {
    spdlog::info("signal {}: controlled shutdown", signo);
    return ctx.shutdown(kj::str("signal ", signo))
        .then([]() { return CLEAN; })
        .exclusiveJoin(p.signalled().then([](int again) {
          spdlog::warn("signal {} during the shutdown: stopping now, not clean", again);
          return UNCLEAN;
        }));
  });
  auto requested = ctx.whenStopped().then([]() { return CLEAN; });
  kj::String fencedWhy;
  auto fenced = whenFenced(io.provider->getTimer(), target.lock()).then([&](kj::String why) {
    fencedWhy = kj::mv(why);
    return FENCED;
  });
  End end = p.busy.wait(onSignal.exclusiveJoin(kj::mv(requested))
                            .exclusiveJoin(kj::mv(fenced))
                            .exclusiveJoin(listening.then([]() { return UNCLEAN; })));
  switch (end) {
    case UNCLEAN:
      return Ending::exit(false);
    case FENCED:
      // Not one more write: the partner may already be opening the target.
      spdlog::error("stopped serving at once: {}", fencedWhy.cStr());
      if (o.partner.empty()) return Ending::exit(false);
      return Ending::standBy(kj::str("fenced: ", fencedWhy), HANDOFF_HOLD_OFF);
    case CLEAN:
      break;
  }
  // Every reply already means "committed": make it durable and say we stopped cleanly.
  target.markClean();
  target.lock().release();
  // Let the last replies (the administrator's shutdown request) leave before the sockets close.
  io.provider->getTimer().afterDelay(20 * kj::MILLISECONDS).wait(io.waitScope);
  KJ_IF_MAYBE (how, ctx.restartWith) {
    return Ending::restart(kj::mv(*how));
  }
  if (ctx.failingOver) {
    spdlog::info("failed over: the partner {} takes the target over; standing by", o.partner);
    return Ending::standBy(kj::str("failed over to the partner"), HANDOFF_HOLD_OFF);
  }
  return Ending::exit(true);
}

int serve(const ServeOptions& o, kj::ArrayPtr<const kj::String> argv) {
  auto io = kj::setupAsyncIo();
  BusyPoll busy(io.unixEventPort, io.waitScope, o.pollUs * kj::MICROSECONDS);
  KJ_REQUIRE(o.tls.empty() || !o.plaintext, "--tls and --insecure-plaintext exclude each other");
  KJ_REQUIRE(!o.trustedNetwork || !o.tls.empty(),
             "--trusted-network needs --tls DIR: connections authenticate with it before they go "
             "unencrypted");
  kj::Own<Transport> transport;
  if (!o.tls.empty()) {
    auto credentials = TlsCredentials::load(o.tls.c_str(), Peer::Role::SERVER);
    spdlog::info("TLS: server {} with the CA of {}{}", credentials.name.cStr(), o.tls,
                 o.trustedNetwork ? "; trusted network: peers on it too go unencrypted after the "
                                    "handshake"
                                  : "");
    transport = Transport::tls(io, kj::mv(credentials), o.trustedNetwork);
  } else {
    // Plain text lets anyone who reaches the port do anything, administration included: only on
    // loopback, or when asked for by name.
    KJ_REQUIRE(o.plaintext || loopback(hostPart(o.listen.c_str())),
               "a server listening beyond loopback needs --tls DIR (cairnctl cert issue --server), "
               "or --insecure-plaintext",
               o.listen.c_str());
    spdlog::warn(
        "PLAIN TEXT: connections are neither authenticated nor encrypted, and anyone "
        "who reaches {} may shut this server down or replace it; use --tls DIR",
        o.listen);
    transport = Transport::plaintext(io);
  }
  auto listener =
      io.provider->getNetwork().parseAddress(o.listen.c_str()).wait(io.waitScope)->listen();
  uint port = listener->getPort();
  kj::String advertise = o.advertise.empty() ? kj::str(hostPart(o.listen.c_str()), ":", port)
                                             : kj::str(o.advertise.c_str());
  auto bound = kj::str(hostPart(o.listen.c_str()), ":", port);
  Process p{o,
            argv,
            io,
            *transport,
            kj::mv(listener),
            kj::str(advertise),
            LinkIdentity{serverUuid(), rpc::Hello::Role::SERVER, kj::str(advertise)},
            nullptr,
            nullptr,
            busy};

  kj::Maybe<kj::Own<MetricsHttpServer>> metrics;
  kj::Maybe<kj::Own<kj::ConnectionReceiver>> metricsPort;
  kj::Promise<void> metricsServing = kj::NEVER_DONE;
  if (!o.metrics.empty()) {
    auto& mport = *metricsPort.emplace(
        io.provider->getNetwork().parseAddress(o.metrics.c_str()).wait(io.waitScope)->listen());
    p.metricsAddress = kj::str(hostPart(o.metrics.c_str()), ":", mport.getPort());
    auto& m =
        *metrics.emplace(kj::heap<MetricsHttpServer>(io.provider->getTimer(), [&p]() -> kj::String {
          KJ_IF_MAYBE (ctx, p.serving) {
            return kj::str(renderMetrics(*ctx), p.busy.metrics("cairn_server"));
          }
          return renderStandbyMetrics();
        }));
    metricsServing = m.listen(mport).eagerlyEvaluate(
        [](kj::Exception&& e) { spdlog::error("metrics: {}", e.getDescription().cStr()); });
    spdlog::info("metrics at http://{}/metrics", p.metricsAddress.cStr());
  }

  Target::requireFormatted(o.dir.c_str());
  // A server of a failover pair starts as a standby, which takes the target at once if it is
  // free (and no other host's heartbeat moves).
  kj::Maybe<kj::Own<TargetLock>> lock;
  auto ending = Ending::standBy(kj::str("the partner serves the target"), 0 * kj::SECONDS);
  if (o.partner.empty()) {
    lock = TargetLock::take(o.dir.c_str(), advertise);
    // Shared storage may not carry the owner lock from another host: its heartbeat would.
    TargetLock::refuseForeignOwner(o.dir.c_str());
  }
  for (;;) {
    if (ending.kind == Ending::REEXEC) {
      // Everything is closed (the target, its lock, the sessions); the pinned addresses keep
      // the port.
      reexec(KJ_ASSERT_NONNULL(ending.reexec), p.argv, bound, p.metricsAddress);
    }
    if (lock == nullptr) {
      StandbyConfig config;
      config.dir = kj::str(o.dir.c_str());
      config.advertise = kj::str(advertise);
      config.partner = kj::str(o.partner.c_str());
      config.version = kj::str(o.versionOverride.empty() ? CAIRN_VERSION : o.versionOverride);
      config.kind = parseKind(o.kind);
      config.failoverTimeout = int64_t(o.failoverTimeout * 1000) * kj::MILLISECONDS;
      config.holdOff = ending.holdOff;
      config.note = kj::mv(ending.note);
      config.access = accessPolicy(o);
      Standby standby(io, *transport, *p.listener, kj::mv(config));
      p.announce();
      auto stopped = p.signalled().then([](int signo) -> kj::Maybe<kj::Own<TargetLock>> {
        spdlog::info("signal {}: the standby stops", signo);
        return nullptr;
      });
      lock = standby.run().exclusiveJoin(kj::mv(stopped)).wait(io.waitScope);
      if (lock == nullptr) {
        KJ_IF_MAYBE (how, standby.restartWith) {
          // Let the reply to the restart request leave first.
          io.provider->getTimer().afterDelay(20 * kj::MILLISECONDS).wait(io.waitScope);
          ending = Ending::restart(kj::mv(*how));
          continue;
        }
        return 0;
      }
    }
    ending = serveTarget(p, KJ_ASSERT_NONNULL(kj::mv(lock)));
    lock = nullptr;
    switch (ending.kind) {
      case Ending::EXIT_CLEAN:
        return 0;
      case Ending::EXIT_UNCLEAN:
        return 1;
      case Ending::STAND_BY:
      case Ending::REEXEC:
        break;
    }
  }
}

}  // namespace
}  // namespace cairn

int main(int argc, char** argv) {
  cairn::keepLargeBuffers();
  // Before any thread exists (spdlog, the syncer), so that every thread has them blocked and
  // only the event loop receives them.
  kj::UnixEventPort::captureSignal(SIGTERM);
  kj::UnixEventPort::captureSignal(SIGINT);
  signal(SIGPIPE, SIG_IGN);
  CLI::App app{"Cairn object server: serves one metadata or data target from LMDB"};
  app.set_version_flag("--version", std::string("cairn-server ") + CAIRN_VERSION);
  app.add_flag_callback(
      "--upgrade-order",
      []() {
        printf("%s\n", CAIRN_UPGRADE_ORDER);
        throw CLI::Success();
      },
      "print the order a rolling upgrade to this release takes (data-first or meta-first)");
  std::string logLevel = "info", logFile;
  app.add_option("--log-level", logLevel, "trace, debug, info, warn, error");
  app.add_option("--log-file", logFile, "log here instead of stderr");
  // Options can come from a TOML file instead (a site's per-server config, as the systemd unit
  // cairn-server@.service uses): top-level keys for the global ones, a [serve] table for serve's.
  // The command line wins over the file.
  app.set_config("--config", "", "read options from this TOML file ([serve] table for serve's)");
  app.require_subcommand(1);
  app.fallthrough();

  cairn::ServeOptions serve;
  auto* s = app.add_subcommand("serve", "serve a formatted target");
  s->add_option("--dir", serve.dir, "the target's directory")->required();
  s->add_option("--kind", serve.kind, "meta or data")->required();
  s->add_option("--listen", serve.listen, "HOST:PORT to listen on (port 0: any free port)");
  s->add_option("--advertise", serve.advertise, "HOST:PORT peers should use");
  s->add_option("--mgs", serve.mgs, "data servers: the metadata server's HOST:PORT[,HOST:PORT]");
  s->add_option("--port-file", serve.portFile, "write the port here once listening");
  s->add_option("--fs", serve.fsName, "refuse a target of any other filesystem");
  s->add_option("--map-size", serve.mapSize, "LMDB map size in bytes (ENOSPC beyond it)");
  s->add_option("--disconnect-grace", serve.disconnectGrace,
                "seconds a vanished client keeps its open files");
  s->add_option("--recovery-window", serve.recoveryWindow,
                "seconds orphans wait after a restart for their clients to re-open them");
  s->add_option("--lock-timeout", serve.lockTimeout,
                "seconds a client has to cancel a lock when asked (else it is evicted), and a "
                "disconnected client's locks are kept");
  s->add_option("--lock-prolong-limit", serve.lockProlongLimit,
                "seconds after its callback a client may still cancel a lock while it asks for "
                "more time (its write-back waits on a server that is away), before it is evicted");
  s->add_option("--lock-budget", serve.lockBudget,
                "caching locks all clients together should hold here: each connected client is "
                "told its share (at least 1000) and gives back its least recently used beyond it")
      ->capture_default_str();
  s->add_flag("--force", serve.force, "start even after an unclean stop by another version");
  s->add_option("--version-override", serve.versionOverride,
                "test hook: act as this software version");
  s->add_option("--metrics", serve.metrics,
                "HOST:PORT to serve Prometheus /metrics on (port 0: any free port)");
  s->add_option("--partner", serve.partner,
                "HOST:PORT of the failover partner that reaches the same target: this server "
                "stands by while the partner serves it, and takes over when it lets go");
  s->add_option("--failover-timeout", serve.failoverTimeout,
                "seconds a standby waits on an unreachable partner, while clients ask for the "
                "target, before it fences the partner and takes over");
  s->add_option("--tls", serve.tls,
                "credentials directory (ca.crt, cert.crt, cert.key; cairnctl cert issue --server): "
                "every connection, in and out, is mutual TLS with the cluster's CA");
  s->add_flag("--trusted-network", serve.trustedNetwork,
              "with --tls: a connection whose other end says so too (-o trusted_network, "
              "--trusted-network) authenticates with TLS and then carries its data unencrypted "
              "(for a network nobody else can read or write; about half the CPU per byte)");
  s->add_flag("--insecure-plaintext", serve.plaintext,
              "serve plain text beyond loopback (no authentication, no encryption)");
  s->add_option("--allow-client", serve.allowClients,
                "with --tls: only these client certificate names may mount (repeatable; default: "
                "every client certificate of the CA)");
  s->add_option("--max-connections", serve.maxConnections,
                "connections this server keeps open at most (clients, peers, cairnctl); beyond "
                "it new ones are closed at once (default 4096)");
  s->add_flag("--root-squash", serve.rootSquash,
              "metadata server: uid 0 from a client not named in --trust-root acts as the squash "
              "id, and the server checks its permissions");
  s->add_option("--squash-id", serve.squashId, "UID:GID a squashed root acts as (65534:65534)");
  s->add_option("--trust-root", serve.trustRoot,
                "with --root-squash: client certificate names whose root stays root (repeatable)");
  s->add_option("--poll-us", serve.pollUs,
                "before sleeping, look for the next request up to N microseconds (default 0: "
                "never; worth it only with cores to spare)");
  s->add_flag("--test-replay-barrier", serve.testReplayBarrier,
              "test hook: allow `cairnctl replay-barrier` (commits after it are discarded at the "
              "next start, as in a host crash)");

  cairn::FormatOptions format;
  std::string formatDir, kind = "meta", fsName, fsUuid;
  auto* f = app.add_subcommand("format", "make a new target");
  f->add_option("--dir", formatDir, "directory for the target")->required();
  f->add_option("--kind", kind, "meta or data")->required();
  f->add_option("--fs", fsName, "the filesystem's name")->required();
  f->add_option("--fs-uuid", fsUuid, "the filesystem's uuid (32 hex digits; new if absent)");
  f->add_option("--index", format.index, "the target's index");
  f->add_option("--stripe-size", format.stripeSize, "meta: default stripe size in bytes");
  f->add_option("--stripe-count", format.stripeCount, "meta: default stripe count (0 = all)");
  f->add_option("--chunk-size", format.chunkSize,
                "data: bytes per stored chunk, 512 to 65536 (a smaller write rewrites a whole "
                "chunk; default: one LMDB page less the page header, 4080 with 4 KiB pages)");

  CLI11_PARSE(app, argc, argv);

  if (!logFile.empty()) {
    spdlog::set_default_logger(spdlog::basic_logger_mt("cairn-server", logFile));
  }
  spdlog::set_level(spdlog::level::from_str(logLevel));
  spdlog::flush_on(spdlog::level::info);

  try {
    if (*f) {
      KJ_REQUIRE(format.stripeSize >= 4096 && format.stripeSize % 4096 == 0,
                 "the stripe size is a multiple of 4096", format.stripeSize);
      format.kind = cairn::parseKind(kind);
      format.fsName = kj::str(fsName.c_str());
      format.fsUuid = kj::str(fsUuid.c_str());
      cairn::Target::format(formatDir.c_str(), format);
      printf("formatted %s target %u of %s in %s\n", kind.c_str(), format.index, fsName.c_str(),
             formatDir.c_str());
      return 0;
    }
    if (const char* v = getenv("CAIRN_VERSION_OVERRIDE");
        serve.versionOverride.empty() && v != nullptr && *v != '\0') {
      // How tests and upgrade drills run "another version" of the same build.
      serve.versionOverride = v;
    }
    auto args = kj::heapArrayBuilder<kj::String>(argc);
    for (int i = 0; i < argc; ++i) args.add(kj::str(argv[i]));
    return cairn::serve(serve, args.finish());
  } catch (kj::Exception& e) {
    spdlog::error("{}", e.getDescription().cStr());
    fprintf(stderr, "cairn-server: %s\n", e.getDescription().cStr());
    return 1;
  } catch (std::exception& e) {
    spdlog::error("{}", e.what());
    fprintf(stderr, "cairn-server: %s\n", e.what());
    return 1;
  }
}
