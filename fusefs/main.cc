// cairn-mount: mounts a Cairn filesystem. Wiring only.
//
//   cairn-mount HOST:PORT[,HOST:PORT...] MOUNTPOINT [-f] [-d] [-o OPTIONS]
// (-o: the usual FUSE options, and log_file=, log_level=, nocache, lock_limit=, name_limit=,
// poll_us=, no_async_dirops, metrics=HOST:PORT, tls=DIR, trusted_network)
//   cairn-mount --takeover MOUNTPOINT     (a new binary takes a live mount over: handover.h)
//
// The addresses are the metadata server's (several for a failover pair). Besides the usual FUSE
// options (allow_other, default_permissions, ...), -o takes log_file=PATH, log_level=LEVEL,
// nocache, lock_limit=N, name_limit=N and poll_us=N.
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <sys/mount.h>
#include <unistd.h>

#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/debug.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include <capnp/message.h>
#include <capnp/rpc-twoparty.h>
#include <capnp/serialize.h>

#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fusefs/client.h"
#include "fusefs/client_metrics.h"
#include "fusefs/fuse_loop.h"
#include "fusefs/fuse_ops.h"
#include "fusefs/handover.h"
#include "fusefs/kernel_readahead.h"
#include "fusefs/kill_priv.h"
#include "fusefs/notifier.h"
#include "rpc/busy_poll.h"
#include "rpc/heap_tuning.h"
#include "rpc/metrics_http.h"
#include "rpc/tls_stream.h"
#include "rpc/transport.h"
#include "rpc/version.h"

namespace {

struct MountConfig {
  char* addresses = nullptr;
  char* logFile = nullptr;
  char* logLevel = nullptr;
  char* metrics = nullptr;  // HOST:PORT for the mount's own Prometheus /metrics
  char* tls = nullptr;      // credentials directory: mutual TLS with the servers
  // After the handshake, unencrypted with servers that are on a trusted network too.
  int trustedNetwork = 0;
  int noCache = 0;
  int noAsyncDirops = 0;
  unsigned lockLimit = 0;
  unsigned nameLimit = 0;
  // How long the event loop may look for the next request or reply before it sleeps
  // (rpc/busy_poll.h). 200 µs covers a metadata RPC's round trip on loopback; on this project's
  // 2-core VMs it doubled random 4 KiB reads and halved untar's time. Longer (500, 1000 µs) was
  // no better, and sometimes much worse: the spinning takes the CPU the servers need.
  unsigned pollUs = 200;
  int version = 0;
};

enum { KEY_VERSION };

const fuse_opt SPECS[] = {
    {"log_file=%s", offsetof(MountConfig, logFile), 0},
    {"log_level=%s", offsetof(MountConfig, logLevel), 0},
    {"metrics=%s", offsetof(MountConfig, metrics), 0},
    {"tls=%s", offsetof(MountConfig, tls), 0},
    {"trusted_network", offsetof(MountConfig, trustedNetwork), 1},
    {"nocache", offsetof(MountConfig, noCache), 1},
    {"no_async_dirops", offsetof(MountConfig, noAsyncDirops), 1},
    {"lock_limit=%u", offsetof(MountConfig, lockLimit), 0},
    {"name_limit=%u", offsetof(MountConfig, nameLimit), 0},
    {"poll_us=%u", offsetof(MountConfig, pollUs), 0},
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
      "    -o no_async_dirops     every create, unlink, rmdir and change of a directory's\n"
      "                           attributes waits for the server (by default one this client\n"
      "                           alone may make is answered ahead)\n"
      "    -o lock_limit=N        cache under at most N locks (default 60000)\n"
      "    -o name_limit=N        cache at most N directory entries (default 200000)\n"
      "    -o poll_us=N           before sleeping, look for work up to N microseconds\n"
      "                           (default 200; 0: never)\n"
      "    -o metrics=HOST:PORT   also serve the mount's counters as Prometheus /metrics there\n"
      "    -o tls=DIR             mutual TLS with the credentials in DIR (ca.crt, cert.crt,\n"
      "                           cert.key: cairnctl cert issue --client); without it, plain text\n"
      "    -o trusted_network     with tls=: once authenticated, carry the data unencrypted with\n"
      "                           servers started with --trusted-network (a network nobody\n"
      "                           else can read or write; about half the CPU per byte)\n"
      "    --version              print the version\n"
      "usage: %s --takeover MOUNTPOINT\n"
      "    take the mount over from the cairn-mount serving it (client upgrade without\n"
      "    unmounting: applications keep their open files)\n\n",
      prog, prog);
  fuse_lowlevel_help();
}

