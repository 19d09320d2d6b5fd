// A real Cairn cluster for a test: cairn-server processes on free loopback ports, LMDB targets
// in a temporary directory, and FUSE mounts through the kernel. Everything it starts it stops in
// its destructor, also when the test fails: mounts are unmounted (fusermount3 -u, then -uz), and
// processes are stopped by the pid it recorded, never by name.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include <map>
#include <string>
#include <thread>
#include <vector>

namespace cairn::test {

struct RunResult {
  int status = -1;  // exit status, or 128 + signal
  std::string out;
  std::string err;
};

// Runs a command to completion.
RunResult run(const std::vector<std::string>& argv);

std::string buildDir();  // CAIRN_BUILD_DIR, set by meson test
std::string serverBin();
std::string mountBin();
std::string ctlBin();

class TempDir {
public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

private:
  std::string path_;
};

// A child process, stopped (SIGTERM, then SIGKILL) and reaped when the object goes.
class Child {
public:
  explicit Child(const std::vector<std::string>& argv, const std::string& stderrPath = "");
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  bool alive();
  // Sends sig and waits up to timeoutMs; returns the exit status (128 + signal if killed).
  int stop(int sig = SIGTERM, int timeoutMs = 15000);
  int wait(int timeoutMs);

private:
  pid_t pid_ = -1;
  int status_ = -1;
};

bool isMounted(const std::string& path);

// The credentials directory raw connections use (connectStream); set by the running TestCluster
// ("" in plain text).
extern std::string rawCredentials;
// Waits until `pred` holds or timeoutMs passes; returns whether it held.
template <typename Pred>
bool waitFor(Pred&& pred, int timeoutMs);

class TestCluster {
public:
  struct Options {
    int dataServers = 2;
    uint32_t stripeSize = 64 * 1024;
    std::vector<std::string> metaArgs;  // extra `serve` arguments
    std::vector<std::string> dataArgs;
    // Every target gets a standby partner (same target directory, as shared storage would be):
    // servers 1+N .. 1+2N are the partners of servers 0 .. N.
    bool failover = false;
    // Mutual TLS with a CA of the cluster's own, as in production (tls/ under dir(): ca, one
    // credentials directory per server name, client, admin). Off: plain text on loopback.
    bool tls = true;
  };
  TestCluster();
  explicit TestCluster(Options options);
  ~TestCluster();

  const std::string& dir() const { return tmp_.path(); }
  // A credentials directory of the cluster's CA ("client", "admin", a server's name), or "" in
  // plain text.
  std::string credentials(const std::string& who) const;
  // Issues one more certificate of the cluster's CA (cairnctl cert issue --ROLE NAME [extra])
  // into the credentials directory tls/AS; returns its path.
  std::string issue(const std::string& role, const std::string& name, const std::string& as,
                    const std::vector<std::string>& extra = {});
  std::string metaAddress() const { return servers_.at(0).address; }
  // What clients and data servers are given: both of a failover pair ("A,B").
  std::string metaAddresses() const;
  // The other server of a failover pair.
  int partner(int server) const;
  // Of a server and its partner, the one that reports "serving" (-1: neither).
  int serving(int server);
  // Server 0 is the metadata server, 1..N the data servers.
  int serverCount() const { return int(servers_.size()); }
  std::string address(int server) const { return servers_.at(server).address; }
  std::string targetDir(int server) const { return servers_.at(server).dir; }
  std::string log(int server) const { return servers_.at(server).log; }

  // Mounts one more client; returns its mount point. Unmounted in the destructor.
  std::string mount(const std::string& extraOptions = "");
  void unmount(const std::string& mountPoint);
  // SIGKILLs a mount's daemon (a client that vanishes); the mount point is cleaned up lazily.
  void killMount(int index);
  // Sends a mount's daemon a signal (SIGSTOP/SIGCONT: a client that hangs).
  void signalMount(int index, int sig);
  std::string mountLog(int index) const;
  std::string serverLog(int server) const;  // its log file, every instance's
  pid_t mountPid(int index) const;

  // Stops a server (SIGTERM: clean, SIGKILL: crash) and returns its exit status.
  int stopServer(int server, int sig = SIGTERM);
  // Controlled shutdown through `cairnctl shutdown`; returns the server's exit status once it
  // has exited (and what cairnctl printed, if asked).
  int shutdownServer(int server, RunResult* result = nullptr);
  // Starts it again on the same port, with optional extra arguments; returns false if the
  // process exited within the first moments (e.g. refused to start).
  bool startServer(int server, const std::vector<std::string>& extra = {});
  // Sends a signal without waiting (SIGSTOP/SIGCONT: a server that hangs).
  void signalServer(int server, int sig);
  void stopAll();
  void startAll();

