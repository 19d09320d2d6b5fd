#include "objserver/binary_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/io.h>

namespace cairn::store {

uint64_t getLe(const kj::byte* in, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | in[i];
  return v;
}

void putLe(kj::byte* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out[i] = kj::byte(v >> (8 * i));
}

kj::Array<kj::byte> readAt(int fd, size_t size, uint64_t offset) {
  auto out = kj::heapArray<kj::byte>(size);
  size_t got = 0;
  while (got < size) {
    ssize_t n;
    KJ_SYSCALL(n = pread(fd, out.begin() + got, size - got, off_t(offset + got)));
    if (n == 0) break;
    got += size_t(n);
  }
  if (got == size) return out;
  return kj::heapArray(out.slice(0, got));
}

void writeAt(int fd, kj::ArrayPtr<const kj::byte> data, uint64_t offset) {
  while (data.size() > 0) {
    ssize_t n;
    KJ_SYSCALL(n = pwrite(fd, data.begin(), data.size(), off_t(offset)));
    data = data.slice(size_t(n), data.size());
    offset += uint64_t(n);
  }
}

void syncDir(kj::StringPtr dir) {
  int fd;
  KJ_SYSCALL(fd = open(dir.cStr(), O_RDONLY | O_DIRECTORY | O_CLOEXEC), dir);
  kj::AutoCloseFd closer(fd);
  KJ_SYSCALL(fsync(fd), dir);
}

}  // namespace cairn::store
