#include "tests/integration/cluster.h"
#include "rpc/stats_socket.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <linux/close_range.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <regex>
#include <sstream>
#include <stdexcept>

namespace cairn::test {

namespace {

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// In a forked child: stdin from /dev/null, stdout and stderr to files, nothing else inherited
// (files the test has open on a mount must not leak into servers), then exec.
[[noreturn]] void execChild(const std::vector<std::string>& argv, const std::string& outPath,
                            const std::string& errPath) {
  int in = open("/dev/null", O_RDONLY);
  int out = open(outPath.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  int err = errPath == outPath ? out : open(errPath.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  dup2(in, 0);
  dup2(out, 1);
  dup2(err, 2);
  close_range(3, ~0U, 0);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  execv(args[0], args.data());
  _exit(127);
}

std::string randomHex(int bytes) {
  std::random_device rd;
  std::string out;
  const char* digits = "0123456789abcdef";
  for (int i = 0; i < bytes; ++i) {
    unsigned v = rd() & 0xff;
    out += digits[v >> 4];
    out += digits[v & 15];
  }
  return out;
}

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what);
}

// A port for a server that keeps it across restarts (a failover pair's): taken below the
// kernel's ephemeral range, where no other program's outgoing connection can be handed it
// between a stop and the next start (a port picked by binding port 0 could be).
int freePort() {
  int low = 32768;
  std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
  range >> low;
  int from = low > 12000 ? 10000 : 1024;
  std::random_device rd;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    int port = from + int(rd() % unsigned(low - from));
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail(std::string("socket: ") + strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // as the servers bind
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(uint16_t(port));
    bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    close(fd);
    if (ok) return port;
  }
  fail("no free port below the ephemeral range");
}

}  // namespace

std::string buildDir() {
  const char* d = getenv("CAIRN_BUILD_DIR");
  if (d == nullptr) fail("CAIRN_BUILD_DIR is not set (run the tests with meson test)");
  return d;
}
std::string serverBin() {
  return buildDir() + "/objserver/cairn-server";
}
std::string mountBin() {
  return buildDir() + "/fusefs/cairn-mount";
}
std::string ctlBin() {
  return buildDir() + "/tools/cairnctl";
}

RunResult run(const std::vector<std::string>& argv) {
  TempDir tmp;
  std::string outPath = tmp.path() + "/out", errPath = tmp.path() + "/err";
  pid_t pid = fork();
  if (pid == 0) execChild(argv, outPath, errPath);
  int status = 0;
  waitpid(pid, &status, 0);
  RunResult r;
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = readFile(outPath);
  r.err = readFile(errPath);
  return r;
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/cairn-test-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) fail("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  nftw(
      path_.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return remove(p); },
      64, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

Child::Child(const std::vector<std::string>& argv, const std::string& stderrPath) {
  pid_ = fork();
  if (pid_ < 0) fail("fork failed");
  if (pid_ == 0) {
    setsid();
    std::string out = stderrPath.empty() ? "/dev/null" : stderrPath;
    execChild(argv, out, out);
  }
}

Child::~Child() {
  if (pid_ > 0 && status_ < 0) stop(SIGTERM, 15000);
}

bool Child::alive() {
  if (status_ >= 0) return false;
  int status;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

int Child::wait(int timeoutMs) {
  waitFor([this] { return !alive(); }, timeoutMs);
  return status_;
}

int Child::stop(int sig, int timeoutMs) {
  if (!alive()) return status_;
  kill(pid_, sig);
  if (wait(timeoutMs) < 0) {
    kill(pid_, SIGKILL);
    wait(5000);
  }
  return status_;
}

bool isMounted(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string f;
    for (int i = 0; i < 5 && fields >> f; ++i) {}
    if (f == path) return true;
  }
  return false;
}

int runAs(uid_t uid, gid_t gid, const std::vector<gid_t>& groups,
          const std::function<int()>& body) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(groups.size(), groups.data()) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
      _exit(99);
    }
    int e = body();
    (void)!write(pipefd[1], &e, sizeof(e));
    _exit(0);
  }
  close(pipefd[1]);
  int e = -1;
  (void)!read(pipefd[0], &e, sizeof(e));
  close(pipefd[0]);
  waitpid(pid, nullptr, 0);
  return e;
}

