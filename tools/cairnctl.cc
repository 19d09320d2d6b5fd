// cairnctl: administration of a running Cairn cluster.
//
//   cairnctl --server HOST:PORT status [--json]
//   cairnctl --server HOST:PORT shutdown | failover | replay-barrier
//   cairnctl --server HOST:PORT restart --bin PATH
//   cairnctl --server META[,META] upgrade --bin PATH [--group N] [--order ...] [--dry-run] [--json]
//   cairnctl --mount MNT stats
//   cairnctl ca init --dir CA
//   cairnctl cert issue --ca CA --server|--client|--admin NAME --out DIR
//   cairnctl cert revoke --ca CA CERT...
// With --tls DIR (or $CAIRN_TLS) every connection is mutual TLS with those credentials.
#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/compat/http.h>
#include <kj/debug.h>
#include <kj/encoding.h>
#include <CLI/CLI.hpp>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "rpc/cairn.capnp.h"
#include "rpc/server_link.h"
#include "rpc/stats_socket.h"
#include "rpc/transport.h"
#include "rpc/version.h"
#include "tools/cert_authority.h"
#include "tools/ctl_util.h"
#include "tools/rolling_upgrade.h"

namespace {

using cairn::ctl::Connection;
using cairn::ctl::connectTo;
using cairn::ctl::jsonString;
using cairn::ctl::stateOf;
using cairn::ctl::within;

kj::String kindName(cairn::rpc::TargetKind kind) {
  return kj::str(kind == cairn::rpc::TargetKind::META ? "meta" : "data");
}

void printStatus(cairn::rpc::ServerStatus::Reader s, bool json) {
  auto info = s.getInfo();
  if (json) {
    kj::Vector<kj::String> clients;
    for (auto c : s.getClients()) {
      clients.add(kj::str(
          "{\"uuid\":\"", kj::encodeHex(c.getUuid()), "\",\"host\":", jsonString(c.getHostName()),
          ",\"version\":", jsonString(c.getSoftwareVersion()),
          ",\"connected\":", c.getConnected() ? "true" : "false",
          ",\"lastRequestId\":", c.getLastRequestId(), ",\"openFiles\":", c.getOpenFiles(),
          ",\"locks\":", c.getLocks(), ",\"recovery\":", jsonString(c.getRecovery()), "}"));
    }
    kj::Vector<kj::String> rpcs;
    for (auto r : s.getRpcs()) rpcs.add(kj::str(jsonString(r.getName()), ":", r.getCount()));
    kj::Vector<kj::String> targets;
    for (auto t : s.getTargets()) {
      kj::Vector<kj::String> addrs;
      for (auto a : t.getAddresses()) addrs.add(jsonString(a));
      targets.add(kj::str("{\"index\":", t.getIndex(), ",\"kind\":\"", kindName(t.getKind()),
                          "\",\"addresses\":[", kj::strArray(addrs, ","), "]}"));
    }
    printf("%s\n",
           kj::str("{\"address\":", jsonString(s.getAddress()), ",\"kind\":\"",
                   kindName(info.getKind()), "\",\"target\":", info.getTargetIndex(), ",\"fs\":",
                   jsonString(info.getFsName()), ",\"fsUuid\":\"", kj::encodeHex(info.getFsUuid()),
                   "\",\"version\":", jsonString(info.getSoftwareVersion()),
                   ",\"instance\":", info.getInstance(), ",\"state\":", jsonString(s.getState()),
                   ",\"uptimeMs\":", s.getUptimeMs(), ",\"lastTransno\":", s.getLastTransno(),
                   ",\"lastSynced\":", s.getLastSynced(), ",\"mapUsedBytes\":", s.getMapUsedBytes(),
                   ",\"mapSizeBytes\":", s.getMapSizeBytes(), ",\"rpcCount\":", s.getRpcCount(),
                   ",\"orphans\":", s.getOrphans(), ",\"destroyQueue\":", s.getDestroyQueue(),
                   ",\"chunks\":", s.getChunks(), ",\"openFiles\":", s.getOpenFiles(),
                   ",\"locksGranted\":", s.getLocksGranted(), ",\"locksWaiting\":",
                   s.getLocksWaiting(), ",\"lockCallbacks\":", s.getLockCallbacks(),
                   ",\"evictions\":", s.getEvictions(), ",\"recovering\":", s.getRecovering(),
                   ",\"startReason\":", jsonString(s.getStartReason()), ",\"partner\":",
                   jsonString(s.getPartner()), ",\"standbyNote\":", jsonString(s.getStandbyNote()),
                   ",\"metrics\":", jsonString(s.getMetricsAddress()), ",\"rpcs\":{",
                   kj::strArray(rpcs, ","), "},\"clients\":[", kj::strArray(clients, ","),
                   "],\"targets\":[", kj::strArray(targets, ","), "]}")
               .cStr());
    return;
  }
  printf("server    %s\n", s.getAddress().cStr());
  if (s.getPartner().size() > 0) printf("partner   %s\n", s.getPartner().cStr());
  if (s.getState() == "standby") {
    printf("target    %s (standby)\n", kindName(info.getKind()).cStr());
    printf("version   %s\n", info.getSoftwareVersion().cStr());
    printf("state     standby, up %.1f s: %s\n", s.getUptimeMs() / 1000.0,
           s.getStandbyNote().cStr());
    return;
  }
  printf("target    %s %u of %s (%s)\n", kindName(info.getKind()).cStr(), info.getTargetIndex(),
         info.getFsName().cStr(), kj::encodeHex(info.getFsUuid()).cStr());
  printf("version   %s (instance %llu)\n", info.getSoftwareVersion().cStr(),
         static_cast<unsigned long long>(info.getInstance()));
  printf("state     %s, up %.1f s; started: %s\n", s.getState().cStr(), s.getUptimeMs() / 1000.0,
         s.getStartReason().cStr());
  if (s.getRecovering() > 0) {
    printf("recovery  %u clients of the previous instance not back yet\n", s.getRecovering());
  }
  printf("commits   last %llu, synced %llu; map %.1f MiB used; %llu RPCs served\n",
         static_cast<unsigned long long>(s.getLastTransno()),
         static_cast<unsigned long long>(s.getLastSynced()), s.getMapUsedBytes() / 1048576.0,
         static_cast<unsigned long long>(s.getRpcCount()));
  if (info.getKind() == cairn::rpc::TargetKind::META) {
    printf("files     %llu open, %llu orphans, %llu waiting for their data to be removed\n",
           static_cast<unsigned long long>(s.getOpenFiles()),
           static_cast<unsigned long long>(s.getOrphans()),
           static_cast<unsigned long long>(s.getDestroyQueue()));
  } else {
    printf("data      %llu chunks stored\n", static_cast<unsigned long long>(s.getChunks()));
  }
  printf("locks     %llu granted, %llu waiting; %llu callbacks, %llu evictions since start\n",
         static_cast<unsigned long long>(s.getLocksGranted()),
         static_cast<unsigned long long>(s.getLocksWaiting()),
         static_cast<unsigned long long>(s.getLockCallbacks()),
         static_cast<unsigned long long>(s.getEvictions()));
  for (auto t : s.getTargets()) {
    kj::Vector<kj::StringPtr> addrs;
    for (auto a : t.getAddresses()) addrs.add(a);
    printf("target    %s %u at %s\n", kindName(t.getKind()).cStr(), t.getIndex(),
           kj::strArray(addrs, ",").cStr());
  }
  if (s.getRpcs().size() > 0) {
    printf("requests ");
    for (auto r : s.getRpcs()) {
      printf(" %s %llu", r.getName().cStr(), static_cast<unsigned long long>(r.getCount()));
    }
    printf("\n");
  }
  printf("clients   %u\n", s.getClients().size());
  for (auto c : s.getClients()) {
    printf("  %s  %-20s %-8s %-12s last request %llu, %u open; %s\n",
           kj::encodeHex(c.getUuid()).cStr(), c.getHostName().cStr(), c.getSoftwareVersion().cStr(),
           c.getConnected() ? "connected" : "disconnected",
           static_cast<unsigned long long>(c.getLastRequestId()), c.getOpenFiles(),
           c.getRecovery().cStr());
  }
}

// Moves a failover pair's target to the other server and waits until that one serves it.
int failover(cairn::ctl::Context& ctx, Connection& conn, kj::StringPtr address,
             kj::Duration limit) {
  auto& io = ctx.io;
  auto& timer = io.provider->getTimer();
  auto started = timer.now();
  auto status = within(timer, limit, conn.server.statusRequest().send()).wait(io.waitScope);
  auto before = status.getStatus();
  KJ_REQUIRE(before.getPartner().size() > 0, "the server has no failover partner", address);
  // On the active server: it fails over to its partner. On a standby: it takes over.
  bool fromActive = before.getState() != "standby";
  auto next = kj::str(fromActive ? before.getPartner() : before.getAddress());
  within(timer, limit,
         conn.server.failoverRequest().send().then([](auto&&) {},
                                                   [](kj::Exception&& e) {
                                                     // A standby that took over drops its standby
                                                     // connections: done too.
                                                     if (e.getType() !=
                                                         kj::Exception::Type::DISCONNECTED) {
                                                       kj::throwFatalException(kj::mv(e));
                                                     }
                                                   }))
      .wait(io.waitScope);
  for (;;) {
    if (stateOf(ctx, next) == "serving") break;
    KJ_REQUIRE(timer.now() - started < limit, "the partner did not start serving in time", next);
    timer.afterDelay(20 * kj::MILLISECONDS).wait(io.waitScope);
  }
  printf("%s: failed over to %s in %.2f s\n", address.cStr(), next.cStr(),
         double((timer.now() - started) / kj::MILLISECONDS) / 1000.0);
  return 0;
}

// Evicts a client from the server at `address` and, if that is a metadata server, from every
// server of every data target it knows (an eviction is per server: each has its own session).
// Servers that cannot be reached are reported and skipped.
int evictClient(cairn::ctl::Context& ctx, kj::StringPtr address, kj::StringPtr uuidHex,
                kj::Duration limit) {
  auto& io = ctx.io;
  auto& timer = io.provider->getTimer();
  auto uuid = kj::decodeHex(uuidHex);
  KJ_REQUIRE(!uuid.hadErrors && uuid.size() == 16, "a client uuid is 32 hex digits", uuidHex);
  kj::Vector<kj::String> servers;
  servers.add(kj::str(address));
  {
    auto conn = connectTo(ctx, address, limit);
    auto status = within(timer, limit, conn.server.statusRequest().send()).wait(io.waitScope);
    for (auto target : status.getStatus().getTargets()) {
      for (auto a : target.getAddresses()) servers.add(kj::str(a));
    }
  }
  int found = 0;
  for (auto& s : servers) {
    try {
      auto conn = connectTo(ctx, s, limit);
      auto req = conn.server.evictRequest();
      req.setClientUuid(uuid);
      bool evicted = within(timer, limit, req.send()).wait(io.waitScope).getEvicted();
      printf("%s: %s\n", s.cStr(), evicted ? "evicted" : "no session of that client");
      found += evicted;
    } catch (kj::Exception& e) {
      fprintf(stderr, "cairnctl: %s: %s\n", s.cStr(), e.getDescription().cStr());
    }
  }
  return found > 0 ? 0 : 1;
}

// GET /metrics from a mount's counters socket.
int printMountStats(const std::string& mount, double timeout) {
  char real[PATH_MAX];
  auto path = cairn::statsSocketPath(realpath(mount.c_str(), real) ? real : mount.c_str());
  try {
    auto io = kj::setupAsyncIo();
    auto deadline = io.provider->getTimer().afterDelay(int64_t(timeout * 1000) * kj::MILLISECONDS);
    kj::HttpHeaderTable table;
    auto conn = io.provider->getNetwork()
                    .parseAddress(kj::str("unix:", path))
                    .then([](kj::Own<kj::NetworkAddress> a) { return a->connect(); })
                    .wait(io.waitScope);
    auto client = kj::newHttpClient(table, *conn);
    auto request = client->request(kj::HttpMethod::GET, "/metrics", kj::HttpHeaders(table));
    auto body =
        request.response
            .then([](kj::HttpClient::Response&& r) {
              KJ_REQUIRE(r.statusCode == 200, "the mount answered", r.statusCode);
              return r.body->readAllText().attach(kj::mv(r.body));
            })
            .exclusiveJoin(deadline.then([]() -> kj::String { KJ_FAIL_REQUIRE("timed out"); }))
            .wait(io.waitScope);
    fputs(body.cStr(), stdout);
    return 0;
  } catch (kj::Exception& e) {
    fprintf(stderr, "cairnctl: %s (%s): %s\n", mount.c_str(), path.cStr(),
            e.getDescription().cStr());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Cairn administration"};
  app.set_version_flag("--version", std::string("cairnctl ") + CAIRN_VERSION);
  std::string server, mount;
  double timeout = 10;
  app.add_option("--server", server, "HOST:PORT of the server to talk to");
  app.add_option("--mount", mount, "mount point of the client to talk to (stats)");
  app.add_option("--timeout", timeout, "seconds to wait for the server");
  std::string tlsDir;
  bool plaintext = false;
  if (const char* env = getenv("CAIRN_TLS")) tlsDir = env;
  app.add_option("--tls", tlsDir,
                 "credentials directory (ca.crt, cert.crt, cert.key; default $CAIRN_TLS): mutual "
                 "TLS, an admin certificate for administrative calls");
  app.add_flag("--insecure-plaintext", plaintext,
               "talk plain text (servers started with --insecure-plaintext, loopback tests)");
  app.require_subcommand(1);
  app.fallthrough();
  bool json = false;
  auto* status = app.add_subcommand("status", "what the server serves, its state and clients");
  status->add_flag("--json", json, "machine-readable output");
  auto* shutdown = app.add_subcommand(
      "shutdown",
      "controlled shutdown: every client writes back and lets go, then the server marks its "
      "target clean and exits (waits for that; --timeout default 60 s here)");
  auto* barrier = app.add_subcommand(
      "replay-barrier",
      "test hook (server started with --test-replay-barrier): what the target commits from now "
      "on is discarded at its next start, as in a host crash");
  auto* failoverCmd = app.add_subcommand(
      "failover",
      "move the target to the other server of its failover pair (on the active one: controlled "
      "shutdown, then it stands by; on the standby: it takes over) and wait until that one "
      "serves (--timeout default 60 s here)");
  std::string clientUuid;
  auto* evictCmd = app.add_subcommand(
      "evict",
      "evict a client (uuid as in status) from this server and, from a metadata server, from "
      "every data server: its locks and opens go; it is told when it comes back");
  evictCmd->add_option("uuid", clientUuid, "the client's uuid (32 hex digits)")->required();
  std::string binary, versionOverride, order;
  unsigned group = 1;
  bool dryRun = false;
  auto* restartCmd = app.add_subcommand(
      "restart",
      "upgrade one server in place: controlled shutdown, then the process becomes --bin (same "
      "pid, arguments and port)");
  // What both take: the new binary, and (test hook) the version it acts as.
  auto newBinary = [&](CLI::App* cmd) {
    cmd->add_option("--bin", binary, "the new cairn-server, as the servers' hosts see it")
        ->required();
    cmd->add_option("--version-override", versionOverride,
                    "test hook: the version the new servers act as");
  };
  newBinary(restartCmd);
  auto* upgradeCmd = app.add_subcommand(
      "upgrade",
      "rolling upgrade of the whole cluster (--server: the metadata server(s)) to --bin, target "
      "by target, through failover where a target has a standby; run again to resume");
  newBinary(upgradeCmd);
  upgradeCmd->add_option("--group", group, "data targets upgraded at once (default 1)")
      ->check(CLI::Range(1u, 1000u));
  upgradeCmd
      ->add_option("--order", order,
                   "data-first or meta-first (default: as the new release declares, "
                   "cairn-server --upgrade-order)")
      ->check(CLI::IsMember({"data-first", "meta-first"}));
  upgradeCmd->add_flag("--dry-run", dryRun, "print the plan, change nothing");
  upgradeCmd->add_flag("--json", json, "progress as one JSON object per line");
  auto* stats = app.add_subcommand(
      "stats", "a mount's own counters (--mount MNT): requests, gate waits, caches, dirty bytes");
  // The cluster's certificate authority.
  std::string caDir, caName = "cairn", outDir;
  int days = 0, backdate = 0;
  auto* caCmd = app.add_subcommand("ca", "the cluster's certificate authority");
  auto* caInit = caCmd->add_subcommand("init", "make a new CA (ca.key, ca.crt) in --dir");
  caInit->add_option("--dir", caDir, "where the CA lives (its key stays here)")->required();
  caInit->add_option("--name", caName, "the cluster's name, in the CA's common name");
  caInit->add_option("--days", days, "validity (default 3650)");
  caCmd->require_subcommand(1);
  auto* certCmd = app.add_subcommand("cert", "certificates the CA signs");
  auto* issueCmd = certCmd->add_subcommand(
      "issue",
      "sign a certificate for a server, a client host or an administrator, written as "
      "the credentials directory --out (ca.crt, cert.crt, cert.key) that --tls reads");
  std::string asServer, asClient, asAdmin;
  issueCmd->add_option("--ca", caDir, "the CA's directory (cairnctl ca init)")->required();
  auto* roleServer = issueCmd->add_option("--server", asServer, "a server's name");
  auto* roleClient = issueCmd->add_option("--client", asClient, "a client host's name");
  auto* roleAdmin = issueCmd->add_option("--admin", asAdmin, "an administrator's name");
  roleServer->excludes(roleClient)->excludes(roleAdmin);
  roleClient->excludes(roleAdmin);
  issueCmd->add_option("--out", outDir, "credentials directory to write")->required();
  issueCmd->add_option("--days", days, "validity (default 825)");
  issueCmd->add_option("--backdate", backdate,
                       "start the validity this many days ago (tests: expired certificates)");
  std::vector<std::string> revokeCerts;
  auto* revokeCmd = certCmd->add_subcommand(
      "revoke",
      "add certificates to the CA's revocation list (--ca DIR/crl.pem): copy it beside ca.crt "
      "into the servers' (and clients') credentials directories and restart the servers, one at "
      "a time; a revoked peer's handshake is refused from then on");
  revokeCmd->add_option("--ca", caDir, "the CA's directory (cairnctl ca init)")->required();
  revokeCmd->add_option("certificates", revokeCerts, "cert.crt files the CA signed")
      ->required()
      ->check(CLI::ExistingFile);
  certCmd->require_subcommand(1);
  CLI11_PARSE(app, argc, argv);

  if (*caInit || *issueCmd || *revokeCmd) {
    try {
      if (*revokeCmd) {
        for (auto& name : cairn::ca::revoke(caDir, revokeCerts)) {
          printf("revoked %s\n", name.c_str());
        }
        printf("revocation list: %s/crl.pem\n", caDir.c_str());
        return 0;
      }
      if (*caInit) {
        cairn::ca::init(caDir, caName, days > 0 ? days : 3650);
        printf("CA made in %s (keep %s/ca.key private)\n", caDir.c_str(), caDir.c_str());
        return 0;
      }
      cairn::ca::Request r;
      r.role = !asServer.empty() ? "server" : !asClient.empty() ? "client" : "admin";
      r.name = !asServer.empty() ? asServer : !asClient.empty() ? asClient : asAdmin;
      if (r.name.empty()) {
        fprintf(stderr, "cairnctl: cert issue needs --server, --client or --admin NAME\n");
        return 2;
      }
      if (days > 0) r.days = days;
      r.backdateDays = backdate;
      cairn::ca::issue(caDir, outDir, r);
      printf("%s certificate for %s written to %s\n", r.role.c_str(), r.name.c_str(),
             outDir.c_str());
      return 0;
    } catch (kj::Exception& e) {
      fprintf(stderr, "cairnctl: %s\n", e.getDescription().cStr());
      return 1;
    }
  }

  if (*stats) {
    if (mount.empty()) {
      fprintf(stderr, "cairnctl: stats needs --mount MOUNTPOINT\n");
      return 2;
    }
    return printMountStats(mount, timeout);
  }
  if (server.empty()) {
    fprintf(stderr, "cairnctl: --server HOST:PORT is required\n");
    return 2;
  }
  try {
    auto io = kj::setupAsyncIo();
    auto& timer = io.provider->getTimer();
    KJ_REQUIRE(tlsDir.empty() || !plaintext, "--tls and --insecure-plaintext exclude each other");
    auto transport = tlsDir.empty() ? cairn::Transport::plaintext(io)
                                    : cairn::Transport::tls(io, tlsDir.c_str(), nullptr);
    cairn::ctl::Context ctx{io, transport->network()};
    bool longWait = *shutdown || *failoverCmd || *restartCmd || *upgradeCmd;
    if (longWait && app.get_option("--timeout")->count() == 0) timeout = 120;
    auto deadline = int64_t(timeout * 1000) * kj::MILLISECONDS;
    if (*upgradeCmd) {
      cairn::ctl::UpgradeOptions options;
      options.metaAddresses = cairn::splitAddresses(server.c_str());
      options.binary = kj::str(binary.c_str());
      options.versionOverride = kj::str(versionOverride.c_str());
      options.group = group;
      options.order = kj::str(order.c_str());
      options.dryRun = dryRun;
      options.json = json;
      options.timeout = deadline;
      return cairn::ctl::rollingUpgrade(ctx, options);
    }
    auto conn = connectTo(ctx, server.c_str(), deadline);
    auto& bootstrap = conn.server;
    if (*failoverCmd) return failover(ctx, conn, server.c_str(), deadline);
    if (*evictCmd) return evictClient(ctx, server.c_str(), clientUuid.c_str(), deadline);
    if (*restartCmd) {
      auto started = timer.now();
      auto req = bootstrap.restartRequest();
      req.setBinary(binary);
      req.setVersionOverride(versionOverride);
      auto version =
          within(timer, deadline,
                 req.send().then([](auto&& r) { return kj::str(r.getVersion()); },
                                 [](kj::Exception&& e) {
                                   // It may exec before the reply leaves.
                                   if (e.getType() != kj::Exception::Type::DISCONNECTED) {
                                     kj::throwFatalException(kj::mv(e));
                                   }
                                   return kj::str("?");
                                 }))
              .wait(io.waitScope);
      // Serving (or standing by) again once it answers from a new instance.
      for (;;) {
        timer.afterDelay(20 * kj::MILLISECONDS).wait(io.waitScope);
        auto state = stateOf(ctx, server.c_str());
        if (state == "serving" || state == "standby") {
          printf("%s: restarted as version %s in %.2f s (%s)\n", server.c_str(), version.cStr(),
                 double((timer.now() - started) / kj::MILLISECONDS) / 1000.0, state.cStr());
          break;
        }
        KJ_REQUIRE(timer.now() - started < deadline, "the server did not come back in time");
      }
      return 0;
    }
    if (*status) {
      auto resp = bootstrap.statusRequest()
                      .send()
                      .exclusiveJoin(timer.afterDelay(deadline).then(
                          []() -> capnp::Response<cairn::rpc::Bootstrap::StatusResults> {
                            KJ_FAIL_REQUIRE("timed out");
                          }))
                      .wait(io.waitScope);
      printStatus(resp.getStatus(), json);
    }
    if (*barrier) {
      auto resp = bootstrap.replayBarrierRequest().send().wait(io.waitScope);
      printf("%s: replay barrier at transaction %llu\n", server.c_str(),
             static_cast<unsigned long long>(resp.getTransno()));
    }
    if (*shutdown) {
      auto started = timer.now();
      // The server answers once every client is ready to reconnect, and lets the answer leave
      // before it exits: a connection that ends without one is a server that stopped some
      // other way (a crash, a kill), which is no clean shutdown.
      bool hungUp = false;
      bool done = bootstrap.shutdownRequest()
                      .send()
                      .then([](auto&&) { return true; },
                            [&hungUp](kj::Exception&& e) {
                              if (e.getType() != kj::Exception::Type::DISCONNECTED) {
                                kj::throwFatalException(kj::mv(e));
                              }
                              hungUp = true;
                              return false;
                            })
                      .exclusiveJoin(timer.afterDelay(deadline).then([]() { return false; }))
                      .wait(io.waitScope);
      if (hungUp) {
        fprintf(stderr,
                "cairnctl: %s: the connection ended before the server said it had shut down: it "
                "stopped some other way (see its log); its clients recover as after a crash\n",
                server.c_str());
        return 1;
      }
      if (!done) {
        fprintf(stderr, "cairnctl: %s: still shutting down after %.0f s\n", server.c_str(),
                timeout);
        return 1;
      }
      printf("%s: shut down cleanly in %.2f s\n", server.c_str(),
             double((timer.now() - started) / kj::MILLISECONDS) / 1000.0);
    }
  } catch (kj::Exception& e) {
    // A server with --tls hangs up on plain text before it says anything.
    bool hint = tlsDir.empty() && e.getType() == kj::Exception::Type::DISCONNECTED;
    fprintf(stderr, "cairnctl: %s: %s%s\n", server.c_str(), e.getDescription().cStr(),
            hint ? " (a server with --tls takes only TLS: pass --tls DIR or set CAIRN_TLS)" : "");
    return 1;
  }
  return 0;
}
