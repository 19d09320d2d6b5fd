// `cairnctl upgrade`: a rolling upgrade of a running cluster to the cairn-server binary at a
// given path, target by target (or N data targets at a time), in the declared order. Each server
// is upgraded in place (Bootstrap.restart: a controlled shutdown, then the process becomes the
// new binary on the same port); a failover pair goes through failover instead, so that its
// target is served throughout: the standby is upgraded, takes the target over, and the old
// server is upgraded as the new standby. The next step starts only once the target serves again
// and every client that was connected before has recovered. It stops at the first failure with
// a report and a non-zero exit; run again, it skips the targets already at the new version.
#pragma once

#include <kj/async-io.h>
#include <kj/string.h>

#include "tools/ctl_util.h"

namespace cairn::ctl {

struct UpgradeOptions {
  kj::Array<kj::String> metaAddresses;       // any server of the metadata target
  kj::String binary;                         // the new cairn-server, as the servers' hosts see it
  kj::String versionOverride;                // test hook: the version the new servers act as
  unsigned group = 1;                        // data targets upgraded at once
  kj::String order;                          // "data-first", "meta-first"; "": as the release says
  bool dryRun = false;                       // print the plan only
  bool json = false;                         // one JSON object per line
  kj::Duration timeout = 120 * kj::SECONDS;  // for each phase of each target
};

// Returns the process exit status: 0 done, 1 stopped at a failure (reported).
int rollingUpgrade(Context& ctx, const UpgradeOptions& options);

}  // namespace cairn::ctl