std::string readWhole(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return "<" + std::string(strerror(errno)) + ">";
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  close(fd);
  return out;
}

TestCluster* TwoClients::cluster_ = nullptr;
std::string* TwoClients::a_ = nullptr;
std::string* TwoClients::b_ = nullptr;

void TwoClients::startClients(TestCluster::Options options) {
  cluster_ = new TestCluster(std::move(options));
  a_ = new std::string(cluster_->mount());
  b_ = new std::string(cluster_->mount());
}

void TwoClients::TearDownTestSuite() {
  delete cluster_;
  delete a_;
  delete b_;
  cluster_ = nullptr;
}

void TwoClients::SetUp() {
  name_ = std::string("/") + ::testing::UnitTest::GetInstance()->current_test_info()->name();
}

std::string mountStats(const std::string& mnt) {
  auto r = run({ctlBin(), "--mount", mnt, "stats"});
  EXPECT_EQ(r.status, 0) << r.err;
  return r.out;
}

uint64_t mountGauge(const std::string& mnt, const std::string& name, bool required) {
  auto stats = mountStats(mnt);
  auto at = stats.find("\n" + name + " ");
  if (required) {
    EXPECT_NE(at, std::string::npos) << name << " in " << stats;
  }
  if (at == std::string::npos) return 0;
  return std::stoull(stats.substr(at + name.size() + 2));
}

uint64_t jsonNumber(const std::string& json, const std::string& key) {
  std::smatch m;
  std::regex re("\"" + key + "\":([0-9]+)");
  if (!std::regex_search(json, m, re)) fail("no field " + key + " in " + json);
  return std::stoull(m[1]);
}

TestCluster::TestCluster() : TestCluster(Options()) {}

std::string rawCredentials;

TestCluster::TestCluster(Options options) : options_(std::move(options)) {
  // Mount points live below; other users must be able to reach them (permission tests).
  chmod(dir().c_str(), 0755);
  if (options_.tls) {
    auto r = run({ctlBin(), "ca", "init", "--dir", dir() + "/tls/ca"});
    if (r.status != 0) fail("cairnctl ca init failed: " + r.err);
    issue("client", "testhost", "client");
    issue("admin", "tester", "admin");
    // cairnctl, as the tests run it, talks as the administrator; raw sessions as a client.
    setenv("CAIRN_TLS", credentials("admin").c_str(), 1);
    rawCredentials = credentials("client");
  } else {
    unsetenv("CAIRN_TLS");
    rawCredentials.clear();
  }
  std::string uuid = randomHex(16);
  servers_.resize(1 + options_.dataServers);
  for (int i = 0; i < int(servers_.size()); ++i) {
    auto& s = servers_[i];
    s.kind = i == 0 ? "meta" : "data";
    s.index = i == 0 ? 0 : i - 1;
    s.name = s.kind + std::to_string(s.index);
    s.dir = dir() + "/" + s.name;
    s.log = dir() + "/" + s.name + ".log";
    s.args = i == 0 ? options_.metaArgs : options_.dataArgs;
    std::vector<std::string> format = {serverBin(), "format", "--dir",   s.dir,
                                       "--kind",    s.kind,   "--fs",    "test",
                                       "--fs-uuid", uuid,     "--index", std::to_string(s.index)};
    if (i == 0) {
      format.push_back("--stripe-size");
      format.push_back(std::to_string(options_.stripeSize));
    }
    auto r = run(format);
    if (r.status != 0) fail("format failed: " + r.err);
  }
  if (options_.failover) {
    // Both of a pair must know each other's address before either starts.
    int n = int(servers_.size());
    servers_.resize(2 * n);
    for (int i = 0; i < n; ++i) {
      auto& b = servers_[n + i];
      auto& a = servers_[i];
      b.kind = a.kind;
      b.index = a.index;
      b.name = a.name + "-b";
      b.dir = a.dir;
      b.log = dir() + "/" + b.name + ".log";
      b.args = a.args;
      a.port = freePort();
      b.port = freePort();
      a.partner = "127.0.0.1:" + std::to_string(b.port);
      b.partner = "127.0.0.1:" + std::to_string(a.port);
    }
  }
  if (options_.tls) {
    for (auto& s : servers_) issue("server", s.name, s.name);
  }
  for (auto& s : servers_) start(s, {}, true);
  // Data servers register with the metadata server as they start.
  bool registered = waitFor(
      [this] {
        auto r = run({ctlBin(), "--server", metaAddress(), "status", "--json"});
        size_t found = 0;
        for (size_t at = 0; (at = r.out.find("\"kind\":\"data\"", at)) != std::string::npos; ++at) {
          ++found;
        }
        return r.status == 0 && found >= size_t(options_.dataServers);
      },
      10000);
  if (!registered) {
    dumpLogs();
    fail("data servers did not register");
  }
}

