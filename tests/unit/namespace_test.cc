// The metadata operator on a real LMDB target, without RPC: names, links, rename's many cases,
// orphans and the destroy queue, readdir cookies, xattrs.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <capnp/message.h>

#include <set>
#include <string>

#include "objserver/client_table.h"
#include "objserver/namespace.h"
#include "rpc/errors.h"
#include "tests/unit/temp_dir.h"

namespace cairn {
namespace {

kj::ArrayPtr<const kj::byte> n(const char* s) {
  return kj::arrayPtr(reinterpret_cast<const kj::byte*>(s), strlen(s));
}

class NamespaceTest : public ::testing::Test {
protected:
  // kj destructors may throw; a test fixture's must not.
  ~NamespaceTest() noexcept override {}
  void SetUp() override {
    FormatOptions f;
    f.kind = rpc::TargetKind::META;
    f.fsName = kj::str("unit");
    f.stripeSize = 65536;
    Target::format((dir.path() + "/m").c_str(), f);
    target = kj::heap<Target>((dir.path() + "/m").c_str(), rpc::TargetKind::META, OpenOptions{});
    ns = kj::heap<Namespace>(*target, [this](uint64_t ino) { return open.count(ino) > 0; });
    apply([&](store::Txn& txn) {
      for (uint32_t i = 0; i < 2; ++i) {
        capnp::MallocMessageBuilder message;
        auto t = message.initRoot<rpc::TargetAddress>();
        t.setIndex(i);
        t.setKind(rpc::TargetKind::DATA);
        t.initAddresses(1).set(0, "127.0.0.1:1");
        ns->registerTarget(txn, t);
      }
    });
  }

  template <typename F>
  void apply(F&& f) {
    store::Txn txn(target->env(), store::Txn::WRITE);
    f(txn);
    txn.commit();
  }
  // Runs f in a transaction; returns the errno it threw (0 if none) and commits only on success.
  template <typename F>
  int err(F&& f) {
    try {
      store::Txn txn(target->env(), store::Txn::WRITE);
      f(txn);
      txn.commit();
      return 0;
    } catch (FsError& e) {
      return e.err();
    }
  }
  uint64_t make(uint64_t parent, const char* name, uint32_t mode) {
    uint64_t ino = 0;
    apply([&](store::Txn& txn) { ino = ns->make(txn, parent, n(name), mode, 0, nullptr, {}).ino; });
    return ino;
  }
  InodeData get(uint64_t ino) {
    store::Txn txn(target->env(), store::Txn::READ);
    return ns->get(txn, ino);
  }
  uint64_t lookup(uint64_t parent, const char* name) {
    store::Txn txn(target->env(), store::Txn::READ);
    return ns->lookup(txn, parent, n(name)).ino;
  }
  bool exists(uint64_t parent, const char* name) {
    return err([&](store::Txn& txn) { ns->lookup(txn, parent, n(name)); }) == 0;
  }
  size_t pendingDestroys() {
    store::Txn txn(target->env(), store::Txn::READ);
    return ns->pendingDestroys(txn, 1000).size();
  }

