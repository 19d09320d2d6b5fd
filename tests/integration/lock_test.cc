// The lock manager over the wire: clients (raw Cap'n Proto sessions, as a mount will be) take
// locks, receive blocking callbacks, cancel; one that does not cancel is evicted and told so;
// the locks of one that vanishes are dropped after the lock timeout.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "rpc/cairn.capnp.h"
#include "tests/integration/cluster.h"
#include "tests/integration/raw_session.h"

namespace cairn::test {
namespace {

class Callback final : public rpc::LockCallback::Server {
public:
  Callback(std::vector<uint64_t>& asked, uint32_t& timeoutMs)
      : asked_(asked), timeoutMs_(timeoutMs) {}
  kj::Promise<void> blocking(BlockingContext context) override {
    asked_.push_back(context.getParams().getLockId());
    timeoutMs_ = context.getParams().getTimeoutMs();
    return kj::READY_NOW;
  }

private:
  std::vector<uint64_t>& asked_;
  uint32_t& timeoutMs_;
};

// One client: a connection, its session and its lock callback.
struct LockClient {
  LockClient(kj::AsyncIoContext& io, const std::string& address, kj::byte uuidByte) : io(io) {
    connect(address, uuidByte);
  }
  void connect(const std::string& address, kj::byte uuidByte) {
    auto s = connectRaw(io, address, uuidByte, kj::heap<Callback>(asked, timeoutMs));
    stream = kj::mv(s.stream);
    client = kj::mv(s.client);
    locks = kj::mv(s.locks);
    meta = kj::mv(s.meta);
    evicted = s.evicted;
    session = s.session;
  }
  kj::Promise<uint64_t> enqueue(rpc::LockMode mode, uint64_t bits = ~uint64_t(0)) {
    auto req = locks.enqueueRequest();
    auto r = req.initRequest();
    r.setType(1);
    r.setId(1);
    r.setMode(mode);
    r.setBits(bits);
    return req.send().then([](auto&& resp) { return resp.getLockId(); });
  }
  void prolong(uint64_t id) {
    auto req = locks.prolongRequest();
    req.initLockIds(1).set(0, id);
    req.send().wait(io.waitScope);
  }
  void cancel(uint64_t id) {
    auto req = locks.cancelRequest();
    req.setLockId(id);
    req.send().wait(io.waitScope);
  }
  void disconnect() {
    locks = nullptr;
    meta = nullptr;
    client = nullptr;
    stream = nullptr;
  }

