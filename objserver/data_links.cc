#include "objserver/data_links.h"

namespace cairn {

DataLinks::DataLinks(ServerContext& ctx, Namespace& ns, const LinkIdentity& identity)
    : ctx_(ctx),
      ns_(ns),
      identity_{kj::heapArray<kj::byte>(identity.uuid), identity.role, kj::str(identity.hostName)} {
}

kj::Maybe<ServerLink&> DataLinks::linkFor(uint32_t index) {
  auto it = links_.find(index);
  if (it != links_.end()) return *it->second;
  kj::Array<kj::String> addresses;
  {
    store::Txn txn(ctx_.target.env(), store::Txn::READ);
    ns_.listTargets(txn, [&](rpc::TargetAddress::Reader t) {
      if (t.getIndex() != index || t.getKind() != rpc::TargetKind::DATA) return;
      kj::Vector<kj::String> a;
      for (auto s : t.getAddresses()) a.add(kj::str(s));
      addresses = a.releaseAsArray();
    });
  }
  if (addresses.size() == 0) return nullptr;
  auto link = kj::heap<ServerLink>(ctx_.network, ctx_.io.provider->getTimer(),
                                   kj::str("meta->data", index), kj::mv(addresses), identity_);
  link->start();
  auto& ref = *link;
  links_.emplace(index, kj::mv(link));
  return ref;
}

kj::Array<uint32_t> DataLinks::targets() {
  kj::Vector<uint32_t> out;
  store::Txn txn(ctx_.target.env(), store::Txn::READ);
  ns_.listTargets(txn, [&](rpc::TargetAddress::Reader t) {
    if (t.getKind() == rpc::TargetKind::DATA) out.add(t.getIndex());
  });
  return out.releaseAsArray();
}

void DataLinks::targetMoved(uint32_t index, kj::Array<kj::String> addresses) {
  auto it = links_.find(index);
  if (it != links_.end()) it->second->setAddresses(kj::mv(addresses));
}

}  // namespace cairn
