#include "rpc/errors.h"

#include <cstring>

namespace cairn {

const char* FsError::what() const noexcept { return strerror(err_); }

int errnoForException(const kj::Exception& e) {
  switch (e.getType()) {
    case kj::Exception::Type::UNIMPLEMENTED: return EOPNOTSUPP;
    case kj::Exception::Type::OVERLOADED: return EAGAIN;
    case kj::Exception::Type::DISCONNECTED: return EIO;
    case kj::Exception::Type::FAILED: return EIO;
  }
  return EIO;
}

}  // namespace cairn
