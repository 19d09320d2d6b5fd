// How Cairn's processes reach each other: mutual TLS (OpenSSL, rpc/tls_stream.h) with the
// cluster's own CA, or — only when asked for, and loudly — plain text.
//
// Every process has one credentials directory (`cairnctl cert issue` writes it): `ca.crt`, the
// cluster CA, the only one trusted (never the system's store); `cert.crt` and `cert.key`, its own
// certificate and key. A certificate says who its holder is in its common name, "ROLE:NAME",
// with ROLE one of server, client, admin; the CA vouches for both. Server certificates also name
// the host `cairn-server` (a DNS SAN), which is the name every connection checks: a client's or
// an administrator's certificate can never pass for a server's.
//
// Outgoing connections go through `network()`, a kj::Network whose addresses connect and then
// shake hands; incoming ones through `RpcServer`, which serves each with the peer's identity.
//
// On a trusted network (`--trusted-network`, `-o trusted_network`, on both ends) connections
// authenticate the same way and then carry their bytes unencrypted (rpc/tls_stream.h).
#pragma once

#include <capnp/capability.h>
#include <kj/async-io.h>
#include <kj/function.h>
#include <kj/string.h>
#include <kj/timer.h>

#include <list>

#include "rpc/tls_stream.h"

namespace cairn {

// Who is at the other end of a connection.
struct Peer {
  enum class Role { SERVER, CLIENT, ADMIN, PLAINTEXT };
  Role role;
  kj::String name;     // from the certificate ("" in plain text)
  kj::String address;  // where the connection came from
  // Whether its bytes are encrypted (false in plain text and on a trusted network).
  bool encrypted = false;
  kj::String serial;  // its certificate's serial number, hex ("" in plain text)
  bool authenticated() const { return role != Role::PLAINTEXT; }
  Peer clone() const {
    return Peer{role, kj::str(name), kj::str(address), encrypted, kj::str(serial)};
  }
  // "admin alice (10.0.0.5:41234)", for log lines.
  kj::String describe() const;
};

kj::StringPtr roleName(Peer::Role role);

// The host name every server certificate carries and every connection checks.
constexpr kj::StringPtr SERVER_HOST_NAME = "cairn-server"_kj;

// What a TLS connection is made with, as read from a credentials directory.
struct TlsCredentials {
  kj::String caPem, certPem, keyPem;
  kj::Maybe<kj::String> crlPem;  // crl.pem, if the directory has one (cairnctl cert revoke)
  Peer::Role role;
  kj::String name;
  kj::String dir;
  // Throws, saying which file is wrong, if they do not load or the certificate's role is not
  // `expected` (null: any). Needs no event loop: a mount checks them before it forks.
  static TlsCredentials load(kj::StringPtr dir, kj::Maybe<Peer::Role> expected);
};

class Transport {
public:
  // Mutual TLS with these credentials (or those in `dir`, see TlsCredentials::load).
  // `trustedNetwork`: a connection whose other end is on a trusted network too goes unencrypted
  // once both are authenticated.
  static kj::Own<Transport> tls(kj::AsyncIoContext& io, TlsCredentials credentials,
                                bool trustedNetwork = false);
  static kj::Own<Transport> tls(kj::AsyncIoContext& io, kj::StringPtr dir,
                                kj::Maybe<Peer::Role> expected, bool trustedNetwork = false);
  // Plain text: no identities, no encryption. Only for loopback tests and old releases.
  static kj::Own<Transport> plaintext(kj::AsyncIoContext& io);
  // (Use tls() or plaintext().)
  Transport(kj::AsyncIoContext& io, kj::Maybe<kj::Own<SslContext>> tls);
  ~Transport() noexcept(false);
  KJ_DISALLOW_COPY(Transport);

  bool secure() const { return tls_.get() != nullptr; }

