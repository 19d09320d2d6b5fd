#include "rpc/transport.h"

#include <capnp/rpc-twoparty.h>
#include <kj/debug.h>
#include <kj/filesystem.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <cstring>

namespace cairn {

namespace {

// A handshake that has not finished by then is dropped: a peer that connects and says nothing
// must not hold a connection open forever.
constexpr kj::Duration HANDSHAKE_LIMIT = 10 * kj::SECONDS;

kj::Maybe<kj::String> tryReadText(kj::StringPtr dir, kj::StringPtr file) {
  auto fs = kj::newDiskFilesystem();
  KJ_IF_MAYBE (f, fs->getRoot().tryOpenFile(fs->getCurrentPath().eval(kj::str(dir, "/", file)))) {
    return (*f)->readAllText();
  }
  return nullptr;
}

kj::String readText(kj::StringPtr dir, kj::StringPtr file) {
  KJ_IF_MAYBE (text, tryReadText(dir, file)) {
    return kj::mv(*text);
  }
  KJ_FAIL_REQUIRE("TLS credentials: cannot read this file (cairnctl cert issue writes it)",
                  kj::str(dir, "/", file));
}

// The common name of a PEM certificate, and whether it is in date now.
kj::String commonNameOf(kj::StringPtr pem, kj::StringPtr path, bool* inDate) {
  BIO* bio = BIO_new_mem_buf(pem.begin(), int(pem.size()));
  KJ_ASSERT(bio != nullptr);
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  KJ_REQUIRE(cert != nullptr, "TLS credentials: not a PEM certificate", path);
  KJ_DEFER(X509_free(cert));
  char cn[256] = {};
  int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
  KJ_REQUIRE(n > 0, "TLS credentials: the certificate has no common name", path);
  *inDate = X509_cmp_current_time(X509_get0_notBefore(cert)) < 0 &&
            X509_cmp_current_time(X509_get0_notAfter(cert)) > 0;
  return kj::heapString(cn, size_t(n));
}

// OpenSSL's reason, and what usually causes it: the peer is told nothing, the log says it all.
kj::String explainRefusal(const kj::Exception& e) {
  kj::StringPtr d = e.getDescription();
  auto has = [&](kj::StringPtr what) { return strstr(d.cStr(), what.cStr()) != nullptr; };
  kj::StringPtr why = "";
  if (has("certificate verify failed")) {
    why =
        " (its certificate is not signed by this cluster's CA, or has expired, or is not yet "
        "valid)";
  } else if (has("peer did not return a certificate")) {
    why = " (it has no certificate: a cluster member needs one, cairnctl cert issue)";
  } else if (has("wrong version number") || has("http request") || has("unknown protocol")) {
    why = " (it does not speak TLS: a plain-text peer, or an older release)";
  }
  return kj::str(d, why);
}

}  // namespace

kj::StringPtr roleName(Peer::Role role) {
  switch (role) {
    case Peer::Role::SERVER:
      return "server";
    case Peer::Role::CLIENT:
      return "client";
    case Peer::Role::ADMIN:
      return "admin";
    case Peer::Role::PLAINTEXT:
      return "plain-text peer";
  }
  return "?";
}

kj::String Peer::describe() const {
  if (role == Role::PLAINTEXT) return kj::str("plain-text peer (", address, ")");
  return kj::str(roleName(role), " ", name, " (", address, ")");
}

Peer::Role parseRole(kj::StringPtr commonName, kj::String* name) {
  KJ_IF_MAYBE (colon, commonName.findFirst(':')) {
    auto role = kj::heapString(commonName.slice(0, *colon));
    *name = kj::str(commonName.slice(*colon + 1));
    KJ_REQUIRE(name->size() > 0, "certificate common name without a name", commonName);
    if (role == "server") return Peer::Role::SERVER;
    if (role == "client") return Peer::Role::CLIENT;
    if (role == "admin") return Peer::Role::ADMIN;
  }
  KJ_FAIL_REQUIRE("certificate common name is not ROLE:NAME (server, client or admin)", commonName);
}

// Addresses that shake hands as TLS clients once connected, and check that the other end is a
// server of the cluster.
class Transport::SecureNetwork final : public kj::Network {
public:
  SecureNetwork(kj::Network& inner, kj::UnixEventPort& port, SslContext& tls)
      : inner_(inner), port_(port), tls_(tls) {}

