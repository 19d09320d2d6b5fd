// Hostile input for a server's entry points: a metadata server and a data server, real ones
// (LMDB targets in a temporary directory, the services and the lock manager as cairn-server
// wires them), each serving the bootstrap capability in process over a pipe. Every input is a
// FuzzInput message (tests/fuzz/fuzz_input.capnp): requests sent one after another on a client's
// sessions, as a client would send them. Whatever comes in, the server answers (an error reply
// or an exception) and goes on: a crash, a sanitizer report or a hang is a finding.
//
// Built two ways:
//  - with clang and -Dfuzzing=true: a libFuzzer target (tools/fuzz runs it; CI for a minute);
//  - in every build: `server_fuzz FILE...` replays inputs (the committed corpus, and every
//    finding, become regression tests in `meson test`).
#include <capnp/rpc-twoparty.h>
#include <capnp/serialize.h>
#include <fcntl.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "objserver/destroyer.h"
#include "objserver/namespace.h"
#include "objserver/object_store.h"
#include "objserver/open_files.h"
#include "objserver/posix_locks.h"
#include "objserver/server.h"
#include "rpc/feature_flags.h"
#include "rpc/transport.h"
#include "tests/fuzz/fuzz_input.capnp.h"

namespace cairn::fuzz {
namespace {

// Callbacks land here and are answered; cancelling is the input's business.
class Callback final : public rpc::LockCallback::Server {
public:
  kj::Promise<void> blocking(BlockingContext) override { return kj::READY_NOW; }
};

// One target served in process, and a client's sessions with it.
class Served {
public:
  Served(kj::AsyncIoContext& io, const std::string& dir, rpc::TargetKind kind, kj::StringPtr fsUuid,
         uint32_t index)
      : io_(io) {
    FormatOptions format;
    format.kind = kind;
    format.fsName = kj::str("fuzz");
    format.fsUuid = kj::str(fsUuid);
    format.index = index;
    format.stripeSize = 64 * 1024;
    Target::format(dir.c_str(), format);
    OpenOptions open;
    open.mapSize = uint64_t(256) << 20;  // small: full-target paths get their turn
    target_ = kj::heap<Target>(dir.c_str(), kind, kj::mv(open));
    ServerConfig config;
    config.advertise = kj::str("fuzz");
    config.lockTimeout = 1 * kj::SECONDS;
    config.recoveryWindow = 0 * kj::SECONDS;
    // Requests as uid 0 act as a squashed root, whose permissions the server checks.
    config.squash.enabled = true;
    ctx_ = kj::heap<ServerContext>(io, io.provider->getNetwork(), *target_, kj::mv(config));
    ctx_->startRecovery();
    if (kind == rpc::TargetKind::META) {
      opens_ = kj::heap<OpenFiles>();
      auto& of = *opens_;
      ns_ = kj::heap<Namespace>(*target_, [&of](uint64_t ino) { return of.isOpen(ino); });
      posixLocks_ = kj::heap<PosixLocks>();
      ctx_->ns = *ns_;
      ctx_->opens = *opens_;
      ctx_->posixLocks = *posixLocks_;
    } else {
      objects_ = kj::heap<ObjectStore>(*target_);
      ctx_->objects = *objects_;
    }
    connect();
  }

  // A new connection and session, as after a lost connection (same client uuid).
  void connect() {
    meta_ = nullptr;
    data_ = nullptr;
    locks_ = nullptr;
    client_ = nullptr;
    server_ = nullptr;
    auto pipe = kj::newTwoWayPipe();
    serverEnd_ = kj::mv(pipe.ends[0]);
    clientEnd_ = kj::mv(pipe.ends[1]);
    server_ = kj::heap<capnp::TwoPartyClient>(
        *serverEnd_,
        kj::heap<ServerImpl>(
            *ctx_, Peer{Peer::Role::CLIENT, kj::str("fuzzer"), kj::str("pipe"), true, kj::str()}),
        capnp::rpc::twoparty::Side::SERVER);
    client_ = kj::heap<capnp::TwoPartyClient>(*clientEnd_);
    auto req = client_->bootstrap().castAs<rpc::Bootstrap>().connectRequest();
    auto hello = req.initHello();
    auto uuid = kj::heapArray<kj::byte>(16);
    for (auto i : kj::indices(uuid)) uuid[i] = kj::byte(0xf0 + i);
    hello.setClientUuid(uuid);
    hello.setSoftwareVersion("fuzz");
    hello.setFeatures(features::SUPPORTED);
    hello.setHostName("fuzzer");
    req.setCallback(kj::heap<Callback>());
    auto reply = req.send().wait(io_.waitScope);
    if (reply.hasMeta()) meta_ = reply.getMeta();
    if (reply.hasData()) data_ = reply.getData();
    locks_ = reply.getLocks();
  }

