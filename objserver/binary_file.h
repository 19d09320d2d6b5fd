// The few things the target's own binary files (the write-ahead log's segments, the saved
// checkpoint) need beside LMDB: little-endian fields, reads and writes at an offset that go on
// until done, and a directory's entries made durable.
#pragma once

#include <kj/array.h>
#include <kj/string.h>

#include <cstdint>

namespace cairn::store {

uint64_t getLe(const kj::byte* in, int bytes);
void putLe(kj::byte* out, uint64_t v, int bytes);

// Up to `size` bytes from `offset`; fewer only at the end of the file.
kj::Array<kj::byte> readAt(int fd, size_t size, uint64_t offset);
void writeAt(int fd, kj::ArrayPtr<const kj::byte> data, uint64_t offset);
// A file created or removed in `dir` stays so after a host crash.
void syncDir(kj::StringPtr dir);

}  // namespace cairn::store
