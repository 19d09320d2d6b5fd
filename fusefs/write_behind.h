// Write-behind: a WRITE is answered once its bytes are queued here, and they leave for the data
// targets in the background, in batches, each batch followed by one `wrote` to the metadata
// server. The client does this only while it holds the file's DATA and ATTR locks in PW: a reader
// elsewhere needs PR on the data, a stat elsewhere PR on the attributes, so either calls the
// writer back, and the give-back sends everything queued first. fsync, close, truncate and this
// client's own READs of the file send the queue first too. A batch that fails is reported at the
// next fsync or close of the file (as NFS does).
//
// This file keeps the queue; the client sends it (Client::flushed).
#pragma once

#include <sys/stat.h>

#include <kj/array.h>
#include <kj/async.h>

#include <cstdint>
#include <ctime>
#include <unordered_map>
#include <vector>

namespace cairn {

class WriteBehind {
public:
  static constexpr size_t FILE_BATCH = 8 << 20;   // queued for one file: start sending
  static constexpr size_t MAX_QUEUED = 64 << 20;  // queued over all files: writers wait

  struct Write {
    uint64_t offset;
    kj::Array<kj::byte> data;
  };
  struct Batch {
    std::vector<Write> writes;
    uint64_t end = 0;  // the file is at least this long once the batch is in place
  };

  // Queues a write; returns the bytes now queued for the file.
  size_t add(uint64_t ino, uint64_t offset, kj::Array<kj::byte> data);
  // Takes what is queued for a file (empty if nothing).
  Batch take(uint64_t ino);
  bool queued(uint64_t ino) const;
  // Every file with writes queued or being sent.
  std::vector<uint64_t> files() const;
  size_t total() const { return total_; }
  // A batch was sent (or failed with `error`, a Linux errno).
  void sent(uint64_t ino, size_t bytes, int error);
  // The error of a failed batch, once; 0 if none.
  int takeError(uint64_t ino);
  // What queued writes make of the attributes the server last told: a longer file, newer times.
  void adjust(struct stat& attr) const;

  // Sending in progress for a file (one at a time, so batches land in order).
  kj::Maybe<kj::ForkedPromise<void>&> sending(uint64_t ino);
  void setSending(uint64_t ino, kj::ForkedPromise<void> promise);
  // The sending ended (called in an event of its own, never from inside the promise).
  void doneSending(uint64_t ino);

private:
  struct File {
    Batch queue;
    size_t bytes = 0;     // queued, not yet taken
    size_t inFlight = 0;  // taken, not yet sent
    uint64_t end = 0;     // of everything queued or in flight
    timespec mtime{};     // of the last queued write
    int error = 0;
    kj::Maybe<kj::ForkedPromise<void>> sending;
  };
  std::unordered_map<uint64_t, File> files_;
  size_t total_ = 0;
};

}  // namespace cairn