  // Sends one step; an error reply or an exception is an answer too.
  void step(FuzzInput::Step::Reader s) {
    auto& timer = io_.provider->getTimer();
    // A request that waits (a lock held elsewhere, a full recovery queue) is given up on.
    auto limit = [&timer](auto promise) {
      return promise.ignoreResult().exclusiveJoin(timer.afterDelay(200 * kj::MILLISECONDS));
    };
    try {
      switch (s.which()) {
        case FuzzInput::Step::META:
          KJ_IF_MAYBE (meta, meta_) {
            auto req = meta->callRequest();
            req.setRequest(s.getMeta());
            limit(req.send()).wait(io_.waitScope);
          }
          break;
        case FuzzInput::Step::DATA:
          KJ_IF_MAYBE (data, data_) {
            auto req = data->callRequest();
            req.setRequest(s.getData());
            limit(req.send()).wait(io_.waitScope);
          }
          break;
        case FuzzInput::Step::LOCK: {
          auto req = KJ_ASSERT_NONNULL(locks_).enqueueRequest();
          req.setRequest(s.getLock());
          limit(req.send()).wait(io_.waitScope);
          break;
        }
        case FuzzInput::Step::CANCEL: {
          auto req = KJ_ASSERT_NONNULL(locks_).cancelRequest();
          req.setLockId(s.getCancel());
          limit(req.send()).wait(io_.waitScope);
          break;
        }
        case FuzzInput::Step::CONVERT: {
          auto req = KJ_ASSERT_NONNULL(locks_).convertManyRequest();
          req.initLockIds(1).set(0, s.getConvert().getLockId());
          req.setMode(s.getConvert().getMode());
          limit(req.send()).wait(io_.waitScope);
          break;
        }
        case FuzzInput::Step::RECONNECT:
          connect();
          break;
        case FuzzInput::Step::BOOTSTRAP:
          bootstrapCall(s.getBootstrap(), limit);
          break;
      }
    } catch (kj::Exception& e) {
      // The server said no (or dropped the connection): start over on a new one if it went.
      if (e.getType() == kj::Exception::Type::DISCONNECTED) connect();
    }
  }

private:
  template <typename Limit>
  void bootstrapCall(FuzzInput::BootstrapCall::Reader c, Limit& limit) {
    using B = FuzzInput::BootstrapCall;
    static const Peer::Role roles[] = {Peer::Role::CLIENT, Peer::Role::SERVER, Peer::Role::ADMIN};
    auto role = roles[kj::min(uint(c.getAs()), 2u)];
    auto pipe = kj::newTwoWayPipe();
    capnp::TwoPartyClient server(
        *pipe.ends[0],
        kj::heap<ServerImpl>(*ctx_, Peer{role, kj::str("peer"), kj::str("pipe"), true, kj::str()}),
        capnp::rpc::twoparty::Side::SERVER);
    capnp::TwoPartyClient client(*pipe.ends[1]);
    auto b = client.bootstrap().castAs<rpc::Bootstrap>();
    switch (c.which()) {
      case B::STATUS:
        limit(b.statusRequest().send()).wait(io_.waitScope);
        break;
      case B::PING:
        limit(b.pingRequest().send()).wait(io_.waitScope);
        break;
      case B::MAY_MOUNT:
        limit(b.mayMountRequest().send()).wait(io_.waitScope);
        break;
      case B::EVICT: {
        auto req = b.evictRequest();
        req.setClientUuid(c.getEvict());
        limit(req.send()).wait(io_.waitScope);
        break;
      }
      case B::REGISTER_TARGET: {
        auto req = b.registerTargetRequest();
        req.setFsUuid(c.getRegisterTarget().getFsUuid());
        req.setTarget(c.getRegisterTarget().getTarget());
        limit(req.send()).wait(io_.waitScope);
        break;
      }
      case B::CONNECT: {
        auto req = b.connectRequest();
        req.setHello(c.getConnect());
        req.setCallback(kj::heap<Callback>());
        limit(req.send()).wait(io_.waitScope);
        break;
      }
    }
  }

