// Bad input of every kind reaches a server straight over its socket, or as a bad target
// directory: each gets a clear error, the server keeps serving everyone else, nothing is lost.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <lmdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <capnp/rpc-twoparty.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>
#include <kj/async-io.h>

#include <fstream>
#include <string>

#include "rpc/cairn.capnp.h"
#include "rpc/feature_flags.h"
#include "tests/integration/cluster.h"
#include "tests/integration/raw_session.h"

namespace cairn::test {
namespace {

int connectTo(const std::string& address) {
  auto colon = address.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(std::stoi(address.substr(colon + 1)));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  return fd;
}

// Straight onto the socket: with TLS on, into the handshake.
void sendRaw(const std::string& address, const std::string& bytes) {
  int fd = connectTo(address);
  // The server may hang up before it has read it all: no SIGPIPE for the test.
  (void)!send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  usleep(50 * 1000);
  close(fd);
}

// Through an authenticated connection (as a client of the cluster), where the Cap'n Proto layer
// reads it.
void sendInside(const std::string& address, const std::string& bytes) {
  auto io = kj::setupAsyncIo();
  auto stream = connectStream(io, address);
  // The server may hang up before it has read it all.
  stream->write(bytes.data(), bytes.size()).catch_([](kj::Exception&&) {}).wait(io.waitScope);
  io.provider->getTimer().afterDelay(50 * kj::MILLISECONDS).wait(io.waitScope);
}

bool serving(TestCluster& cluster, int server) {
  return run({ctlBin(), "--server", cluster.address(server), "--timeout", "3", "status"}).status ==
         0;
}

// A raw Cap'n Proto session with the metadata server, as a (possibly hostile) client.
struct RawClient {
  explicit RawClient(const std::string& address)
      : io(kj::setupAsyncIo()),
        stream(connectStream(io, address)),
        client(*stream),
        bootstrap(client.bootstrap().castAs<rpc::Bootstrap>()) {}

  rpc::MetaSession::Client meta() {
    auto req = bootstrap.connectRequest();
    auto hello = req.initHello();
    auto uuid = kj::heapArray<kj::byte>(16);
    for (auto i : kj::indices(uuid)) uuid[i] = kj::byte(i * 7 + 1);
    hello.setClientUuid(uuid);
    hello.setSoftwareVersion("test");
    return req.send().wait(io.waitScope).getMeta();
  }

  // A data session on a data server's connection.
  rpc::DataSession::Client data() {
    auto req = bootstrap.connectRequest();
    req.initHello().setClientUuid(kj::heapArray<kj::byte>(16));
    return req.send().wait(io.waitScope).getData();
  }

  template <typename Build>
  int metaError(rpc::MetaSession::Client& meta, Build&& build) {
    auto req = meta.callRequest();
    build(req.initRequest());
    return req.send().wait(io.waitScope).getReply().getError();
  }

