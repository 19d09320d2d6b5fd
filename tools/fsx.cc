// fsx: a random-operation file exerciser. Every operation is applied to a file and to an
// in-memory model of it; every read (read(2), a mapping, or a second path to the same file,
// e.g. through another mount) is checked byte for byte against the model. Reproducible from a
// seed; on the first mismatch it prints the operations that led there and exits 1.
//
//   fsx [--seed N] [--ops N | --seconds S] [--max-size BYTES] [--also PATH] FILE
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <string>

#include "rpc/version.h"

namespace {

char lastOp[160] = "(none yet)";  // for the SIGBUS handler

struct Options {
  std::string file;
  std::string also;  // another path to the same file (second mount)
  uint64_t seed = 1;
  uint64_t ops = 10000;
  double seconds = 0;
  uint64_t maxSize = 4 << 20;
  uint32_t maxLength = 256 << 10;
  bool verbose = false;
};

class Fsx {
public:
  explicit Fsx(const Options& o) : o_(o), rng_(o.seed) {}

  int run() {
    fd_ = open(o_.file.c_str(), O_CREAT | O_TRUNC | O_RDWR, 0644);
    if (fd_ < 0) return fatal("open " + o_.file);
    auto start = std::chrono::steady_clock::now();
    for (count_ = 0;; ++count_) {
      if (o_.seconds > 0) {
        std::chrono::duration<double> d = std::chrono::steady_clock::now() - start;
        if (d.count() >= o_.seconds) break;
      } else if (count_ >= o_.ops) {
        break;
      }
      if (!step()) return 1;
    }
    if (!verifyAll("final check")) return 1;
    close(fd_);
    printf("fsx: %llu operations, seed %llu, final size %zu: ok\n",
           static_cast<unsigned long long>(count_), static_cast<unsigned long long>(o_.seed),
           model_.size());
    return 0;
  }

private:
  uint64_t pick(uint64_t n) { return n == 0 ? 0 : rng_() % n; }

  void note(const std::string& what) {
    log_.push_back(std::to_string(count_) + ": " + what);
    snprintf(lastOp, sizeof(lastOp), "%s", log_.back().c_str());
    if (log_.size() > 40) log_.pop_front();
    if (o_.verbose) printf("%s\n", log_.back().c_str());
  }

  int fatal(const std::string& what) {
    fprintf(stderr, "fsx: %s: %s (op %llu, seed %llu)\n", what.c_str(), strerror(errno),
            static_cast<unsigned long long>(count_), static_cast<unsigned long long>(o_.seed));
    dumpLog();
    return 1;
  }

  void dumpLog() {
    fprintf(stderr, "last operations:\n");
    for (auto& l : log_) fprintf(stderr, "  %s\n", l.c_str());
  }

  bool compare(const std::string& what, uint64_t off, const char* got, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      char want = off + i < model_.size() ? model_[off + i] : 0;
      if (got[i] != want) {
        fprintf(stderr,
                "fsx: %s: byte %llu is 0x%02x, the model says 0x%02x (op %llu, seed %llu)\n",
                what.c_str(), static_cast<unsigned long long>(off + i),
                static_cast<unsigned char>(got[i]), static_cast<unsigned char>(want),
                static_cast<unsigned long long>(count_), static_cast<unsigned long long>(o_.seed));
        dumpLog();
        return false;
      }
    }
    return true;
  }

  bool checkSize(const std::string& what) {
    struct stat st;
    if (fstat(fd_, &st) != 0) return fatal("fstat") == 0;
    if (uint64_t(st.st_size) != model_.size()) {
      fprintf(stderr, "fsx: %s: size is %lld, the model says %zu (op %llu, seed %llu)\n",
              what.c_str(), static_cast<long long>(st.st_size), model_.size(),
              static_cast<unsigned long long>(count_), static_cast<unsigned long long>(o_.seed));
      dumpLog();
      return false;
    }
    return true;
  }

  bool readCheck(int fd, const std::string& what, uint64_t off, size_t len) {
    std::string buf(len, '\0');
    ssize_t n = pread(fd, buf.data(), len, off);
    if (n < 0) return fatal(what) == 0;
    size_t want = off >= model_.size() ? 0 : std::min<size_t>(len, model_.size() - off);
    if (size_t(n) != want) {
      fprintf(stderr, "fsx: %s at %llu: read %zd bytes, the model has %zu (op %llu, seed %llu)\n",
              what.c_str(), static_cast<unsigned long long>(off), n, want,
              static_cast<unsigned long long>(count_), static_cast<unsigned long long>(o_.seed));
      dumpLog();
      return false;
    }
    return compare(what, off, buf.data(), n);
  }

