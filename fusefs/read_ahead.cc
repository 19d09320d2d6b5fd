#include "fusefs/read_ahead.h"

#include <kj/debug.h>
#include <kj/vector.h>

#include <cstring>

namespace cairn {

ReadAhead::ReadAhead(Fetch fetch) : fetch_(kj::mv(fetch)) {}

kj::Maybe<kj::Promise<kj::Array<kj::byte>>> ReadAhead::read(uint64_t ino, uint64_t offset,
                                                            size_t length, uint64_t size,
                                                            bool ahead) {
  if (length == 0 || offset >= size) return nullptr;
  auto& file = files_[ino];
  uint64_t end = kj::min(offset + length, size);
  bool sequential = offset == file.lastEnd && offset > 0;
  file.lastEnd = end;
  // What is behind the reader now is not needed again (the kernel keeps the pages).
  uint64_t first = offset / CHUNK, last = (end - 1) / CHUNK;
  while (!file.chunks.empty() && file.chunks.begin()->first < first) {
    file.chunks.erase(file.chunks.begin());
    --total_;
  }
  if (ahead && sequential) prefetch(ino, file, end, size);

  kj::Vector<kj::Own<Chunk>> covering;
  for (uint64_t c = first; c <= last; ++c) {
    auto it = file.chunks.find(c);
    if (it == file.chunks.end()) return nullptr;
    covering.add(kj::addRef(*it->second));
  }
  auto waits = kj::heapArrayBuilder<kj::Promise<void>>(covering.size());
  for (auto& c : covering) waits.add(c->done.addBranch());
  return kj::joinPromises(waits.finish())
      .then([offset, end, covering = covering.releaseAsArray()]() mutable -> kj::Array<kj::byte> {
        if (covering.size() == 1) {
          // Within one chunk that holds it all: its bytes, kept alive by the reference.
          auto& c = *covering[0];
          uint64_t from = offset - (offset / CHUNK) * CHUNK;
          if (from + (end - offset) <= c.data.size()) {
            return c.data.slice(from, from + (end - offset)).attach(kj::addRef(c));
          }
        }
        auto out = kj::heapArray<kj::byte>(end - offset);
        uint64_t at = offset;
        for (auto& c : covering) {
          uint64_t chunkStart = (at / CHUNK) * CHUNK;
          uint64_t from = at - chunkStart;
          uint64_t n =
              kj::min(uint64_t(c->data.size()) - kj::min(from, uint64_t(c->data.size())), end - at);
          if (n > 0) memcpy(out.begin() + (at - offset), c->data.begin() + from, n);
          // Past what the chunk holds (a file that ended there when it was fetched): zeros.
          uint64_t chunkEnd = kj::min(chunkStart + CHUNK, end);
          if (at + n < chunkEnd) memset(out.begin() + (at + n - offset), 0, chunkEnd - at - n);
          at = chunkEnd;
        }
        return out;
      });
}

void ReadAhead::prefetch(uint64_t ino, File& file, uint64_t from, uint64_t size) {
  uint64_t firstChunk = from / CHUNK;
  for (uint64_t c = firstChunk; c < firstChunk + WINDOW && c * CHUNK < size; ++c) {
    if (file.chunks.count(c) > 0) continue;
    if (total_ >= MAX_CHUNKS) return;
    auto chunk = kj::refcounted<Chunk>();
    uint64_t start = c * CHUNK;
    size_t length = size_t(kj::min(CHUNK, size - start));
    Chunk* raw = chunk.get();
    chunk->done = fetch_(ino, start, length)
                      .then([raw](kj::Array<kj::byte> data) { raw->data = kj::mv(data); })
                      .fork();
    file.chunks.emplace(c, kj::mv(chunk));
    ++total_;
  }
}

void ReadAhead::drop(uint64_t ino) {
  auto it = files_.find(ino);
  if (it == files_.end()) return;
  total_ -= it->second.chunks.size();
  files_.erase(it);
}

void ReadAhead::clear() {
  files_.clear();
  total_ = 0;
}

}  // namespace cairn
