// cairn-mount: mounts a Cairn filesystem. Wiring only.
//
//   cairn-mount HOST:PORT[,HOST:PORT...] MOUNTPOINT [-f] [-d] [-o OPTIONS]
//
// The addresses are the metadata server's (several for a failover pair). Besides the usual FUSE
// options (allow_other, default_permissions, ...), -o takes log_file=PATH, log_level=LEVEL,
// nocache and lock_limit=N.
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <unistd.h>

#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/debug.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdio>

#include "fusefs/client.h"
#include "fusefs/client_metrics.h"
#include "fusefs/fuse_loop.h"
#include "fusefs/fuse_ops.h"
#include "fusefs/notifier.h"
#include "rpc/metrics_http.h"
#include "rpc/version.h"

namespace {

struct MountConfig {
  char* addresses = nullptr;
  char* logFile = nullptr;
  char* logLevel = nullptr;
  int noCache = 0;
  unsigned lockLimit = 0;
  int version = 0;
};

enum { KEY_VERSION };

const fuse_opt SPECS[] = {
    {"log_file=%s", offsetof(MountConfig, logFile), 0},
    {"log_level=%s", offsetof(MountConfig, logLevel), 0},
    {"nocache", offsetof(MountConfig, noCache), 1},
    {"lock_limit=%u", offsetof(MountConfig, lockLimit), 0},
    FUSE_OPT_KEY("--version", KEY_VERSION),
    FUSE_OPT_KEY("-V", KEY_VERSION),
    FUSE_OPT_END,
};

int optProc(void* data, const char* arg, int key, fuse_args*) {
  auto* cfg = static_cast<MountConfig*>(data);
  if (key == KEY_VERSION) {
    cfg->version = 1;
    return 0;
  }
  // The first plain argument is the server list; the next one is the mount point, which
  // fuse_parse_cmdline takes.
  if (key == FUSE_OPT_KEY_NONOPT && cfg->addresses == nullptr) {
    cfg->addresses = strdup(arg);
    return 0;
  }
  return 1;
}

void usage(const char* prog) {
  printf(
      "usage: %s HOST:PORT[,HOST:PORT...] MOUNTPOINT [options]\n\n"
      "    -f                     stay in the foreground\n"
      "    -d                     debug: foreground, log every FUSE request\n"
      "    -o allow_other,default_permissions   let every user in, with normal permissions\n"
      "    -o log_file=PATH       log here (needed to see logs once in the background)\n"
      "    -o log_level=LEVEL     trace, debug, info, warn, error (default info)\n"
      "    -o nocache             cache nothing: every operation asks the servers\n"
      "    -o lock_limit=N        cache under at most N locks (default 60000)\n"
      "    --version              print the version\n\n",
      prog);
  fuse_lowlevel_help();
}

}  // namespace

