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

#include "objserver/data_service.h"
#include "objserver/destroyer.h"
#include "objserver/metrics.h"
#include "objserver/namespace.h"
#include "objserver/object_store.h"
#include "objserver/open_files.h"
#include "objserver/posix_locks.h"
#include "objserver/registrar.h"
#include "objserver/server.h"
#include "rpc/metrics_http.h"
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
  bool force = false;
  bool testReplayBarrier = false;
  std::string metrics;
};

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

int serve(const ServeOptions& o) {
  auto io = kj::setupAsyncIo();

  OpenOptions open;
  open.force = o.force;
  open.mapSize = o.mapSize;
  if (!o.fsName.empty()) open.expectFsName = kj::str(o.fsName.c_str());
  if (!o.versionOverride.empty()) {
    open.versionOverride = kj::str(o.versionOverride.c_str());
  } else if (const char* v = getenv("CAIRN_VERSION_OVERRIDE"); v != nullptr && *v != '\0') {
    // How tests and upgrade drills run "another version" of the same build.
    open.versionOverride = kj::str(v);
  }
  Target target(o.dir.c_str(), parseKind(o.kind), kj::mv(open));

  auto listener =
      io.provider->getNetwork().parseAddress(o.listen.c_str()).wait(io.waitScope)->listen();
  uint port = listener->getPort();
  kj::String advertise = o.advertise.empty() ? kj::str(hostPart(o.listen.c_str()), ":", port)
                                             : kj::str(o.advertise.c_str());

  ServerConfig config;
  config.advertise = kj::str(advertise);
  config.disconnectGrace = int64_t(o.disconnectGrace * 1000) * kj::MILLISECONDS;
  config.recoveryWindow = int64_t(o.recoveryWindow * 1000) * kj::MILLISECONDS;
  config.lockTimeout = int64_t(o.lockTimeout * 1000) * kj::MILLISECONDS;
  config.testReplayBarrier = o.testReplayBarrier;
  ServerContext ctx(io, target, kj::mv(config));

  ctx.startRecovery();

  LinkIdentity identity{serverUuid(), rpc::Hello::Role::SERVER, kj::str(advertise)};
  kj::Maybe<kj::Own<OpenFiles>> opens;
  kj::Maybe<kj::Own<PosixLocks>> posixLocks;
  kj::Maybe<kj::Own<Namespace>> ns;
  kj::Maybe<kj::Own<Destroyer>> destroyer;
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
    auto& d = *destroyer.emplace(kj::heap<Destroyer>(ctx, n, identity));
    ctx.ns = n;
    ctx.opens = of;
    ctx.destroyer = d;
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
    auto& r = *registrar.emplace(kj::heap<Registrar>(io, target, splitAddresses(o.mgs.c_str()),
                                                     kj::str(advertise), identity));
    r.start();
  }

  capnp::TwoPartyServer server(kj::heap<ServerImpl>(ctx));
  auto listening = server.listen(*listener);
  kj::Maybe<kj::Own<MetricsHttpServer>> metrics;
  kj::Maybe<kj::Own<kj::ConnectionReceiver>> metricsPort;
  kj::Promise<void> metricsServing = kj::NEVER_DONE;
  if (!o.metrics.empty()) {
    auto& port = *metricsPort.emplace(
        io.provider->getNetwork().parseAddress(o.metrics.c_str()).wait(io.waitScope)->listen());
    ctx.metricsAddress = kj::str(hostPart(o.metrics.c_str()), ":", port.getPort());
    auto& m = *metrics.emplace(kj::heap<MetricsHttpServer>(
        io.provider->getTimer(), [&ctx]() { return renderMetrics(ctx); }));
    metricsServing = m.listen(port).eagerlyEvaluate(
        [](kj::Exception&& e) { spdlog::error("metrics: {}", e.getDescription().cStr()); });
    spdlog::info("metrics at http://{}/metrics", ctx.metricsAddress.cStr());
  }
  spdlog::info("cairn-server {} serving {} target {} of {} on {}", target.softwareVersion().cStr(),
               o.kind, target.index(), target.fsName().cStr(), advertise.cStr());
  if (!o.portFile.empty()) writePortFile(o.portFile, port);

  auto signalled = [&]() {
    return io.unixEventPort.onSignal(SIGTERM)
        .exclusiveJoin(io.unixEventPort.onSignal(SIGINT))
        .then([](siginfo_t info) { return info.si_signo; });
  };
  // SIGTERM (or SIGINT) starts a controlled shutdown, as `cairnctl shutdown` does; a second one
  // while clients are still writing back stops at once, and the target is not marked clean.
  auto onSignal = signalled().then([&](int signo) {
    spdlog::info("signal {}: controlled shutdown", signo);
    return ctx.shutdown(kj::str("signal ", signo))
        .then([]() { return true; })
        .exclusiveJoin(signalled().then([](int again) {
          spdlog::warn("signal {} during the shutdown: stopping now, not clean", again);
          return false;
        }));
  });
  auto requested = ctx.whenStopped().then([]() { return true; });
  bool clean = onSignal.exclusiveJoin(kj::mv(requested))
                   .exclusiveJoin(listening.then([]() { return false; }))
                   .wait(io.waitScope);
  if (!clean) return 1;
  // Every reply already means "committed": make it durable and say we stopped cleanly.
  target.markClean();
  // Let the last replies (the administrator's shutdown request) leave before the sockets close.
  io.provider->getTimer().afterDelay(20 * kj::MILLISECONDS).wait(io.waitScope);
  return 0;
}

}  // namespace
}  // namespace cairn

int main(int argc, char** argv) {
  // Before any thread exists (spdlog, the syncer), so that every thread has them blocked and
  // only the event loop receives them.
  kj::UnixEventPort::captureSignal(SIGTERM);
  kj::UnixEventPort::captureSignal(SIGINT);
  signal(SIGPIPE, SIG_IGN);
  CLI::App app{"Cairn object server: serves one metadata or data target from LMDB"};
  app.set_version_flag("--version", std::string("cairn-server ") + CAIRN_VERSION);
  std::string logLevel = "info", logFile;
  app.add_option("--log-level", logLevel, "trace, debug, info, warn, error");
  app.add_option("--log-file", logFile, "log here instead of stderr");
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
  s->add_flag("--force", serve.force, "start even after an unclean stop by another version");
  s->add_option("--version-override", serve.versionOverride,
                "test hook: act as this software version");
  s->add_option("--metrics", serve.metrics,
                "HOST:PORT to serve Prometheus /metrics on (port 0: any free port)");
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
    return cairn::serve(serve);
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
