// In a file of its own: GCC 12 guesses, when devirtualizing speculatively, that any array's
// disposer in a translation unit may be the one `attach` makes here, and then warns
// (-Wfree-nonheap-object) about freeing kj's static heap-array disposer on that guessed path.
#include "fusefs/reply_bytes.h"

namespace cairn {

kj::Array<kj::byte> replyBytes(ServerLink::DataResponse&& response) {
  auto data = response.getReply().getData();
  return kj::arrayPtr(const_cast<kj::byte*>(data.begin()), data.size()).attach(kj::mv(response));
}

}  // namespace cairn