namespace {
std::string tail(const std::string& text, int lines) {
  size_t at = text.size();
  for (int n = 0; n <= lines && at > 0; ++n) {
    size_t nl = text.rfind('\n', at - 1);
    if (nl == std::string::npos) return text;
    at = nl;
  }
  return text.substr(at);
}
}  // namespace

void TestCluster::dumpLogs() {
  for (auto& s : servers_) {
    // A server that died says nothing in its log: its status tells how (128 + the signal).
    std::string state = "running";
    if (s.proc == nullptr) {
      state = "not started";
    } else if (!s.proc->alive()) {
      state = "exited with status " + std::to_string(s.proc->wait(0));
    }
    fprintf(stderr, "---- %s (%s; %s) ----%s%s\n", s.name.c_str(), s.log.c_str(), state.c_str(),
            tail(readFile(s.log), 25).c_str(), tail(readFile(s.log + ".stderr"), 5).c_str());
  }
  for (auto& m : mounts_) {
    fprintf(stderr, "---- mount %s ----%s%s\n", m.path.c_str(), tail(readFile(m.log), 25).c_str(),
            tail(readFile(m.log + ".stderr"), 5).c_str());
  }
}

std::string TestCluster::credentials(const std::string& who) const {
  return options_.tls ? dir() + "/tls/" + who : "";
}

std::string TestCluster::issue(const std::string& role, const std::string& name,
                               const std::string& as, const std::vector<std::string>& extra) {
  std::string out = dir() + "/tls/" + as;
  std::vector<std::string> argv = {ctlBin(),    "cert", "issue", "--ca", dir() + "/tls/ca",
                                   "--" + role, name,   "--out", out};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto r = run(argv);
  if (r.status != 0) fail("cairnctl cert issue failed: " + r.err);
  return out;
}

TestCluster::~TestCluster() {
  if (::testing::Test::HasFailure()) dumpLogs();
  for (auto& m : mounts_) {
    // A daemon a test stopped cannot answer the unmount.
    if (m.proc && m.proc->alive()) kill(m.proc->pid(), SIGCONT);
    if (isMounted(m.path)) {
      if (run({"/bin/fusermount3", "-u", m.path}).status != 0) {
        run({"/bin/fusermount3", "-uz", m.path});
      }
    }
    if (m.proc) m.proc->stop(SIGTERM, 5000);
  }
  for (auto it = servers_.rbegin(); it != servers_.rend(); ++it) {
    if (it->proc) it->proc->stop(SIGTERM, 10000);
  }
}

