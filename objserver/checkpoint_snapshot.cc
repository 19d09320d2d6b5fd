#include "objserver/checkpoint_snapshot.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <kj/debug.h>
#include <kj/io.h>
#include <spdlog/spdlog.h>

#include "objserver/binary_file.h"

namespace cairn::store {

namespace {

constexpr kj::byte MAGIC[8] = {'C', 'A', 'I', 'R', 'N', 'C', 'K', 'P'};
constexpr uint32_t FORMAT = 1;
constexpr size_t BOOT_ID_SIZE = 40;
// magic, format, page size, counter, txnid, data.mdb's inode number, boot id
constexpr size_t SLOT_HEADER = 8 + 4 + 4 + 8 + 8 + 8 + BOOT_ID_SIZE;
constexpr size_t MAX_PAGE = 64 * 1024;
constexpr size_t SLOT_STRIDE = SLOT_HEADER + MAX_PAGE + 4;
constexpr kj::StringPtr FILE_NAME = "checkpoint.meta"_kj;

// LMDB 0.9's meta page: a 16-byte page header, then MDB_meta.
constexpr size_t PAGE_HEADER = 16;
constexpr uint32_t LMDB_MAGIC = 0xBEEFC0DE;
constexpr uint32_t LMDB_DATA_VERSION = 1;
constexpr size_t META_TXNID = PAGE_HEADER + 128;

// Native byte order, as LMDB writes them (these machines are little-endian; the check below
// refuses a page that does not read so).
bool isMeta(kj::ArrayPtr<const kj::byte> page) {
  return page.size() > META_TXNID + 8 && getLe(page.begin() + PAGE_HEADER, 4) == LMDB_MAGIC &&
         getLe(page.begin() + PAGE_HEADER + 4, 4) == LMDB_DATA_VERSION;
}
uint64_t txnidOf(kj::ArrayPtr<const kj::byte> page) {
  return getLe(page.begin() + META_TXNID, 8);
}

struct Slot {
  uint64_t counter = 0;
  uint64_t txnid = 0;
  uint64_t inode = 0;
  kj::String bootId;
  kj::Array<kj::byte> page;
};

// The valid slot with the highest counter, if any.
kj::Maybe<Slot> readSaved(kj::StringPtr path) {
  int fd = open(path.cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    KJ_REQUIRE(errno == ENOENT, "cannot open the checkpoint's meta page", path, strerror(errno));
    return nullptr;
  }
  kj::AutoCloseFd closer(fd);
  kj::Maybe<Slot> best;
  for (int i = 0; i < 2; ++i) {
    auto bytes = readAt(fd, SLOT_STRIDE, uint64_t(i) * SLOT_STRIDE);
    if (bytes.size() < SLOT_HEADER || memcmp(bytes.begin(), MAGIC, sizeof MAGIC) != 0) continue;
    if (getLe(bytes.begin() + 8, 4) != FORMAT) continue;
    size_t psize = size_t(getLe(bytes.begin() + 12, 4));
    if (psize == 0 || psize > MAX_PAGE || bytes.size() < SLOT_HEADER + psize + 4) continue;
    uint32_t crc = uint32_t(crc32(0, bytes.begin(), uInt(SLOT_HEADER + psize)));
    if (crc != getLe(bytes.begin() + SLOT_HEADER + psize, 4)) continue;  // torn
    Slot slot;
    slot.counter = getLe(bytes.begin() + 16, 8);
    slot.txnid = getLe(bytes.begin() + 24, 8);
    slot.inode = getLe(bytes.begin() + 32, 8);
    auto id = bytes.slice(40, 40 + BOOT_ID_SIZE);
    size_t len = 0;
    while (len < id.size() && id[len] != 0) ++len;
    slot.bootId = kj::heapString(id.slice(0, len).asChars());
    slot.page = kj::heapArray(bytes.slice(SLOT_HEADER, SLOT_HEADER + psize));
    bool better = true;
    KJ_IF_MAYBE (b, best) {
      better = slot.counter > b->counter;
    }
    if (better) best = kj::mv(slot);
  }
  return best;
}

}  // namespace

bool CheckpointSnapshot::restoreAfterHostCrash(kj::StringPtr dir, kj::StringPtr bootId) {
  auto savedPath = kj::str(dir, "/", FILE_NAME);
  Slot saved;
  KJ_IF_MAYBE (s, readSaved(savedPath)) {
    saved = kj::mv(*s);
  } else {
    return false;
  }
  // The same boot: only the process went down, and the page cache holds every commit.
  if (saved.bootId == bootId) return false;

  auto dataPath = kj::str(dir, "/data.mdb");
  int fd;
  KJ_SYSCALL(fd = open(dataPath.cStr(), O_RDWR | O_CLOEXEC), dataPath);
  kj::AutoCloseFd closer(fd);
  struct stat st;
  KJ_SYSCALL(fstat(fd, &st), dataPath);
  size_t psize = saved.page.size();
  KJ_REQUIRE(isMeta(saved.page), "the saved checkpoint is not an LMDB meta page", savedPath);
  uint64_t reached = 0;
  for (int i = 0; i < 2; ++i) {
    auto page = readAt(fd, psize, uint64_t(i) * psize);
    if (isMeta(page)) reached = kj::max(reached, txnidOf(page));
  }
  if (uint64_t(st.st_ino) != saved.inode || reached < saved.txnid) {
    // Another file (put back from a copy, say): the checkpoint is not its past.
    spdlog::warn(
        "target {}: the saved checkpoint (transaction {}) does not belong to this "
        "LMDB file (inode {}, at transaction {}); left alone",
        dir.cStr(), saved.txnid, uint64_t(st.st_ino), reached);
    return false;
  }
  for (uint64_t pgno = 0; pgno < 2; ++pgno) {
    auto page = kj::heapArray<kj::byte>(saved.page);
    putLe(page.begin(), pgno, 8);  // a meta page names its own slot
    writeAt(fd, page, pgno * psize);
  }
  KJ_SYSCALL(fdatasync(fd), dataPath);
  spdlog::warn(
      "target {}: the host went down since the last checkpoint: LMDB put back to it "
      "(transaction {}; the file had reached {}), the write-ahead log brings it "
      "forward",
      dir.cStr(), saved.txnid, reached);
  return true;
}

void CheckpointSnapshot::discard(kj::StringPtr dir) {
  auto path = kj::str(dir, "/", FILE_NAME);
  if (unlink(path.cStr()) != 0 && errno != ENOENT) KJ_FAIL_SYSCALL("unlink", errno, path);
}

CheckpointSnapshot::CheckpointSnapshot(kj::StringPtr dir, MDB_env* env, kj::String bootId)
    : dir_(kj::str(dir)), env_(env), bootId_(kj::mv(bootId)) {
  KJ_REQUIRE(bootId_.size() < BOOT_ID_SIZE, "a boot id this long is not one", bootId_);
  // LMDB's file, for its meta pages at every checkpoint; its inode goes with each one saved.
  auto dataPath = kj::str(dir_, "/data.mdb");
  int fd;
  KJ_SYSCALL(fd = open(dataPath.cStr(), O_RDONLY | O_CLOEXEC), dataPath);
  data_ = kj::AutoCloseFd(fd);
  struct stat st;
  KJ_SYSCALL(fstat(fd, &st), dataPath);
  inode_ = uint64_t(st.st_ino);
  KJ_IF_MAYBE (s, readSaved(kj::str(dir_, "/", FILE_NAME))) {
    counter_ = s->counter;
  }
}

CheckpointSnapshot::~CheckpointSnapshot() noexcept(false) {
  if (pinned_ != nullptr) mdb_txn_abort(pinned_);
}

CheckpointSnapshot::Capture CheckpointSnapshot::capture() {
  MDB_stat stat;
  int rc = mdb_env_stat(env_, &stat);
  KJ_REQUIRE(rc == 0, "mdb_env_stat", mdb_strerror(rc));
  size_t psize = stat.ms_psize;
  KJ_REQUIRE(psize <= MAX_PAGE, "an LMDB page size this code does not keep", psize);

  // LMDB's writer lock: no commit between reading the meta page and beginning the reader.
  MDB_txn* writer;
  rc = mdb_txn_begin(env_, nullptr, 0, &writer);
  KJ_REQUIRE(rc == 0, "mdb_txn_begin(checkpoint)", mdb_strerror(rc));
  KJ_DEFER(mdb_txn_abort(writer));
  MDB_envinfo info;
  rc = mdb_env_info(env_, &info);
  KJ_REQUIRE(rc == 0, "mdb_env_info", mdb_strerror(rc));

  Capture capture;
  for (int i = 0; i < 2; ++i) {
    auto page = readAt(data_.get(), psize, uint64_t(i) * psize);
    if (isMeta(page) && txnidOf(page) == uint64_t(info.me_last_txnid)) {
      capture.meta = kj::mv(page);
      break;
    }
  }
  KJ_REQUIRE(capture.meta != nullptr, "no LMDB meta page for the last transaction",
             uint64_t(info.me_last_txnid));
  rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &capture.reader);
  KJ_REQUIRE(rc == 0, "mdb_txn_begin(checkpoint reader)", mdb_strerror(rc));
  return capture;
}