  bool verifyAll(const std::string& what) {
    if (!checkSize(what)) return false;
    if (!readCheck(fd_, what, 0, model_.size())) return false;
    if (!o_.also.empty()) {
      int fd = open(o_.also.c_str(), O_RDONLY);
      if (fd < 0) return fatal("open " + o_.also) == 0;
      bool ok = readCheck(fd, what + " via " + o_.also, 0, model_.size());
      close(fd);
      if (!ok) return false;
    }
    return true;
  }

  bool step() {
    uint64_t size = model_.size();
    uint64_t off = pick(o_.maxSize);
    uint64_t len = 1 + pick(o_.maxLength);
    if (off + len > o_.maxSize) len = o_.maxSize - off;
    switch (pick(10)) {
      case 0:
      case 1:
      case 2: {  // write
        std::string data(len, '\0');
        for (auto& c : data) c = char(rng_());
        note("write " + std::to_string(off) + " +" + std::to_string(len));
        if (pwrite(fd_, data.data(), len, off) != ssize_t(len)) return fatal("write") == 0;
        if (off + len > model_.size()) model_.resize(off + len, '\0');
        model_.replace(off, len, data);
        return true;
      }
      case 3:
      case 4: {  // read
        off = pick(size + 4096);
        note("read " + std::to_string(off) + " +" + std::to_string(len));
        return readCheck(fd_, "read", off, len);
      }
      case 5: {  // truncate, shorter or longer
        uint64_t to = pick(o_.maxSize);
        note("truncate " + std::to_string(to));
        if (ftruncate(fd_, to) != 0) return fatal("ftruncate") == 0;
        model_.resize(to, '\0');
        return checkSize("truncate");
      }
      case 6: {  // read through a mapping
        if (size == 0) return true;
        off = pick(size);
        len = std::min<uint64_t>(len, size - off);
        uint64_t page = off & ~uint64_t(4095);
        note("mapread " + std::to_string(off) + " +" + std::to_string(len));
        void* m = mmap(nullptr, off + len - page, PROT_READ, MAP_SHARED, fd_, page);
        if (m == MAP_FAILED) return fatal("mmap") == 0;
        bool ok = compare("mapread", off, static_cast<char*>(m) + (off - page), len);
        munmap(m, off + len - page);
        return ok;
      }
      case 7: {  // write through a mapping (inside the file: mappings do not extend it)
        if (size == 0) return true;
        off = pick(size);
        len = std::min<uint64_t>(len, size - off);
        uint64_t page = off & ~uint64_t(4095);
        note("mapwrite " + std::to_string(off) + " +" + std::to_string(len));
        void* m = mmap(nullptr, off + len - page, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, page);
        if (m == MAP_FAILED) return fatal("mmap") == 0;
        std::string data(len, '\0');
        for (auto& c : data) c = char(rng_());
        memcpy(static_cast<char*>(m) + (off - page), data.data(), len);
        int rc = msync(m, off + len - page, MS_SYNC);
        munmap(m, off + len - page);
        if (rc != 0) return fatal("msync") == 0;
        model_.replace(off, len, data);
        return true;
      }
      case 8: {  // fsync
        note("fsync");
        if (fsync(fd_) != 0) return fatal("fsync") == 0;
        return true;
      }
      default: {  // close and reopen, then check everything
        note("close+reopen");
        close(fd_);
        fd_ = open(o_.file.c_str(), O_RDWR);
        if (fd_ < 0) return fatal("reopen") == 0;
        return verifyAll("after reopen");
      }
    }
  }

  Options o_;
  std::mt19937_64 rng_;
  std::string model_;
  std::deque<std::string> log_;
  uint64_t count_ = 0;
  int fd_ = -1;
};

}  // namespace

// A mapped access the filesystem could not serve (a failed READ, or a page past the size the
// kernel believes) is a SIGBUS: say which operation it was before dying of it.
void onSigbus(int) {
  static const char head[] = "fsx: SIGBUS in operation ";
  ssize_t ignored = write(2, head, sizeof(head) - 1);
  ignored = write(2, lastOp, strlen(lastOp));
  ignored = write(2, "\n", 1);
  (void)ignored;
  _exit(135);
}

int main(int argc, char** argv) {
  signal(SIGBUS, onSigbus);
  CLI::App app{"fsx: random file operations checked against an in-memory model"};
  app.set_version_flag("--version", std::string("fsx (cairn) ") + CAIRN_VERSION);
  Options o;
  app.add_option("file", o.file, "the file to exercise (created, truncated)")->required();
  app.add_option("--seed", o.seed, "random seed (runs are reproducible from it)");
  app.add_option("--ops", o.ops, "number of operations");
  app.add_option("--seconds", o.seconds, "run this long instead (soak)");
  app.add_option("--max-size", o.maxSize, "largest file size");
  app.add_option("--max-length", o.maxLength, "largest read or write");
  app.add_option("--also", o.also, "another path to the same file, checked too (second mount)");
  app.add_flag("-v,--verbose", o.verbose, "print every operation");
  CLI11_PARSE(app, argc, argv);
  return Fsx(o).run();
}