// Exit status of a process that handed its mount over: it must not unmount.
constexpr int HANDED_OVER = 0;

class TaskErrors : public kj::TaskSet::ErrorHandler {
public:
  void taskFailed(kj::Exception&& e) override {
    spdlog::warn("after the takeover: {}", e.getDescription().cStr());
  }
};

// The running process's side of a handover: when a new cairn-mount asks, stop reading the
// kernel's requests, let those under way finish, write back and settle every link, send the
// state with /dev/fuse; true once the new process has taken over. If anything fails, the mount
// carries on here (reconnecting, in case the new process spoke to the servers as this client).
kj::Promise<bool> handOverWhenAsked(cairn::HandoverListener& handover, cairn::FuseLoop& loop,
                                    cairn::FuseOps& ops, cairn::Client& client, fuse_session* se,
                                    const std::vector<std::string>& argv) {
  return handover.requested().then([&handover, &loop, &ops, &client, se, &argv]() {
    loop.pause();
    auto started = std::chrono::steady_clock::now();
    return ops.idle()
        .then([&client]() { return client.settleForHandover(); })
        .then([&handover, &loop, &client, se, &argv]() {
          capnp::MallocMessageBuilder message;
          auto state = message.initRoot<cairn::rpc::MountHandover>();
          state.setSoftwareVersion(CAIRN_VERSION);
          auto list = state.initArgv(argv.size());
          for (size_t i = 0; i < argv.size(); ++i) list.set(i, argv[i].c_str());
          state.setInitRequest(loop.initRequest());
          client.exportState(state);
          auto words = capnp::messageToFlatArray(message);
          return handover.handOver(fuse_session_fd(se), words).attach(kj::mv(words));
        })
        .then(
            [&handover, &loop, &ops, &client, se, &argv, started](bool done) -> kj::Promise<bool> {
              if (done) {
                spdlog::info("handover took {} ms",
                             std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::steady_clock::now() - started)
                                 .count());
                return true;
              }
              spdlog::warn("handover failed: carrying on");
              client.reconnectAll("a handover failed");
              loop.resume();
              return handOverWhenAsked(handover, loop, ops, client, se, argv);
            },
            [&handover, &loop, &ops, &client, se, &argv](kj::Exception&& e) -> kj::Promise<bool> {
              spdlog::warn("handover refused: {}", e.getDescription().cStr());
              handover.refuse(e.getDescription());
              loop.resume();
              return handOverWhenAsked(handover, loop, ops, client, se, argv);
            });
  });
}

}  // namespace

namespace {
// Whether a metadata server refuses this client (a certificate it does not take, a name not in
// its --allow-client). Asked once, before mounting, so that a refusal fails the mount command
// instead of leaving a mount whose every call waits. A server that cannot be reached is no
// refusal: the mount comes up and waits for it, as it would across a restart; an older server
// without the question is asked nothing.
kj::Maybe<kj::String> refusal(const char* addresses, kj::StringPtr tlsDir, bool trustedNetwork) {
  auto io = kj::setupAsyncIo();
  auto transport = tlsDir == nullptr ? cairn::Transport::plaintext(io)
                                     : cairn::Transport::tls(io, tlsDir, cairn::Peer::Role::CLIENT,
                                                             trustedNetwork);
  auto& timer = io.provider->getTimer();
  for (auto& address : cairn::splitAddresses(addresses)) {
    try {
      auto stream =
          timer
              .timeoutAfter(5 * kj::SECONDS,
                            transport->network().parseAddress(address).then(
                                [](kj::Own<kj::NetworkAddress> a) { return a->connect(); }))
              .wait(io.waitScope);
      capnp::TwoPartyClient client(*stream);
      auto server = client.bootstrap().castAs<cairn::rpc::Bootstrap>();
      timer.timeoutAfter(5 * kj::SECONDS, server.mayMountRequest().send().ignoreResult())
          .wait(io.waitScope);
      return nullptr;
    } catch (kj::Exception& e) {
      // Refusals are FAILED (the policy's, or a handshake's verdict), or the server's TLS alert
      // (TLS 1.3 judges our certificate after our side of the handshake, and a call on the
      // connection then fails as DISCONNECTED); the rest is an outage.
      if (e.getType() == kj::Exception::Type::FAILED ||
          strstr(e.getDescription().cStr(), cairn::PEER_REFUSED.cStr()) != nullptr) {
        return kj::str(address, ": ", e.getDescription());
      }
      spdlog::info("{} did not answer whether we may mount ({}): mounting, and waiting for it",
                   address.cStr(), e.getDescription().cStr());
    }
  }
  return nullptr;
}
}  // namespace

