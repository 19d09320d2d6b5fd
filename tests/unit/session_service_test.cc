// A session's service and the serving context it belongs to: Cap'n Proto may let go of the
// service after the context is gone (as a fenced server turns standby), and the service must
// then leave the context alone. Before ServerContext::Presence its destructor told the
// destroyed context that the client had gone (Failover.AHungServerThatWakesUpStopsServing's
// flake); run under AddressSanitizer in CI, this test reports that use at once.
#include <gtest/gtest.h>

#include <capnp/message.h>
#include <kj/async-io.h>

#include "objserver/data_service.h"
#include "objserver/object_store.h"
#include "objserver/server.h"
#include "tests/unit/temp_dir.h"

namespace cairn {
namespace {

TEST(SessionService, OutlivingItsContextItLeavesTheContextAlone) {
  TempDir dir;
  auto path = dir.path() + "/d";
  FormatOptions f;
  f.kind = rpc::TargetKind::DATA;
  f.fsName = kj::str("unit");
  f.stripeSize = 65536;
  Target::format(path.c_str(), f);
  Target target(path.c_str(), rpc::TargetKind::DATA, OpenOptions{});
  ObjectStore objects(target);
  auto io = kj::setupAsyncIo();

  capnp::MallocMessageBuilder message;
  auto hello = message.initRoot<rpc::Hello>();
  kj::byte uuid[16] = {1, 2, 3};
  hello.setClientUuid(kj::arrayPtr(uuid, sizeof uuid));
  hello.setRole(rpc::Hello::Role::CLIENT);
  hello.setHostName("unit");

  kj::Own<DataService> service;
  kj::Own<ClientSession> session;
  {
    ServerConfig config;
    ServerContext ctx(io, io.provider->getNetwork(), target, kj::mv(config));
    ctx.objects = objects;
    session = kj::addRef(ctx.session(hello.asReader()));
    service = kj::heap<DataService>(ctx, kj::addRef(*session));
    EXPECT_EQ(session->connections, 1u);
    // While the context lives, the service's end is the client's disconnect.
    service = nullptr;
    EXPECT_EQ(session->connections, 0u);
    EXPECT_EQ(session->disconnects, 1u);
    service = kj::heap<DataService>(ctx, kj::addRef(*session));
  }
  // The context is gone; the service ends after it and tells nobody.
  service = nullptr;
  EXPECT_EQ(session->connections, 1u);
  EXPECT_EQ(session->disconnects, 1u);
}

}  // namespace
}  // namespace cairn
