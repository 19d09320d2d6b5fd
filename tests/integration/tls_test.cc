// Nobody gets in who does not belong: every connection to a server is mutual TLS with the
// cluster's CA, and administrative calls take an administrator's certificate. Each refusal is
// logged by the server with who tried what, and nothing is served to the refused peer.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <kj/async-io.h>

#include "rpc/tls_stream.h"
#include "rpc/transport.h"
#include "tests/integration/cluster.h"
#include "tests/integration/raw_session.h"

namespace cairn::test {
namespace {

std::string readAll(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// cairnctl with these credentials ("" : plain text).
RunResult ctl(TestCluster& cluster, const std::string& tls, std::vector<std::string> args,
              int server = 0) {
  std::vector<std::string> argv = {ctlBin(), "--server", cluster.address(server), "--timeout", "5"};
  if (tls.empty()) {
    argv.push_back("--insecure-plaintext");
  } else {
    argv.push_back("--tls");
    argv.push_back(tls);
  }
  argv.insert(argv.end(), args.begin(), args.end());
  // The explicit --tls wins over the administrator's CAIRN_TLS that TestCluster set.
  std::string saved = getenv("CAIRN_TLS") ? getenv("CAIRN_TLS") : "";
  unsetenv("CAIRN_TLS");
  auto r = run(argv);
  if (!saved.empty()) setenv("CAIRN_TLS", saved.c_str(), 1);
  return r;
}

bool logSays(TestCluster& cluster, int server, const std::string& what) {
  return waitFor([&] { return readAll(cluster.log(server)).find(what) != std::string::npos; },
                 5000);
}

TEST(Tls, APlainTextPeerIsRefusedAndLogged) {
  TestCluster cluster;
  for (int server = 0; server < cluster.serverCount(); ++server) {
    auto r = ctl(cluster, "", {"status"}, server);
    EXPECT_NE(r.status, 0) << r.out;
    EXPECT_EQ(r.out.find("serving"), std::string::npos);
    EXPECT_TRUE(logSays(cluster, server, "refused a connection from 127.0.0.1:"))
        << readAll(cluster.log(server));
    EXPECT_TRUE(logSays(cluster, server, "it does not speak TLS"));
  }
  // The administrator still gets in.
  EXPECT_EQ(ctl(cluster, cluster.credentials("admin"), {"status"}).status, 0);
}

TEST(Tls, ACertificateOfAnotherCaIsRefused) {
  TestCluster cluster;
  TempDir other;
  ASSERT_EQ(run({ctlBin(), "ca", "init", "--dir", other.path() + "/ca"}).status, 0);
  ASSERT_EQ(run({ctlBin(), "cert", "issue", "--ca", other.path() + "/ca", "--admin", "mallory",
                 "--out", other.path() + "/mallory"})
                .status,
            0);
  auto r = ctl(cluster, other.path() + "/mallory", {"shutdown"});
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(logSays(cluster, 0, "refused a connection")) << readAll(cluster.log(0));
  // Nor does a client of that CA mount: the mount command fails, nothing is mounted.
  ASSERT_EQ(run({ctlBin(), "cert", "issue", "--ca", other.path() + "/ca", "--client", "intruder",
                 "--out", other.path() + "/intruder"})
                .status,
            0);
  std::string mnt = other.path() + "/mnt";
  mkdir(mnt.c_str(), 0755);
  auto refused = run({mountBin(), cluster.metaAddress(), mnt, "-f", "-o",
                      "tls=" + other.path() + "/intruder,log_file=" + other.path() + "/mount.log"});
  EXPECT_EQ(refused.status, 1);
  EXPECT_NE(refused.err.find("cairn-mount: refused"), std::string::npos) << refused.err;
  EXPECT_FALSE(isMounted(mnt));
  if (isMounted(mnt)) run({"/bin/fusermount3", "-uz", mnt});
  EXPECT_TRUE(logSays(cluster, 0, "refused a connection")) << readAll(cluster.log(0));
  EXPECT_EQ(readAll(cluster.log(0)).find("intruder"), std::string::npos);
  EXPECT_TRUE(ctl(cluster, cluster.credentials("admin"), {"status"}).out.find("serving") !=
              std::string::npos);
}

TEST(Tls, AnExpiredCertificateIsRefused) {
  TestCluster cluster;
  // Valid for one day, ten days ago.
  auto expired =
      cluster.issue("admin", "old-admin", "old-admin", {"--backdate", "10", "--days", "1"});
  auto r = ctl(cluster, expired, {"shutdown"});
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(logSays(cluster, 0, "refused a connection")) << readAll(cluster.log(0));
  // OpenSSL's own verdict on the certificate is in the log line.
  EXPECT_NE(readAll(cluster.log(0)).find("certificate has expired"), std::string::npos)
      << readAll(cluster.log(0));
  EXPECT_EQ(ctl(cluster, cluster.credentials("admin"), {"status"}).status, 0);
}

TEST(Tls, AClientCertificateCannotAdministerAServer) {
  TestCluster::Options options;
  options.metaArgs = {"--test-replay-barrier"};
  TestCluster cluster(options);
  auto client = cluster.credentials("client");
  EXPECT_EQ(ctl(cluster, client, {"status"}).status, 0);  // looking is allowed
  for (auto call : {std::vector<std::string>{"shutdown"},
                    {"replay-barrier"},
                    {"evict", std::string(32, '0')},
                    {"restart", "--bin", serverBin()}}) {
    auto r = ctl(cluster, client, call);
    EXPECT_NE(r.status, 0) << call[0];
    EXPECT_NE(r.err.find("permission denied"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("an admin certificate"), std::string::npos) << r.err;
  }
  EXPECT_TRUE(logSays(cluster, 0, "refused shutdown to client testhost"))
      << readAll(cluster.log(0));
  EXPECT_TRUE(logSays(cluster, 0, "refused restart to client testhost"));
  EXPECT_TRUE(logSays(cluster, 0, "refused evict to client testhost"));
  // Still serving, still the same process.
  EXPECT_NE(ctl(cluster, cluster.credentials("admin"), {"status"}).out.find("serving"),
            std::string::npos);
  // A data server's certificate is no administrator's either.
  auto r = ctl(cluster, cluster.credentials("data0"), {"shutdown"});
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(logSays(cluster, 0, "refused shutdown to server data0"));
}

bool mountLogSays(TestCluster& cluster, const std::string& what) {
  return cluster.mountLog(0).find(what) != std::string::npos;
}

TEST(Tls, AnAdministratorEvictsAClient) {
  TestCluster cluster;
  auto mnt = cluster.mount();
  writeWhole(mnt + "/f", "kept");
  int fd = open((mnt + "/f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  auto status = cluster.status(0);
  auto at = status.find("\"uuid\":\"");
  ASSERT_NE(at, std::string::npos) << status;
  auto uuid = status.substr(at + 8, 32);
  auto r = ctl(cluster, cluster.credentials("admin"), {"evict", uuid});
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find(cluster.metaAddress() + ": evicted"), std::string::npos) << r.out;
  EXPECT_TRUE(logSays(cluster, 0, "evicting client " + uuid)) << readAll(cluster.log(0));
  EXPECT_TRUE(logSays(cluster, 0, "evicted by admin tester")) << readAll(cluster.log(0));
  // Told at once, without a request of its own (LockCallback.evicted, by every server that
  // had a session), it drops what it cached under its locks: the old descriptor fails, new
  // opens work.
  EXPECT_TRUE(
      waitFor([&] { return mountLogSays(cluster, "evicted by the metadata server"); }, 10000))
      << cluster.mountLog(0);
  // By each data target: a write before the last of them told it would go on a session that
  // target has ended, and be lost (EIO at close).
  for (auto target : {"evicted by data target 0", "evicted by data target 1"}) {
    EXPECT_TRUE(waitFor([&] { return mountLogSays(cluster, target); }, 10000))
        << cluster.mountLog(0);
  }
  char byte;
  EXPECT_EQ(pread(fd, &byte, 1, 0), -1);
  EXPECT_EQ(errno, EIO);
  close(fd);
  // A file opened after the eviction works (direct reads: past the kernel's pages, from a data
  // server whose session it never used).
  int again = open((mnt + "/f").c_str(), O_RDONLY | O_DIRECT);
  ASSERT_GE(again, 0);
  alignas(4096) static char buf[4096];
  EXPECT_EQ(pread(again, buf, sizeof buf, 0), 4) << strerror(errno);
  EXPECT_EQ(std::string(buf, 4), "kept");
  EXPECT_EQ(pread(again, buf, sizeof buf, 0), 4) << strerror(errno);
  close(again);
  writeWhole(mnt + "/g", "after");
  EXPECT_EQ(readWhole(mnt + "/f"), "kept");
  EXPECT_EQ(readWhole(mnt + "/g"), "after");
  // Evicting it again finds no session.
  EXPECT_NE(ctl(cluster, cluster.credentials("admin"), {"evict", std::string(32, 'f')}).status, 0);
}

TEST(Tls, OnlyAllowedClientsMount) {
  TestCluster::Options options;
  options.metaArgs = {"--allow-client", "testhost"};
  TestCluster cluster(options);
  auto mnt = cluster.mount();  // testhost: allowed
  std::ofstream(mnt + "/hello") << "hi";
  EXPECT_EQ(readAll(mnt + "/hello"), "hi");
  // Another client certificate of the same CA is not on the list: its session is refused.
  auto other = cluster.issue("client", "elsewhere", "elsewhere");
  auto io = kj::setupAsyncIo();
  rawCredentials = other;
  EXPECT_ANY_THROW(connectRaw(io, cluster.metaAddress(), 5, kj::heap<rpc::LockCallback::Server>()));
  rawCredentials = cluster.credentials("client");
  EXPECT_TRUE(logSays(cluster, 0, "refused a client session (mount) to client elsewhere"))
      << readAll(cluster.log(0));
  // A mount with that certificate fails, saying why; nothing is mounted.
  auto refusedMount = cluster.dir() + "/refused";
  mkdir(refusedMount.c_str(), 0755);
  auto refused = run({mountBin(), cluster.metaAddress(), refusedMount, "-f", "-o",
                      "tls=" + other + ",log_file=" + refusedMount + ".log"});
  EXPECT_EQ(refused.status, 1);
  EXPECT_NE(refused.err.find("refused: " + cluster.metaAddress() +
                             ": remote exception: permission denied"),
            std::string::npos)
      << refused.err;
  EXPECT_FALSE(isMounted(refusedMount));
  if (isMounted(refusedMount)) run({"/bin/fusermount3", "-uz", refusedMount});
}

// Another CA in `dir`/ca, and a client certificate of it in `dir`/x.
void anotherCa(const std::string& dir) {
  ASSERT_EQ(run({ctlBin(), "ca", "init", "--dir", dir + "/ca"}).status, 0);
  ASSERT_EQ(
      run({ctlBin(), "cert", "issue", "--ca", dir + "/ca", "--client", "x", "--out", dir + "/x"})
          .status,
      0);
}

// A lost key: the certificate goes on the CA's revocation list, the list beside ca.crt in every
// server's credentials, and the servers restart one at a time. The revoked client is refused
// from then on and told why; the other clients carry on through the restarts.
TEST(Tls, ARevokedCertificateIsRefusedOnceTheServersRestart) {
  TestCluster cluster;
  auto mnt = cluster.mount();
  std::ofstream(mnt + "/kept") << "kept";
  auto lost = cluster.issue("client", "laptop", "laptop");
  auto ca = cluster.dir() + "/tls/ca";
  auto r = run({ctlBin(), "cert", "revoke", "--ca", ca, lost + "/cert.crt"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("revoked client:laptop"), std::string::npos) << r.out;
  // Again: still on the list once; and only this CA's certificates are taken.
  ASSERT_EQ(run({ctlBin(), "cert", "revoke", "--ca", ca, lost + "/cert.crt"}).status, 0);
  TempDir other;
  ASSERT_NO_FATAL_FAILURE(anotherCa(other.path()));
  auto foreign = run({ctlBin(), "cert", "revoke", "--ca", ca, other.path() + "/x/cert.crt"});
  EXPECT_NE(foreign.status, 0);
  EXPECT_NE(foreign.err.find("not signed by this CA"), std::string::npos) << foreign.err;
  // Credentials issued from now on carry the list.
  auto later = cluster.issue("client", "later", "later");
  EXPECT_EQ(access((later + "/crl.pem").c_str(), F_OK), 0);

  const char* names[] = {"meta0", "data0", "data1"};
  ASSERT_EQ(cluster.serverCount(), 3);
  for (int i = 0; i < cluster.serverCount(); ++i) {
    std::filesystem::copy_file(ca + "/crl.pem", cluster.credentials(names[i]) + "/crl.pem");
    ASSERT_EQ(cluster.shutdownServer(i), 0);
    ASSERT_TRUE(cluster.startServer(i));
  }
  EXPECT_TRUE(logSays(cluster, 0, "crl.pem are refused")) << readAll(cluster.log(0));
  // The revoked client: refused, and the mount says why; nothing is mounted.
  std::string refusedMount = cluster.dir() + "/refused";
  mkdir(refusedMount.c_str(), 0755);
  // (Bounded: a mount that took the refusal for an outage would wait for ever.)
  auto refused = run({"/usr/bin/timeout", "30", mountBin(), cluster.metaAddress(), refusedMount,
                      "-f", "-o", "tls=" + lost + ",log_file=" + refusedMount + ".log"});
  EXPECT_EQ(refused.status, 1);
  EXPECT_NE(refused.err.find("alert certificate revoked"), std::string::npos)
      << refused.err << readAll(refusedMount + ".log");
  EXPECT_FALSE(isMounted(refusedMount));
  if (isMounted(refusedMount)) run({"/bin/fusermount3", "-uz", refusedMount});
  EXPECT_TRUE(logSays(cluster, 0, "certificate revoked")) << readAll(cluster.log(0));
  // The others: the mount that was there all along, and one with the credentials issued since.
  EXPECT_EQ(readAll(mnt + "/kept"), "kept");
  auto io = kj::setupAsyncIo();
  rawCredentials = later;
  EXPECT_NO_THROW(connectRaw(io, cluster.metaAddress(), 5, kj::heap<rpc::LockCallback::Server>()));
  rawCredentials = cluster.credentials("client");
}

// Puts `list` (a crl.pem) beside ca.crt in server `name`'s credentials as an administrator
// would: whole, by a rename.
void installList(TestCluster& cluster, const std::string& name, const std::string& list) {
  auto dir = cluster.credentials(name);
  std::filesystem::copy_file(list, dir + "/crl.pem.new",
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::rename(dir + "/crl.pem.new", dir + "/crl.pem");
}

// The same lost key while everything runs: the servers read the new list within seconds, close
// the revoked client's connections, evict it (its locks go at once: it is not coming back) and
// refuse its reconnects; nobody restarts, and the other clients notice nothing. A list that
// cannot be used (another CA's) is said so, and the one in use stays.
TEST(Tls, ARevokedCertificateIsCutOffWithoutARestart) {
  TestCluster cluster;
  auto mnt = cluster.mount();
  auto lost = cluster.issue("client", "laptop", "laptop");
  auto laptop = cluster.mount("tls=" + lost);
  std::ofstream(laptop + "/from-laptop") << "written before";
  EXPECT_EQ(readAll(mnt + "/from-laptop"), "written before");

  auto ca = cluster.dir() + "/tls/ca";
  ASSERT_EQ(run({ctlBin(), "cert", "revoke", "--ca", ca, lost + "/cert.crt"}).status, 0);
  const char* names[] = {"meta0", "data0", "data1"};
  ASSERT_EQ(cluster.serverCount(), 3);
  for (auto name : names) installList(cluster, name, ca + "/crl.pem");
  for (int i = 0; i < cluster.serverCount(); ++i) {
    EXPECT_TRUE(logSays(cluster, i, "revoked certificates on it now")) << readAll(cluster.log(i));
  }
  EXPECT_TRUE(logSays(cluster, 0, "closing the connection of client laptop"))
      << readAll(cluster.log(0));
  EXPECT_TRUE(logSays(cluster, 0, "its certificate was revoked")) << readAll(cluster.log(0));
  // The laptop's mount reconnects and is refused, and says why.
  EXPECT_TRUE(waitFor([&] { return contains(cluster.mountLog(1), "certificate revoked"); }, 10000))
      << cluster.mountLog(1);
  {
    auto io = kj::setupAsyncIo();
    rawCredentials = lost;
    EXPECT_ANY_THROW(
        connectRaw(io, cluster.metaAddress(), 7, kj::heap<rpc::LockCallback::Server>()));
    rawCredentials = cluster.credentials("client");
  }
  // The other client carries on, on the connections it had, in the directory the laptop wrote.
  EXPECT_EQ(readAll(mnt + "/from-laptop"), "written before");
  std::ofstream(mnt + "/after") << "after";
  EXPECT_EQ(readAll(mnt + "/after"), "after");
  EXPECT_FALSE(contains(cluster.mountLog(0), "refused us"));

  // Another CA's list on the metadata server: refused with a reason, the list before stays.
  TempDir other;
  ASSERT_NO_FATAL_FAILURE(anotherCa(other.path()));
  ASSERT_EQ(
      run({ctlBin(), "cert", "revoke", "--ca", other.path() + "/ca", other.path() + "/x/cert.crt"})
          .status,
      0);
  installList(cluster, "meta0", other.path() + "/ca/crl.pem");
  EXPECT_TRUE(logSays(cluster, 0, "not signed by this cluster's CA")) << readAll(cluster.log(0));
  {
    auto io = kj::setupAsyncIo();
    rawCredentials = lost;
    EXPECT_ANY_THROW(
        connectRaw(io, cluster.metaAddress(), 8, kj::heap<rpc::LockCallback::Server>()));
    rawCredentials = cluster.credentials("client");
    EXPECT_NO_THROW(
        connectRaw(io, cluster.metaAddress(), 9, kj::heap<rpc::LockCallback::Server>()));
  }
  EXPECT_EQ(readAll(mnt + "/after"), "after");
}

TEST(Tls, AServerBeyondLoopbackNeedsCredentials) {
  TempDir tmp;
  auto d = tmp.path() + "/meta";
  ASSERT_EQ(run({serverBin(), "format", "--dir", d, "--kind", "meta", "--fs", "x"}).status, 0);
  auto r = run({serverBin(), "serve", "--dir", d, "--kind", "meta", "--listen", "0.0.0.0:0"});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("needs --tls DIR"), std::string::npos) << r.err;
}

// A CA with a server's and a client's credentials, and an expired client's, for connections made
// in the test process itself.
struct Credentials {
  TempDir dir;
  Credentials() {
    auto ca = dir.path() + "/ca";
    for (auto& argv : std::vector<std::vector<std::string>>{
             {"ca", "init", "--dir", ca},
             {"cert", "issue", "--ca", ca, "--server", "data0", "--out", dir.path() + "/server"},
             {"cert", "issue", "--ca", ca, "--client", "c1", "--out", dir.path() + "/client"},
             {"cert", "issue", "--ca", ca, "--client", "old", "--out", dir.path() + "/expired",
              "--backdate", "10", "--days", "1"},
         }) {
      argv.insert(argv.begin(), ctlBin());
      auto r = run(argv);
      EXPECT_EQ(r.status, 0) << r.err;
    }
  }
  // `older`: as a release before sealed records.
  kj::Own<SslContext> context(const std::string& who, bool trustedNetwork, bool older = false) {
    auto c = TlsCredentials::load((dir.path() + "/" + who).c_str(), nullptr);
    auto context = kj::heap<SslContext>(c.caPem, c.certPem, c.keyPem, trustedNetwork);
    if (older) context->withoutSealedRecords();
    return context;
  }
};

// What a relay in between does at one byte of a direction: changes it, or closes the direction
// before the piece it read that byte in.
struct Fault {
  size_t at = SIZE_MAX;
  bool cut = false;
};

// Copies one direction of a connection and keeps what went through; does `fault` on the way.
kj::Promise<void> tap(kj::AsyncIoStream& from, kj::AsyncIoStream& to, std::string& seen,
                      kj::ArrayPtr<kj::byte> buffer, Fault fault = {}) {
  return from.tryRead(buffer.begin(), 1, buffer.size())
      .then([&from, &to, &seen, buffer, fault](size_t n) mutable -> kj::Promise<void> {
        if (n == 0) {
          to.shutdownWrite();
          return kj::READY_NOW;
        }
        bool here = fault.at >= seen.size() && fault.at < seen.size() + n;
        if (here && fault.cut) {
          to.shutdownWrite();
          return kj::READY_NOW;
        }
        if (here) buffer[fault.at - seen.size()] ^= 0x10;
        seen.append(reinterpret_cast<const char*>(buffer.begin()), n);
        return to.write(buffer.begin(), n).then([&from, &to, &seen, buffer, fault]() {
          return tap(from, to, seen, buffer, fault);
        });
      });
}

// Reads `size` bytes in reads of changing sizes, from one byte to most of a MiB: a record is
// then handed out in parts as well as opened whole into the reader's buffer.
kj::Promise<void> readInSteps(kj::AsyncIoStream& stream, kj::byte* into, size_t size,
                              size_t step = 1) {
  if (size == 0) return kj::READY_NOW;
  size_t n = kj::min(size, step);
  return stream.read(into, n).then([&stream, into, size, n, step]() {
    return readInSteps(stream, into + n, size - n, step * 7 % 1000003 + 1);
  });
}

struct Exchange {
  bool clientEncrypted = true, serverEncrypted = true;
  bool clientSealed = false, serverSealed = false;
  std::string up, down;                        // what the client sent, what the server sent
  std::string clientToServer, serverToClient;  // what a listener in between saw
  bool intact = false;                         // both ends got what the other sent
  std::string error;                           // why the client's connection failed
};

// A client connects through a tap to a server, sends 3 MiB (in pieces of several sizes) and
// reads 9 MiB back (written whole, read in steps of many sizes). The tap may do `downFault` to
// what the server sends.
// `olderClient`, `olderServer`: that end as a release before sealed records.
Exchange exchange(Credentials& creds, const std::string& client, bool clientTrusted,
                  bool serverTrusted, Fault downFault = {}, bool olderClient = false,
                  bool olderServer = false) {
  Exchange result;
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  auto& network = io.provider->getNetwork();
  auto serverTls = creds.context("server", serverTrusted, olderServer);
  auto clientTls = creds.context(client, clientTrusted, olderClient);
  auto serverPort = network.parseAddress("127.0.0.1", 0).wait(ws)->listen();
  auto tapPort = network.parseAddress("127.0.0.1", 0).wait(ws)->listen();

  result.up = pattern(3 << 20, 1);
  result.down = pattern(9 << 20, 2);
  const std::string &up = result.up, &down = result.down;
  std::string gotUp(up.size(), '\0'), gotDown(down.size(), '\0');

  auto tapIn = tapPort->accept();
  auto tapOut = network.parseAddress("127.0.0.1", serverPort->getPort()).wait(ws)->connect();
  auto serverSide = serverPort->accept().then([&](kj::Own<kj::AsyncIoStream> raw) {
    return serverTls->accept(io.unixEventPort, kj::mv(raw));
  });
  auto clientSide =
      network.parseAddress("127.0.0.1", tapPort->getPort())
          .wait(ws)
          ->connect()
          .then([&](kj::Own<kj::AsyncIoStream> raw) {
            return clientTls->connect(io.unixEventPort, kj::mv(raw), SERVER_HOST_NAME);
          });
  auto a = tapIn.wait(ws);
  auto b = tapOut.wait(ws);
  auto bufferA = kj::heapArray<kj::byte>(65536), bufferB = kj::heapArray<kj::byte>(65536);
  auto tapping = kj::joinPromises(kj::arr(tap(*a, *b, result.clientToServer, bufferA),
                                          tap(*b, *a, result.serverToClient, bufferB, downFault)))
                     .eagerlyEvaluate([](kj::Exception&&) {});

  kj::Own<SslContext::Stream> c, s;
  auto server = serverSide
                    .then([&](kj::Own<SslContext::Stream> stream) {
                      s = kj::mv(stream);
                      return s->read(&gotUp[0], gotUp.size()).then([&]() {
                        return s->write(down.data(), down.size());
                      });
                    })
                    .eagerlyEvaluate([&](kj::Exception&& e) {
                      result.error = kj::str("server: ", e.getDescription()).cStr();
                    });
  auto& timer = io.provider->getTimer();
  try {
    // Bounded, so that a connection that goes wrong fails the test instead of hanging it.
    c = timer.timeoutAfter(10 * kj::SECONDS, kj::mv(clientSide)).wait(ws);
    // Pieces small and large, as Cap'n Proto writes a message.
    auto bytes = kj::arrayPtr(reinterpret_cast<const kj::byte*>(up.data()), up.size());
    kj::ArrayPtr<const kj::byte> pieces[] = {bytes.slice(0, 8), bytes.slice(8, 100),
                                             bytes.slice(100, 1 << 20),
                                             bytes.slice(1 << 20, up.size())};
    auto sending = c->write(kj::arrayPtr(pieces, 4));
    timer
        .timeoutAfter(10 * kj::SECONDS,
                      readInSteps(*c, reinterpret_cast<kj::byte*>(&gotDown[0]), gotDown.size()))
        .wait(ws);
    sending.wait(ws);
    timer.timeoutAfter(10 * kj::SECONDS, kj::mv(server)).wait(ws);
  } catch (kj::Exception& e) {
    result.error = e.getDescription().cStr();
  }
  if (!result.error.empty()) return result;
  result.intact = gotUp == up && gotDown == down;
  result.clientEncrypted = c->encrypted();
  result.serverEncrypted = s->encrypted();
  result.clientSealed = c->sealed();
  result.serverSealed = s->sealed();
  return result;
}

bool sawIt(const std::string& traffic, const std::string& sent) {
  return traffic.find(sent.substr(1 << 20, 4096)) != std::string::npos;
}

// Both ends encrypted, in sealed records or in TLS's own, and nothing of the data seen between.
void expectEncrypted(const Exchange& e, bool sealed) {
  ASSERT_EQ(e.error, "");
  EXPECT_TRUE(e.intact);
  EXPECT_TRUE(e.clientEncrypted);
  EXPECT_TRUE(e.serverEncrypted);
  EXPECT_EQ(e.clientSealed, sealed);
  EXPECT_EQ(e.serverSealed, sealed);
  EXPECT_FALSE(sawIt(e.clientToServer, e.up));
  EXPECT_FALSE(sawIt(e.serverToClient, e.down));
  EXPECT_GT(e.clientToServer.size(), e.up.size());
}

TEST(Tls, OnATrustedNetworkTheDataGoesUnencryptedAfterTheHandshake) {
  Credentials creds;
  // Both ends on a trusted network: authenticated, then in the clear both ways.
  auto both = exchange(creds, "client", true, true);
  ASSERT_EQ(both.error, "");
  EXPECT_TRUE(both.intact);
  EXPECT_FALSE(both.clientEncrypted);
  EXPECT_FALSE(both.serverEncrypted);
  EXPECT_TRUE(sawIt(both.clientToServer, both.up));
  EXPECT_TRUE(sawIt(both.serverToClient, both.down));
  // Either end alone keeps the connection encrypted (in sealed records): nothing of the data
  // shows in between.
  for (auto [clientTrusted, serverTrusted] :
       {std::pair{true, false}, {false, true}, {false, false}}) {
    SCOPED_TRACE(kj::str("client trusted ", clientTrusted, ", server ", serverTrusted).cStr());
    expectEncrypted(exchange(creds, "client", clientTrusted, serverTrusted), true);
  }
}

TEST(Tls, AByteChangedOnTheWayBreaksTheConnectionInsteadOfReachingTheReader) {
  Credentials creds;
  // Well past the handshake: inside the data the server sends (sealed records).
  auto changed = exchange(creds, "client", false, false, Fault{5 << 20, false});
  EXPECT_FALSE(changed.intact);
  EXPECT_NE(changed.error.find("failed its check"), std::string::npos) << changed.error;
  // A connection closed in the middle of a record is an error too, not a shorter stream.
  auto cut = exchange(creds, "client", false, false, Fault{5 << 20, true});
  EXPECT_FALSE(cut.intact);
  EXPECT_NE(cut.error.find("ended inside a sealed record"), std::string::npos) << cut.error;
}

TEST(Tls, WithAnEndOfAReleaseBeforeSealedRecordsTheBytesStayInTlsRecords) {
  Credentials creds;
  for (auto [olderClient, olderServer] : {std::pair{true, false}, {false, true}}) {
    SCOPED_TRACE(olderClient ? "the client older" : "the server older");
    expectEncrypted(exchange(creds, "client", false, false, {}, olderClient, olderServer), false);
    // A trusted network is still agreed on with it.
    auto trusted = exchange(creds, "client", true, true, {}, olderClient, olderServer);
    ASSERT_EQ(trusted.error, "") << olderClient;
    EXPECT_TRUE(trusted.intact);
    EXPECT_FALSE(trusted.clientEncrypted);
    EXPECT_FALSE(trusted.serverEncrypted);
  }
}

TEST(Tls, OnATrustedNetworkARefusedClientStillLearnsWhy) {
  Credentials creds;
  auto refused = exchange(creds, "expired", true, true);
  EXPECT_FALSE(refused.intact);
  // TLS's own alert, not a garbled message: the connection leaves TLS only after the server
  // has accepted the client's certificate (with TLS 1.3 the client is done shaking hands first).
  EXPECT_NE(refused.error.find("alert certificate expired"), std::string::npos) << refused.error;
  EXPECT_EQ(refused.clientToServer.find(pattern(3 << 20, 1).substr(0, 4096)), std::string::npos);
}

// How many connections a mount's log says it made over this wire.
size_t connections(const std::string& log, const std::string& wire) {
  size_t n = 0;
  for (size_t at = 0; (at = log.find(", " + wire + ")", at)) != std::string::npos; ++at) ++n;
  return n;
}

TEST(Tls, ATrustedNetworkClusterServesAndSurvivesARestart) {
  TestCluster::Options options;
  options.metaArgs = {"--trusted-network"};
  options.dataArgs = {"--trusted-network"};
  TestCluster cluster(options);
  auto trusted = cluster.mount("trusted_network");
  auto encrypted = cluster.mount();
  auto data = pattern(5 << 20, 7);
  writeWhole(trusted + "/f", data);
  EXPECT_EQ(readWhole(encrypted + "/f"), data);
  // The mount that asked goes unencrypted with every server; the other stays encrypted.
  EXPECT_EQ(connections(cluster.mountLog(0), "unencrypted after TLS authentication"), 3u)
      << cluster.mountLog(0);
  EXPECT_EQ(connections(cluster.mountLog(1), "sealed after TLS authentication"), 3u)
      << cluster.mountLog(1);
  // Servers among themselves too; and the servers say which clients are unencrypted.
  EXPECT_TRUE(logSays(cluster, 1, "unencrypted after TLS authentication)"));
  EXPECT_TRUE(logSays(cluster, 0, "as client testhost (127.0.0.1:"));
  EXPECT_TRUE(logSays(cluster, 0, "), unencrypted")) << readAll(cluster.log(0));
  // A data server restarted through a controlled shutdown: the file is still whole, and the
  // reconnection is unencrypted again.
  EXPECT_EQ(cluster.shutdownServer(1), 0);
  ASSERT_TRUE(cluster.startServer(1));
  auto more = pattern(3 << 20, 8);
  writeWhole(trusted + "/g", more);
  EXPECT_EQ(readWhole(trusted + "/f"), data);
  EXPECT_EQ(readWhole(encrypted + "/g"), more);
  EXPECT_TRUE(waitFor(
      [&] { return connections(cluster.mountLog(0), "unencrypted after TLS authentication") >= 4; },
      5000))
      << cluster.mountLog(0);
  // It takes the certificates: without them the option is refused.
  auto r = run({mountBin(), cluster.metaAddress(), cluster.dir(), "-f", "-o", "trusted_network"});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("trusted_network needs tls=DIR"), std::string::npos) << r.err;
}

TEST(Tls, AClusterMovesToATrustedNetworkOneServerAtATime) {
  TestCluster cluster;  // encrypted
  auto trusted = cluster.mount("trusted_network");
  auto encrypted = cluster.mount();
  auto data = pattern(3 << 20, 11);
  writeWhole(trusted + "/f", data);
  EXPECT_EQ(readWhole(encrypted + "/f"), data);
  // Only the mount asks: every connection stays encrypted.
  EXPECT_EQ(connections(cluster.mountLog(0), "sealed after TLS authentication"), 3u)
      << cluster.mountLog(0);
  const std::string plain = "unencrypted after TLS authentication";
  // One data server restarted on a trusted network: the mount that asks reconnects to it
  // unencrypted, the other one encrypted, and neither notices otherwise.
  EXPECT_EQ(cluster.shutdownServer(1), 0);
  ASSERT_TRUE(cluster.startServer(1, {"--trusted-network"}));
  auto more = pattern(3 << 20, 12);
  writeWhole(encrypted + "/g", more);
  EXPECT_EQ(readWhole(trusted + "/g"), more);
  EXPECT_EQ(readWhole(trusted + "/f"), data);
  EXPECT_TRUE(waitFor([&] { return connections(cluster.mountLog(0), plain) == 1; }, 5000))
      << cluster.mountLog(0);
  EXPECT_EQ(connections(cluster.mountLog(1), plain), 0u) << cluster.mountLog(1);
  // Then the metadata server: the data server on a trusted network reaches it unencrypted too.
  EXPECT_EQ(cluster.shutdownServer(0), 0);
  ASSERT_TRUE(cluster.startServer(0, {"--trusted-network"}));
  EXPECT_EQ(readWhole(encrypted + "/f"), data);
  writeWhole(trusted + "/h", data);
  EXPECT_EQ(readWhole(encrypted + "/h"), data);
  EXPECT_TRUE(waitFor([&] { return connections(cluster.mountLog(0), plain) == 2; }, 5000))
      << cluster.mountLog(0);
  EXPECT_EQ(connections(cluster.mountLog(1), plain), 0u);
  EXPECT_TRUE(waitFor([&] { return connections(readAll(cluster.log(1)), plain) >= 1; }, 5000))
      << readAll(cluster.log(1));
  EXPECT_EQ(connections(readAll(cluster.log(2)), plain), 0u);  // not on a trusted network
}

}  // namespace
}  // namespace cairn::test
