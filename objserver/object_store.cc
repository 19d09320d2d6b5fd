#include "objserver/object_store.h"

#include <kj/debug.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

#include "rpc/errors.h"

namespace cairn {

namespace {
struct ChunkKey {
  kj::byte bytes[16];
  ChunkKey(uint64_t object, uint64_t chunk) {
    store::writeU64(bytes, object);
    store::writeU64(bytes + 8, chunk);
  }
  store::Bytes ptr() const { return kj::arrayPtr(bytes, 16); }
};

// The largest offset we accept: file offsets are signed 64-bit in POSIX.
constexpr uint64_t MAX_OFFSET = uint64_t(INT64_MAX);

// LMDB's page header (PAGEHDRSZ), which precedes a large value on its first overflow page.
constexpr uint32_t OVERFLOW_HEADER = 16;
}  // namespace

uint32_t ObjectStore::defaultChunkSize() {
  // LMDB makes its pages the size of the OS's when it creates an environment.
  return uint32_t(sysconf(_SC_PAGESIZE)) - OVERFLOW_HEADER;
}

uint32_t ObjectStore::requireChunkSize(uint32_t size) {
  KJ_REQUIRE(size >= MIN_CHUNK_SIZE && size <= MAX_CHUNK_SIZE,
             "a data target's chunk size is from 512 bytes to 64 KiB", size);
  return size;
}

ObjectStore::ObjectStore(Target& target)
    : chunkSize_(requireChunkSize(target.chunkSize())), chunks_(target.db("chunks")) {}

void ObjectStore::write(store::Txn& txn, uint64_t object, uint64_t offset,
                        kj::ArrayPtr<const kj::byte> data) {
  fsRequire(offset <= MAX_OFFSET && data.size() <= MAX_OFFSET - offset, EFBIG);
  uint64_t end = offset + data.size();
  uint64_t pos = offset;
  while (pos < end) {
    uint64_t chunk = pos / chunkSize_;
    uint64_t within = pos % chunkSize_;
    uint64_t n = kj::min(chunkSize_ - within, end - pos);
    ChunkKey key(object, chunk);
    auto piece = data.slice(pos - offset, pos - offset + n);
    if (within == 0 && n == chunkSize_) {
      txn.put(chunks_, key.ptr(), piece);
    } else {
      // Partial chunk: merge with what is stored.
      kj::byte buf[MAX_CHUNK_SIZE];
      size_t have = 0;
      KJ_IF_MAYBE (old, txn.get(chunks_, key.ptr())) {
        have = old->size();
        memcpy(buf, old->begin(), have);
      }
      if (have < within) memset(buf + have, 0, within - have);
      memcpy(buf + within, piece.begin(), n);
      size_t len = kj::max(have, size_t(within + n));
      txn.putPatched(chunks_, key.ptr(), kj::arrayPtr(buf, len), within, n);
    }
    pos += n;
  }
}

template <typename Func>
void ObjectStore::forEachChunk(store::Txn& txn, uint64_t object, uint64_t offset, uint64_t end,
                               Func&& func) {
  store::Cursor cursor(txn, chunks_);
  ChunkKey first(object, offset / chunkSize_);
  for (auto item = cursor.seek(first.ptr());; item = cursor.next()) {
    KJ_IF_MAYBE (i, item) {
      if (store::readU64(i->key, 0) != object) break;
      uint64_t chunkStart = store::readU64(i->key, 8) * chunkSize_;
      if (chunkStart >= end) break;
      func(chunkStart, i->value);
    } else {
      break;
    }
  }
}

size_t ObjectStore::read(store::Txn& txn, uint64_t object, uint64_t offset,
                         kj::ArrayPtr<kj::byte> out) {
  fsRequire(offset <= MAX_OFFSET, EINVAL);
  uint64_t end = offset + kj::min(uint64_t(out.size()), MAX_OFFSET - offset);
  size_t filled = 0;  // one past the last stored byte copied
  forEachChunk(txn, object, offset, end, [&](uint64_t chunkStart, store::Bytes value) {
    uint64_t from = kj::max(chunkStart, offset);
    uint64_t to = kj::min(chunkStart + value.size(), end);
    if (from < to) {
      memcpy(out.begin() + (from - offset), value.begin() + (from - chunkStart), to - from);
      filled = to - offset;
    }
  });
  return filled;
}

void ObjectStore::prefetch(store::Txn& txn, uint64_t object, uint64_t offset, uint64_t length) {
  if (offset > MAX_OFFSET) return;
  uint64_t end = offset + kj::min(length, MAX_OFFSET - offset);
  static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));  // LMDB's page: the OS's
  // Values next to each other in the map (a file written in order) go in one call.
  uintptr_t runStart = 0, runEnd = 0;
  auto flush = [&]() {
    // Only advice: a failure changes nothing but speed.
    if (runEnd > runStart) {
      madvise(reinterpret_cast<void*>(runStart), runEnd - runStart, MADV_WILLNEED);
    }
  };
  forEachChunk(txn, object, offset, end, [&](uint64_t, store::Bytes value) {
    auto from = reinterpret_cast<uintptr_t>(value.begin()) & ~(page - 1);
    auto to = reinterpret_cast<uintptr_t>(value.end());
    if (from >= runStart && from <= runEnd + page) {
      runEnd = kj::max(runEnd, to);
    } else {
      flush();
      runStart = from;
      runEnd = to;
    }
  });
  flush();
}

