#include "objserver/room_gate.h"

namespace cairn {

bool RoomGate::checkpointFirst() {
  auto& env = target_.env();
  uint64_t floor = env.reserveBytes() + MARGIN;
  {
    store::Txn txn(env, store::Txn::READ);
    floor += promised(txn);
  }
  // Cheap while the untouched end of the map alone is enough: the free list is not read.
  auto space = env.space(floor);
  return space.usable < floor && space.held >= WORTH_IT;
}

}  // namespace cairn