  TempDir dir;
  kj::Own<Target> target;
  kj::Own<Namespace> ns;
  std::set<uint64_t> open;
};

TEST_F(NamespaceTest, RegularFilesGetALayoutOverTheDataTargets) {
  uint64_t a = make(ROOT_INO, "a", S_IFREG | 0644);
  uint64_t b = make(ROOT_INO, "b", S_IFREG | 0644);
  auto fa = get(a), fb = get(b);
  EXPECT_EQ(fa.layout.stripeSize, 65536u);
  EXPECT_EQ(fa.layout.targets.size(), 2u);
  EXPECT_EQ(fa.layout.objectId, a);
  EXPECT_NE(fa.layout.targets[0], fb.layout.targets[0]);  // files start on different targets
}

TEST_F(NamespaceTest, NamesAreChecked) {
  EXPECT_EQ(err([&](store::Txn& t) { ns->make(t, ROOT_INO, n(""), S_IFREG, 0, nullptr, {}); }),
            EINVAL);
  EXPECT_EQ(err([&](store::Txn& t) { ns->make(t, ROOT_INO, n("a/b"), S_IFREG, 0, nullptr, {}); }),
            EINVAL);
  EXPECT_EQ(err([&](store::Txn& t) { ns->make(t, ROOT_INO, n("."), S_IFDIR, 0, nullptr, {}); }),
            EINVAL);
  std::string longName(256, 'x');
  EXPECT_EQ(err([&](store::Txn& t) {
              ns->make(t, ROOT_INO, n(longName.c_str()), S_IFREG, 0, nullptr, {});
            }),
            ENAMETOOLONG);
  make(ROOT_INO, "dup", S_IFREG | 0644);
  EXPECT_EQ(err([&](store::Txn& t) { ns->make(t, ROOT_INO, n("dup"), S_IFREG, 0, nullptr, {}); }),
            EEXIST);
  uint64_t file = make(ROOT_INO, "file", S_IFREG | 0644);
  EXPECT_EQ(err([&](store::Txn& t) { ns->make(t, file, n("x"), S_IFREG, 0, nullptr, {}); }),
            ENOTDIR);
}

TEST_F(NamespaceTest, DirectoryLinkCounts) {
  uint64_t d = make(ROOT_INO, "d", S_IFDIR | 0755);
  EXPECT_EQ(get(ROOT_INO).nlink, 3u);
  make(d, "sub", S_IFDIR | 0755);
  EXPECT_EQ(get(d).nlink, 3u);
  EXPECT_EQ(err([&](store::Txn& t) { ns->unlink(t, ROOT_INO, n("d"), true); }), ENOTEMPTY);
  apply([&](store::Txn& t) { ns->unlink(t, d, n("sub"), true); });
  apply([&](store::Txn& t) { ns->unlink(t, ROOT_INO, n("d"), true); });
  EXPECT_EQ(get(ROOT_INO).nlink, 2u);
}

TEST_F(NamespaceTest, RenameCases) {
  uint64_t a = make(ROOT_INO, "a", S_IFDIR | 0755);
  uint64_t b = make(ROOT_INO, "b", S_IFDIR | 0755);
  uint64_t sub = make(a, "sub", S_IFDIR | 0755);
  uint64_t f = make(a, "f", S_IFREG | 0644);
  // Into its own subtree.
  EXPECT_EQ(err([&](store::Txn& t) { ns->rename(t, ROOT_INO, n("a"), sub, n("x"), 0); }), EINVAL);
  EXPECT_EQ(err([&](store::Txn& t) { ns->rename(t, ROOT_INO, n("a"), a, n("x"), 0); }), EINVAL);
  // A directory across parents moves its ".." and the link counts.
  apply([&](store::Txn& t) { ns->rename(t, a, n("sub"), b, n("sub2"), 0); });
  EXPECT_EQ(get(sub).parent, b);
  EXPECT_EQ(get(a).nlink, 2u);
  EXPECT_EQ(get(b).nlink, 3u);
  // Over a file, with the replaced file destroyed (queued for its objects).
  uint64_t g = make(b, "g", S_IFREG | 0644);
  apply([&](store::Txn& t) { ns->rename(t, a, n("f"), b, n("g"), 0); });
  EXPECT_FALSE(exists(a, "f"));
  EXPECT_EQ(lookup(b, "g"), f);
  EXPECT_EQ(pendingDestroys(), 1u);
  EXPECT_EQ(err([&](store::Txn& t) { ns->get(t, g); }), ENOENT);
  // NOREPLACE / EXCHANGE.
  make(ROOT_INO, "x", S_IFREG | 0644);
  make(ROOT_INO, "y", S_IFREG | 0644);
  EXPECT_EQ(err([&](store::Txn& t) {
              ns->rename(t, ROOT_INO, n("x"), ROOT_INO, n("y"), RENAME_NOREPLACE);
            }),
            EEXIST);
  EXPECT_EQ(err([&](store::Txn& t) {
              ns->rename(t, ROOT_INO, n("x"), ROOT_INO, n("y"), RENAME_NOREPLACE | RENAME_EXCHANGE);
            }),
            EINVAL);
  EXPECT_EQ(err([&](store::Txn& t) {
              ns->rename(t, ROOT_INO, n("x"), ROOT_INO, n("nope"), RENAME_EXCHANGE);
            }),
            ENOENT);
  // Same inode under two names: nothing happens.
  apply([&](store::Txn& t) { ns->link(t, f, ROOT_INO, n("f-alias")); });
  apply([&](store::Txn& t) { ns->rename(t, b, n("g"), ROOT_INO, n("f-alias"), 0); });
  EXPECT_TRUE(exists(b, "g"));
  EXPECT_EQ(get(f).nlink, 2u);
}

TEST_F(NamespaceTest, UnlinkedOpenFilesBecomeOrphansUntilClosed) {
  uint64_t f = make(ROOT_INO, "f", S_IFREG | 0644);
  open.insert(f);
  apply([&](store::Txn& t) { ns->unlink(t, ROOT_INO, n("f"), false); });
  EXPECT_EQ(get(f).nlink, 0u);
  {
    store::Txn txn(target->env(), store::Txn::READ);
    EXPECT_EQ(ns->orphans(txn).size(), 1u);
  }
  EXPECT_EQ(pendingDestroys(), 0u);
  // Nothing is reaped while it is open...
  apply([&](store::Txn& t) { EXPECT_EQ(ns->reapOrphans(t), 0u); });
  // ...and the last close destroys it.
  open.erase(f);
  apply([&](store::Txn& t) { ns->closed(t, f); });
  EXPECT_EQ(pendingDestroys(), 1u);
  apply([&](store::Txn& t) { ns->destroyed(t, f); });
  EXPECT_EQ(pendingDestroys(), 0u);
}

TEST_F(NamespaceTest, ReaddirCookiesStayValid) {
  for (int i = 0; i < 50; ++i) make(ROOT_INO, ("e" + std::to_string(i)).c_str(), S_IFREG | 0644);
  capnp::MallocMessageBuilder message;
  auto list = message.initRoot<rpc::MetaReply>().initEntries().initList(20);
  uint32_t count = 0;
  {
    store::Txn txn(target->env(), store::Txn::READ);
    EXPECT_FALSE(ns->readdir(txn, ROOT_INO, 0, 20, &list, &count));
  }
  ASSERT_EQ(count, 20u);
  uint64_t resume = list[19].getCookie();
  std::string nextName;
  // Remove an entry already read and one not read yet, add one: the walk goes on after resume.
  apply([&](store::Txn& t) { ns->unlink(t, ROOT_INO, n("e0"), false); });
  apply([&](store::Txn& t) { ns->unlink(t, ROOT_INO, n("e30"), false); });
  make(ROOT_INO, "late", S_IFREG | 0644);
  std::set<std::string> rest;
  for (uint64_t cookie = resume;;) {
    capnp::MallocMessageBuilder m;
    auto l = m.initRoot<rpc::MetaReply>().initEntries().initList(7);
    uint32_t c = 0;
    store::Txn txn(target->env(), store::Txn::READ);
    bool eof = ns->readdir(txn, ROOT_INO, cookie, 7, &l, &c);
    for (uint32_t i = 0; i < c; ++i) {
      rest.insert(std::string(l[i].getName().asChars().begin(), l[i].getName().size()));
      cookie = l[i].getCookie();
    }
    if (eof) break;
  }
  EXPECT_EQ(rest.size(), 30u);  // e20..e49 without e30, plus "late"
  EXPECT_TRUE(rest.count("late"));
  EXPECT_FALSE(rest.count("e30"));
}

TEST_F(NamespaceTest, Xattrs) {
  uint64_t f = make(ROOT_INO, "f", S_IFREG | 0644);
  apply([&](store::Txn& t) { ns->setxattr(t, f, n("user.a"), n("1"), 0); });
  EXPECT_EQ(err([&](store::Txn& t) { ns->setxattr(t, f, n("user.a"), n("2"), XATTR_CREATE); }),
            EEXIST);
  EXPECT_EQ(err([&](store::Txn& t) { ns->setxattr(t, f, n("user.b"), n("2"), XATTR_REPLACE); }),
            ENODATA);
  EXPECT_EQ(
      err([&](store::Txn& t) { ns->setxattr(t, f, n("system.posix_acl_access"), n("x"), 0); }),
      EOPNOTSUPP);
  auto big = kj::heapArray<kj::byte>(XATTR_VALUE_MAX + 1);
  EXPECT_EQ(err([&](store::Txn& t) { ns->setxattr(t, f, n("user.big"), big, 0); }), E2BIG);
  {
    store::Txn txn(target->env(), store::Txn::READ);
    EXPECT_EQ(ns->listxattr(txn, f).size(), 1u);
  }
  // Names up to what one listxattr can return (XATTR_LIST_MAX, each name with its NUL): 256
  // names of 255 bytes take exactly 65,536. One more is refused; replacing a value is not.
  auto name = [](int i) {
    char tail[8];
    snprintf(tail, sizeof(tail), "%04x", i);
    std::string s = "user." + std::string(246, 'x') + tail;
    EXPECT_EQ(s.size(), 255u);
    return kj::heapArray(reinterpret_cast<const kj::byte*>(s.data()), s.size());
  };
  apply([&](store::Txn& t) { ns->removexattr(t, f, n("user.a")); });
  apply([&](store::Txn& t) {
    for (int i = 0; i < 256; ++i) ns->setxattr(t, f, name(i), n("v"), 0);
  });
  EXPECT_EQ(err([&](store::Txn& t) { ns->setxattr(t, f, name(256), n("v"), 0); }), ENOSPC);
  apply([&](store::Txn& t) { ns->setxattr(t, f, name(7), n("again"), XATTR_REPLACE); });
  apply([&](store::Txn& t) { ns->removexattr(t, f, name(7)); });
  apply([&](store::Txn& t) { ns->setxattr(t, f, name(256), n("v"), 0); });
  {
    store::Txn txn(target->env(), store::Txn::READ);
    EXPECT_EQ(ns->listxattr(txn, f).size(), 256u);
  }
  // Destroying the inode takes its xattrs along.
  apply([&](store::Txn& t) { ns->unlink(t, ROOT_INO, n("f"), false); });
  store::Txn txn(target->env(), store::Txn::READ);
  EXPECT_EQ(ns->inodeCount(txn), 1u);
}

TEST_F(NamespaceTest, SetgidDirectoriesPassTheirGroupOn) {
  uint64_t d = make(ROOT_INO, "d", S_IFDIR | 02775);
  InodeData dir = get(d);
  dir.gid = 77;
  apply([&](store::Txn& t) { ns->put(t, dir); });
  uint64_t f = 0, sub = 0;
  apply([&](store::Txn& t) {
    f = ns->make(t, d, n("f"), S_IFREG | 0644, 0, nullptr, Creds{5, 6}).ino;
    sub = ns->make(t, d, n("s"), S_IFDIR | 0755, 0, nullptr, Creds{5, 6}).ino;
  });
  EXPECT_EQ(get(f).gid, 77u);
  EXPECT_EQ(get(f).uid, 5u);
  EXPECT_EQ(get(sub).gid, 77u);
  EXPECT_TRUE(get(sub).mode & S_ISGID);
}

// Creates a client answered ahead (MetaRequest.create.ino): the numbers are set aside first,
// and the file is made with the number, times and layout the client told its application.
TEST_F(NamespaceTest, ReservedNumbersMakeFilesAsTheClientToldItsApplication) {
  kj::Vector<LayoutData> reserved;
  apply([&](store::Txn& txn) { reserved = ns->reserveInodes(txn, 4); });
  ASSERT_EQ(reserved.size(), 4u);
  uint64_t first = reserved[0].objectId;
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(reserved[i].objectId, first + i);
    EXPECT_EQ(reserved[i].stripeSize, 65536u);
    EXPECT_EQ(reserved[i].targets.size(), 2u);
  }
  // Nobody else is given them.
  uint64_t other = make(ROOT_INO, "other", S_IFREG | 0644);
  EXPECT_GE(other, first + 4);

