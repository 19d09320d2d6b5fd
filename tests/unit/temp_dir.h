#pragma once

#include <ftw.h>
#include <stdlib.h>

#include <stdexcept>
#include <string>

namespace cairn {

// A directory for one test, removed with everything in it.
class TempDir {
public:
  TempDir() {
    char tmpl[] = "/tmp/cairn-unit-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp");
    path_ = tmpl;
  }
  ~TempDir() {
    nftw(
        path_.c_str(),
        [](const char* p, const struct stat*, int, struct FTW*) { return remove(p); }, 32,
        FTW_DEPTH | FTW_PHYS);
  }
  const std::string& path() const { return path_; }

private:
  std::string path_;
};

}  // namespace cairn
