// File objects on a data target, kept in fixed-size chunks: key objectId + chunk index, value
// up to the target's chunk size. A missing chunk, or the part of a chunk past its stored length,
// is a hole and reads as zeros, so sparse files cost only what was written.
//
// LMDB never changes a value in place: a write smaller than a chunk stores the whole chunk
// anew (and the next checkpoint writes all of it to disk), so the chunk size is what a small
// random write costs. A value this large lives on overflow pages, the first of which starts
// with a 16-byte header; the default chunk fills one page exactly. An aligned 4 KiB write then
// rewrites two pages; with four-page chunks it rewrote four, and eight when it straddled two
// chunks, which a quarter of them do (docs/benchmarks.md, session 31).
#pragma once

#include <kj/array.h>

#include "objserver/store.h"
#include "objserver/target.h"

namespace cairn {

class ObjectStore {
public:
  static constexpr uint32_t MIN_CHUNK_SIZE = 512;
  static constexpr uint32_t MAX_CHUNK_SIZE = 64 * 1024;

  // For a new target: one LMDB page (the OS's page size) less the overflow page header.
  static uint32_t defaultChunkSize();
  // Returns `size` if it is a chunk size this code can keep; throws if not (a damaged header,
  // a bad option).
  static uint32_t requireChunkSize(uint32_t size);

  explicit ObjectStore(Target& target);
  uint64_t chunkSize() const { return chunkSize_; }

  void write(store::Txn& txn, uint64_t object, uint64_t offset, kj::ArrayPtr<const kj::byte> data);
  // Copies what is stored of [offset, offset + out.size()) into `out`, which the caller zeroed
  // (holes stay zeros); returns how much of `out` is the file (up to the last stored byte).
  size_t read(store::Txn& txn, uint64_t object, uint64_t offset, kj::ArrayPtr<kj::byte> out);
  // Starts the disk reads of what is stored of [offset, offset + length) (MADV_WILLNEED on the
  // map), so that the copies of a cold read wait for reads already in flight instead of taking
  // one page fault (one small synchronous read) after another.
  void prefetch(store::Txn& txn, uint64_t object, uint64_t offset, uint64_t length);
  void truncate(store::Txn& txn, uint64_t object, uint64_t size);
  void destroy(store::Txn& txn, uint64_t object);
  // For a truncate or destroy too large for one transaction: how many whole chunks wholly at
  // or past `from` the object has, counting no further than `limit`; and the removal of up to
  // `budget` of them (lowest first; what it removed is taken off `budget`), true once none
  // is left. What a truncate to `from` keeps is untouched.
  size_t chunksPast(store::Txn& txn, uint64_t object, uint64_t from, size_t limit);
  bool removePast(store::Txn& txn, uint64_t object, uint64_t from, size_t& budget);
  uint64_t objectCount(store::Txn& txn);

private:
  // Calls func(chunkStart, value) for each stored chunk of the object that begins before `end`
  // and holds bytes at or after `offset`'s chunk, in order.
  template <typename Func>
  void forEachChunk(store::Txn& txn, uint64_t object, uint64_t offset, uint64_t end, Func&& func);

  uint64_t chunkSize_;
  MDB_dbi chunks_;
};

}  // namespace cairn