  Preset preset;
  preset.ino = first + 2;
  preset.time = timespec{1700000000, 123456789};
  preset.layout.objectId = first + 2;
  preset.layout.stripeSize = 65536;
  preset.layout.targets = kj::heapArray<uint32_t>({1, 0});
  InodeData made;
  apply([&](store::Txn& txn) {
    made = ns->make(txn, ROOT_INO, n("ahead"), S_IFREG | 0600, 0, nullptr, {7, 8}, preset);
  });
  auto f = get(lookup(ROOT_INO, "ahead"));
  EXPECT_EQ(f.ino, first + 2);
  EXPECT_EQ(f.mtime.tv_sec, 1700000000);
  EXPECT_EQ(f.mtime.tv_nsec, 123456789);
  EXPECT_EQ(f.ctime.tv_nsec, 123456789);
  // (The directory's times: ACreateAheadMovesItsDirectorysTimesForwardOnly.)
  EXPECT_EQ(f.uid, 7u);
  EXPECT_EQ(f.gid, 8u);
  ASSERT_EQ(f.layout.targets.size(), 2u);
  EXPECT_EQ(f.layout.targets[0], 1u);
  EXPECT_EQ(f.layout.objectId, first + 2);

  // A number in use, a layout for another object, a target that is not a data target: refused.
  auto refused = [&](const char* name, const Preset& p) {
    try {
      apply([&](store::Txn& txn) {
        ns->make(txn, ROOT_INO, n(name), S_IFREG | 0600, 0, nullptr, {}, p);
      });
    } catch (kj::Exception&) {
      return true;
    }
    return false;
  };
  EXPECT_TRUE(refused("again", preset));
  Preset bad;
  bad.ino = first + 3;
  bad.layout.objectId = first + 1;
  bad.layout.stripeSize = 65536;
  bad.layout.targets = kj::heapArray<uint32_t>({0});
  EXPECT_TRUE(refused("bad", bad));
  bad.layout.objectId = first + 3;
  bad.layout.targets = kj::heapArray<uint32_t>({5});
  EXPECT_TRUE(refused("bad", bad));
  bad.layout.targets = kj::heapArray<uint32_t>({0, 0});
  EXPECT_TRUE(refused("bad", bad));
  bad.layout.targets = kj::heapArray<uint32_t>({0});
  EXPECT_FALSE(refused("good", bad));
}

// A create answered ahead sets its directory's times to its own (the client's clock), but a
// time between that and now stays: a mkdir the client sent beside the create, without waiting
// for it, got there first (features::MKDIR_BESIDE). A time past now is a utimes', overridden.
TEST_F(NamespaceTest, ACreateAheadMovesItsDirectorysTimesForwardOnly) {
  kj::Vector<LayoutData> reserved;
  apply([&](store::Txn& txn) { reserved = ns->reserveInodes(txn, 3); });
  ASSERT_EQ(reserved.size(), 3u);
  uint64_t d = make(ROOT_INO, "d", S_IFDIR | 0755);
  timespec made = get(d).mtime;
  auto ahead = [&](size_t i, timespec at) {
    Preset preset;
    preset.ino = reserved[i].objectId;
    preset.time = at;
    preset.layout.objectId = reserved[i].objectId;
    preset.layout.stripeSize = reserved[i].stripeSize;
    preset.layout.targets = kj::heapArray(reserved[i].targets.asPtr());
    apply([&](store::Txn& txn) {
      ns->make(txn, d, n(kj::str("f", i).cStr()), S_IFREG | 0644, 0, nullptr, {}, preset);
    });
  };
  auto same = [](timespec a, timespec b) { return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec; };
  ahead(0, timespec{made.tv_sec - 1, made.tv_nsec});  // overtaken by the mkdir that made d
  EXPECT_TRUE(same(get(d).mtime, made));
  EXPECT_TRUE(same(get(d).ctime, made));
  timespec now = nowTime();
  ahead(1, now);
  EXPECT_TRUE(same(get(d).mtime, now));
  EXPECT_TRUE(same(get(d).ctime, now));
  apply([&](store::Txn& txn) {
    auto node = ns->get(txn, d);
    node.mtime.tv_sec += 3600;  // set ahead by a utimes
    ns->put(txn, node);
  });
  timespec later = nowTime();
  ahead(2, later);
  EXPECT_TRUE(same(get(d).mtime, later));
}

// A removal answered ahead names the inode it meant: sent again after a restart lost the
// client's lock, it must not remove a file someone else made under the name since.
TEST_F(NamespaceTest, AnExpectedInodeKeepsARemovalOffAnotherFile) {
  uint64_t f = make(ROOT_INO, "f", S_IFREG | 0644);
  EXPECT_EQ(err([&](store::Txn& t) { ns->unlink(t, ROOT_INO, n("f"), false, f + 100); }), ENOENT);
  EXPECT_TRUE(exists(ROOT_INO, "f"));
  uint64_t d = make(ROOT_INO, "d", S_IFDIR | 0755);
  EXPECT_EQ(err([&](store::Txn& t) { ns->unlink(t, ROOT_INO, n("d"), true, f); }), ENOENT);
  EXPECT_EQ(err([&](store::Txn& t) { ns->unlink(t, ROOT_INO, n("f"), false, f); }), 0);
  EXPECT_EQ(err([&](store::Txn& t) { ns->unlink(t, ROOT_INO, n("d"), true, d); }), 0);
  EXPECT_FALSE(exists(ROOT_INO, "f"));
  EXPECT_FALSE(exists(ROOT_INO, "d"));
}

TEST_F(NamespaceTest, ReservedNumbersAreTheirClientsOnlyAndUsedOnce) {
  ClientTable clients(*target);
  kj::byte a[16] = {1}, b[16] = {2};
  apply([&](store::Txn& txn) {
    clients.reserve(txn, a, 100);
    clients.reserve(txn, a, 101);
  });
  bool taken = false;
  apply([&](store::Txn& txn) { taken = clients.takeReserved(txn, b, 100); });
  EXPECT_FALSE(taken);
  size_t held = 0;
  apply([&](store::Txn& txn) { held = clients.reservedCount(txn, a, 10); });
  EXPECT_EQ(held, 2u);
  apply([&](store::Txn& txn) { held = clients.reservedCount(txn, b, 10); });
  EXPECT_EQ(held, 0u);
  apply([&](store::Txn& txn) { taken = clients.takeReserved(txn, a, 100); });
  EXPECT_TRUE(taken);
  apply([&](store::Txn& txn) { taken = clients.takeReserved(txn, a, 100); });
  EXPECT_FALSE(taken);
  // A client forgotten takes its numbers with it.
  apply([&](store::Txn& txn) { clients.forget(txn, a); });
  apply([&](store::Txn& txn) { taken = clients.takeReserved(txn, a, 101); });
  EXPECT_FALSE(taken);
}

// A data target's eviction mark names the metadata server's session a fence ended (the client
// compares it with its own): a later fence before the client is back moves it on, an older one
// does not, and an eviction that names none leaves it unknown for good.
TEST_F(NamespaceTest, AnEvictionMarkKeepsTheLatestFencedSessionOrNone) {
  ClientTable clients(*target);
  kj::byte a[16] = {1};
  auto mark = [&](kj::StringPtr why, uint64_t session) {
    apply([&](store::Txn& txn) { clients.markEvicted(txn, a, why, session); });
  };
  auto take = [&]() -> std::pair<std::string, uint64_t> {
    std::pair<std::string, uint64_t> seen{"(none)", 0};
    apply([&](store::Txn& txn) {
      KJ_IF_MAYBE (e, clients.takeEvicted(txn, a)) {
        seen = {e->why.cStr(), e->session};
      }
    });
    return seen;
  };
  mark("first", 5);
  mark("second", 9);
  mark("older", 7);
  EXPECT_EQ(take(), std::make_pair(std::string("older"), uint64_t(9)));
  EXPECT_EQ(take().first, "(none)");
  mark("fence", 5);
  mark("administrator", 0);
  EXPECT_EQ(take(), std::make_pair(std::string("administrator"), uint64_t(0)));
  mark("administrator", 0);
  mark("fence", 5);
  EXPECT_EQ(take(), std::make_pair(std::string("fence"), uint64_t(0)));
  mark("fence", 5);
  EXPECT_EQ(take(), std::make_pair(std::string("fence"), uint64_t(5)));
}

// A batch's reply is larger than a page: kept in parts of a page each, so that a map whose
// room is in scattered pages takes it; read back whole, and pruned with every part.
TEST_F(NamespaceTest, AReplyRecordLargerThanAPageIsKeptInPartsAndReadBackWhole) {
  ClientTable clients(*target);
  MDB_dbi records = target->db("replies");
  kj::byte a[16] = {1}, b[16] = {2};
  auto reply = [](size_t bytes, char fill) {
    auto message = kj::heap<capnp::MallocMessageBuilder>();
    auto root = message->initRoot<rpc::MetaReply>();
    root.setError(7);
    std::string text(bytes, fill);
    root.initNames(1).set(0, kj::arrayPtr(reinterpret_cast<const kj::byte*>(text.data()), bytes));
    return message;
  };
  auto big = reply(20000, 'x'), small = reply(10, 'y');
  apply([&](store::Txn& txn) {
    clients.record(txn, a, 5, *big);
    clients.record(txn, a, 6, *small);
    clients.record(txn, b, 5, *small);
  });
  auto text = [&](kj::ArrayPtr<const kj::byte> who, uint64_t id) -> std::string {
    store::Txn txn(target->env(), store::Txn::READ);
    KJ_IF_MAYBE (words, clients.find(txn, who, id)) {
      capnp::FlatArrayMessageReader message(*words);
      auto name = message.getRoot<rpc::MetaReply>().getNames()[0];
      return std::string(reinterpret_cast<const char*>(name.begin()), name.size());
    }
    return "(none)";
  };
  EXPECT_EQ(text(a, 5), std::string(20000, 'x'));
  EXPECT_EQ(text(a, 6), "yyyyyyyyyy");
  EXPECT_EQ(text(b, 5), "yyyyyyyyyy");
  size_t entries = 0;
  {
    store::Txn txn(target->env(), store::Txn::READ);
    entries = txn.entries(records);
  }
  EXPECT_GE(entries, 3u + 20000 / target->env().onePageValue());
  apply([&](store::Txn& txn) { clients.prune(txn, a, 6); });
  EXPECT_EQ(text(a, 5), "(none)");
  EXPECT_EQ(text(a, 6), "yyyyyyyyyy");
  {
    store::Txn txn(target->env(), store::Txn::READ);
    EXPECT_EQ(txn.entries(records), 2u);  // no part left behind
  }
}

}  // namespace
}  // namespace cairn