void TestCluster::start(Server& s, const std::vector<std::string>& extra, bool mustStart) {
  std::string portFile = s.dir + ".port";
  unlink(portFile.c_str());
  std::vector<std::string> argv = {
      serverBin(),   "serve",  "--dir",      s.dir,
      "--kind",      s.kind,   "--listen",   "127.0.0.1:" + std::to_string(s.port),
      "--port-file", portFile, "--log-file", s.log};
  if (s.kind == "data") {
    argv.push_back("--mgs");
    argv.push_back(metaAddresses());
  }
  if (!s.partner.empty()) {
    argv.push_back("--partner");
    argv.push_back(s.partner);
  }
  if (options_.tls) {
    argv.push_back("--tls");
    argv.push_back(credentials(s.name));
  }
  argv.insert(argv.end(), s.args.begin(), s.args.end());
  argv.insert(argv.end(), extra.begin(), extra.end());
  s.proc = std::make_unique<Child>(argv, s.log + ".stderr");
  bool up = waitFor([&] { return access(portFile.c_str(), F_OK) == 0 || !s.proc->alive(); }, 15000);
  if (!up || !s.proc->alive()) {
    if (mustStart) fail(s.name + " did not start: " + readFile(s.log + ".stderr"));
    return;
  }
  s.port = std::stoi(readFile(portFile));
  s.address = "127.0.0.1:" + std::to_string(s.port);
}

std::string TestCluster::mount(const std::string& extraOptions) {
  int n = int(mounts_.size());
  Mount m;
  m.path = dir() + "/mnt" + std::to_string(n);
  m.log = dir() + "/mount" + std::to_string(n) + ".log";
  mkdir(m.path.c_str(), 0755);
  std::string opts = "allow_other,default_permissions,log_file=" + m.log;
  if (options_.tls) opts += ",tls=" + credentials("client");
  if (!extraOptions.empty()) opts += "," + extraOptions;
  m.proc = std::make_unique<Child>(
      std::vector<std::string>{mountBin(), metaAddresses(), m.path, "-f", "-o", opts},
      m.log + ".stderr");
  if (!waitFor([&] { return isMounted(m.path) || !m.proc->alive(); }, 10000) ||
      !isMounted(m.path)) {
    fail("mount failed: " + readFile(m.log + ".stderr"));
  }
  auto path = m.path;
  mounts_.push_back(std::move(m));
  return path;
}

void TestCluster::unmount(const std::string& mountPoint) {
  for (auto& m : mounts_) {
    if (m.path != mountPoint) continue;
    if (run({"/bin/fusermount3", "-u", m.path}).status != 0) {
      run({"/bin/fusermount3", "-uz", m.path});
    }
    if (m.proc) m.proc->wait(5000);
  }
}

void TestCluster::killMount(int index) {
  auto& m = mounts_.at(index);
  if (m.proc) m.proc->stop(SIGKILL, 5000);
  run({"/bin/fusermount3", "-uz", m.path});
  unlink(statsSocketPath(m.path).cStr());  // a killed mount cannot remove its counters socket
}

void TestCluster::signalMount(int index, int sig) {
  auto& m = mounts_.at(index);
  if (m.proc) kill(m.proc->pid(), sig);
}

std::string TestCluster::mountLog(int index) const {
  return readFile(mounts_.at(index).log);
}

std::string TestCluster::serverLog(int server) const {
  return readFile(servers_.at(server).log);
}

int TestCluster::stopServer(int server, int sig) {
  auto& s = servers_.at(server);
  int status = s.proc ? s.proc->stop(sig) : -1;
  s.proc.reset();
  return status;
}

int TestCluster::shutdownServer(int server, RunResult* result) {
  auto& s = servers_.at(server);
  auto r = run({ctlBin(), "--server", s.address, "--timeout", "60", "shutdown"});
  if (result != nullptr) *result = r;
  if (r.status != 0) fail("cairnctl shutdown failed: " + r.err);
  int status = s.proc ? s.proc->wait(20000) : -1;
  s.proc.reset();
  return status;
}

pid_t TestCluster::mountPid(int index) const {
  auto& m = mounts_.at(index);
  return m.proc ? m.proc->pid() : -1;
}

bool TestCluster::startServer(int server, const std::vector<std::string>& extra) {
  auto& s = servers_.at(server);
  start(s, extra, false);
  return s.proc && waitFor([&] { return !s.proc->alive(); }, 300) == false;
}

void TestCluster::signalServer(int server, int sig) {
  auto& s = servers_.at(server);
  if (s.proc && s.proc->alive()) kill(s.proc->pid(), sig);
}

void TestCluster::stopAll() {
  for (int i = serverCount() - 1; i >= 0; --i) stopServer(i);
}