  kj::AsyncIoContext& io_;
  kj::Own<Target> target_;
  kj::Own<ServerContext> ctx_;
  kj::Own<OpenFiles> opens_;
  kj::Own<Namespace> ns_;
  kj::Own<PosixLocks> posixLocks_;
  kj::Own<ObjectStore> objects_;
  kj::Own<kj::AsyncIoStream> serverEnd_, clientEnd_;
  kj::Own<capnp::TwoPartyClient> server_, client_;
  kj::Maybe<rpc::MetaSession::Client> meta_;
  kj::Maybe<rpc::DataSession::Client> data_;
  kj::Maybe<rpc::LockSession::Client> locks_;
};

struct World {
  World() : io(kj::setupAsyncIo()) {
    char tmpl[] = "/tmp/cairn-fuzz-XXXXXX";
    KJ_ASSERT(mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    auto uuid = kj::str("0123456789abcdef0123456789abcdef");
    meta = kj::heap<Served>(io, dir + "/meta", rpc::TargetKind::META, uuid, 0);
    data = kj::heap<Served>(io, dir + "/data", rpc::TargetKind::DATA, uuid, 0);
  }
  kj::AsyncIoContext io;
  std::string dir;
  kj::Own<Served> meta, data;
};

// The targets' directory, removed when the process exits (libFuzzer and the replayer both end
// with exit(); the servers themselves are left to the exit, as a crash would leave them).
std::string* worldDir = nullptr;

void removeWorldDir() {
  if (worldDir != nullptr) std::filesystem::remove_all(*worldDir);
}

World& world() {
  static World* w = [] {
    spdlog::set_level(spdlog::level::off);  // the servers' refusals are the expected answers
    auto* made = new World();
    worldDir = new std::string(made->dir);
    std::atexit(removeWorldDir);
    return made;
  }();
  return *w;
}

}  // namespace

// One input: parsed with limits a server's RPC layer would also apply; what does not parse is
// no request at all.
// Returns the number of steps sent.
int runOne(const uint8_t* bytes, size_t size) {
  if (size % sizeof(capnp::word) != 0 || size == 0 || size > (1 << 20)) return 0;
  auto words = kj::heapArray<capnp::word>(size / sizeof(capnp::word));
  memcpy(words.begin(), bytes, size);
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 1 << 17;
  options.nestingLimit = 32;
  auto& w = world();
  int sent = 0;
  try {
    capnp::FlatArrayMessageReader reader(words, options);
    auto input = reader.getRoot<FuzzInput>();
    auto steps = input.getSteps();
    for (unsigned i = 0; i < steps.size() && i < 64; ++i) {
      auto s = steps[i];
      bool toData = s.which() == FuzzInput::Step::DATA ||
                    (s.which() == FuzzInput::Step::BOOTSTRAP && s.getBootstrap().getToData());
      (toData ? w.data : w.meta)->step(s);
      ++sent;
    }
  } catch (kj::Exception&) {
    // A malformed message: the RPC layer would refuse it the same way.
  }
  return sent;
}

}  // namespace cairn::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cairn::fuzz::runOne(data, size);
  return 0;
}

#ifndef CAIRN_LIBFUZZER
// Replays inputs (files, or every file of a directory): the regression mode.
#include <dirent.h>
#include <sys/stat.h>

