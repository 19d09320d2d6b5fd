// The one place where errors change form: a filesystem error travels inside the process as
// FsError, on the wire as a Linux errno in the reply, and leaves the client as fuse_reply_err.
// kj exceptions are for the link and for requests that break the protocol.
#pragma once

#include <kj/exception.h>

#include <cerrno>
#include <exception>

namespace cairn {

class FsError : public std::exception {
public:
  explicit FsError(int err) : err_(err) {}
  int err() const { return err_; }
  const char* what() const noexcept override;

private:
  int err_;
};

// Throws FsError(err) unless cond holds.
inline void fsRequire(bool cond, int err) {
  if (!cond) throw FsError(err);
}

// Inside the client's promise chains a filesystem error travels as a kj::Exception (kj turns
// any other exception type into a plain FAILED one); these two make and read it.
kj::Exception errnoException(int err);
// The errno carried by an exception from errnoException, or the one for its type.
int errnoOf(const kj::Exception& e);
// Throws errnoException(err) if err != 0 (a reply's error field).
void checkErrno(int err);

// The errno a client reports for a kj exception that ended a request: DISCONNECTED and
// OVERLOADED never reach applications (the request path retries them), so what is left is a
// peer that refused the request (EIO) or one that does not know it (EOPNOTSUPP).
int errnoForException(const kj::Exception& e);

}  // namespace cairn
