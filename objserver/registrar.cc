#include "objserver/registrar.h"

#include <spdlog/spdlog.h>

namespace cairn {

Registrar::Registrar(kj::AsyncIoContext& io, kj::Network& network, Target& target,
                     kj::Array<kj::String> metaAddresses, kj::Array<kj::String> addresses,
                     const LinkIdentity& identity)
    : target_(target),
      addresses_(kj::mv(addresses)),
      link_(network, io.provider->getTimer(), kj::str("data->meta"), kj::mv(metaAddresses),
            identity) {
  link_.setRecovery([this]() {
    return link_.server(ServerLink::Class::RECOVERY).then([this](rpc::Bootstrap::Client server) {
      auto req = server.registerTargetRequest();
      req.setFsUuid(target_.fsUuid());
      auto t = req.initTarget();
      t.setIndex(target_.index());
      t.setKind(rpc::TargetKind::DATA);
      auto list = t.initAddresses(addresses_.size());
      for (auto i : kj::indices(addresses_)) list.set(i, addresses_[i]);
      return req.send().then(
          [this](auto&&) {
            registered_ = true;
            spdlog::info("registered data target {} at {} with the metadata server",
                         target_.index(), kj::strArray(addresses_, ",").cStr());
          },
          [](kj::Exception&& e) {
            // Most likely a target of another filesystem: say so loudly, keep trying slowly.
            spdlog::error("the metadata server refused this target: {}", e.getDescription().cStr());
            kj::throwRecoverableException(kj::mv(e));
          });
    });
  });
}

}  // namespace cairn