int main(int argc, char** argv) {
  fuse_args args = FUSE_ARGS_INIT(argc, argv);
  MountConfig cfg;
  if (fuse_opt_parse(&args, &cfg, SPECS, optProc) == -1) return 1;
  if (cfg.version) {
    printf("cairn-mount %s\n", CAIRN_VERSION);
    printf("FUSE library version %s\n", fuse_pkgversion());
    return 0;
  }
  fuse_cmdline_opts opts;
  if (fuse_parse_cmdline(&args, &opts) != 0) return 1;
  if (opts.show_help || cfg.addresses == nullptr || opts.mountpoint == nullptr) {
    usage(argv[0]);
    return opts.show_help ? 0 : 1;
  }

  if (cfg.logFile != nullptr) {
    spdlog::set_default_logger(spdlog::basic_logger_mt("cairn-mount", cfg.logFile));
  }
  spdlog::set_level(spdlog::level::from_str(cfg.logLevel ? cfg.logLevel : "info"));
  spdlog::flush_on(spdlog::level::info);

  // A failover pair's "A,B": the comma would split the -o list, so it is escaped.
  kj::Vector<char> escaped;
  for (const char* c = cfg.addresses; *c != '\0'; ++c) {
    if (*c == ',' || *c == '\\') escaped.add('\\');
    escaped.add(*c);
  }
  escaped.add('\0');
  auto fsname = kj::str("-ofsname=cairn:", escaped.begin());
  fuse_opt_add_arg(&args, fsname.cStr());
  fuse_opt_add_arg(&args, "-osubtype=cairn");

  cairn::FuseUserdata userdata;
  fuse_session* se =
      fuse_session_new(&args, &cairn::FuseOps::table(), sizeof(fuse_lowlevel_ops), &userdata);
  if (se == nullptr) return 1;
  KJ_DEFER(fuse_session_destroy(se));
  if (fuse_session_mount(se, opts.mountpoint) != 0) return 1;
  KJ_DEFER(fuse_session_unmount(se));
  // Forks into the background unless -f; every thread and the event loop come after this.
  fuse_daemonize(opts.foreground);

  int status = 0;
  try {
    kj::UnixEventPort::captureSignal(SIGTERM);
    kj::UnixEventPort::captureSignal(SIGINT);
    kj::UnixEventPort::captureSignal(SIGHUP);
    signal(SIGPIPE, SIG_IGN);
    auto io = kj::setupAsyncIo();

    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    cairn::ClientOptions options;
    options.metaAddresses = cairn::splitAddresses(cfg.addresses);
    KJ_REQUIRE(options.metaAddresses.size() > 0, "no server address given");
    options.hostName = kj::str(host);
    options.caching = !cfg.noCache;
    if (cfg.lockLimit > 0) options.lockLimits.maxLocks = cfg.lockLimit;
    cairn::Notifier notifier(se);
    cairn::Client client(io, kj::mv(options));
    client.setKernelCache(notifier);
    cairn::FuseOps fuseOps(client, io.provider->getTimer());
    userdata.ops = &fuseOps;
    userdata.notifier = &notifier;
    client.start();
    spdlog::info("cairn-mount {} mounted {} at {}", CAIRN_VERSION, cfg.addresses, opts.mountpoint);

    // The mount's counters, on a local socket (`cairnctl --mount MNT stats`).
    cairn::MetricsHttpServer metrics(io.provider->getTimer(),
                                     [&client]() { return cairn::renderClientMetrics(client); });
    auto socketPath = cairn::statsSocketPath(opts.mountpoint);
    kj::Maybe<kj::Own<kj::ConnectionReceiver>> statsPort;
    kj::Promise<void> statsServing = kj::NEVER_DONE;
    mkdir("/run/cairn", 0755);
    unlink(socketPath.cStr());  // a mount point has one mount: a socket left here is stale
    try {
      auto& port = *statsPort.emplace(io.provider->getNetwork()
                                          .parseAddress(kj::str("unix:", socketPath))
                                          .wait(io.waitScope)
                                          ->listen());
      statsServing = metrics.listen(port).eagerlyEvaluate([](kj::Exception&& e) {
        spdlog::warn("counters socket: {}", e.getDescription().cStr());
      });
    } catch (kj::Exception& e) {
      spdlog::warn("no counters socket at {}: {}", socketPath.cStr(), e.getDescription().cStr());
    }
    KJ_DEFER(unlink(socketPath.cStr()));

    cairn::FuseLoop loop(se, io.unixEventPort);
    auto stop =
        io.unixEventPort.onSignal(SIGTERM)
            .exclusiveJoin(io.unixEventPort.onSignal(SIGINT))
            .exclusiveJoin(io.unixEventPort.onSignal(SIGHUP))
            .then([](siginfo_t info) { spdlog::info("signal {}: unmounting", info.si_signo); });
    loop.run().exclusiveJoin(kj::mv(stop)).wait(io.waitScope);
    client.leave(1 * kj::SECONDS).wait(io.waitScope);
    spdlog::info("unmounted {}", opts.mountpoint);
  } catch (kj::Exception& e) {
    spdlog::error("{}", e.getDescription().cStr());
    status = 1;
  }
  free(opts.mountpoint);
  free(cfg.addresses);
  fuse_opt_free_args(&args);
  return status;
}