int main(int argc, char** argv) {
  cairn::keepLargeBuffers();
  // Taking a live mount over: the command line is the running process's own, received with
  // the /dev/fuse descriptor and the state (fusefs/handover.h).
  kj::Maybe<cairn::ReceivedHandover> takeover;
  kj::Maybe<kj::Own<capnp::FlatArrayMessageReader>> handed;
  std::vector<std::string> handedArgs;
  std::vector<char*> handedArgv;
  if (argc == 3 && strcmp(argv[1], "--takeover") == 0) {
    try {
      char real[PATH_MAX];
      auto& r = takeover.emplace(
          cairn::requestHandover(realpath(argv[2], real) != nullptr ? real : argv[2]));
      capnp::ReaderOptions options;
      options.traversalLimitInWords = r.message.size() * 2 + 1024;
      auto& reader = *handed.emplace(kj::heap<capnp::FlatArrayMessageReader>(r.message, options));
      auto state = reader.getRoot<cairn::rpc::MountHandover>();
      for (auto a : state.getArgv()) handedArgs.push_back(a.cStr());
    } catch (kj::Exception& e) {
      fprintf(stderr, "cairn-mount: %s\n", e.getDescription().cStr());
      return 1;
    }
    for (auto& a : handedArgs) handedArgv.push_back(a.data());
    handedArgv.push_back(nullptr);
    argc = int(handedArgs.size());
    argv = handedArgv.data();
  }
  std::vector<std::string> originalArgs(argv, argv + argc);
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

  // Checked before the mount and the fork, so that bad credentials fail the mount command; the path
  // made absolute, since the daemon changes to /.
  kj::Maybe<cairn::TlsCredentials> credentials;
  kj::String tlsDir;
  if (cfg.trustedNetwork && cfg.tls == nullptr) {
    fprintf(stderr,
            "cairn-mount: -o trusted_network needs tls=DIR: connections authenticate "
            "with it before they go unencrypted\n");
    return 1;
  }
  if (cfg.tls != nullptr) {
    try {
      char real[PATH_MAX];
      bool found = realpath(cfg.tls, real) != nullptr;
      KJ_REQUIRE(found, "-o tls=DIR: no such directory", cfg.tls, strerror(errno));
      tlsDir = kj::str(real);
      credentials = cairn::TlsCredentials::load(real, cairn::Peer::Role::CLIENT);
    } catch (kj::Exception& e) {
      fprintf(stderr, "cairn-mount: %s\n", e.getDescription().cStr());
      return 1;
    }
  }
  if (takeover == nullptr) {
    KJ_IF_MAYBE (why, refusal(cfg.addresses, tlsDir, cfg.trustedNetwork)) {
      fprintf(stderr, "cairn-mount: refused: %s\n", why->cStr());
      return 1;
    }
  }

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
  // Static: a notifier thread left inside a notify call writes through it after main is done.
  static cairn::KillPriv killPriv;
  userdata.killPriv = &killPriv;
  fuse_session* se =
      fuse_session_new(&args, &cairn::FuseOps::table(), sizeof(fuse_lowlevel_ops), &userdata);
  if (se == nullptr) return 1;
  // A notifier thread left inside a notify call still uses the session: it is not destroyed then.
  bool sessionInUse = false;
  KJ_DEFER(if (!sessionInUse) fuse_session_destroy(se));
  // Taking over, the session gets the running process's descriptor instead of a new mount.
  kj::String device;
  KJ_IF_MAYBE (t, takeover) {
    device = kj::str("/dev/fd/", t->fuseFd.release());  // the session owns it from here
  }
  std::string mountPoint = opts.mountpoint;
  if (fuse_session_mount(se, device == nullptr ? opts.mountpoint : device.cStr()) != 0) return 1;
  killPriv.install(se);
  bool handedOver = false;  // then the mount lives on in the new process: no unmount
  KJ_DEFER({
    if (handedOver) return;
    if (device == nullptr) {
      fuse_session_unmount(se);
    } else {
      // libfuse knows no mount point for a descriptor it was given: unmount as it would.
      umount2(mountPoint.c_str(), MNT_DETACH);
    }
  });
  // Taken over, the mount keeps the window it was given; setting it again does no harm.
  cairn::setKernelReadahead(mountPoint.c_str(), cairn::MAX_IO_BYTES / 1024);
  // Forks into the background unless -f; every thread and the event loop come after this.
  fuse_daemonize(opts.foreground);

  int status = 0;
  try {
    kj::UnixEventPort::captureSignal(SIGTERM);
    kj::UnixEventPort::captureSignal(SIGINT);
    kj::UnixEventPort::captureSignal(SIGHUP);
    signal(SIGPIPE, SIG_IGN);
    auto io = kj::setupAsyncIo();
    cairn::BusyPoll busy(io.unixEventPort, io.waitScope, cfg.pollUs * kj::MICROSECONDS);
    TaskErrors taskErrors;
    kj::TaskSet tasks(taskErrors);

    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    cairn::ClientOptions options;
    options.metaAddresses = cairn::splitAddresses(cfg.addresses);
    KJ_REQUIRE(options.metaAddresses.size() > 0, "no server address given");
    options.hostName = kj::str(host);
    options.caching = !cfg.noCache;
    options.asyncDirops = !cfg.noAsyncDirops;
    if (cfg.lockLimit > 0) options.lockLimits.maxLocks = cfg.lockLimit;
    if (cfg.nameLimit > 0) options.maxNames = cfg.nameLimit;
    kj::Maybe<cairn::rpc::MountHandover::Reader> state;
    KJ_IF_MAYBE (h, handed) {
      auto s = (*h)->getRoot<cairn::rpc::MountHandover>();
      options.uuid = kj::heapArray(s.getClientUuid());
      state = s;
    }
    cairn::Notifier notifier(se, io.provider->getTimer());
    KJ_DEFER(sessionInUse = !notifier.stop());
    kj::Own<cairn::Transport> transport;
    KJ_IF_MAYBE (c, credentials) {
      spdlog::info("TLS: client {} with the CA of {}{}", c->name.cStr(), c->dir.cStr(),
                   cfg.trustedNetwork ? "; trusted network: unencrypted after the handshake with "
                                        "servers on it too"
                                      : "");
      transport = cairn::Transport::tls(io, kj::mv(*c), cfg.trustedNetwork);
    } else {
      spdlog::warn("PLAIN TEXT: no -o tls=DIR; the servers must be started with plain text too");
      transport = cairn::Transport::plaintext(io);
    }
    cairn::Client client(io, transport->network(), kj::mv(options));
    // A server whose certificate goes on the list (crl.pem replaced beside ca.crt) is refused
    // from our next connect to it; the servers themselves close revoked peers' connections.
    auto revocations =
        transport->watchRevocations(io.provider->getTimer(), 2 * kj::SECONDS, []() {})
            .eagerlyEvaluate([](kj::Exception&& e) {
              spdlog::error("TLS: revocations no longer applied: {}", e.getDescription().cStr());
            });
    client.setKernelCache(notifier);
    cairn::FuseOps fuseOps(client, io.provider->getTimer());
    userdata.ops = &fuseOps;
    userdata.notifier = &notifier;
    cairn::FuseLoop loop(se, io.unixEventPort, killPriv);
    userdata.loop = &loop;
    KJ_DEFER(userdata.loop = nullptr);
    KJ_IF_MAYBE (s, state) {
      // The session as the kernel negotiated it with the previous process, then that
      // process's tables; the servers see the same client reconnect.
      loop.replayInit(s->getInitRequest());
      client.importState(*s);
    }
    client.start();
    KJ_IF_MAYBE (t, takeover) {
      auto& timer = io.provider->getTimer();
      bool ready = false;
      for (int i = 0; i < 500 && !ready; ++i) {
        timer.afterDelay(20 * kj::MILLISECONDS).wait(io.waitScope);
        ready = client.meta().state() == cairn::ServerLink::State::ACTIVE;
      }
      // Without an acknowledgement the running process carries on (and reconnects).
      KJ_REQUIRE(ready, "the metadata server did not answer: not taking the mount over");
      cairn::acknowledgeHandover(*t);
      spdlog::info("cairn-mount {} took over {} from {} (version {})", CAIRN_VERSION,
                   opts.mountpoint, "the running process",
                   KJ_ASSERT_NONNULL(state).getSoftwareVersion().cStr());
      // The kernel's caches were covered by the old process's locks, which the server dropped
      // when this process connected as the same client: they go now.
      if (notifier.keepsNames()) {
        tasks.add(notifier.forgetNames(1, {}, true));
      }
      client.inodes().forEach([&](uint64_t ino, const cairn::InodeTable::Inode&) {
        tasks.add(notifier.invalidate(ino, true));
      });
    } else {
      spdlog::info("cairn-mount {} mounted {} at {}", CAIRN_VERSION, cfg.addresses,
                   opts.mountpoint);
    }

    // The mount's counters, on a local socket (`cairnctl --mount MNT stats`).
    cairn::MetricsHttpServer metrics(io.provider->getTimer(), [&client, &busy]() {
      return kj::str(cairn::renderClientMetrics(client), busy.metrics("cairn_client"),
                     killPriv.metrics());
    });
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
    // Optionally on a TCP port too, for a Prometheus server to scrape.
    kj::Maybe<kj::Own<kj::ConnectionReceiver>> metricsPort;
    kj::Promise<void> metricsServing = kj::NEVER_DONE;
    if (cfg.metrics != nullptr) {
      auto& port = *metricsPort.emplace(
          io.provider->getNetwork().parseAddress(cfg.metrics).wait(io.waitScope)->listen());
      metricsServing = metrics.listen(port).eagerlyEvaluate(
          [](kj::Exception&& e) { spdlog::warn("metrics port: {}", e.getDescription().cStr()); });
      spdlog::info("mount counters at http://{}/metrics (port {})", cfg.metrics, port.getPort());
    }
    bool keepSocket = false;
    KJ_DEFER(if (!keepSocket) unlink(socketPath.cStr()));

    // An idle mount gives back the heap it kept for moving data.
    cairn::IdleHeapTrim trim(
        io.provider->getTimer(), [&loop]() { return loop.requests(); },
        [&loop]() { loop.dropSpareBuffers(); });
    auto trimming = trim.run().eagerlyEvaluate(
        [](kj::Exception&& e) { spdlog::warn("heap trim: {}", e.getDescription().cStr()); });

    // A newer cairn-mount may ask to take this mount over.
    cairn::HandoverListener handover(io.unixEventPort, io.provider->getTimer(),
                                     cairn::handoverSocketPath(opts.mountpoint));
    auto handoverDone = handOverWhenAsked(handover, loop, fuseOps, client, se, originalArgs);

    auto stop = io.unixEventPort.onSignal(SIGTERM)
                    .exclusiveJoin(io.unixEventPort.onSignal(SIGINT))
                    .exclusiveJoin(io.unixEventPort.onSignal(SIGHUP))
                    .then([](siginfo_t info) {
                      spdlog::info("signal {}: unmounting", info.si_signo);
                      return false;
                    });
    handedOver = busy.wait(loop.run()
                               .then([]() { return false; })
                               .exclusiveJoin(kj::mv(stop))
                               .exclusiveJoin(kj::mv(handoverDone)));
    if (handedOver) {
      // The new process serves the mount and the servers know it as this client: no goodbye,
      // no unmount; its counters socket is its own.
      spdlog::info("handed {} over to a new cairn-mount; exiting", opts.mountpoint);
      keepSocket = true;
      status = HANDED_OVER;
    } else {
      client.leave(1 * kj::SECONDS).wait(io.waitScope);
      spdlog::info("unmounted {}", opts.mountpoint);
    }
  } catch (kj::Exception& e) {
    spdlog::error("{}", e.getDescription().cStr());
    status = 1;
  }
  free(opts.mountpoint);
  free(cfg.addresses);
  free(cfg.metrics);
  free(cfg.tls);
  fuse_opt_free_args(&args);
  return status;
}
