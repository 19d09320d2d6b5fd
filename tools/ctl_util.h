// What cairnctl's commands share: connections to servers with deadlines, and JSON text.
#pragma once

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/vector.h>

#include <cstdio>

#include "rpc/cairn.capnp.h"

namespace cairn::ctl {

inline kj::String jsonString(kj::StringPtr s) {
  kj::Vector<char> out;
  out.add('"');
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out.add('\\');
      out.add(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char esc[8];
      snprintf(esc, sizeof(esc), "\\u%04x", static_cast<unsigned>(c));
      out.addAll(kj::StringPtr(esc));
    } else {
      out.add(c);
    }
  }
  out.add('"');
  out.add('\0');
  return kj::String(out.releaseAsArray());
}

// What every command talks through: the event loop, and the network its connections take (TLS
// with the administrator's credentials, or plain text).
struct Context {
  kj::AsyncIoContext& io;
  kj::Network& network;
};

// One connection to a server's bootstrap capability.
struct Connection {
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyClient> client;
  cairn::rpc::Bootstrap::Client server;
};

template <typename T>
kj::Promise<T> within(kj::Timer& timer, kj::Duration limit, kj::Promise<T> promise) {
  return promise.exclusiveJoin(
      timer.afterDelay(limit).then([]() -> T { KJ_FAIL_REQUIRE("timed out"); }));
}

inline Connection connectTo(Context& ctx, kj::StringPtr address, kj::Duration limit) {
  auto& io = ctx.io;
  auto stream = within(io.provider->getTimer(), limit,
                       ctx.network.parseAddress(address).then(
                           [](kj::Own<kj::NetworkAddress> a) { return a->connect(); }))
                    .wait(io.waitScope);
  auto client = kj::heap<capnp::TwoPartyClient>(*stream);
  auto server = client->bootstrap().castAs<cairn::rpc::Bootstrap>();
  // With TLS 1.3 the server judges our certificate after our side of the handshake is done: a
  // round trip first, so that a refusal shows here and not as the hang-up a shutdown expects.
  within(io.provider->getTimer(), limit, server.pingRequest().send()).wait(io.waitScope);
  return Connection{kj::mv(stream), kj::mv(client), kj::mv(server)};
}

// The state a server reports ("serving", "standby", ...), or "unreachable".
inline kj::String stateOf(Context& ctx, kj::StringPtr address) {
  auto& io = ctx.io;
  try {
    auto conn = connectTo(ctx, address, 1 * kj::SECONDS);
    auto reply =
        within(io.provider->getTimer(), 1 * kj::SECONDS, conn.server.statusRequest().send())
            .wait(io.waitScope);
    return kj::str(reply.getStatus().getState());
  } catch (kj::Exception&) {
    return kj::str("unreachable");
  }
}

}  // namespace cairn::ctl
