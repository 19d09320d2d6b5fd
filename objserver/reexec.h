// Upgrade in place: a server replaces its own process image with another cairn-server binary,
// keeping its pid (a service manager sees no restart), its arguments and its port.
#pragma once

#include <kj/string.h>
#include <kj/vector.h>

namespace cairn {

struct Reexec {
  kj::String binary;
  kj::String versionOverride;  // "" : the binary's own version
};

// Runs `binary --version` and returns the version it reports; throws if it is not a
// cairn-server this host can run (checked before anything is shut down).
kj::String checkServerBinary(kj::StringPtr binary);

// Replaces the process. `argv` is the command line the server was started with; the listen
// and metrics addresses are pinned to the ones actually bound (a port 0 must not move).
[[noreturn]] void reexec(const Reexec& how, kj::ArrayPtr<const kj::String> argv,
                         kj::StringPtr listen, kj::StringPtr metrics);

}  // namespace cairn