  // Reads the credentials directory's crl.pem again (cairnctl cert revoke writes it) and, if it
  // changed, uses it for every handshake from now on. A list that does not load (half copied,
  // another CA's) is logged and the one in use kept. Returns whether the list in use changed.
  bool reloadRevocations();
  // Whether the certificate with this serial number (Peer::serial) is on the list in use now.
  bool revoked(kj::StringPtr serial) const;
  // reloadRevocations() every `every`, and `changed` after each change (a server closes the
  // connections of peers revoked now: RpcServer::cutRevoked): a revocation takes effect without
  // a restart. Runs until the promise is dropped; never resolves in plain text.
  kj::Promise<void> watchRevocations(kj::Timer& timer, kj::Duration every,
                                     kj::Function<void()> changed);

  // Connects through here: with TLS, each connection checks that it reached a server of the
  // cluster before it is handed out.
  kj::Network& network() { return *network_; }

  // An accepted connection once it has shaken hands (with TLS: a certificate of the cluster's
  // CA, in date, within 10 s), and who is at the other end. Fails with the reason, and what
  // usually causes it, if the peer is refused.
  struct Accepted {
    kj::Own<kj::AsyncIoStream> stream;
    Peer peer;
  };
  kj::Promise<Accepted> handshake(kj::AuthenticatedStream raw);

private:
  class SecureNetwork;

  kj::AsyncIoContext& io_;
  kj::Own<SslContext> tls_;  // null in plain text
  kj::Own<kj::Network> network_;
  kj::String credentialsDir_;      // where crl.pem is read again ("": never)
  kj::Maybe<kj::String> crlSeen_;  // crl.pem as last read, loaded or not
};

// Serves a bootstrap capability of its own to every connection accepted on a port, made for the
// peer's identity (capnp::TwoPartyServer serves one capability to all). The connections live as
// long as this object — replies sent as a server stops still leave — and the accept loop as long
// as listen()'s promise. Refused peers are logged with their address and the reason.
class RpcServer {
public:
  // What one server takes, whatever its peers send.
  struct Limits {
    size_t connections = 4096;  // beyond: closed at once, logged
    // One message (a data write carries at most a stripe chunk, 1 MiB by default).
    uint64_t messageWords = (16u << 20) / 8;
    unsigned nesting = 64;
    // Calls a connection may have waiting for their replies; beyond it the server stops reading
    // from that connection until replies go out (back-pressure, not an error).
    size_t inFlightWords = (64u << 20) / 8;
  };
  using Bootstrap = kj::Function<kj::Own<capnp::Capability::Server>(const Peer&)>;
  RpcServer(Transport& transport, Bootstrap bootstrap, Limits limits);
  RpcServer(Transport& transport, Bootstrap bootstrap)
      : RpcServer(transport, kj::mv(bootstrap), Limits()) {}
  ~RpcServer() noexcept(false);
  KJ_DISALLOW_COPY(RpcServer);

  kj::Promise<void> listen(kj::ConnectionReceiver& port);

  // Closes every connection whose peer's certificate is on the transport's revocation list now
  // (their reconnects are refused); returns how many.
  size_t cutRevoked();

private:
  kj::Promise<void> serve(kj::AuthenticatedStream raw);
  // A connection being served, for cutRevoked.
  struct Live {
    kj::String peer;    // Peer::describe()
    kj::String serial;  // Peer::serial
    kj::Own<kj::PromiseFulfiller<void>> cut;
  };
  std::list<Live> live_;  // before connections_: each one's end erases its entry
  class Errors final : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&&) override {}  // a connection ended; nothing to do
  };
  Transport& transport_;
  Bootstrap bootstrap_;
  Limits limits_;
  size_t open_ = 0;  // connections accepted and not yet gone
  Errors errors_;
  kj::TaskSet connections_;
};

// What a connection made through a Transport carries its bytes in, for log lines: "sealed after
// TLS authentication" (encrypted), "TLS" (encrypted, with a peer of a release before sealed
// records), "unencrypted after TLS authentication" (trusted network) or "plain text".
kj::StringPtr wireOf(kj::AsyncIoStream& stream);

// Parses "ROLE:NAME" (a certificate's common name); throws if it is not one.
Peer::Role parseRole(kj::StringPtr commonName, kj::String* name);

}  // namespace cairn