  kj::Promise<kj::Own<kj::NetworkAddress>> parseAddress(kj::StringPtr addr,
                                                        uint portHint) override {
    return inner_.parseAddress(addr, portHint)
        .then([this](kj::Own<kj::NetworkAddress> a) -> kj::Own<kj::NetworkAddress> {
          return kj::heap<Address>(kj::mv(a), port_, tls_);
        });
  }
  kj::Own<kj::NetworkAddress> getSockaddr(const void* sockaddr, uint len) override {
    return kj::heap<Address>(inner_.getSockaddr(sockaddr, len), port_, tls_);
  }
  kj::Own<kj::Network> restrictPeers(kj::ArrayPtr<const kj::StringPtr>,
                                     kj::ArrayPtr<const kj::StringPtr>) override {
    KJ_UNIMPLEMENTED("restrictPeers on a TLS network");
  }

private:
  class Address final : public kj::NetworkAddress {
  public:
    Address(kj::Own<kj::NetworkAddress> inner, kj::UnixEventPort& port, SslContext& tls)
        : inner_(kj::mv(inner)), port_(port), tls_(tls) {}
    kj::Promise<kj::Own<kj::AsyncIoStream>> connect() override {
      return connectAuthenticated().then(
          [](kj::AuthenticatedStream s) { return kj::mv(s.stream); });
    }
    kj::Promise<kj::AuthenticatedStream> connectAuthenticated() override {
      auto where = inner_->toString();
      // Callers drop the address once they have the promise: nothing here may refer to it.
      SslContext& tls = tls_;
      kj::UnixEventPort& port = port_;
      return inner_->connectAuthenticated().then(
          [&tls, &port, where = kj::mv(where)](kj::AuthenticatedStream raw) mutable {
            auto identity = kj::mv(raw.peerIdentity);
            return tls.connect(port, kj::mv(raw.stream), SERVER_HOST_NAME)
                .then([identity = kj::mv(identity),
                       where = kj::mv(where)](kj::Own<SslContext::Stream> s) mutable {
                  kj::String name;
                  KJ_REQUIRE(parseRole(s->peerCommonName(), &name) == Peer::Role::SERVER,
                             "the peer is not a server of this cluster", where);
                  return kj::AuthenticatedStream{kj::mv(s), kj::mv(identity)};
                });
          });
    }
    kj::Own<kj::ConnectionReceiver> listen() override {
      KJ_UNIMPLEMENTED("servers listen on the plain network and shake hands in RpcServer");
    }
    kj::Own<kj::NetworkAddress> clone() override {
      return kj::heap<Address>(inner_->clone(), port_, tls_);
    }
    kj::String toString() override { return inner_->toString(); }

  private:
    kj::Own<kj::NetworkAddress> inner_;
    kj::UnixEventPort& port_;
    SslContext& tls_;
  };