namespace {
int replay(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    fprintf(stderr, "server_fuzz: %s: %s\n", path.c_str(), strerror(errno));
    return 1;
  }
  if (S_ISDIR(st.st_mode)) {
    DIR* d = opendir(path.c_str());
    int bad = 0;
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') bad += replay(path + "/" + e->d_name);
    }
    closedir(d);
    return bad;
  }
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int sent = cairn::fuzz::runOne(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  printf("ok %s (%d requests)\n", path.c_str(), sent);
  return 0;
}
}  // namespace

kj::Array<kj::byte> bytesOf(kj::StringPtr s) {
  return kj::heapArray<kj::byte>(s.asBytes());
}

// The seed corpus: short sessions as a client has them, for the fuzzer to mutate from.
void writeSeeds(const std::string& dir) {
  using cairn::fuzz::FuzzInput;
  auto save = [&](const char* name, auto&& fill) {
    capnp::MallocMessageBuilder message;
    fill(message.initRoot<FuzzInput>());
    auto words = capnp::messageToFlatArray(message);
    std::ofstream(dir + "/" + name, std::ios::binary)
        .write(reinterpret_cast<const char*>(words.asBytes().begin()), words.asBytes().size());
  };
  uint64_t id = 0;
  auto meta = [&](FuzzInput::Step::Builder s) {
    auto m = s.initMeta();
    m.setRequestId(++id);
    m.initCred().setUid(1000);
    return m;
  };
  auto mkdirIn = [](cairn::rpc::MetaRequest::Builder m, const char* name, uint32_t mode) {
    auto mk = m.initMkdir();
    mk.setParent(1);
    mk.setName(bytesOf(name));
    mk.setMode(mode);
  };
  auto createIn = [](cairn::rpc::MetaRequest::Builder m, const char* name, uint32_t mode) {
    auto cr = m.initCreate();
    cr.setParent(1);
    cr.setName(bytesOf(name));
    cr.setMode(mode);
    cr.setFlags(O_CREAT | O_RDWR);
    cr.setHandle(7);
  };
  save("namespace", [&](FuzzInput::Builder in) {
    auto steps = in.initSteps(9);
    mkdirIn(meta(steps[0]), "d", 0755);
    createIn(meta(steps[1]), "f", 0644);
    auto lk = meta(steps[2]).initLookup();
    lk.setParent(1);
    lk.setName(bytesOf("f"));
    auto rn = meta(steps[3]).initRename();
    rn.setParent(1);
    rn.setName(bytesOf("f"));
    rn.setNewParent(2);
    rn.setNewName(bytesOf("g"));
    auto sa = meta(steps[4]).initSetattr();
    sa.setIno(3);
    sa.setValid(0xffffffff);
    sa.setSize(1 << 20);
    auto rd = meta(steps[5]).initReaddir();
    rd.setIno(1);
    rd.setMaxEntries(100);
    auto sx = meta(steps[6]).initSetxattr();
    sx.setIno(3);
    sx.setName(bytesOf("user.k"));
    sx.setValue(bytesOf("v"));
    auto ul = meta(steps[7]).initUnlink();
    ul.setParent(2);
    ul.setName(bytesOf("g"));
    auto handles = meta(steps[8]).initReleaseMany(2);
    handles.set(0, 7);
    handles.set(1, 8);
  });
  save("data", [&](FuzzInput::Builder in) {
    auto steps = in.initSteps(6);
    auto w = steps[0].initData();
    w.setRequestId(++id);
    auto wr = w.initWrite();
    wr.setObjectId(5);
    wr.setOffset(4096);
    wr.setData(bytesOf("some bytes"));
    auto r = steps[1].initData();
    r.setRequestId(++id);
    auto rd = r.initRead();
    rd.setObjectId(5);
    rd.setLength(8192);
    auto t = steps[2].initData();
    t.setRequestId(++id);
    auto tr = t.initTruncate();
    tr.setObjectId(5);
    tr.setSize(10);
    auto d = steps[3].initData();
    d.setRequestId(++id);
    d.setDestroy(5);
    auto many = steps[4].initData();
    many.setRequestId(++id);
    auto objects = many.initDestroyMany(3);
    for (uint32_t i = 0; i < 3; i++) objects.set(i, 5 + i);
    auto pieces = steps[5].initData();
    pieces.setRequestId(++id);
    auto list = pieces.initWriteMany(3);
    for (uint32_t i = 0; i < 3; i++) {
      list[i].setObjectId(6);
      list[i].setOffset(i * 70000);
      list[i].setData(bytesOf("piece"));
    }
  });
  save("locks", [&](FuzzInput::Builder in) {
    auto steps = in.initSteps(7);
    auto l = steps[0].initLock();
    l.setType(1);
    l.setId(1);
    l.setMode(cairn::rpc::LockMode::PW);
    l.setBits(16);
    auto down = steps[1].initConvert();  // a downgrade, then an upgrade (refused)
    down.setLockId(1);
    down.setMode(cairn::rpc::LockMode::PR);
    auto up = steps[2].initConvert();
    up.setLockId(1);
    up.setMode(cairn::rpc::LockMode::EX);
    steps[3].setCancel(1);
    steps[4].setReconnect();
    auto again = steps[5].initLock();
    again.setType(3);
    again.setMode(cairn::rpc::LockMode::EX);
    auto bad = steps[6].initConvert();  // a mode no enum has
    bad.setLockId(2);
    bad.setMode(static_cast<cairn::rpc::LockMode>(77));
  });
  // Calls on the Bootstrap itself, from each kind of peer.
  save("bootstrap", [&](FuzzInput::Builder in) {
    using B = FuzzInput::BootstrapCall;
    auto steps = in.initSteps(6);
    steps[0].initBootstrap().setStatus();
    steps[1].initBootstrap().setMayMount();
    auto reg = steps[2].initBootstrap();
    reg.setAs(B::Role::SERVER);
    auto zeros = kj::heapArray<kj::byte>(16);
    memset(zeros.begin(), 0, zeros.size());
    reg.initRegisterTarget().setFsUuid(zeros);
    auto target = reg.getRegisterTarget().initTarget();
    target.setIndex(3);
    target.setKind(cairn::rpc::TargetKind::DATA);
    target.initAddresses(1).set(0, "127.0.0.1:1");
    auto hello = steps[3].initBootstrap().initConnect();
    hello.setClientUuid(zeros);
    hello.setRole(cairn::rpc::Hello::Role::SERVER);
    auto evict = steps[4].initBootstrap();
    evict.setAs(B::Role::ADMIN);
    auto uuid = kj::heapArray<kj::byte>(16);
    for (auto i : kj::indices(uuid)) uuid[i] = kj::byte(0xf0 + i);
    evict.setEvict(uuid);
    steps[5].setReconnect();
  });
  // Root squash: uid 0 acts as nobody, whose permissions the server checks.
  save("squashed", [&](FuzzInput::Builder in) {
    auto steps = in.initSteps(5);
    auto root = [&](FuzzInput::Step::Builder s) {
      auto m = meta(s);
      m.initCred().setUid(0);
      return m;
    };
    mkdirIn(root(steps[0]), "squashed", 0777);
    createIn(root(steps[1]), "mine", 0600);
    auto sa = root(steps[2]).initSetattr();
    sa.setIno(1);
    sa.setValid(cairn::rpc::SET_MODE | cairn::rpc::SET_UID);
    sa.setMode(02777);
    auto access = root(steps[3]).initAccess();
    access.setIno(1);
    access.setMask(7);
    auto rn = root(steps[4]).initRename();
    rn.setParent(1);
    rn.setName(bytesOf("squashed"));
    rn.setNewParent(1);
    rn.setNewName(bytesOf("moved"));
  });
}

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0) {
    writeSeeds(argv[2]);
    return 0;
  }
  int bad = 0;
  for (int i = 1; i < argc; ++i) bad += replay(argv[i]);
  return bad == 0 ? 0 : 1;
}
#endif