void ObjectStore::truncate(store::Txn& txn, uint64_t object, uint64_t size) {
  fsRequire(size <= MAX_OFFSET, EINVAL);
  uint64_t within = size % chunkSize_;
  if (within > 0) {
    ChunkKey boundary(object, size / chunkSize_);
    KJ_IF_MAYBE (old, txn.get(chunks_, boundary.ptr())) {
      if (old->size() > within) {
        kj::byte buf[MAX_CHUNK_SIZE];
        memcpy(buf, old->begin(), within);
        txn.put(chunks_, boundary.ptr(), kj::arrayPtr(buf, within));
      }
    }
  }
  size_t all = SIZE_MAX;
  removePast(txn, object, size, all);
}

namespace {
// The first chunk that lies wholly at or past `offset`.
uint64_t firstChunkPast(uint64_t offset, uint64_t chunkSize) {
  return offset / chunkSize + (offset % chunkSize != 0);
}
}  // namespace

size_t ObjectStore::chunksPast(store::Txn& txn, uint64_t object, uint64_t from, size_t limit) {
  fsRequire(from <= MAX_OFFSET, EINVAL);
  store::Cursor cursor(txn, chunks_);
  ChunkKey start(object, firstChunkPast(from, chunkSize_));
  size_t count = 0;
  for (auto item = cursor.seek(start.ptr()); count < limit; item = cursor.next()) {
    KJ_IF_MAYBE (i, item) {
      if (store::readU64(i->key, 0) != object) break;
      ++count;
    } else {
      break;
    }
  }
  return count;
}

bool ObjectStore::removePast(store::Txn& txn, uint64_t object, uint64_t from, size_t& budget) {
  fsRequire(from <= MAX_OFFSET, EINVAL);
  store::Cursor cursor(txn, chunks_);
  ChunkKey start(object, firstChunkPast(from, chunkSize_));
  for (auto item = cursor.seek(start.ptr());; item = cursor.seek(start.ptr())) {
    KJ_IF_MAYBE (i, item) {
      if (store::readU64(i->key, 0) != object) return true;
      if (budget == 0) return false;
      cursor.del();
      --budget;
    } else {
      return true;
    }
  }
}

void ObjectStore::destroy(store::Txn& txn, uint64_t object) {
  truncate(txn, object, 0);
}

uint64_t ObjectStore::objectCount(store::Txn& txn) {
  return txn.entries(chunks_);
}

}  // namespace cairn