void CheckpointSnapshot::saved(Capture&& capture) {
  KJ_DEFER(if (capture.reader != nullptr) mdb_txn_abort(capture.reader));
  size_t psize = capture.meta.size();
  auto slot = kj::heapArray<kj::byte>(SLOT_HEADER + psize + 4);
  memset(slot.begin(), 0, slot.size());
  memcpy(slot.begin(), MAGIC, sizeof MAGIC);
  putLe(slot.begin() + 8, FORMAT, 4);
  putLe(slot.begin() + 12, psize, 4);
  putLe(slot.begin() + 16, counter_ + 1, 8);
  putLe(slot.begin() + 24, txnidOf(capture.meta), 8);
  putLe(slot.begin() + 32, inode_, 8);
  memcpy(slot.begin() + 40, bootId_.begin(), bootId_.size());
  memcpy(slot.begin() + SLOT_HEADER, capture.meta.begin(), psize);
  putLe(slot.begin() + SLOT_HEADER + psize,
        uint32_t(crc32(0, slot.begin(), uInt(SLOT_HEADER + psize))), 4);

  auto path = kj::str(dir_, "/", FILE_NAME);
  if (side_ == nullptr) {
    int fd;
    KJ_SYSCALL(fd = open(path.cStr(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600), path);
    side_ = kj::AutoCloseFd(fd);
  }
  // The slot not holding the newest checkpoint: a torn write leaves that one standing.
  writeAt(side_.get(), slot, ((counter_ + 1) % 2) * SLOT_STRIDE);
  KJ_SYSCALL(fdatasync(side_.get()), path);
  if (counter_ == 0) syncDir(dir_);  // the file may be new: its name must last too
  ++counter_;
  // From now on a host crash goes back to this snapshot: the previous one may be reused.
  if (pinned_ != nullptr) mdb_txn_abort(pinned_);
  pinned_ = capture.reader;
  capture.reader = nullptr;
  pinnedTxnid_.store(txnidOf(capture.meta));
}

void CheckpointSnapshot::remove() {
  side_ = nullptr;
  discard(dir_);
  // Gone for good before the log goes: found again after a crash, it would take LMDB back to a
  // checkpoint the log no longer reaches past.
  syncDir(dir_);
  if (pinned_ != nullptr) mdb_txn_abort(pinned_);
  pinned_ = nullptr;
  pinnedTxnid_.store(0);
}

}  // namespace cairn::store
