// A read reply's bytes handed on without a copy: the array points into the reply's message and
// keeps the reply alive until it is disposed of (by the kernel's READ reply, or the read-ahead
// chunk that holds it).
#pragma once

#include <kj/array.h>

#include "rpc/server_link.h"

namespace cairn {

// The reply's data. The message is this end's own buffer, filled from the connection, so
// handing its bytes out writable is safe: nothing else reads or writes them.
kj::Array<kj::byte> replyBytes(ServerLink::DataResponse&& response);

}  // namespace cairn
