// Room for updates on a nearly full map.
//
// Why: the pages a commit frees stay out of LMDB's reach until the next checkpoint, whose
// snapshot keeps them whole (checkpoint_snapshot.h), and a checkpoint comes every 100 ms. Till
// then every transaction takes new pages for all it touches — a create batch ~10 pages, a
// deletion as many — however little it adds. On a nearly full map the updates that are not
// checked for room (deletions; creates answered ahead, whose room was set aside when their
// numbers were reserved) could then find none, and a checked one be refused while a checkpoint
// would give room back. So an update that finds the map nearly full while the snapshot holds
// enough waits for a checkpoint first (a few ms, near full only).
#pragma once

#include <kj/async.h>

#include <type_traits>

#include "objserver/client_table.h"
#include "objserver/syncer.h"
#include "objserver/target.h"

namespace cairn {

class RoomGate {
public:
  RoomGate(Target& target, Syncer& syncer, ClientTable& clients)
      : target_(target), syncer_(syncer), clients_(clients) {}
  KJ_DISALLOW_COPY(RoomGate);

  // Room kept free for each reserved inode number's create: its inode, entry and reply record
  // and their share of the B-trees' pages took ~350 bytes in creates batched by the hundred
  // (20,000 files); the rest is margin for B-tree pages split half full. (The pages a
  // transaction takes until the next checkpoint are this gate's to give back.)
  static constexpr uint64_t CREATE_ROOM = 2048;
  // Bytes promised to the creates answered ahead that have not landed.
  uint64_t promised(store::Txn& txn) { return clients_.reservedTotal(txn) * CREATE_ROOM; }

  // Runs `apply` (an update's transaction) now, or after a checkpoint if the map is nearly
  // full and the snapshot holds enough to matter. Checked and run in one turn of the event
  // loop, so no other update comes in between.
  template <typename Func>
  kj::PromiseForResult<Func, void> admit(Func&& apply) {
    if (!checkpointFirst()) {
      return kj::evalNow([&]() -> kj::PromiseForResult<Func, void> {
        if constexpr (std::is_void_v<std::invoke_result_t<Func>>) {
          apply();
          return kj::READY_NOW;
        } else {
          return apply();
        }
      });
    }
    ++checkpointsAsked;
    return syncer_.checkpointNow().then(kj::fwd<Func>(apply));
  }

  uint64_t checkpointsAsked = 0;  // for /metrics

private:
  // Nearly full: what the checked updates leave (the deletions' reserve and the promised
  // room) plus this margin. Worth a checkpoint: held pages of this much.
  static constexpr uint64_t MARGIN = 256 << 10;
  static constexpr uint64_t WORTH_IT = 256 << 10;
  bool checkpointFirst();

  Target& target_;
  Syncer& syncer_;
  ClientTable& clients_;
};

}  // namespace cairn