  kj::AsyncIoContext& io;
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyClient> client;
  rpc::LockSession::Client locks = nullptr;
  rpc::MetaSession::Client meta = nullptr;
  std::vector<uint64_t> asked;
  uint32_t timeoutMs = 0;  // as the last callback said
  bool evicted = false;
  uint64_t session = 0;  // the server's number for it
};

// Waits until `pred` holds while the event loop runs.
template <typename Pred>
bool spin(kj::AsyncIoContext& io, Pred&& pred, int ms) {
  for (int waited = 0; !pred(); waited += 10) {
    if (waited > ms) return false;
    io.provider->getTimer().afterDelay(10 * kj::MILLISECONDS).wait(io.waitScope);
  }
  return true;
}

TestCluster::Options withLockTimeout() {
  TestCluster::Options o;
  o.dataServers = 1;
  o.metaArgs = {"--lock-timeout", "1"};
  return o;
}

TEST(Locks, BlockingCallbackThenCancelThenGrant) {
  TestCluster cluster(withLockTimeout());
  auto io = kj::setupAsyncIo();
  LockClient a(io, cluster.metaAddress(), 1), b(io, cluster.metaAddress(), 2);
  uint64_t ra = a.enqueue(rpc::LockMode::PR).wait(io.waitScope);
  uint64_t rb = b.enqueue(rpc::LockMode::PR).wait(io.waitScope);  // readers share
  auto w = a.enqueue(rpc::LockMode::PW, 2);                       // a writer on the attribute bit
  ASSERT_TRUE(spin(
      io, [&] { return !a.asked.empty() && !b.asked.empty(); }, 3000));
  EXPECT_FALSE(w.poll(io.waitScope));
  a.cancel(ra);
  b.cancel(rb);
  EXPECT_GT(w.wait(io.waitScope), 0u);
  auto st = cluster.status(0);
  // Besides w: the active-server PR of each session (the data server's, a's and b's).
  EXPECT_EQ(jsonNumber(st, "locksGranted"), 1u + 3u);
  EXPECT_EQ(jsonNumber(st, "lockCallbacks"), 2u);
  EXPECT_EQ(jsonNumber(st, "evictions"), 0u);
}

TEST(Locks, AClientThatDoesNotCancelIsEvictedAndToldSo) {
  TestCluster cluster(withLockTimeout());
  auto io = kj::setupAsyncIo();
  LockClient stuck(io, cluster.metaAddress(), 3), other(io, cluster.metaAddress(), 4);
  stuck.enqueue(rpc::LockMode::EX).wait(io.waitScope);
  auto w = other.enqueue(rpc::LockMode::EX);
  // The stuck client ignores its callback; after the lock timeout the other gets the lock.
  EXPECT_GT(w.wait(io.waitScope), 0u);
  EXPECT_EQ(stuck.asked.size(), 1u);
  EXPECT_EQ(jsonNumber(cluster.status(0), "evictions"), 1u);
  // Its next request fails (DISCONNECTED: reconnect)...
  auto req = stuck.meta.callRequest();
  req.initRequest().setGetattr(1);
  try {
    req.send().wait(io.waitScope);
    ADD_FAILURE() << "an evicted client was served";
  } catch (kj::Exception& e) {
    EXPECT_EQ(e.getType(), kj::Exception::Type::DISCONNECTED);
  }
  // ...and when it reconnects it is told it was evicted, then served again.
  stuck.disconnect();
  stuck.connect(cluster.metaAddress(), 3);
  EXPECT_TRUE(stuck.evicted);
  auto again = stuck.meta.callRequest();
  again.initRequest().setGetattr(1);
  EXPECT_EQ(again.send().wait(io.waitScope).getReply().getError(), 0);
}

// A client asking for more time keeps its lock past the timeout, up to --lock-prolong-limit
// after the callback; then it is evicted all the same.
TEST(Locks, MoreTimeIsGivenUpToTheLimit) {
  auto options = withLockTimeout();
  options.metaArgs.insert(options.metaArgs.end(), {"--lock-prolong-limit", "3"});
  TestCluster cluster(options);
  auto io = kj::setupAsyncIo();
  LockClient slow(io, cluster.metaAddress(), 7), other(io, cluster.metaAddress(), 8);
  uint64_t held = slow.enqueue(rpc::LockMode::EX).wait(io.waitScope);
  auto w = other.enqueue(rpc::LockMode::EX);
  ASSERT_TRUE(spin(
      io, [&] { return !slow.asked.empty(); }, 3000));
  EXPECT_EQ(slow.timeoutMs, 1000u);
  auto started = std::chrono::steady_clock::now();
  while (!w.poll(io.waitScope)) {
    slow.prolong(held);
    io.provider->getTimer().afterDelay(300 * kj::MILLISECONDS).wait(io.waitScope);
  }
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  w.wait(io.waitScope);
  EXPECT_GT(waited, 2.0);  // well past the 1 s timeout; the limit is 3 s from the callback
  EXPECT_EQ(jsonNumber(cluster.status(0), "evictions"), 1u);
}

TEST(Locks, LocksOfAVanishedClientGoAfterTheTimeout) {
  TestCluster cluster(withLockTimeout());
  auto io = kj::setupAsyncIo();
  LockClient gone(io, cluster.metaAddress(), 5), other(io, cluster.metaAddress(), 6);
  gone.enqueue(rpc::LockMode::EX).wait(io.waitScope);
  gone.disconnect();
  auto w = other.enqueue(rpc::LockMode::EX);
  EXPECT_GT(w.wait(io.waitScope), 0u);
  // w, and the active-server PR of the data server's and of `other`'s session.
  EXPECT_EQ(jsonNumber(cluster.status(0), "locksGranted"), 1u + 2u);
}

TEST(Locks, UpdatesWaitUntilCachingClientsHaveCancelled) {
  TestCluster cluster(withLockTimeout());
  auto mnt = cluster.mount();
  auto io = kj::setupAsyncIo();
  LockClient cacher(io, cluster.metaAddress(), 8);
  // The cacher holds the root directory's names and attributes (inode 1, lookup + attr bits).
  uint64_t held = cacher.enqueue(rpc::LockMode::PR, 1 | 2).wait(io.waitScope);
  std::atomic<bool> done{false};
  std::atomic<int> rc{-1};
  std::thread writer([&] {
    rc = mkdir((mnt + "/made").c_str(), 0755);
    done = true;
  });
  ASSERT_TRUE(spin(
      io, [&] { return !cacher.asked.empty(); }, 3000));
  EXPECT_EQ(cacher.asked[0], held);
  io.provider->getTimer().afterDelay(200 * kj::MILLISECONDS).wait(io.waitScope);
  EXPECT_FALSE(done.load());  // the update waits for the cancel
  cacher.cancel(held);
  writer.join();
  EXPECT_EQ(rc.load(), 0);
  EXPECT_EQ(jsonNumber(cluster.status(0), "evictions"), 0u);
  // Locks on other inodes, or on bits the update does not touch, are left alone.
  uint64_t other = cacher.enqueue(rpc::LockMode::PR, 8).wait(io.waitScope);  // xattr bit
  ASSERT_EQ(mkdir((mnt + "/made2").c_str(), 0755), 0);
  EXPECT_EQ(cacher.asked.size(), 1u);
  cacher.cancel(other);
}

TEST(Locks, AnUpdateProceedsAfterEvictingAStuckCacher) {
  TestCluster cluster(withLockTimeout());
  auto mnt = cluster.mount();
  auto io = kj::setupAsyncIo();
  LockClient stuck(io, cluster.metaAddress(), 9);
  stuck.enqueue(rpc::LockMode::PR, 1 | 2).wait(io.waitScope);
  std::atomic<bool> done{false};
  std::thread writer([&] {
    int fd = open((mnt + "/f").c_str(), O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
    done = fd >= 0;
  });
  // The stuck client never cancels: after the lock timeout it is evicted and the create goes on.
  ASSERT_TRUE(spin(
      io, [&] { return done.load(); }, 8000));
  writer.join();
  EXPECT_EQ(jsonNumber(cluster.status(0), "evictions"), 1u);
}

// A data session, as a mount makes one on a data server: client `uuidByte` x 16.
struct DataClient {
  DataClient(kj::AsyncIoContext& io, const std::string& address, kj::byte uuidByte)
      : io(io),
        stream(connectStream(io, address)),
        client(kj::heap<capnp::TwoPartyClient>(*stream)) {
    auto req = client->bootstrap().castAs<rpc::Bootstrap>().connectRequest();
    auto hello = req.initHello();
    auto uuid = kj::heapArray<kj::byte>(16);
    for (auto& b : uuid) b = uuidByte;
    hello.setClientUuid(uuid);
    hello.setSoftwareVersion("test");
    hello.setFeatures(features::SUPPORTED);
    auto reply = req.send().wait(io.waitScope);
    data = reply.getData();
    evicted = reply.getEvicted();
    evictedSession = reply.getEvictedSession();
  }
  // The write's error (0: written); throws if the session is refused.
  int write(uint64_t object, const std::string& bytes) {
    auto req = data.callRequest();
    auto w = req.initRequest().initWrite();
    w.setObjectId(object);
    w.setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size()));
    return req.send().wait(io.waitScope).getReply().getError();
  }
  std::string read(uint64_t object, uint32_t length) {
    auto req = data.callRequest();
    auto r = req.initRequest().initRead();
    r.setObjectId(object);
    r.setLength(length);
    auto reply = req.send().wait(io.waitScope);
    auto bytes = reply.getReply().getData();
    return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
  }
  kj::AsyncIoContext& io;
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyClient> client;
  rpc::DataSession::Client data = nullptr;
  bool evicted = false;         // told at connect
  uint64_t evictedSession = 0;  // ... the metadata server's session whose fence it was
};

// The eviction window: a client evicted for not giving a lock back may still have writes queued
// for the data targets (it hung; it wakes up). The data targets end its session before the lock
// is granted to the next client, so nothing it sends them lands after that client's writes.
TEST(Locks, AnEvictedClientIsFencedOffTheDataTargetsBeforeItsLockGoes) {
  TestCluster cluster(withLockTimeout());
  auto io = kj::setupAsyncIo();
  LockClient stuck(io, cluster.metaAddress(), 8), other(io, cluster.metaAddress(), 9);
  DataClient stuckData(io, cluster.address(1), 8), otherData(io, cluster.address(1), 9);
  ASSERT_EQ(stuckData.write(77, "before"), 0);
  stuck.enqueue(rpc::LockMode::PW).wait(io.waitScope);
  // The other client's lock comes after the stuck one's eviction, which has fenced it off.
  EXPECT_GT(other.enqueue(rpc::LockMode::PW).wait(io.waitScope), 0u);
  ASSERT_EQ(otherData.write(77, "after!"), 0);
  try {
    stuckData.write(77, "stale!");
    ADD_FAILURE() << "the data target took a write of an evicted client";
  } catch (kj::Exception& e) {
    EXPECT_EQ(e.getType(), kj::Exception::Type::DISCONNECTED) << e.getDescription().cStr();
  }
  EXPECT_EQ(otherData.read(77, 6), "after!");
  EXPECT_NE(readWhole(cluster.log(0)).find("fenced off data target 0"), std::string::npos);
  EXPECT_NE(readWhole(cluster.log(1)).find("evicting client 0808080808080808"), std::string::npos);
  // Back, it is told so by the data target too, and served again.
  DataClient again(io, cluster.address(1), 8);
  EXPECT_EQ(again.write(78, "new"), 0);
}

// A fence names the metadata server's session it ends, and a data target keeps the latest until
// the client is back there. A client evicted twice, back at the metadata server in between but
// never at the data target, must be told of the second session's eviction: told of the first,
// which it has left behind, it would keep what it wrote in the second.
TEST(Locks, ADataTargetToldOfTwoFencesNamesTheLaterSession) {
  TestCluster cluster(withLockTimeout());
  auto io = kj::setupAsyncIo();
  {
    DataClient joining(io, cluster.address(1), 15);
    ASSERT_EQ(joining.write(82, "before"), 0);
  }
  LockClient stuck(io, cluster.metaAddress(), 15), other(io, cluster.metaAddress(), 16);
  uint64_t first = stuck.session;
  stuck.enqueue(rpc::LockMode::PW).wait(io.waitScope);
  uint64_t taken = other.enqueue(rpc::LockMode::PW).wait(io.waitScope);  // after the eviction
  ASSERT_GT(taken, 0u);
  stuck.disconnect();
  stuck.connect(cluster.metaAddress(), 15);
  ASSERT_TRUE(stuck.evicted);
  uint64_t second = stuck.session;
  EXPECT_GT(second, first);
  other.cancel(taken);
  stuck.enqueue(rpc::LockMode::PW).wait(io.waitScope);
  LockClient third(io, cluster.metaAddress(), 17);
  EXPECT_GT(third.enqueue(rpc::LockMode::PW).wait(io.waitScope), 0u);  // evicted again
  DataClient back(io, cluster.address(1), 15);
  EXPECT_TRUE(back.evicted);
  EXPECT_EQ(back.evictedSession, second) << "first " << first << ", second " << second;
  EXPECT_EQ(back.read(82, 6), "before");
}

// A data target that has no session of the client when the fence comes (it restarted since,
// and the hung client has not come back) marks it all the same: at its return it is told it was
// evicted, and what it had queued there is not sent.
TEST(Locks, AClientFencedWhileADataTargetHadNoSessionOfItIsToldAtItsReturn) {
  TestCluster cluster(withLockTimeout());
  auto io = kj::setupAsyncIo();
  {
    DataClient joining(io, cluster.address(1), 10);
    ASSERT_EQ(joining.write(79, "before"), 0);
  }
  cluster.stopServer(1, SIGKILL);  // a crash: no session left of anyone
  ASSERT_TRUE(cluster.startServer(1));
  LockClient stuck(io, cluster.metaAddress(), 10), other(io, cluster.metaAddress(), 11);
  stuck.enqueue(rpc::LockMode::PW).wait(io.waitScope);
  EXPECT_GT(other.enqueue(rpc::LockMode::PW).wait(io.waitScope), 0u);
  EXPECT_NE(readWhole(cluster.log(1))
                .find("evicting client 0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a (not "
                      "connected)"),
            std::string::npos)
      << readWhole(cluster.log(1));
  DataClient back(io, cluster.address(1), 10);
  EXPECT_NE(readWhole(cluster.log(1)).find("is back after its eviction"), std::string::npos);
  EXPECT_EQ(back.read(79, 6), "before");  // what it had written before stays
}

// Client `uuidByte` joins data target 0 and writes `object` there; the target crashes; the
// client, stuck on a lock another client (`uuidByte` + 1) wants, is evicted while the target is
// down: the lock goes after the fence's limit.
void evictWhileTheDataTargetIsDown(TestCluster& cluster, kj::AsyncIoContext& io, kj::byte uuidByte,
                                   uint64_t object) {
  {
    DataClient joining(io, cluster.address(1), uuidByte);
    ASSERT_EQ(joining.write(object, "before"), 0);
  }
  cluster.stopServer(1, SIGKILL);
  LockClient stuck(io, cluster.metaAddress(), uuidByte);
  LockClient other(io, cluster.metaAddress(), kj::byte(uuidByte + 1));
  stuck.enqueue(rpc::LockMode::PW).wait(io.waitScope);
  EXPECT_GT(other.enqueue(rpc::LockMode::PW).wait(io.waitScope), 0u);
  EXPECT_NE(readWhole(cluster.log(0)).find("data target 0 not reached within"), std::string::npos);
}

// A data target that is down when a client is fenced (a crash, a restart that takes long) must
// not hold the lock up for good, but it must not miss the fence either: the client, waking up,
// could send there what it had queued under the locks it lost. The fence is owed, on disk (here
// through a crash of the metadata server too), and delivered when the target is back.
TEST(Locks, AFenceADataTargetMissedIsDeliveredWhenItIsBack) {
  TestCluster cluster(withLockTimeout());
  auto io = kj::setupAsyncIo();
  evictWhileTheDataTargetIsDown(cluster, io, 12, 80);
  cluster.stopServer(0, SIGKILL);
  ASSERT_TRUE(cluster.startServer(0));
  ASSERT_TRUE(spin(
      io,
      [&] {
        return readWhole(cluster.log(0)).find("1 client fences owed to data targets") !=
               std::string::npos;
      },
      5000))
      << readWhole(cluster.log(0));
  ASSERT_TRUE(cluster.startServer(1));
  ASSERT_TRUE(spin(
      io,
      [&] {
        return readWhole(cluster.log(1))
                   .find("evicting client 0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c (not connected)") !=
               std::string::npos;
      },
      10000))
      << readWhole(cluster.log(1));
  EXPECT_TRUE(spin(
      io,
      [&] {
        return readWhole(cluster.log(0)).find("fenced off data target 0") != std::string::npos;
      },
      5000));
  // The client, back there, is told; what it had written before stays.
  DataClient back(io, cluster.address(1), 12);
  EXPECT_NE(readWhole(cluster.log(1)).find("is back after its eviction"), std::string::npos);
  EXPECT_EQ(back.read(80, 6), "before");
}

// An owed fence is dropped once the client has come back to the metadata server and been told
// of its eviction: it throws away what it had queued itself, and the fence, late, would only end
// the session it makes with the data target afterwards.
TEST(Locks, AnOwedFenceIsDroppedWhenTheClientKnowsOfItsEviction) {
  TestCluster cluster(withLockTimeout());
  auto io = kj::setupAsyncIo();
  evictWhileTheDataTargetIsDown(cluster, io, 14, 81);
  LockClient back(io, cluster.metaAddress(), 14);
  EXPECT_TRUE(back.evicted);
  EXPECT_NE(readWhole(cluster.log(0)).find("knows of its eviction: 1 fences owed for it dropped"),
            std::string::npos)
      << readWhole(cluster.log(0));
  ASSERT_TRUE(cluster.startServer(1));
  // Registered again, the target would have been sent an owed fence at once; a retry's time
  // (ClientFence::RETRY, 2 s) is given as well.
  ASSERT_TRUE(spin(
      io,
      [&] {
        auto log = readWhole(cluster.log(0));
        return log.find("data target 0 registered") != log.rfind("data target 0 registered");
      },
      10000));
  io.provider->getTimer().afterDelay(2500 * kj::MILLISECONDS).wait(io.waitScope);
  EXPECT_EQ(readWhole(cluster.log(1)).find("evicting client 0e0e"), std::string::npos);
  // Back at the data target, it is a client of the previous instance, not one told it was
  // evicted.
  DataClient data(io, cluster.address(1), 14);
  EXPECT_EQ(readWhole(cluster.log(1)).find("is back after its eviction"), std::string::npos);
}

TEST(Locks, BadLockRequestsAreRefused) {
  TestCluster cluster(withLockTimeout());
  auto io = kj::setupAsyncIo();
  LockClient c(io, cluster.metaAddress(), 7);
  auto req = c.locks.enqueueRequest();
  auto r = req.initRequest();
  r.setType(99);
  EXPECT_ANY_THROW(req.send().wait(io.waitScope));
  auto req2 = c.locks.enqueueRequest();
  auto r2 = req2.initRequest();
  r2.setType(1);
  r2.setStart(10);
  r2.setEnd(5);
  EXPECT_ANY_THROW(req2.send().wait(io.waitScope));
  c.cancel(12345);  // unknown ids are not an error
  EXPECT_EQ(run({ctlBin(), "--server", cluster.metaAddress(), "status"}).status, 0);
}

}  // namespace
}  // namespace cairn::test