  kj::AsyncIoContext io;
  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyClient client;
  rpc::Bootstrap::Client bootstrap;
};

kj::Array<kj::byte> bytesOf(const std::string& s) {
  return kj::heapArray<kj::byte>(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}

TEST(BadInput, GarbageAndTruncatedMessagesLeaveTheServerServing) {
  TestCluster cluster;
  auto mnt = cluster.mount();
  std::ofstream(mnt + "/keep") << "precious";
  for (int server = 0; server < cluster.serverCount(); ++server) {
    // Garbage where the TLS handshake should be, and then the same inside TLS.
    sendRaw(cluster.address(server), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    sendRaw(cluster.address(server), std::string(100000, '\xff'));
    sendInside(cluster.address(server), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    sendInside(cluster.address(server), std::string(100000, '\xff'));
    // A frame header announcing one huge segment, then silence.
    sendInside(cluster.address(server), std::string("\x00\x00\x00\x00\xff\xff\xff\x0f", 8));
    // Half a real message.
    capnp::MallocMessageBuilder message;
    message.initRoot<rpc::MetaRequest>().initLookup().setName(bytesOf("some name"));
    auto words = capnp::messageToFlatArray(message);
    auto bytes = words.asBytes();
    sendInside(cluster.address(server),
               std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size() / 2));
    EXPECT_TRUE(serving(cluster, server)) << "server " << server;
  }
  std::ifstream in(mnt + "/keep");
  std::string back;
  in >> back;
  EXPECT_EQ(back, "precious");
}

TEST(BadInput, MalformedRequestsGetErrorsNotCrashes) {
  TestCluster cluster;
  RawClient raw(cluster.metaAddress());

  // A hello with a short uuid is refused.
  {
    auto req = raw.bootstrap.connectRequest();
    req.initHello().setClientUuid(bytesOf("short"));
    EXPECT_ANY_THROW(req.send().wait(raw.io.waitScope));
  }
  auto meta = raw.meta();
  using B = rpc::MetaRequest::Builder;
  EXPECT_EQ(raw.metaError(meta, [](B b) { b.setGetattr(987654321); }), ENOENT);
  // mkdir in the root under a hostile name.
  auto mkdirNamed = [&](std::string name) {
    return raw.metaError(meta, [&name](B b) {
      auto m = b.initMkdir();
      m.setParent(1);
      m.setName(bytesOf(name));
      m.setMode(0755);
    });
  };
  EXPECT_EQ(mkdirNamed("a/b"), EINVAL);
  EXPECT_EQ(mkdirNamed(std::string("nul\0inside", 10)), EINVAL);
  EXPECT_EQ(mkdirNamed(std::string(256, 'x')), ENAMETOOLONG);
  EXPECT_EQ(mkdirNamed(".."), EINVAL);
  EXPECT_EQ(mkdirNamed(""), EINVAL);
  EXPECT_EQ(raw.metaError(meta,
                          [](B b) {
                            auto s = b.initSymlink();
                            s.setParent(1);
                            s.setName(bytesOf("l"));
                            s.setTarget(bytesOf(std::string(5000, 'p')));
                          }),
            ENAMETOOLONG);
  EXPECT_EQ(raw.metaError(meta,
                          [](B b) {
                            auto m = b.initMknod();
                            m.setParent(1);
                            m.setName(bytesOf("weird"));
                            m.setMode(0170000);
                          }),
            EINVAL);
  EXPECT_EQ(raw.metaError(meta,
                          [](B b) {
                            auto r = b.initReaddir();
                            r.setIno(1);
                            r.setMaxEntries(4000000000u);
                          }),
            0);
  EXPECT_EQ(raw.metaError(meta,
                          [](B b) {
                            auto r = b.initRename();
                            r.setParent(1);
                            r.setName(bytesOf("x"));
                            r.setNewParent(1);
                            r.setNewName(bytesOf("y"));
                            r.setFlags(0xffff);
                          }),
            EINVAL);
  EXPECT_EQ(raw.metaError(meta,
                          [](B b) {
                            auto w = b.initWrote();
                            w.setIno(1);
                            w.setEnd(1);
                          }),
            EINVAL);
  EXPECT_EQ(raw.metaError(meta,
                          [](B b) {
                            auto s = b.initSetxattr();
                            s.setIno(1);
                            s.setName(bytesOf("user.big"));
                            s.setValue(kj::heapArray<kj::byte>(70000));
                          }),
            E2BIG);

  // A request kind this server does not know (a newer client): UNIMPLEMENTED, not a crash.
  {
    auto req = meta.callRequest();
    auto r = req.initRequest();
    r.setGetattr(1);
    auto offset =
        capnp::Schema::from<rpc::MetaRequest>().getProto().getStruct().getDiscriminantOffset();
    auto data = capnp::toAny(r).getDataSection();
    data[offset * 2] = kj::byte(0xe7);
    data[offset * 2 + 1] = kj::byte(0x03);
    try {
      req.send().wait(raw.io.waitScope);
      ADD_FAILURE() << "an unknown request kind was accepted";
    } catch (kj::Exception& e) {
      EXPECT_EQ(e.getType(), kj::Exception::Type::UNIMPLEMENTED);
    }
  }
  // An unknown method and an unknown interface.
  {
    auto req = raw.bootstrap.typelessRequest(capnp::typeId<rpc::Bootstrap>(), 77, nullptr);
    EXPECT_ANY_THROW(req.send().wait(raw.io.waitScope));
    auto req2 = raw.bootstrap.typelessRequest(0x1234567812345678ull, 0, nullptr);
    EXPECT_ANY_THROW(req2.send().wait(raw.io.waitScope));
  }
  EXPECT_TRUE(serving(cluster, 0));
  EXPECT_TRUE(serving(cluster, 1));
  // And a real client still works.
  auto mnt = cluster.mount();
  EXPECT_EQ(mkdir((mnt + "/fine").c_str(), 0755), 0);
}

// A batch of updates (MetaRequest.batch) applies each alone in one transaction: one that fails
// (a name not there) leaves the others done and itself without a trace. Batches of what a client
// never answers ahead, empty or oversized ones, nested ones, and updates in them numbered on their
// own are refused; the server goes on.
TEST(BadInput, BatchesAreCheckedAndEachUpdateInThemEndsAlone) {
  TestCluster cluster;
  RawClient raw(cluster.metaAddress());
  auto meta = raw.meta();
  using B = rpc::MetaRequest::Builder;
  ASSERT_EQ(raw.metaError(meta,
                          [](B b) {
                            auto m = b.initMkdir();
                            m.setParent(1);
                            m.setName(bytesOf("bt"));
                            m.setMode(0755);
                          }),
            0);
  auto lookup = [&](uint64_t parent, const std::string& name) -> uint64_t {
    auto req = meta.callRequest();
    auto l = req.initRequest().initLookup();
    l.setParent(parent);
    l.setName(bytesOf(name));
    auto resp = req.send().wait(raw.io.waitScope);  // the reply lives in it
    auto reply = resp.getReply();
    return reply.getError() == 0 ? reply.getAttr().getIno() : 0;
  };
  uint64_t dir = lookup(1, "bt");
  ASSERT_NE(dir, 0u);
  for (auto name : {"a", "b", "c"}) {
    ASSERT_EQ(raw.metaError(meta,
                            [&](B b) {
                              auto m = b.initMknod();
                              m.setParent(dir);
                              m.setName(bytesOf(name));
                              m.setMode(S_IFREG | 0644);
                            }),
              0);
  }
  auto unlinkOf = [dir](rpc::MetaRequest::Builder b, const std::string& name) {
    auto u = b.initUnlink();
    u.setParent(dir);
    u.setName(bytesOf(name));
  };
  {
    auto req = meta.callRequest();
    auto r = req.initRequest();
    r.setRequestId(1);
    auto list = r.initBatch(3);
    unlinkOf(list[0], "a");
    unlinkOf(list[1], "not-there");
    unlinkOf(list[2], "c");
    auto resp = req.send().wait(raw.io.waitScope);
    auto reply = resp.getReply();
    EXPECT_EQ(reply.getError(), 0);
    ASSERT_TRUE(reply.isBatch());
    ASSERT_EQ(reply.getBatch().size(), 3u);
    EXPECT_EQ(reply.getBatch()[0].getError(), 0);
    EXPECT_EQ(reply.getBatch()[1].getError(), ENOENT);
    EXPECT_EQ(reply.getBatch()[2].getError(), 0);
    EXPECT_NE(reply.getTransno(), 0u);
  }
  EXPECT_EQ(lookup(dir, "a"), 0u);
  EXPECT_NE(lookup(dir, "b"), 0u);
  EXPECT_EQ(lookup(dir, "c"), 0u);
  // Refused as a whole, with an exception: nothing of it is applied.
  auto refused = [&](kj::Function<void(B)> build) {
    auto req = meta.callRequest();
    build(req.initRequest());
    try {
      req.send().wait(raw.io.waitScope);
      return false;
    } catch (kj::Exception&) {
      return true;
    }
  };
  EXPECT_TRUE(refused([](B b) { b.initBatch(0); }));
  EXPECT_TRUE(refused([&](B b) {
    auto list = b.initBatch(features::MAX_BATCH + 1);
    for (auto one : list) unlinkOf(one, "b");
  }));
  EXPECT_TRUE(refused([&](B b) {
    auto list = b.initBatch(2);
    unlinkOf(list[0], "b");
    auto m = list[1].initMkdir();  // never answered ahead
    m.setParent(dir);
    m.setName(bytesOf("sub"));
    m.setMode(0755);
  }));
  EXPECT_TRUE(refused([&](B b) {
    auto list = b.initBatch(1);
    unlinkOf(list[0].initBatch(1)[0], "b");
  }));
  uint64_t file = lookup(dir, "b");
  EXPECT_TRUE(refused([&](B b) {
    auto s = b.initBatch(1)[0].initSetattr();  // a truncate: never behind, never batched
    s.setIno(file);
    s.setValid(rpc::SET_SIZE);
    s.setSize(0);
  }));
  EXPECT_TRUE(refused([&](B b) {
    auto list = b.initBatch(1);
    unlinkOf(list[0], "b");
    list[0].setRequestId(7);
  }));
  EXPECT_NE(lookup(dir, "b"), 0u);
  // What write-behind sends after files' data goes in batches too (features::BATCH_ATTRS).
  {
    auto req = meta.callRequest();
    auto r = req.initRequest();
    r.setRequestId(2);
    auto list = r.initBatch(2);
    auto w = list[0].initWrote();
    w.setIno(file);
    w.setEnd(4096);
    auto s = list[1].initSetattr();
    s.setIno(file);
    s.setValid(rpc::SET_MODE);
    s.setMode(S_IFREG | 0600);
    auto resp = req.send().wait(raw.io.waitScope);
    auto reply = resp.getReply();
    ASSERT_TRUE(reply.isBatch());
    ASSERT_EQ(reply.getBatch().size(), 2u);
    EXPECT_EQ(reply.getBatch()[0].getError(), 0);
    EXPECT_EQ(reply.getBatch()[1].getError(), 0);
    EXPECT_EQ(reply.getBatch()[1].getAttr().getSize(), 4096u);
    EXPECT_EQ(reply.getBatch()[1].getAttr().getMode(), uint32_t(S_IFREG | 0600));
  }
  EXPECT_TRUE(serving(cluster, 0));
}

// Creates answered ahead name an inode number the server set aside for the caller: a number of
// nobody's, of another client's, one used already, a layout not of this target, an absurd count
// to reserve, or more reserved than a client may hold, are refused; the server goes on.
TEST(BadInput, CreatesAheadWithForeignNumbersOrLayoutsAreRefused) {
  TestCluster cluster;
  RawClient raw(cluster.metaAddress());
  auto mine = raw.meta();
  auto other = [&] {
    auto req = raw.bootstrap.connectRequest();
    auto hello = req.initHello();
    auto uuid = kj::heapArray<kj::byte>(16);
    for (auto i : kj::indices(uuid)) uuid[i] = kj::byte(200 - i);
    hello.setClientUuid(uuid);
    hello.setSoftwareVersion("test");
    return req.send().wait(raw.io.waitScope).getMeta();
  }();
  using B = rpc::MetaRequest::Builder;
  uint64_t id = 1;
  auto reserve = [&](rpc::MetaSession::Client& meta, uint32_t count) {
    auto req = meta.callRequest();
    auto r = req.initRequest();
    r.setRequestId(id++);
    r.setReserveInodes(count);
    return req.send().wait(raw.io.waitScope);
  };
  EXPECT_ANY_THROW(reserve(mine, 0));
  EXPECT_ANY_THROW(reserve(mine, 5000));
  auto got = reserve(mine, 4);
  ASSERT_EQ(got.getReply().getError(), 0);
  auto layouts = got.getReply().getReserved();
  ASSERT_EQ(layouts.size(), 4u);
  uint64_t first = layouts[0].getObjectId();
  auto create = [&](rpc::MetaSession::Client& meta, const char* name, uint64_t ino,
                    uint64_t objectId, uint32_t target) {
    return raw.metaError(meta, [&](B b) {
      b.setRequestId(id++);
      auto c = b.initCreate();
      c.setParent(1);
      c.setName(bytesOf(name));
      c.setMode(0644);
      c.setFlags(O_CREAT | O_EXCL | O_WRONLY);
      c.setHandle(id);
      c.setIno(ino);
      c.initTime().setSec(1700000000);
      auto l = c.initLayout();
      l.setObjectId(objectId);
      l.setStripeSize(layouts[0].getStripeSize());
      l.initTargets(1).set(0, target);
    });
  };
  uint32_t target = layouts[0].getTargets()[0];
  EXPECT_EQ(create(mine, "nobodys", first + 1000000, first + 1000000, target), EINVAL);
  EXPECT_EQ(create(other, "theirs", first, first, target), EINVAL);
  EXPECT_ANY_THROW(create(mine, "wrong-object", first, first + 1, target));
  EXPECT_ANY_THROW(create(mine, "wrong-target", first, first, 99));
  EXPECT_EQ(create(mine, "fine", first, first, target), 0);
  EXPECT_EQ(create(mine, "again", first, first, target), EINVAL);  // used once already
  // A client holds at most 4,096 numbers unused.
  int refused = 0;
  for (int i = 0; i < 5; ++i) {
    if (reserve(mine, 1024).getReply().getError() == EDQUOT) ++refused;
  }
  EXPECT_EQ(refused, 2);
  EXPECT_TRUE(serving(cluster, 0));
  auto mnt = cluster.mount();
  struct stat st;
  ASSERT_EQ(stat((mnt + "/fine").c_str(), &st), 0);
  EXPECT_EQ(st.st_ino, first);
  EXPECT_NE(stat((mnt + "/again").c_str(), &st), 0);
}

TEST(BadInput, AbsurdDataRequestsGetErrors) {
  TestCluster cluster;
  RawClient data(cluster.address(1));
  auto session = data.data();
  auto w = session.callRequest();
  auto write = w.initRequest().initWrite();
  write.setObjectId(5);
  write.setOffset(uint64_t(1) << 63);
  write.setData(bytesOf("x"));
  EXPECT_EQ(w.send().wait(data.io.waitScope).getReply().getError(), EFBIG);
  auto r = session.callRequest();
  r.initRequest().initRead().setLength(1u << 30);
  EXPECT_ANY_THROW(r.send().wait(data.io.waitScope));
  auto t = session.callRequest();
  t.initRequest().initTruncate().setSize(~uint64_t(0));
  EXPECT_EQ(t.send().wait(data.io.waitScope).getReply().getError(), EINVAL);
  EXPECT_TRUE(serving(cluster, 1));
}

// Reads that reach past what an object holds get what is there, up to its last stored byte
// in the range; holes before it come as zeros. (The server builds the reply's blob in place and
// cuts it there.)
TEST(BadInput, ReadsPastTheEndOfAnObjectGetWhatIsThere) {
  TestCluster cluster;
  RawClient data(cluster.address(1));
  auto session = data.data();
  auto pattern = kj::heapArray<kj::byte>(100 * 1024 + 3);
  for (auto i : kj::indices(pattern)) pattern[i] = kj::byte(i * 31 + 7);
  auto w = session.callRequest();
  auto write = w.initRequest().initWrite();
  write.setObjectId(9);
  write.setOffset(200 * 1024);  // a hole of 200 KiB first
  write.setData(pattern);
  ASSERT_EQ(w.send().wait(data.io.waitScope).getReply().getError(), 0);
  auto read = [&](uint64_t offset, uint32_t length) {
    auto r = session.callRequest();
    auto rd = r.initRequest().initRead();
    rd.setObjectId(9);
    rd.setOffset(offset);
    rd.setLength(length);
    auto resp = r.send().wait(data.io.waitScope);
    EXPECT_EQ(resp.getReply().getError(), 0);
    return kj::heapArray<kj::byte>(resp.getReply().getData());
  };
  uint64_t end = 200 * 1024 + pattern.size();
  auto whole = read(0, 1 << 20);  // far past the end: cut at the last stored byte
  ASSERT_EQ(whole.size(), end);
  for (size_t i = 0; i < 200 * 1024; ++i) ASSERT_EQ(whole[i], 0) << "hole byte " << i;
  EXPECT_EQ(whole.slice(200 * 1024, end), pattern.asPtr());
  auto exact = read(200 * 1024, uint32_t(pattern.size()));  // exactly what is there
  EXPECT_EQ(exact.asPtr(), pattern.asPtr());
  auto tail = read(end - 10, 4096);
  EXPECT_EQ(tail.asPtr(), pattern.slice(pattern.size() - 10, pattern.size()));
  EXPECT_EQ(read(end, 4096).size(), 0u);
  EXPECT_EQ(read(5 << 20, 4096).size(), 0u);
  // Within the hole, the object going on after it: nothing stored there, so nothing comes
  // back (the client makes the zeros, as for any reply shorter than asked).
  EXPECT_EQ(read(0, 4096).size(), 0u);
  EXPECT_TRUE(serving(cluster, 1));
}

TEST(BadInput, OversizedMessagesAndTooManyConnectionsAreRefused) {
  TestCluster::Options options;
  options.dataServers = 1;
  options.metaArgs = {"--max-connections", "6"};
  TestCluster cluster(options);
  auto mnt = cluster.mount();
  std::ofstream(mnt + "/keep") << "precious";
  {
    // A write of 20 MiB in one message: past the 16 MiB a server reads as one.
    RawClient data(cluster.address(1));
    auto w = data.data().callRequest();
    auto write = w.initRequest().initWrite();
    write.setObjectId(5);
    write.initData(20 << 20);
    EXPECT_ANY_THROW(w.send().wait(data.io.waitScope));
  }
  EXPECT_TRUE(serving(cluster, 1));
  // Connections past --max-connections are closed at once; the ones open go on.
  auto io = kj::setupAsyncIo();
  std::vector<kj::Own<kj::AsyncIoStream>> held;
  int refused = 0;
  for (int i = 0; i < 8; ++i) {
    try {
      held.push_back(connectStream(io, cluster.metaAddress()));
    } catch (kj::Exception&) {
      ++refused;  // closed before the handshake
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_TRUE(waitFor(
      [&] {
        std::ifstream in(cluster.log(0));
        std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        return all.find("connections open, the limit") != std::string::npos;
      },
      5000));
  held.clear();
  std::ifstream in(mnt + "/keep");
  std::string back;
  in >> back;
  EXPECT_EQ(back, "precious");
}

TEST(BadInput, ResentUpdatesAreAnsweredFromTheRecord) {
  TestCluster cluster;
  RawClient raw(cluster.metaAddress());
  auto meta = raw.meta();
  auto mkdirAs = [&](uint64_t requestId) {
    auto req = meta.callRequest();
    auto r = req.initRequest();
    r.setRequestId(requestId);
    r.setOldestUnreplied(requestId);
    auto m = r.initMkdir();
    m.setParent(1);
    m.setName(bytesOf("once"));
    m.setMode(0755);
    auto reply = req.send().wait(raw.io.waitScope);
    return std::make_pair(reply.getReply().getError(), reply.getReply().getTransno());
  };
  auto first = mkdirAs(1);
  EXPECT_EQ(first.first, 0);
  auto resend = mkdirAs(1);  // the same request again: the recorded reply, not EEXIST
  EXPECT_EQ(resend.first, 0);
  EXPECT_EQ(resend.second, first.second);
  EXPECT_EQ(mkdirAs(2).first, EEXIST);  // a new request is applied
}

// Replies can reach a client out of order (resends after a reconnect go in no set order), so
// each says which transaction its attributes are as of, and the client keeps the newest
// (InodeTable::sawAttr). A resend of an update applied long ago gets the reply recorded then:
// older than a read made since, by its asOf as by its contents.
TEST(BadInput, EveryReplySaysWhichTransactionItsAttributesAreAsOf) {
  TestCluster cluster;
  RawClient raw(cluster.metaAddress());
  auto meta = raw.meta();
  using B = rpc::MetaRequest::Builder;
  // Request `id` (0: a read) built by `build`: the reply's error, asOf, transno, size.
  struct Seen {
    int error;
    uint64_t asOf, transno, size;
  };
  auto call = [&](uint64_t id, kj::Function<void(B)> build) {
    auto req = meta.callRequest();
    auto r = req.initRequest();
    r.setRequestId(id);
    r.setOldestUnreplied(1);
    build(r);
    auto resp = req.send().wait(raw.io.waitScope);
    auto reply = resp.getReply();
    uint64_t size = reply.isAttr() ? reply.getAttr().getSize() : UINT64_MAX;
    return Seen{reply.getError(), reply.getAsOf(), reply.getTransno(), size};
  };
  auto make = [](B b) {
    auto m = b.initMknod();
    m.setParent(1);
    m.setName(bytesOf("grows"));
    m.setMode(S_IFREG | 0644);
  };
  auto made = call(1, make);
  ASSERT_EQ(made.error, 0);
  EXPECT_EQ(made.asOf, made.transno);
  EXPECT_EQ(made.size, 0u);
  uint64_t ino = 0;
  {
    auto req = meta.callRequest();
    auto l = req.initRequest().initLookup();
    l.setParent(1);
    l.setName(bytesOf("grows"));
    ino = req.send().wait(raw.io.waitScope).getReply().getAttr().getIno();
  }
  ASSERT_NE(ino, 0u);
  auto grown = call(2, [ino](B b) {
    auto w = b.initWrote();
    w.setIno(ino);
    w.setEnd(8192);
  });
  ASSERT_EQ(grown.error, 0);
  EXPECT_EQ(grown.asOf, grown.transno);
  EXPECT_GT(grown.asOf, made.asOf);
  EXPECT_EQ(grown.size, 8192u);
  // A read: as of the last commit, which it shows.
  auto read = call(0, [ino](B b) { b.setGetattr(ino); });
  ASSERT_EQ(read.error, 0);
  EXPECT_GE(read.asOf, grown.asOf);
  EXPECT_EQ(read.size, 8192u);
  // The first update again: the reply recorded when it was applied, size 0 and as of then.
  auto resent = call(1, make);
  EXPECT_EQ(resent.error, 0);
  EXPECT_EQ(resent.asOf, made.asOf);
  EXPECT_EQ(resent.size, 0u);
  EXPECT_LT(resent.asOf, read.asOf);
  // A batch: one transaction, each reply as of it.
  auto req = meta.callRequest();
  auto r = req.initRequest();
  r.setRequestId(3);
  r.setOldestUnreplied(1);
  auto list = r.initBatch(2);
  for (auto i : kj::indices(list)) {
    auto w = list[i].initWrote();
    w.setIno(ino);
    w.setEnd(16384 * (i + 1));
  }
  auto resp = req.send().wait(raw.io.waitScope);
  auto reply = resp.getReply();
  ASSERT_TRUE(reply.isBatch());
  EXPECT_GT(reply.getAsOf(), read.asOf);
  for (auto one : reply.getBatch()) {
    EXPECT_EQ(one.getError(), 0);
    EXPECT_EQ(one.getAsOf(), reply.getAsOf());
  }
  EXPECT_EQ(reply.getBatch()[1].getAttr().getSize(), 32768u);
}

void expectRefused(const std::vector<std::string>& argv, const std::string& phrase) {
  auto r = run(argv);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find(phrase), std::string::npos) << r.err;
}

TEST(BadInput, DamagedForeignAndWrongTargetsAreRefused) {
  TempDir tmp;
  auto dir = [&](const std::string& n) { return tmp.path() + "/" + n; };
  auto serve = [&](const std::string& d, const std::string& kind) {
    return std::vector<std::string>{serverBin(), "serve", "--dir", d,
                                    "--kind",    kind,    "--mgs", "127.0.0.1:1"};
  };
  expectRefused(serve(dir("missing"), "meta"), "does not exist");
  mkdir(dir("empty").c_str(), 0700);
  expectRefused(serve(dir("empty"), "meta"), "format it first");
  // Garbage where the LMDB file should be.
  mkdir(dir("garbage").c_str(), 0700);
  std::ofstream(dir("garbage") + "/data.mdb") << std::string(100000, 'g');
  expectRefused(serve(dir("garbage"), "meta"), "cannot open the target's LMDB environment");
  // A valid LMDB environment that is not a Cairn target.
  mkdir(dir("foreign").c_str(), 0700);
  {
    MDB_env* env;
    ASSERT_EQ(mdb_env_create(&env), 0);
    ASSERT_EQ(mdb_env_open(env, dir("foreign").c_str(), 0, 0600), 0);
    MDB_txn* txn;
    MDB_dbi dbi;
    mdb_txn_begin(env, nullptr, 0, &txn);
    mdb_dbi_open(txn, nullptr, 0, &dbi);
    MDB_val k{3, const_cast<char*>("abc")}, v{3, const_cast<char*>("def")};
    mdb_put(txn, dbi, &k, &v, 0);
    mdb_txn_commit(txn);
    mdb_env_close(env);
  }
  expectRefused(serve(dir("foreign"), "meta"), "not a Cairn target");
  // The wrong kind, and another filesystem's target.
  ASSERT_EQ(run({serverBin(), "format", "--dir", dir("m"), "--kind", "meta", "--fs", "one"}).status,
            0);
  expectRefused(serve(dir("m"), "data"), "another kind");
  auto other = serve(dir("m"), "meta");
  other.push_back("--fs");
  other.push_back("two");
  expectRefused(other, "another filesystem");
  // Formatting over a target is refused; the target is intact afterwards.
  expectRefused({serverBin(), "format", "--dir", dir("m"), "--kind", "meta", "--fs", "x"},
                "already holds a target");
  auto ok = serve(dir("m"), "meta");
  Child server(ok);
  EXPECT_TRUE(waitFor([&] { return !server.alive(); }, 300) == false);
  // A second server on the same target is refused while the first runs.
  expectRefused(serve(dir("m"), "meta"), "being served by another process");
}

TEST(BadInput, DataServerOfAnotherFilesystemIsNotRegistered) {
  TestCluster cluster;
  TempDir tmp;
  auto d = tmp.path() + "/stranger";
  ASSERT_EQ(
      run({serverBin(), "format", "--dir", d, "--kind", "data", "--fs", "test", "--index", "7"})
          .status,
      0);
  Child stranger({serverBin(), "serve", "--dir", d, "--kind", "data", "--mgs",
                  cluster.metaAddress(), "--log-file", tmp.path() + "/log", "--tls",
                  cluster.issue("server", "stranger", "stranger")});
  EXPECT_TRUE(waitFor(
      [&] {
        std::ifstream in(tmp.path() + "/log");
        std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        return all.find("refused this target") != std::string::npos;
      },
      5000));
  EXPECT_EQ(cluster.status(0).find("\"index\":7"), std::string::npos);
  EXPECT_TRUE(serving(cluster, 0));
  // It keeps asking, backing off: not a reconnect every few milliseconds.
  usleep(2 * 1000 * 1000);
  std::ifstream in(tmp.path() + "/log");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t refusals = 0;
  for (size_t at = 0; (at = all.find("refused this target", at)) != std::string::npos; ++at) {
    ++refusals;
  }
  EXPECT_LE(refusals, 20u) << "refusals in about 2 s";
}

TEST(BadInput, FullTargetsAnswerENOSPCAndLoseNothing) {
  TestCluster::Options options;
  options.dataServers = 1;
  options.dataArgs = {"--map-size", std::to_string(8 << 20)};
  TestCluster cluster(options);
  auto mnt = cluster.mount();
  std::string keep(1 << 20, 'k');
  {
    int fd = open((mnt + "/keep").c_str(), O_CREAT | O_WRONLY, 0644);
    ASSERT_EQ(write(fd, keep.data(), keep.size()), ssize_t(keep.size()));
    close(fd);
  }
  int fd = open((mnt + "/fill").c_str(), O_CREAT | O_WRONLY, 0644);
  std::string chunk(1 << 20, 'f');
  int err = 0;
  for (int i = 0; i < 64 && err == 0; ++i) {
    if (write(fd, chunk.data(), chunk.size()) < 0) err = errno;
  }
  // Writes queued behind report a failure at a later write, or at fsync and close.
  if (err == 0 && fsync(fd) != 0) err = errno;
  EXPECT_EQ(err, ENOSPC);
  close(fd);
  EXPECT_TRUE(serving(cluster, 1));
  int in = open((mnt + "/keep").c_str(), O_RDONLY);
  std::string back(keep.size(), '\0');
  EXPECT_EQ(read(in, back.data(), back.size()), ssize_t(back.size()));
  close(in);
  EXPECT_TRUE(back == keep);
  // Space comes back once the file is gone.
  ASSERT_EQ(unlink((mnt + "/fill").c_str()), 0);
  ASSERT_TRUE(waitFor([&] { return jsonNumber(cluster.status(0), "destroyQueue") == 0; }, 5000));
  fd = open((mnt + "/again").c_str(), O_CREAT | O_WRONLY, 0644);
  EXPECT_EQ(write(fd, chunk.data(), chunk.size()), ssize_t(chunk.size()));
  close(fd);
}

TEST(BadInput, FullMetadataTargetAnswersENOSPC) {
  TestCluster::Options options;
  options.dataServers = 1;
  options.metaArgs = {"--map-size", std::to_string(2 << 20)};
  TestCluster cluster(options);
  auto mnt = cluster.mount();
  int err = 0, made = 0;
  for (int i = 0; i < 20000 && err == 0; ++i) {
    std::string name = mnt + "/d" + std::to_string(i) + std::string(200, 'x');
    if (mkdir(name.c_str(), 0755) != 0) {
      err = errno;
    } else {
      ++made;
    }
  }
  EXPECT_EQ(err, ENOSPC);
  EXPECT_GT(made, 10);
  EXPECT_TRUE(serving(cluster, 0));
  struct stat st;
  EXPECT_EQ(stat((mnt + "/d0" + std::string(200, 'x')).c_str(), &st), 0);
}

}  // namespace
}  // namespace cairn::test
