// Write-behind: a WRITE is answered once its bytes are queued here, and they leave for the data
// targets in the background, in batches, each batch followed by one `wrote` to the metadata
// server. The client does this only while it holds the file's DATA and ATTR locks in PW: a reader
// elsewhere needs PR on the data, a stat elsewhere PR on the attributes, so either calls the
// writer back, and the give-back sends everything queued first. fsync, close, truncate and this
// client's own READs of the file send the queue first too. A batch that fails is reported at the
// next write, fsync or close of the file (as NFS does).
//
// Under the same PW lock on the attributes, a chmod, chown or utimes of the file is answered from
// here too (`setAttr`): the change is queued after the writes before it and goes out in the
// background (one setattr, after the batch's `wrote`), so `tar` restoring owners, modes and times
// of what it just wrote waits for no server. A write after a queued change goes in a batch of its
// own, so the server applies them in the order the application made them.
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
  static constexpr size_t FILE_BATCH = 4 << 20;   // queued for one file: start sending
  static constexpr size_t MAX_QUEUED = 64 << 20;  // queued over all files: writers wait
  // Batches of one file on their way at once. One at a time, a target sat idle while the
  // client waited for its reply and for the `wrote` after it; with a few, each target has the
  // next batch's bytes as it commits the last.
  static constexpr size_t MAX_FLIGHTS = 4;

  struct Write {
    uint64_t offset;
    kj::Array<kj::byte> data;
  };
  // A queued setattr (no size change): what to set, and who asked (their credentials).
  struct AttrChange {
    uint32_t valid = 0;  // rpc::SET_* bits
    uint32_t mode = 0, uid = 0, gid = 0;
    timespec atime{}, mtime{};
    uint32_t callerUid = 0, callerGid = 0, callerPid = 0;
    timespec at{};  // when it was asked: the inode's change time
  };
  struct Batch {
    std::vector<Write> writes;
    uint64_t begin = UINT64_MAX;  // the lowest offset written
    uint64_t end = 0;             // the file is at least this long once the batch is in place
    kj::Maybe<AttrChange> attr;   // set after the writes
  };
  // What a batch on its way covers: its bytes, and whether it changes attributes.
  struct Span {
    uint64_t begin, end;
    bool attr;
    explicit Span(const Batch& b) : begin(b.begin), end(b.end), attr(b.attr != nullptr) {}
  };

  // Queues a write.
  void add(uint64_t ino, uint64_t offset, kj::Array<kj::byte> data);
  // Queues a change of attributes, merged with one already queued (the later value wins).
  void setAttr(uint64_t ino, const AttrChange& change);
  // A change is queued (not yet taken): a write must not join its batch.
  bool attrQueued(uint64_t ino) const;
  // Takes what is queued for a file (empty if nothing), or its first writes up to `limit`
  // bytes: batches of a bounded size keep several on their way, where one large batch taken
  // while the others were on their way would leave nothing to overlap its own commit.
  Batch take(uint64_t ino, size_t limit = SIZE_MAX);
  // Writes or a change queued or being sent.
  bool queued(uint64_t ino) const;
  // Every file with writes queued or being sent.
  std::vector<uint64_t> files() const;
  size_t total() const { return total_; }
  // Bytes queued for a file, not yet taken.
  size_t queuedBytes(uint64_t ino) const;
  // Batch `id` is the file's only one on its way, and nothing is queued behind it: the last
  // of what an fsync waits for.
  bool last(uint64_t ino, uint64_t id) const;
  // A batch was sent (or failed with `error`, a Linux errno).
  void sent(uint64_t ino, size_t bytes, bool attr, int error);
  // What is queued for a file (not what is being sent) fails with `error` without being sent.
  void fail(uint64_t ino, int error);
  // The error of a failed batch, once; 0 if none.
  int takeError(uint64_t ino);
  // What queued writes and changes make of the attributes the server last told: a longer file,
  // newer times, the mode, owner and times set.
  void adjust(struct stat& attr) const;

  // What the file's next batch must wait for before it leaves, if anything: a free place
  // among the MAX_FLIGHTS batches on their way, or every batch on its way when its bytes
  // overlap one's or a change of attributes is queued or on its way. Batches of disjoint bytes
  // may land in any order (each target applies each request whole, in one transaction); those
  // that overlap, and a change against the `wrote` of the writes before it, may not.
  kj::Maybe<kj::Promise<void>> mustWait(uint64_t ino);
  // The same question without waiting: may it leave now?
  bool mayLeave(uint64_t ino) const;
  // Resolves once every batch of the file now on its way is sent (null if none is).
  kj::Maybe<kj::Promise<void>> allSent(uint64_t ino);
  // Resolves once the oldest batch of the file now on its way is sent (null if none is).
  kj::Maybe<kj::Promise<void>> firstSent(uint64_t ino);
  // A batch taken leaves: `id` (from newFlight) names it, `done` resolves once it is sent.
  uint64_t newFlight() { return ++lastFlight_; }
  void setSending(uint64_t ino, uint64_t id, Span span, kj::ForkedPromise<void> done);
  // That batch's sending ended (called in an event of its own, never from inside `done`).
  void doneSending(uint64_t ino, uint64_t id);

private:
  struct Flight {
    uint64_t id;
    Span span;
    kj::ForkedPromise<void> done;
  };
  struct File {
    Batch queue;
    size_t bytes = 0;                    // queued, not yet taken
    size_t inFlight = 0;                 // taken, not yet sent
    uint64_t end = 0;                    // of everything queued or in flight
    timespec queuedMtime{};              // of the last write queued (not yet taken)
    timespec flightMtime{};              // of the last write of the batch being sent
    kj::Maybe<AttrChange> attrInFlight;  // taken, not yet sent: still what the file looks like
    int error = 0;
    std::vector<Flight> flights;  // batches on their way, oldest first
    bool pending() const {
      return bytes > 0 || inFlight > 0 || queue.attr != nullptr || attrInFlight != nullptr;
    }
  };
  enum class Wait { NONE, FIRST, ALL };
  Wait waitFor(const File& f) const;

  std::unordered_map<uint64_t, File> files_;
  size_t total_ = 0;
  uint64_t lastFlight_ = 0;
};

}  // namespace cairn