  // Prints the end of every log (the destructor does it when the test failed).
  void dumpLogs();

  // `cairnctl status --json` of a server.
  std::string status(int server);
  // Whether the server answers and reports this state ("serving", "standby"); false while it
  // does not answer (between two lives of a process: a server fenced off starts standing by).
  bool inState(int server, const std::string& state);

private:
  struct Server {
    std::string name, kind, dir, log, address, partner;
    int index = 0;
    int port = 0;
    std::vector<std::string> args;
    std::unique_ptr<Child> proc;
  };
  struct Mount {
    std::string path;
    std::string log;
    std::unique_ptr<Child> proc;
  };
  void start(Server& s, const std::vector<std::string>& extra, bool mustStart);

  Options options_;
  TempDir tmp_;
  std::vector<Server> servers_;
  std::vector<Mount> mounts_;
};

// A test suite sharing one cluster and two mounts of it (two clients, A and B); `name_` is
// "/<the current test's name>", for paths of its own.
class TwoClients : public ::testing::Test {
protected:
  static void startClients(TestCluster::Options options = {});
  static void TearDownTestSuite();
  void SetUp() override;

  static TestCluster* cluster_;
  static std::string* a_;
  static std::string* b_;
  std::string name_;
};

// Runs body in a child process as uid:gid with the given supplementary groups; returns what
// body returns (an errno, 0 for success), or -1 if the child could not switch identity.
int runAs(uid_t uid, gid_t gid, const std::vector<gid_t>& groups, const std::function<int()>& body);

// The whole content of a file ("<error text>" if it cannot be opened).
std::string readWhole(const std::string& path);
// Whether `text` (a log, a status) holds `part`.
inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}
// Creates (or truncates) and writes a file; a failure fails the test.
void writeWhole(const std::string& path, const std::string& data);
// Deterministic pseudo-random bytes.
std::string pattern(size_t n, uint32_t seed);
// Kills the TCP connections of process `pid` to `address` (the kernel resets them, `ss -K`), as
// a network cut would. A test fails if there was none.
void cutConnections(pid_t pid, const std::string& address);
// Runs `call` (which blocks: its server is away) in a child process and sends the child `sig`
// after 300 ms. For a caught signal (the child has a handler, without SA_RESTART) true means the
// call returned EINTR; for SIGKILL, that the child died of it. False too if it outlived 5 s.
bool blockedCallEndsWith(int sig, const std::function<int()>& call);

// The mount's counters as `cairnctl --mount MNT stats` prints them.
std::string mountStats(const std::string& mnt);

// A counter or gauge from a mount's counters (cairnctl --mount M stats). `required` false: a
// counter not shown yet (nothing of its kind happened) is 0.
uint64_t mountGauge(const std::string& mnt, const std::string& name, bool required = true);

// Reads an unsigned number field from a flat JSON object text (test helper, not a parser).
uint64_t jsonNumber(const std::string& json, const std::string& key);

// GET http://address/path; returns the whole response (status line, headers, body).
std::string httpGet(const std::string& address, const std::string& path);
// Where a server serves /metrics (it was started with --metrics), or "".
std::string metricsAddress(TestCluster& cluster, int server);
// The value of one sample in a /metrics text (exact name and labels), or -1.
double metricValue(const std::string& text, const std::string& series);

template <typename Pred>
bool waitFor(Pred&& pred, int timeoutMs) {
  for (int waited = 0;; waited += 20) {
    if (pred()) return true;
    if (waited >= timeoutMs) return false;
    usleep(20 * 1000);
  }
}

// Runs `call` on a thread; true if it returned within `ms` (the thread is joined either way:
// the caller makes sure it can end, e.g. by continuing the servers it waits for).
class Background {
public:
  explicit Background(std::function<void()> call)
      : thread_([this, call = std::move(call)] {
          call();
          done_ = true;
        }) {}
  ~Background() { thread_.join(); }
  bool doneWithin(int ms) {
    return waitFor([this] { return done_.load(); }, ms);
  }

private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

}  // namespace cairn::test