void TestCluster::startAll() {
  for (int i = 0; i < serverCount(); ++i) {
    if (!startServer(i)) fail("restart of server " + std::to_string(i) + " failed");
  }
}

void writeWhole(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
  ASSERT_EQ(write(fd, data.data(), data.size()), ssize_t(data.size())) << path;
  ASSERT_EQ(close(fd), 0) << path;
}

std::string pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  for (auto& c : s) {
    seed = seed * 1664525 + 1013904223;
    c = char(seed >> 24);
  }
  return s;
}

bool blockedCallEndsWith(int sig, const std::function<int()>& call) {
  pid_t child = fork();
  if (child == 0) {
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    if (sig != SIGKILL) sigaction(sig, &sa, nullptr);
    int rc = call();
    _exit(rc == -1 && errno == EINTR ? 0 : 1);
  }
  usleep(300 * 1000);
  kill(child, sig);
  int status = 0;
  if (!waitFor([&] { return waitpid(child, &status, WNOHANG) == child; }, 5000)) {
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    return false;
  }
  if (sig == SIGKILL) return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string TestCluster::metaAddresses() const {
  if (!options_.failover) return metaAddress();
  return metaAddress() + "," + servers_.at(partner(0)).address;
}

int TestCluster::partner(int server) const {
  if (!options_.failover) fail("no failover pairs in this cluster");
  int n = serverCount() / 2;
  return server < n ? server + n : server - n;
}

int TestCluster::serving(int server) {
  for (int i : {server, partner(server)}) {
    if (inState(i, "serving")) return i;
  }
  return -1;
}

bool TestCluster::inState(int server, const std::string& state) {
  auto r = run({ctlBin(), "--server", address(server), "--timeout", "2", "status", "--json"});
  return r.status == 0 && r.out.find("\"state\":\"" + state + "\"") != std::string::npos;
}

std::string TestCluster::status(int server) {
  auto r = run({ctlBin(), "--server", address(server), "status", "--json"});
  if (r.status != 0) fail("status failed: " + r.err);
  return r.out;
}

void cutConnections(pid_t pid, const std::string& address) {
  auto listing = run({"/usr/bin/ss", "-tnpH", "state", "established", "dst", address});
  std::istringstream lines(listing.out);
  std::string line;
  std::regex local(R"((\S+:\d+)\s+\S+:\d+\s+users:)");
  int cut = 0;
  while (std::getline(lines, line)) {
    if (!contains(line, "pid=" + std::to_string(pid) + ",")) continue;
    std::smatch m;
    if (!std::regex_search(line, m, local)) continue;
    run({"/usr/bin/ss", "-K", "-tn", "src", m[1].str(), "dst", address});
    ++cut;
  }
  ASSERT_GT(cut, 0) << "no connection of pid " << pid << " to " << address << ":\n" << listing.out;
}

std::string httpGet(const std::string& address, const std::string& path) {
  auto colon = address.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(uint16_t(std::stoi(address.substr(colon + 1))));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    if (fd >= 0) close(fd);
    return "<cannot connect>";
  }
  std::string request = "GET " + path + " HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
  if (write(fd, request.data(), request.size()) != ssize_t(request.size())) {
    close(fd);
    return "<cannot send>";
  }
  // Read until the body is complete (Content-Length): the server may keep the connection.
  std::string response;
  char buf[65536];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) {
    response.append(buf, size_t(n));
    auto end = response.find("\r\n\r\n");
    if (end == std::string::npos) continue;
    std::smatch m;
    auto head = response.substr(0, end);
    if (!std::regex_search(head, m, std::regex("[Cc]ontent-[Ll]ength: *([0-9]+)"))) continue;
    if (response.size() >= end + 4 + std::stoul(m[1].str())) break;
  }
  close(fd);
  return response;
}

std::string metricsAddress(TestCluster& cluster, int server) {
  std::smatch m;
  auto status = cluster.status(server);
  if (!std::regex_search(status, m, std::regex("\"metrics\":\"([^\"]+)\""))) return "";
  return m[1].str();
}

double metricValue(const std::string& text, const std::string& series) {
  auto at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

}  // namespace cairn::test
