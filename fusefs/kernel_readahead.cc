#include "fusefs/kernel_readahead.h"

#include <limits.h>
#include <stdlib.h>

#include <fstream>
#include <sstream>
#include <string>

#include <spdlog/spdlog.h>

namespace cairn {

namespace {

// mountinfo escapes blanks and backslashes in paths as \ooo.
std::string unescape(const std::string& field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      out += char(std::stoi(field.substr(i + 1, 3), nullptr, 8));
      i += 3;
    } else {
      out += field[i];
    }
  }
  return out;
}

}  // namespace

bool setKernelReadahead(kj::StringPtr mountPoint, uint32_t kib) {
  char resolved[PATH_MAX];
  std::string where =
      realpath(mountPoint.cStr(), resolved) != nullptr ? resolved : mountPoint.cStr();
  // The last entry for the mount point is the one on top (ours, just mounted).
  std::ifstream info("/proc/self/mountinfo");
  std::string line, device;
  while (std::getline(info, line)) {
    // id parent major:minor root mountpoint ...
    std::istringstream fields(line);
    std::string id, parent, majorMinor, root, point;
    if (!(fields >> id >> parent >> majorMinor >> root >> point)) continue;
    if (unescape(point) == where) device = majorMinor;
  }
  if (device.empty()) {
    spdlog::warn("read-ahead: {} not found in /proc/self/mountinfo", where);
    return false;
  }
  std::string path = "/sys/class/bdi/" + device + "/read_ahead_kb";
  std::ofstream out(path);
  out << kib << "\n";
  out.flush();
  if (!out) {
    spdlog::info("read-ahead: cannot set {} (not root?): reads stay at the kernel's 128 KiB", path);
    return false;
  }
  spdlog::debug("read-ahead window of {} set to {} KiB", where, kib);
  return true;
}

}  // namespace cairn
