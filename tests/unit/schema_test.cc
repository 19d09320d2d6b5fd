// The wire schema's evolution rules: every field, enumerant and method ever released keeps its
// ordinal, name-independent. schema_ordinals.txt is the record; new entries may be added to the
// schema (and then to the record), none may change or vanish.
#include <gtest/gtest.h>

#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>

#include <fstream>
#include <set>
#include <string>

#include "rpc/cairn.capnp.h"

namespace cairn {
namespace {

std::string typeName(capnp::Type type) {
  switch (type.which()) {
    case capnp::schema::Type::STRUCT:
      return std::string(type.asStruct().getShortDisplayName().cStr());
    case capnp::schema::Type::ENUM:
      return std::string(type.asEnum().getShortDisplayName().cStr());
    case capnp::schema::Type::INTERFACE:
      return std::string(type.asInterface().getShortDisplayName().cStr());
    case capnp::schema::Type::LIST:
      return "List(" + typeName(type.asList().getElementType()) + ")";
    default: {
      static const char* const names[] = {"Void",    "Bool",    "Int8",   "Int16",  "Int32",
                                          "Int64",   "UInt8",   "UInt16", "UInt32", "UInt64",
                                          "Float32", "Float64", "Text",   "Data"};
      auto w = static_cast<size_t>(type.which());
      return w < sizeof(names) / sizeof(names[0]) ? names[w] : std::to_string(w);
    }
  }
}

void collect(capnp::StructSchema s, const std::string& prefix, std::set<std::string>& out) {
  for (auto field : s.getFields()) {
    auto proto = field.getProto();
    if (proto.isGroup()) {
      collect(field.getType().asStruct(), prefix + "." + proto.getName().cStr(), out);
    } else {
      // Ordinal and type are what the wire depends on; the name is kept for the reader.
      out.insert(prefix + " @" + std::to_string(proto.getOrdinal().getExplicit()) + " " +
                 typeName(field.getType()) + " (" + proto.getName().cStr() + ")");
    }
  }
}

void collect(capnp::EnumSchema e, const std::string& prefix, std::set<std::string>& out) {
  for (auto en : e.getEnumerants()) {
    out.insert(prefix + " @" + std::to_string(en.getOrdinal()) + " (" +
               en.getProto().getName().cStr() + ")");
  }
}

void collect(capnp::InterfaceSchema i, const std::string& prefix, std::set<std::string>& out) {
  for (auto m : i.getMethods()) {
    // The implicit parameter and result structs evolve by the same rules.
    std::string method = prefix + "." + m.getProto().getName().cStr();
    collect(m.getParamType(), method + ".params", out);
    collect(m.getResultType(), method + ".results", out);
    out.insert(prefix + " @" + std::to_string(m.getOrdinal()) + " " +
               typeName(capnp::Type(m.getParamType())) + " -> " +
               typeName(capnp::Type(m.getResultType())) + " (" + m.getProto().getName().cStr() +
               ")");
  }
}

std::set<std::string> current() {
  std::set<std::string> out;
#define STRUCT(T) collect(capnp::Schema::from<rpc::T>(), #T, out)
  STRUCT(Hello);
  STRUCT(ServerInfo);
  STRUCT(Timespec);
  STRUCT(Cred);
  STRUCT(Attr);
  STRUCT(Layout);
  STRUCT(DirEntry);
  STRUCT(StatFs);
  STRUCT(TargetAddress);
  STRUCT(MetaRequest);
  STRUCT(MetaReply);
  STRUCT(DataRequest);
  STRUCT(DataReply);
  STRUCT(ClientStatus);
  STRUCT(ServerStatus);
  STRUCT(TargetHeader);
  STRUCT(Inode);
  STRUCT(DirentValue);
  STRUCT(LockRequest);
  STRUCT(RpcCount);
  STRUCT(GrantedLock);
  STRUCT(WritePiece);
#undef STRUCT
  collect(capnp::Schema::from<rpc::TargetKind>(), "TargetKind", out);
  collect(capnp::Schema::from<rpc::Hello::Role>(), "Hello.Role", out);
  collect(capnp::Schema::from<rpc::LockMode>(), "LockMode", out);
  collect(capnp::Schema::from<rpc::LockCallback>(), "LockCallback", out);
  collect(capnp::Schema::from<rpc::LockSession>(), "LockSession", out);
  collect(capnp::Schema::from<rpc::MetaSession>(), "MetaSession", out);
  collect(capnp::Schema::from<rpc::DataSession>(), "DataSession", out);
  collect(capnp::Schema::from<rpc::Bootstrap>(), "Bootstrap", out);
  return out;
}

TEST(Schema, ReleasedOrdinalsNeverChange) {
  std::string path = std::string(SOURCE_DIR) + "/tests/unit/schema_ordinals.txt";
  auto now = current();
  if (getenv("CAIRN_WRITE_ORDINALS") != nullptr) {
    std::ofstream out(path);
    for (auto& line : now) out << line << "\n";
    GTEST_SKIP() << "wrote " << path;
  }
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << path;
  std::string line;
  int recorded = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    ++recorded;
    EXPECT_TRUE(now.count(line)) << "changed or removed from the schema: " << line;
  }
  EXPECT_GT(recorded, 100);
}

TEST(Schema, RequestsRoundTrip) {
  capnp::MallocMessageBuilder message;
  auto req = message.initRoot<rpc::MetaRequest>();
  req.setRequestId(42);
  auto r = req.initRename();
  r.setParent(1);
  r.setName(kj::StringPtr("from").asBytes());
  r.setNewParent(7);
  r.setNewName(kj::StringPtr("to").asBytes());
  auto words = capnp::messageToFlatArray(message);
  capnp::FlatArrayMessageReader reader(words);
  auto back = reader.getRoot<rpc::MetaRequest>();
  EXPECT_EQ(back.getRequestId(), 42u);
  ASSERT_EQ(back.which(), rpc::MetaRequest::RENAME);
  EXPECT_EQ(back.getRename().getNewParent(), 7u);
  EXPECT_EQ(kj::str(back.getRename().getNewName().asChars()), "to");
}

TEST(Schema, AnOlderReaderSeesDefaultsForNewFields) {
  // A message without the newest Attr field (parent) reads as 0: what an old peer sends.
  capnp::MallocMessageBuilder message;
  auto attr = message.initRoot<rpc::Attr>();
  attr.setIno(5);
  EXPECT_EQ(attr.asReader().getParent(), 0u);
}

}  // namespace
}  // namespace cairn
