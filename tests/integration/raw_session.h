// A client session made by hand over Cap'n Proto, the way a mount makes one: for tests that need
// a client that misbehaves (never cancels a lock, vanishes) or that look at the wire directly.
#pragma once

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

#include <string>

#include "rpc/cairn.capnp.h"
#include "rpc/feature_flags.h"
#include "rpc/transport.h"
#include "tests/integration/cluster.h"

namespace cairn::test {

// A connection to a server as the cluster's clients make them: mutual TLS with the client
// credentials of the running TestCluster (rawCredentials), or plain text.
inline kj::Own<kj::AsyncIoStream> connectStream(kj::AsyncIoContext& io,
                                                const std::string& address) {
  auto transport = rawCredentials.empty()
                       ? Transport::plaintext(io)
                       : Transport::tls(io, rawCredentials.c_str(), Peer::Role::CLIENT);
  auto stream = transport->network()
                    .parseAddress(address)
                    .then([](kj::Own<kj::NetworkAddress> a) { return a->connect(); })
                    .wait(io.waitScope);
  return stream.attach(kj::mv(transport));
}

struct RawSession {
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyClient> client;
  rpc::MetaSession::Client meta = nullptr;
  rpc::LockSession::Client locks = nullptr;
  uint64_t serverLock = 0;  // the active-server lock granted with the session
  bool evicted = false;     // the server said it had evicted this client
  uint64_t session = 0;     // the metadata server's number for this session
};

// Connects as client `uuidByte` x 16 with `callback` for blocking callbacks. The session lasts
// while the returned capabilities do (the server counts it connected until then).
// `features`: what it announces (a peer of an older release announces less).
inline RawSession connectRaw(kj::AsyncIoContext& io, const std::string& address, kj::byte uuidByte,
                             rpc::LockCallback::Client callback,
                             uint64_t features = features::SUPPORTED) {
  RawSession s;
  s.stream = connectStream(io, address);
  s.client = kj::heap<capnp::TwoPartyClient>(*s.stream);
  auto req = s.client->bootstrap().castAs<rpc::Bootstrap>().connectRequest();
  auto hello = req.initHello();
  auto uuid = kj::heapArray<kj::byte>(16);
  for (auto& b : uuid) b = uuidByte;
  hello.setClientUuid(uuid);
  hello.setSoftwareVersion("test");
  hello.setFeatures(features);
  req.setCallback(kj::mv(callback));
  auto reply = req.send().wait(io.waitScope);
  s.meta = reply.getMeta();
  s.locks = reply.getLocks();
  s.serverLock = reply.getServerLock();
  s.evicted = reply.getEvicted();
  s.session = reply.getSession();
  return s;
}

}  // namespace cairn::test