  kj::Network& inner_;
  kj::UnixEventPort& port_;
  SslContext& tls_;
};

TlsCredentials TlsCredentials::load(kj::StringPtr dir, kj::Maybe<Peer::Role> expected) {
  auto certPem = readText(dir, "cert.crt");
  bool inDate = false;
  auto cn = commonNameOf(certPem, kj::str(dir, "/cert.crt"), &inDate);
  kj::String name;
  auto role = parseRole(cn, &name);
  KJ_IF_MAYBE (e, expected) {
    KJ_REQUIRE(role == *e, "TLS credentials: this certificate is for another role", dir, cn,
               roleName(*e));
  }
  // Said here, where the operator looks first; the peers would only see a failed handshake.
  if (!inDate) spdlog::error("TLS: {}/cert.crt is not valid now (expired?)", dir.cStr());
  auto crlPem = tryReadText(dir, "crl.pem");
  if (crlPem != nullptr) {
    spdlog::info("TLS: peers on the revocation list {}/crl.pem are refused", dir.cStr());
  }
  return TlsCredentials{readText(dir, "ca.crt"),
                        kj::mv(certPem),
                        readText(dir, "cert.key"),
                        kj::mv(crlPem),
                        role,
                        kj::mv(name),
                        kj::str(dir)};
}

kj::Own<Transport> Transport::tls(kj::AsyncIoContext& io, TlsCredentials credentials,
                                  bool trustedNetwork) {
  kj::Maybe<kj::StringPtr> crl;
  KJ_IF_MAYBE (pem, credentials.crlPem) {
    crl = pem->asPtr();
  }
  auto context = kj::heap<SslContext>(credentials.caPem, credentials.certPem, credentials.keyPem,
                                      trustedNetwork, crl);
  auto transport = kj::heap<Transport>(io, kj::mv(context));
  transport->credentialsDir_ = kj::mv(credentials.dir);
  transport->crlSeen_ = kj::mv(credentials.crlPem);
  return transport;
}

bool Transport::reloadRevocations() {
  if (tls_.get() == nullptr || credentialsDir_.size() == 0) return false;
  auto now = tryReadText(credentialsDir_, "crl.pem");
  bool same = false;
  KJ_IF_MAYBE (before, crlSeen_) {
    KJ_IF_MAYBE (text, now) {
      same = *text == *before;
    }
  } else {
    same = now == nullptr;
  }
  if (same) return false;
  kj::Maybe<kj::StringPtr> pem;
  KJ_IF_MAYBE (text, now) {
    pem = text->asPtr();
  }
  auto problem = kj::runCatchingExceptions([&]() { tls_->setRevocationList(pem); });
  crlSeen_ = kj::mv(now);
  KJ_IF_MAYBE (e, problem) {
    spdlog::error("TLS: {}/crl.pem changed but cannot be used ({}); the list before stays",
                  credentialsDir_.cStr(), e->getDescription().cStr());
    return false;
  }
  spdlog::info("TLS: {}/crl.pem changed: {} revoked certificates on it now", credentialsDir_.cStr(),
               tls_->revokedCount());
  return true;
}

kj::Promise<void> Transport::watchRevocations(kj::Timer& timer, kj::Duration every,
                                              kj::Function<void()> changed) {
  if (tls_.get() == nullptr) return kj::NEVER_DONE;
  return timer.afterDelay(every).then([this, &timer, every, changed = kj::mv(changed)]() mutable {
    if (reloadRevocations()) changed();
    return watchRevocations(timer, every, kj::mv(changed));
  });
}

bool Transport::revoked(kj::StringPtr serial) const {
  return tls_.get() != nullptr && serial.size() > 0 && tls_->revokedSerial(serial);
}

kj::Own<Transport> Transport::tls(kj::AsyncIoContext& io, kj::StringPtr dir,
                                  kj::Maybe<Peer::Role> expected, bool trustedNetwork) {
  return tls(io, TlsCredentials::load(dir, expected), trustedNetwork);
}

kj::StringPtr wireOf(kj::AsyncIoStream& stream) {
  auto* tls = dynamic_cast<SslContext::Stream*>(&stream);
  if (tls == nullptr) return "plain text";
  if (!tls->encrypted()) return "unencrypted after TLS authentication";
  return tls->sealed() ? "sealed after TLS authentication"_kj : "TLS"_kj;
}

kj::Own<Transport> Transport::plaintext(kj::AsyncIoContext& io) {
  return kj::heap<Transport>(io, nullptr);
}

Transport::Transport(kj::AsyncIoContext& io, kj::Maybe<kj::Own<SslContext>> tls) : io_(io) {
  KJ_IF_MAYBE (t, tls) {
    tls_ = kj::mv(*t);
    network_ = kj::heap<SecureNetwork>(io.provider->getNetwork(), io.unixEventPort, *tls_);
  } else {
    // Not owned: the provider's own network.
    network_ = kj::Own<kj::Network>(&io.provider->getNetwork(), kj::NullDisposer::instance);
  }
}

Transport::~Transport() noexcept(false) {}

kj::Promise<Transport::Accepted> Transport::handshake(kj::AuthenticatedStream raw) {
  auto address = raw.peerIdentity->toString();
  if (!secure()) {
    // Through a continuation rather than an immediate promise of the struct, which GCC 12
    // wrongly warns about (maybe-uninitialized).
    return kj::Promise<void>(kj::READY_NOW)
        .then([stream = kj::mv(raw.stream), address = kj::mv(address)]() mutable {
          return Accepted{kj::mv(stream), Peer{Peer::Role::PLAINTEXT, kj::str(), kj::mv(address),
                                               false, kj::str()}};
        });
  }
  auto& timer = io_.provider->getTimer();
  // (evalNow: a failure setting the connection up rejects this one, never the accept loop.)
  return kj::evalNow([&]() { return tls_->accept(io_.unixEventPort, kj::mv(raw.stream)); })
      .exclusiveJoin(timer.afterDelay(HANDSHAKE_LIMIT).then([]() -> kj::Own<SslContext::Stream> {
        KJ_FAIL_REQUIRE("no TLS handshake within the limit");
      }))
      .then(
          [address = kj::mv(address)](kj::Own<SslContext::Stream> s) mutable {
            kj::String name;
            auto role = parseRole(s->peerCommonName(), &name);
            bool encrypted = s->encrypted();
            auto serial = s->peerSerial();
            return Accepted{kj::mv(s),
                            Peer{role, kj::mv(name), kj::mv(address), encrypted, kj::mv(serial)}};
          },
          [](kj::Exception&& e) -> Accepted {
            kj::throwFatalException(
                kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, explainRefusal(e)));
          });
}

