#include "objserver/reexec.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/debug.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace cairn {

kj::String checkServerBinary(kj::StringPtr binary) {
  KJ_REQUIRE(binary.startsWith("/"), "the new binary's path must be absolute", binary);
  KJ_REQUIRE(access(binary.cStr(), X_OK) == 0, "cannot run the new binary", binary,
             strerror(errno));
  // Whoever can change the file, or its directory, could make this server run anything: only
  // this server's user (or root) may.
  auto slash = KJ_ASSERT_NONNULL(binary.findLast('/'));
  auto dir = slash == 0 ? kj::str("/") : kj::heapString(binary.slice(0, slash));
  for (auto path : {binary, dir.asPtr()}) {
    struct stat st;
    KJ_REQUIRE(stat(path.cStr(), &st) == 0, "cannot stat the new binary", path, strerror(errno));
    KJ_REQUIRE(st.st_uid == 0 || st.st_uid == geteuid(),
               "the new binary (or its directory) belongs to another user", path, st.st_uid);
    // (A sticky directory, /tmp say, lets others add files but not replace this one.)
    bool stickyDir = S_ISDIR(st.st_mode) && (st.st_mode & S_ISVTX);
    KJ_REQUIRE((st.st_mode & (S_IWGRP | S_IWOTH)) == 0 || stickyDir,
               "the new binary (or its directory) can be changed by other users", path);
  }
  int fds[2];
  KJ_SYSCALL(pipe2(fds, O_CLOEXEC));
  pid_t pid = fork();
  KJ_REQUIRE(pid >= 0, "fork failed", strerror(errno));
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    execl(binary.cStr(), binary.cStr(), "--version", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, size_t(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  out = out.substr(0, out.find('\n'));  // the first line says what it is
  constexpr kj::StringPtr PREFIX = "cairn-server "_kj;
  KJ_REQUIRE(WIFEXITED(status) && WEXITSTATUS(status) == 0 && out.rfind(PREFIX.cStr(), 0) == 0,
             "the new binary is not a cairn-server", binary, out.c_str());
  return kj::str(out.substr(PREFIX.size()).c_str());
}

void reexec(const Reexec& how, kj::ArrayPtr<const kj::String> argv, kj::StringPtr listen,
            kj::StringPtr metrics) {
  // The new image's arguments: the old ones, with the addresses pinned and without a version
  // override (the restart says which version to act as).
  std::vector<std::string> args{how.binary.cStr()};
  bool sawListen = false;
  for (size_t i = 1; i < argv.size(); ++i) {
    std::string a = argv[i].cStr();
    std::string name = a.substr(0, a.find('='));
    bool inlineValue = name.size() < a.size();
    bool pinned = name == "--listen" || (name == "--metrics" && metrics.size() > 0);
    if (!pinned && name != "--version-override") {
      args.push_back(a);
      continue;
    }
    if (!inlineValue) ++i;  // the value is the next argument
    if (name == "--listen") {
      sawListen = true;
      args.push_back("--listen=" + std::string(listen.cStr()));
    } else if (name == "--metrics") {
      args.push_back("--metrics=" + std::string(metrics.cStr()));
    }
  }
  if (!sawListen) args.push_back("--listen=" + std::string(listen.cStr()));
  if (how.versionOverride.size() > 0) {
    setenv("CAIRN_VERSION_OVERRIDE", how.versionOverride.cStr(), 1);
  } else {
    unsetenv("CAIRN_VERSION_OVERRIDE");
  }
  std::vector<char*> raw;
  std::string line;
  for (auto& a : args) {
    raw.push_back(a.data());
    line += (line.empty() ? "" : " ") + a;
  }
  raw.push_back(nullptr);
  spdlog::info("restarting as {}", line);
  spdlog::default_logger()->flush();
  execv(how.binary.cStr(), raw.data());
  // Only if the binary vanished since it was checked: nothing is left to serve with.
  spdlog::critical("exec of {} failed: {}", how.binary.cStr(), strerror(errno));
  _exit(1);
}

}  // namespace cairn
