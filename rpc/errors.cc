#include "rpc/errors.h"

#include <cstdlib>
#include <cstring>

namespace cairn {

const char* FsError::what() const noexcept {
  return strerror(err_);
}

namespace {
constexpr kj::StringPtr PREFIX = "cairn errno "_kj;
}

kj::Exception errnoException(int err) {
  return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__,
                       kj::str(PREFIX, err, ": ", strerror(err)));
}

int errnoOf(const kj::Exception& e) {
  auto d = e.getDescription();
  if (d.startsWith(PREFIX)) {
    int err = atoi(d.begin() + PREFIX.size());
    if (err > 0) return err;
  }
  return errnoForException(e);
}

void checkErrno(int err) {
  if (err != 0) kj::throwFatalException(errnoException(err));
}

int errnoForException(const kj::Exception& e) {
  switch (e.getType()) {
    case kj::Exception::Type::UNIMPLEMENTED:
      return EOPNOTSUPP;
    case kj::Exception::Type::OVERLOADED:
      return EAGAIN;
    case kj::Exception::Type::DISCONNECTED:
      return EIO;
    case kj::Exception::Type::FAILED:
      return EIO;
  }
  return EIO;
}

}  // namespace cairn
