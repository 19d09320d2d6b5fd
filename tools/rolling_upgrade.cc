#include "tools/rolling_upgrade.h"

#include <kj/debug.h>
#include <kj/encoding.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "tools/ctl_util.h"

namespace cairn::ctl {
namespace {

constexpr kj::Duration POLL = 20 * kj::MILLISECONDS;
constexpr kj::Duration CALL_TIMEOUT = 3 * kj::SECONDS;

// What a server said about itself, copied out of its status reply.
struct ServerView {
  std::string address, state = "unreachable", version, partner;
  uint64_t instance = 0, uptimeMs = 0;
  struct Client {
    std::string uuid, recovery;
    bool connected = false;
  };
  std::vector<Client> clients;
  std::vector<std::vector<std::string>> dataTargets;  // meta: each data target's addresses

  bool serving() const { return state == "serving"; }
  bool standby() const { return state == "standby"; }
};

ServerView copyStatus(rpc::ServerStatus::Reader s) {
  ServerView v;
  v.address = s.getAddress().cStr();
  v.state = s.getState().cStr();
  v.version = s.getInfo().getSoftwareVersion().cStr();
  v.partner = s.getPartner().cStr();
  v.instance = s.getInfo().getInstance();
  v.uptimeMs = s.getUptimeMs();
  for (auto c : s.getClients()) {
    v.clients.push_back(
        {kj::encodeHex(c.getUuid()).cStr(), c.getRecovery().cStr(), c.getConnected()});
  }
  for (auto t : s.getTargets()) {
    if (t.getKind() != rpc::TargetKind::DATA) continue;
    if (v.dataTargets.size() <= t.getIndex()) v.dataTargets.resize(t.getIndex() + 1);
    for (auto a : t.getAddresses()) v.dataTargets[t.getIndex()].push_back(a.cStr());
  }
  return v;
}

// One target of the plan: a single server, or a failover pair.
struct Target {
  std::string name;
  std::vector<std::string> addresses;
};

// One connection; the RPC client is destroyed before the stream it uses.
struct Link {
  explicit Link(kj::Own<kj::AsyncIoStream> s) : stream(kj::mv(s)), client(*stream) {}
  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyClient client;
};

// `binary FLAG` run here, if this host has the binary: the first line it prints ("" if none).
std::string askBinary(const std::string& binary, const char* flag) {
  std::string cmd = "'" + binary + "' " + flag + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  char buf[256] = {};
  bool read = fgets(buf, sizeof(buf), p) != nullptr;
  if (pclose(p) != 0 || !read) return "";
  std::string out = buf;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// The version to upgrade to.
std::string localVersion(const std::string& binary) {
  auto out = askBinary(binary, "--version");
  const std::string prefix = "cairn-server ";
  return out.rfind(prefix, 0) == 0 ? out.substr(prefix.size()) : "";
}

class Upgrader {
public:
  Upgrader(Context& ctx, const UpgradeOptions& options)
      : ctx_(ctx), io_(ctx.io), timer_(io_.provider->getTimer()), options_(options) {}

  int run() {
    // The order: as asked, else as the new release declares it, else data targets first.
    order_ = options_.order.cStr();
    orderFrom_ = "as asked";
    if (order_.empty()) {
      order_ = askBinary(options_.binary.cStr(), "--upgrade-order");
      orderFrom_ = "as the new release declares";
      if (order_ != "meta-first" && order_ != "data-first") {
        order_ = "data-first";
        orderFrom_ = "the default (the new binary is not on this host to ask)";
      }
    }
    std::vector<Target> plan;
    try {
      plan = makePlan();
    } catch (kj::Exception& e) {
      report("failed", "", "", kj::str("cannot read the cluster: ", e.getDescription()).cStr());
      return 1;
    }
    version_ = options_.versionOverride.size() > 0 ? std::string(options_.versionOverride.cStr())
                                                   : localVersion(options_.binary.cStr());
    printPlan(plan);
    if (options_.dryRun) return 0;
    auto started = timer_.now();
    // Data targets `group` at a time; the metadata target alone.
    for (size_t at = 0; at < plan.size();) {
      size_t n = plan[at].name.rfind("meta", 0) == 0 ? 1 : options_.group;
      kj::Vector<kj::Promise<void>> batch;
      std::vector<std::string> errors(plan.size());
      size_t end = at;
      for (; end < plan.size() && end - at < n; ++end) {
        if (end > at && plan[end].name.rfind("meta", 0) == 0) break;
        batch.add(
            upgrade(plan[end], end + 1, plan.size()).catch_([&errors, end](kj::Exception&& e) {
              errors[end] = e.getDescription().cStr();
            }));
      }
      kj::joinPromises(batch.releaseAsArray()).wait(io_.waitScope);
      for (size_t i = at; i < end; ++i) {
        if (!errors[i].empty()) {
          report("failed", plan[i].name, "", errors[i]);
          summary(false, started, plan[i].name);
          return 1;
        }
      }
      at = end;
    }
    summary(true, started, "");
    return 0;
  }

private:
  std::vector<Target> makePlan() {
    // The metadata server that serves knows every data target's addresses.
    kj::Maybe<ServerView> meta;
    std::vector<std::string> metaAddresses;
    for (auto& a : options_.metaAddresses) {
      auto v = viewOr(a.cStr()).wait(io_.waitScope);
      if (v.serving()) meta = v;
      metaAddresses.push_back(a.cStr());
      if (!v.partner.empty()) metaAddresses.push_back(v.partner);
    }
    auto& m = KJ_REQUIRE_NONNULL(meta, "no metadata server given serves",
                                 kj::strArray(options_.metaAddresses, ","));
    std::set<std::string> seen;
    std::vector<std::string> pair;
    for (auto& a : metaAddresses) {
      if (seen.insert(a).second) pair.push_back(a);
    }
    std::vector<Target> data;
    for (size_t i = 0; i < m.dataTargets.size(); ++i) {
      if (!m.dataTargets[i].empty()) data.push_back({"data" + std::to_string(i), m.dataTargets[i]});
    }
    std::vector<Target> plan;
    Target metaTarget{"meta0", pair};
    bool metaFirst = order_ == "meta-first";
    if (metaFirst) plan.push_back(metaTarget);
    plan.insert(plan.end(), data.begin(), data.end());
    if (!metaFirst) plan.push_back(metaTarget);
    return plan;
  }

  // --- talking to servers ---

  template <typename T, typename Call>
  kj::Promise<T> call(const std::string& address, kj::Duration limit, Call&& f) {
    auto work =
        ctx_.network.parseAddress(address.c_str())
            .then([](kj::Own<kj::NetworkAddress> a) { return a->connect(); })
            .then([f = kj::fwd<Call>(f)](kj::Own<kj::AsyncIoStream> s) mutable -> kj::Promise<T> {
              auto link = kj::heap<Link>(kj::mv(s));
              auto server = link->client.bootstrap().castAs<rpc::Bootstrap>();
              return f(server).attach(kj::mv(link));
            });
    return within(timer_, limit, kj::mv(work));
  }

  kj::Promise<ServerView> viewOr(const std::string& address) {
    return call<ServerView>(address, CALL_TIMEOUT,
                            [](rpc::Bootstrap::Client server) {
                              return server.statusRequest().send().then(
                                  [](auto&& r) { return copyStatus(r.getStatus()); });
                            })
        .catch_([address](kj::Exception&&) {
          ServerView v;
          v.address = address;
          return v;
        });
  }

  // Bootstrap.restart; the server may exec before its reply leaves (DISCONNECTED).
  kj::Promise<void> restart(const std::string& address) {
    return call<void>(address, options_.timeout, [this](rpc::Bootstrap::Client server) {
      auto req = server.restartRequest();
      req.setBinary(options_.binary);
      req.setVersionOverride(options_.versionOverride);
      return req.send().then(
          [this](auto&& r) {
            if (version_.empty()) version_ = r.getVersion().cStr();
          },
          [](kj::Exception&& e) {
            if (e.getType() != kj::Exception::Type::DISCONNECTED) {
              kj::throwFatalException(kj::mv(e));
            }
          });
    });
  }

  kj::Promise<void> failover(const std::string& address) {
    return call<void>(address, options_.timeout, [](rpc::Bootstrap::Client server) {
      return server.failoverRequest().send().ignoreResult();
    });
  }

  using Pred = std::function<bool(const ServerView&)>;
  kj::Promise<ServerView> waitUntil(std::string address, Pred pred, std::string what,
                                    kj::TimePoint deadline) {
    return viewOr(address).then([=](ServerView v) -> kj::Promise<ServerView> {
      if (pred(v)) return kj::mv(v);
      KJ_REQUIRE(timer_.now() < deadline, what, address, v.state);
      return timer_.afterDelay(POLL).then(
          [=]() { return waitUntil(address, pred, what, deadline); });
    });
  }

  // Every client connected before is back and has replayed what it had (or was evicted).
  kj::Promise<void> waitRecovered(const Target& t, size_t step, size_t steps, std::string address,
                                  std::set<std::string> clients) {
    auto deadline = timer_.now() + options_.timeout;
    auto last = std::make_shared<int>(-1);
    Pred done = [=](const ServerView& v) {
      if (!v.serving()) return false;
      size_t back = 0;
      for (auto& c : v.clients) {
        if (clients.count(c.uuid) && c.connected &&
            (c.recovery.rfind("recovered", 0) == 0 || c.recovery.rfind("evicted", 0) == 0)) {
          ++back;
        }
      }
      if (int(back) != *last) {
        *last = int(back);
        progress(t, step, steps, address, "clients recovering", back, clients.size());
      }
      return back == clients.size();
    };
    return waitUntil(address, done, "clients did not recover in time", deadline)
        .then([=](ServerView v) {
          for (auto& c : v.clients) {
            if (clients.count(c.uuid) && c.recovery.rfind("evicted", 0) == 0) {
              report("evicted", t.name, address, "client " + c.uuid + ": " + c.recovery);
            }
          }
        });
  }

  static std::set<std::string> connected(const ServerView& v) {
    std::set<std::string> out;
    for (auto& c : v.clients) {
      if (c.connected) out.insert(c.uuid);
    }
    return out;
  }

  bool upToDate(const ServerView& v) const { return !version_.empty() && v.version == version_; }

  // --- one target ---

  kj::Promise<void> upgrade(const Target& t, size_t step, size_t steps) {
    if (t.addresses.size() == 1) return single(t, step, steps);
    return pair(t, step, steps);
  }

  kj::Promise<void> single(const Target& t, size_t step, size_t steps) {
    auto address = t.addresses[0];
    return viewOr(address).then([=](ServerView before) -> kj::Promise<void> {
      KJ_REQUIRE(before.serving(), "the server does not serve", address, before.state);
      if (upToDate(before)) {
        progress(t, step, steps, address, "already at the version", 0, 0);
        return kj::READY_NOW;
      }
      auto clients = connected(before);
      progress(t, step, steps, address, "restarting", 0, clients.size());
      auto deadline = timer_.now() + options_.timeout;
      return restart(address)
          .then([=]() {
            return waitUntil(
                address,
                [=](const ServerView& v) { return v.serving() && v.instance != before.instance; },
                "did not serve again in time", deadline);
          })
          .then([=](ServerView) { return waitRecovered(t, step, steps, address, clients); })
          .then(
              [=]() { progress(t, step, steps, address, "done", clients.size(), clients.size()); });
    });
  }

  kj::Promise<void> pair(const Target& t, size_t step, size_t steps) {
    auto views = kj::heapArrayBuilder<kj::Promise<ServerView>>(t.addresses.size());
    for (auto& a : t.addresses) views.add(viewOr(a));
    return kj::joinPromises(views.finish()).then([=](kj::Array<ServerView> v) -> kj::Promise<void> {
      const ServerView* active = nullptr;
      const ServerView* standby = nullptr;
      for (auto& s : v) (s.serving() ? active : standby) = &s;
      KJ_REQUIRE(active != nullptr, "no server of the pair serves", t.name);
      KJ_REQUIRE(standby != nullptr && standby->standby(),
                 "the standby does not answer: start it again (it comes back as the standby), "
                 "then run the upgrade again",
                 standby ? standby->address : std::string("?"));
      if (upToDate(*active) && upToDate(*standby)) {
        progress(t, step, steps, active->address, "already at the version", 0, 0);
        return kj::READY_NOW;
      }
      auto a = active->address, b = standby->address;
      auto clients = connected(*active);
      auto standbyUptime = standby->uptimeMs;
      bool standbyDone = upToDate(*standby);
      auto deadline = timer_.now() + options_.timeout;
      // 1. The standby becomes the new binary.
      kj::Promise<void> first = kj::READY_NOW;
      if (!standbyDone) {
        progress(t, step, steps, b, "restarting the standby", 0, clients.size());
        first = restart(b).then([=]() {
          return waitUntil(
                     b,
                     [=](const ServerView& s) {
                       return s.standby() && (s.uptimeMs < standbyUptime || upToDate(s));
                     },
                     "the standby did not come back in time", deadline)
              .ignoreResult();
        });
      }
      // 2. It takes the target over; 3. the old server becomes the new standby.
      return first
          .then([=]() {
            progress(t, step, steps, a, "failing over", 0, clients.size());
            return failover(a);
          })
          .then([=]() {
            return waitUntil(
                b, [](const ServerView& s) { return s.serving(); }, "the standby did not take over",
                deadline);
          })
          .then([=](ServerView) { return waitRecovered(t, step, steps, b, clients); })
          .then([=]() {
            progress(t, step, steps, a, "restarting the old server as the standby", clients.size(),
                     clients.size());
            return restart(a);
          })
          .then([=]() {
            return waitUntil(
                a, [=](const ServerView& s) { return s.standby() && upToDate(s); },
                "the old server did not come back as the standby", deadline);
          })
          .then([=](ServerView) {
            progress(t, step, steps, b, "done", clients.size(), clients.size());
          });
    });
  }

  // --- output ---

  void printPlan(const std::vector<Target>& plan) {
    for (size_t i = 0; i < plan.size(); ++i) {
      std::string how = plan[i].addresses.size() > 1 ? "failover pair" : "in place";
      std::string list;
      for (auto& a : plan[i].addresses) list += (list.empty() ? "" : ",") + a;
      if (options_.json) {
        printf(
            "{\"event\":\"plan\",\"step\":%zu,\"steps\":%zu,\"target\":%s,\"servers\":%s,"
            "\"how\":%s,\"version\":%s}\n",
            i + 1, plan.size(), jsonString(plan[i].name.c_str()).cStr(),
            jsonString(list.c_str()).cStr(), jsonString(how.c_str()).cStr(),
            jsonString(version_.c_str()).cStr());
      } else {
        printf("plan [%zu/%zu] %-6s %s (%s)\n", i + 1, plan.size(), plan[i].name.c_str(),
               list.c_str(), how.c_str());
      }
    }
    if (!options_.json) {
      printf("to %s, %s (%s), %u data target%s at a time%s\n",
             version_.empty() ? "the new binary's version" : version_.c_str(), order_.c_str(),
             orderFrom_.c_str(), options_.group, options_.group == 1 ? "" : "s",
             options_.dryRun ? " (dry run: nothing done)" : "");
    }
    fflush(stdout);
  }

  void progress(const Target& t, size_t step, size_t steps, const std::string& server,
                const char* phase, size_t recovered, size_t clients) {
    auto ms = (timer_.now() - begun_) / kj::MILLISECONDS;
    if (options_.json) {
      printf(
          "{\"event\":\"progress\",\"step\":%zu,\"steps\":%zu,\"target\":%s,\"server\":%s,"
          "\"phase\":%s,\"clientsRecovered\":%zu,\"clients\":%zu,\"elapsedMs\":%lld}\n",
          step, steps, jsonString(t.name.c_str()).cStr(), jsonString(server.c_str()).cStr(),
          jsonString(phase).cStr(), recovered, clients, static_cast<long long>(ms));
    } else {
      printf("[%zu/%zu] %-6s %s: %s", step, steps, t.name.c_str(), server.c_str(), phase);
      if (clients > 0) printf(" (clients recovered %zu/%zu)", recovered, clients);
      printf("  +%.2f s\n", double(ms) / 1000);
    }
    fflush(stdout);
  }

  void report(const char* event, const std::string& target, const std::string& server,
              const std::string& what) {
    if (options_.json) {
      printf("{\"event\":%s,\"target\":%s,\"server\":%s,\"error\":%s}\n", jsonString(event).cStr(),
             jsonString(target.c_str()).cStr(), jsonString(server.c_str()).cStr(),
             jsonString(what.c_str()).cStr());
    } else {
      fprintf(stderr, "cairnctl upgrade: %s %s%s%s: %s\n", event, target.c_str(),
              server.empty() ? "" : " ", server.c_str(), what.c_str());
    }
    fflush(stdout);
  }

  void summary(bool ok, kj::TimePoint started, const std::string& stoppedAt) {
    double seconds = double((timer_.now() - started) / kj::MILLISECONDS) / 1000;
    if (options_.json) {
      printf("{\"event\":\"done\",\"ok\":%s,\"stoppedAt\":%s,\"version\":%s,\"seconds\":%.3f}\n",
             ok ? "true" : "false", jsonString(stoppedAt.c_str()).cStr(),
             jsonString(version_.c_str()).cStr(), seconds);
    } else if (ok) {
      printf("upgrade done in %.2f s: every target serves version %s\n", seconds, version_.c_str());
    } else {
      printf(
          "upgrade stopped at %s after %.2f s; fix the cause and run the same command again "
          "(targets already at the version are skipped)\n",
          stoppedAt.c_str(), seconds);
    }
    fflush(stdout);
  }

  Context& ctx_;
  kj::AsyncIoContext& io_;
  kj::Timer& timer_;
  const UpgradeOptions& options_;
  std::string version_;
  std::string order_, orderFrom_;
  kj::TimePoint begun_ = timer_.now();
};

}  // namespace

int rollingUpgrade(Context& ctx, const UpgradeOptions& options) {
  return Upgrader(ctx, options).run();
}

}  // namespace cairn::ctl
