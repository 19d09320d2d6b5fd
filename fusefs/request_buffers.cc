#include "fusefs/request_buffers.h"

#include <cstdlib>

namespace cairn {

// What a lent array holds: the pool (kept alive by it) and the block to give back.
class RequestBuffers::Loan {
public:
  Loan(kj::Own<RequestBuffers> pool, void* block) : pool_(kj::mv(pool)), block_(block) {}
  ~Loan() noexcept { pool_->give(block_); }
  KJ_DISALLOW_COPY(Loan);

private:
  kj::Own<RequestBuffers> pool_;
  void* block_;
};

RequestBuffers::~RequestBuffers() noexcept {
  dropSpares();
}

void RequestBuffers::dropSpares() {
  for (void* block : spares_) free(block);
  spares_.clear();
}

void* RequestBuffers::take() {
  if (spares_.empty()) return malloc(size_);
  void* block = spares_.back();
  spares_.removeLast();
  return block;
}

kj::Array<kj::byte> RequestBuffers::lend(void* block, kj::ArrayPtr<kj::byte> bytes) {
  return bytes.attach(kj::heap<Loan>(kj::addRef(*this), block));
}

void RequestBuffers::give(void* block) {
  if (spares_.size() < MAX_SPARES) {
    spares_.add(block);
  } else {
    free(block);
  }
}

}  // namespace cairn