namespace {
// One accepted connection and the RPC system on it, alive until the peer goes.
struct RpcConnection {
  RpcConnection(kj::Own<kj::AsyncIoStream> s, capnp::Capability::Client bootstrap,
                const RpcServer::Limits& limits)
      : stream(kj::mv(s)),
        network(*stream, capnp::rpc::twoparty::Side::SERVER, readerOptions(limits)),
        rpc(capnp::makeRpcServer(network, kj::mv(bootstrap))) {
    rpc.setFlowLimit(limits.inFlightWords);
  }
  static capnp::ReaderOptions readerOptions(const RpcServer::Limits& limits) {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = limits.messageWords;
    options.nestingLimit = int(limits.nesting);
    return options;
  }
  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyVatNetwork network;  // destroyed before the stream it uses
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
};
}  // namespace

RpcServer::RpcServer(Transport& transport, Bootstrap bootstrap, Limits limits)
    : transport_(transport),
      bootstrap_(kj::mv(bootstrap)),
      limits_(limits),
      connections_(errors_) {}

RpcServer::~RpcServer() noexcept(false) {}

kj::Promise<void> RpcServer::listen(kj::ConnectionReceiver& port) {
  return port.acceptAuthenticated().then([this, &port](kj::AuthenticatedStream raw) {
    if (open_ >= limits_.connections) {
      spdlog::warn("refused a connection from {}: {} connections open, the limit",
                   raw.peerIdentity->toString().cStr(), open_);
    } else {
      // Handshakes run side by side: one slow or silent peer holds nobody else up.
      ++open_;
      connections_.add(serve(kj::mv(raw)).attach(kj::defer([this]() { --open_; })));
    }
    return listen(port);
  });
}

kj::Promise<void> RpcServer::serve(kj::AuthenticatedStream raw) {
  auto address = raw.peerIdentity->toString();
  return transport_.handshake(kj::mv(raw))
      .then(
          [this](Transport::Accepted a) {
            auto conn = kj::heap<RpcConnection>(
                kj::mv(a.stream), capnp::Capability::Client(bootstrap_(a.peer)), limits_);
            auto cut = kj::newPromiseAndFulfiller<void>();
            auto entry = live_.insert(live_.end(), Live{a.peer.describe(), kj::str(a.peer.serial),
                                                        kj::mv(cut.fulfiller)});
            // Cut: the connection and its RPC system go, as when the peer goes.
            return conn->network.onDisconnect()
                .exclusiveJoin(kj::mv(cut.promise))
                .attach(kj::mv(conn), kj::defer([this, entry]() { live_.erase(entry); }));
          },
          [address = kj::mv(address)](kj::Exception&& e) {
            spdlog::warn("refused a connection from {}: {}", address.cStr(),
                         e.getDescription().cStr());
          });
}

size_t RpcServer::cutRevoked() {
  size_t n = 0;
  for (auto& c : live_) {
    if (!c.cut->isWaiting() || !transport_.revoked(c.serial)) continue;
    spdlog::warn("TLS: closing the connection of {}: its certificate is revoked now",
                 c.peer.cStr());
    c.cut->fulfill();
    ++n;
  }
  return n;
}

}  // namespace cairn
