// appendcheck: keeps files open for as long as it runs, appending fixed-size records, fsyncing
// and reading each back through the same descriptor; at the end it reads every file whole,
// again through the descriptors it opened first, and checks every record is there once and in
// order. What an application sees while servers restart underneath it: any failed call, wrong
// byte, lost or doubled record is counted, and the longest and median wait of a call reported.
//
//   appendcheck DIR [--files N] [--seconds S] [--fsync-every K] [--ack-log FILE]
//               [--retry-enospc]
// Exit status 0 only if nothing went wrong. SIGTERM/SIGINT end the run early (then verify).
// For fault injection (tools/faults): --ack-log appends "FILE SEQ" to a local file each time an
// fsync acknowledged the records of file FILE up to SEQ, so that what was acknowledged can be
// checked after this process or its mount is gone; --retry-enospc takes ENOSPC (a full target)
// as the clear error it is, waits and writes the same record again; a mount that goes away
// (ENOTCONN: its client was killed) ends the run with exit status 3, without the final check.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr size_t RECORD = 32;
std::atomic<bool> stopping{false};

// "f003 seq 000000000042 ........\n": 32 bytes for any file < 1000 and seq < 10^12.
std::string record(int file, uint64_t seq) {
  char buf[64];
  int n = snprintf(buf, sizeof(buf), "f%03d seq %012llu", file % 1000,
                   static_cast<unsigned long long>(seq % 1000000000000ull));
  std::string r(buf, size_t(n));
  r.resize(RECORD - 1, '.');
  r += '\n';
  return r;
}

using Clock = std::chrono::steady_clock;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Appends, fsyncs and reads back records through descriptors kept open"};
  std::string dir;
  int files = 4;
  double seconds = 10;
  int fsyncEvery = 1;
  std::string ackLog;
  bool retryEnospc = false;
  app.add_option("dir", dir, "directory to work in")->required();
  app.add_option("--ack-log", ackLog, "append \"FILE SEQ\" here for every acknowledged fsync");
  app.add_flag("--retry-enospc", retryEnospc, "on ENOSPC wait and write the record again");
  app.add_option("--files", files, "files kept open");
  app.add_option("--seconds", seconds, "how long to run");
  app.add_option("--fsync-every", fsyncEvery, "fsync after this many records per file");
  CLI11_PARSE(app, argc, argv);

  struct sigaction sa {};
  sa.sa_handler = [](int) { stopping = true; };
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  std::vector<int> fds;
  for (int i = 0; i < files; ++i) {
    auto path = dir + "/append-" + std::to_string(i);
    int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR | O_APPEND, 0644);
    if (fd < 0) {
      fprintf(stderr, "appendcheck: %s: %s\n", path.c_str(), strerror(errno));
      return 2;
    }
    fds.push_back(fd);
  }

  FILE* acks = nullptr;
  if (!ackLog.empty()) {
    acks = fopen(ackLog.c_str(), "a");
    if (acks == nullptr) {
      fprintf(stderr, "appendcheck: %s: %s\n", ackLog.c_str(), strerror(errno));
      return 2;
    }
    setvbuf(acks, nullptr, _IOLBF, 0);  // a line per acknowledgement, as it happens
  }
  uint64_t errors = 0, records = 0, enospc = 0;
  bool mountLost = false;
  // A full target is an answer, not a failure, when asked to retry; a lost mount ends the run.
  auto expected = [&](int err) {
    if (err == ENOTCONN) mountLost = stopping = true;
    if (err == ENOSPC && retryEnospc) {
      ++enospc;
      usleep(200 * 1000);
      return true;
    }
    return false;
  };
  std::vector<double> waits;  // ms, per call
  auto timed = [&](auto&& call) {
    auto t0 = Clock::now();
    bool ok = call();
    waits.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    if (!ok) ++errors;
    return ok;
  };
  auto end = Clock::now() + std::chrono::milliseconds(int64_t(seconds * 1000));
  uint64_t seq = 0;
  while (!stopping && Clock::now() < end) {
    for (int i = 0; i < files; ++i) {
      auto rec = record(i, seq);
      int fd = fds[i];
      bool written = false;
      while (!written && !mountLost) {
        timed([&] {
          ssize_t n = write(fd, rec.data(), rec.size());
          if (n == ssize_t(rec.size())) return written = true;
          if (n < 0 && expected(errno)) return true;
          fprintf(stderr, "appendcheck: write: %s\n", n < 0 ? strerror(errno) : "short");
          written = true;  // counted as an error; go on
          return false;
        });
      }
      if (mountLost) break;
      if ((seq + 1) % fsyncEvery == 0) {
        bool synced = false;
        while (!synced && !mountLost) {
          timed([&] {
            if (fsync(fd) == 0) {
              synced = true;
              if (acks != nullptr) fprintf(acks, "%d %llu\n", i, (unsigned long long)seq);
              return true;
            }
            if (expected(errno)) return true;
            fprintf(stderr, "appendcheck: fsync: %s\n", strerror(errno));
            synced = true;
            return false;
          });
        }
        if (mountLost) break;
      }
      timed([&] {
        struct stat st;
        char back[RECORD];
        if (fstat(fd, &st) != 0 || st.st_size < off_t(RECORD)) {
          fprintf(stderr, "appendcheck: fstat: %s\n", strerror(errno));
          return false;
        }
        if (pread(fd, back, RECORD, st.st_size - RECORD) != ssize_t(RECORD) ||
            memcmp(back, rec.data(), RECORD) != 0) {
          fprintf(stderr, "appendcheck: file %d record %llu did not read back\n", i,
                  static_cast<unsigned long long>(seq));
          return false;
        }
        return true;
      });
      ++records;
    }
    if (mountLost) break;
    ++seq;
  }
  if (mountLost) {
    printf("appendcheck: the mount went away (ENOTCONN) after %llu records\n",
           static_cast<unsigned long long>(records));
    return 3;
  }

  // Every record once, in order, read through the descriptors opened at the start.
  uint64_t verifyErrors = 0;
  for (int i = 0; i < files; ++i) {
    std::string want;
    want.reserve(seq * RECORD);
    for (uint64_t s = 0; s < seq; ++s) want += record(i, s);
    std::string got(want.size() + RECORD, '\0');
    ssize_t n = pread(fds[i], got.data(), got.size(), 0);
    if (n != ssize_t(want.size()) || memcmp(got.data(), want.data(), want.size()) != 0) {
      fprintf(stderr, "appendcheck: file %d: %zd bytes read back, %zu expected, or they differ\n",
              i, n, want.size());
      ++verifyErrors;
    }
    if (close(fds[i]) != 0) ++verifyErrors;
  }
  std::sort(waits.begin(), waits.end());
  double median = waits.empty() ? 0 : waits[waits.size() / 2];
  double longest = waits.empty() ? 0 : waits.back();
  printf(
      "appendcheck: %llu records in %d files, %llu errors, %llu verify errors, "
      "longest wait %.1f ms, median %.3f ms, %llu ENOSPC retried\n",
      static_cast<unsigned long long>(records), files, static_cast<unsigned long long>(errors),
      static_cast<unsigned long long>(verifyErrors), longest, median,
      static_cast<unsigned long long>(enospc));
  return errors == 0 && verifyErrors == 0 ? 0 : 1;
}
