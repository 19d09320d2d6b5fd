// fsbench: the workloads of tools/bench, one per call, printing one line "name value unit".
//
//   fsbench seqwrite FILE MIB            1 MiB writes, then fsync           -> MiB/s
//   fsbench seqread FILE                 1 MiB reads                        -> MiB/s
//   fsbench randread FILE SECONDS        4 KiB O_DIRECT reads at random     -> IOPS
//   fsbench randwrite FILE SECONDS       4 KiB writes, fsync every 32       -> IOPS
//   fsbench meta DIR FILES THREADS       create, stat, unlink in one dir    -> ops/s each
//   fsbench smallsync DIR SECONDS        4 KiB files: create, write, fsync  -> files/s
//                                        (a mail spool's or a package manager's pattern)
//   fsbench removestall FILE PROBE SECONDS  removes FILE while reading PROBE   -> longest read, ms
//                                        (4 KiB O_DIRECT every ms: does a removal hold others up)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

[[noreturn]] void die(const std::string& what) {
  fprintf(stderr, "fsbench: %s: %s\n", what.c_str(), strerror(errno));
  exit(1);
}

void seqwrite(const char* path, long mib) {
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) die(path);
  std::vector<char> buf(1 << 20);
  std::mt19937 rng(1);
  for (auto& c : buf) c = char(rng());
  auto t = Clock::now();
  for (long i = 0; i < mib; ++i) {
    if (write(fd, buf.data(), buf.size()) != ssize_t(buf.size())) die("write");
  }
  if (fsync(fd) != 0) die("fsync");
  close(fd);
  printf("seq_write %.1f MiB/s\n", mib / since(t));
}

void seqread(const char* path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) die(path);
  std::vector<char> buf(1 << 20);
  long total = 0;
  auto t = Clock::now();
  for (ssize_t n; (n = read(fd, buf.data(), buf.size())) > 0;) total += n;
  close(fd);
  printf("seq_read %.1f MiB/s\n", total / 1048576.0 / since(t));
}

void randread(const char* path, double seconds) {
  int fd = open(path, O_RDONLY | O_DIRECT);
  if (fd < 0) die(path);
  struct stat st;
  fstat(fd, &st);
  long blocks = st.st_size / 4096;
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, 4096) != 0) die("memalign");
  std::mt19937_64 rng(2);
  long ops = 0;
  auto t = Clock::now();
  while (since(t) < seconds) {
    for (int i = 0; i < 64; ++i, ++ops) {
      if (pread(fd, buf, 4096, off_t(rng() % blocks) * 4096) != 4096) die("pread");
    }
  }
  printf("rand_read %.0f IOPS\n", ops / since(t));
  free(buf);
  close(fd);
}

void randwrite(const char* path, double seconds) {
  int fd = open(path, O_WRONLY);
  if (fd < 0) die(path);
  struct stat st;
  fstat(fd, &st);
  long blocks = st.st_size / 4096;
  char buf[4096];
  memset(buf, 'w', sizeof(buf));
  std::mt19937_64 rng(3);
  long ops = 0;
  auto t = Clock::now();
  while (since(t) < seconds) {
    for (int i = 0; i < 32; ++i, ++ops) {
      if (pwrite(fd, buf, 4096, off_t(rng() % blocks) * 4096) != 4096) die("pwrite");
    }
    if (fsync(fd) != 0) die("fsync");
  }
  printf("rand_write_fsync32 %.0f IOPS\n", ops / since(t));
  close(fd);
}

// Runs fn(i) for i in [0, n) split over `threads` threads; returns ops/s.
template <typename Fn>
double parallel(long n, int threads, Fn fn) {
  std::vector<std::thread> pool;
  std::atomic<long> next{0};
  auto t = Clock::now();
  for (int k = 0; k < threads; ++k) {
    pool.emplace_back([&] {
      for (long i; (i = next.fetch_add(1)) < n;) fn(i);
    });
  }
  for (auto& th : pool) th.join();
  return n / since(t);
}

void meta(const char* dir, long files, int threads) {
  auto name = [&](long i) { return std::string(dir) + "/f" + std::to_string(i); };
  double create = parallel(files, threads, [&](long i) {
    int fd = open(name(i).c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (fd < 0) die("create");
    close(fd);
  });
  double statRate = parallel(files, threads, [&](long i) {
    struct stat st;
    if (stat(name(i).c_str(), &st) != 0) die("stat");
  });
  double unlinkRate = parallel(files, threads, [&](long i) {
    if (unlink(name(i).c_str()) != 0) die("unlink");
  });
  printf("md_create_t%d %.0f ops/s\n", threads, create);
  printf("md_stat_t%d %.0f ops/s\n", threads, statRate);
  printf("md_unlink_t%d %.0f ops/s\n", threads, unlinkRate);
}

void smallsync(const char* dir, double seconds) {
  char buf[4096];
  memset(buf, 's', sizeof(buf));
  long files = 0;
  auto t = Clock::now();
  while (since(t) < seconds) {
    std::string name = std::string(dir) + "/s" + std::to_string(files++);
    int fd = open(name.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (fd < 0) die("create");
    if (write(fd, buf, sizeof(buf)) != ssize_t(sizeof(buf))) die("write");
    if (fsync(fd) != 0) die("fsync");
    close(fd);
  }
  printf("small_fsync %.0f files/s\n", files / since(t));
}

void removestall(const char* path, const char* probe, double seconds) {
  int fd = open(probe, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) die(probe);
  std::vector<char> block(4096, 'p');
  if (write(fd, block.data(), block.size()) != ssize_t(block.size())) die("write");
  if (fsync(fd) != 0) die("fsync");
  close(fd);
  fd = open(probe, O_RDONLY | O_DIRECT);
  if (fd < 0) die(probe);
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, 4096) != 0) die("memalign");
  std::atomic<bool> stop{false};
  double longest = 0;
  std::thread reader([&] {
    while (!stop) {
      auto t = Clock::now();
      if (pread(fd, buf, 4096, 0) != 4096) die("pread");
      longest = std::max(longest, since(t));
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  // The removal of the data may follow the unlink (a distributed filesystem's background
  // destroy): the reads go on for the whole time.
  auto t = Clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  if (unlink(path) != 0) die(path);
  while (since(t) < seconds) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  stop = true;
  reader.join();
  close(fd);
  free(buf);
  unlink(probe);
  printf("remove_stall_ms %.1f ms\n", longest * 1000);
}

}  // namespace

int main(int argc, char** argv) {
  std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "seqwrite" && argc == 4) {
    seqwrite(argv[2], atol(argv[3]));
  } else if (cmd == "seqread" && argc == 3) {
    seqread(argv[2]);
  } else if (cmd == "randread" && argc == 4) {
    randread(argv[2], atof(argv[3]));
  } else if (cmd == "randwrite" && argc == 4) {
    randwrite(argv[2], atof(argv[3]));
  } else if (cmd == "meta" && argc == 5) {
    meta(argv[2], atol(argv[3]), atoi(argv[4]));
  } else if (cmd == "smallsync" && argc == 4) {
    smallsync(argv[2], atof(argv[3]));
  } else if (cmd == "removestall" && argc == 5) {
    removestall(argv[2], argv[3], atof(argv[4]));
  } else {
    fprintf(stderr,
            "usage: fsbench seqwrite FILE MIB | seqread FILE | randread FILE SECONDS |\n"
            "               randwrite FILE SECONDS | meta DIR FILES THREADS |\n"
            "               smallsync DIR SECONDS | removestall FILE PROBE SECONDS\n");
    return 2;
  }
  return 0;
}
