// The inode attributes a metadata reply carries, wherever the reply kind puts them: one for an
// entry, one for an open, one per name of a directory batch. For readers and builders alike.
#pragma once

#include "rpc/cairn.capnp.h"

namespace cairn {

template <typename Reply, typename Fn>
void forEachAttr(Reply reply, Fn&& fn) {
  switch (reply.which()) {
    case rpc::MetaReply::ATTR:
      fn(reply.getAttr());
      break;
    case rpc::MetaReply::OPENED:
      fn(reply.getOpened().getAttr());
      break;
    case rpc::MetaReply::ENTRIES:
      for (auto e : reply.getEntries().getList()) fn(e.getAttr());
      break;
    default:
      break;
  }
}

}  // namespace cairn
