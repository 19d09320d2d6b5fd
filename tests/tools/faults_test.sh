#!/bin/bash
# tools/faults for 25 s with a seed of its own (printed: rerun with --seed N to replay the same
# choices): servers killed and restarted or restarted through a controlled shutdown, a client
# killed, the metadata map filled, connections cut, under appendcheck on three mounts and fsx on
# two files; no acknowledged byte lost, nothing applied twice, no error on the surviving clients,
# every fsx operation matching its model, the killed client's sessions ended everywhere.
source "$(dirname "$0")/lib.sh"
trap 'rm -rf "$T"' EXIT
check "fault injection" "$ROOT/tools/faults" --bin "$BUILD" --seconds "${FAULTS_SECONDS:-25}"
# The same on a trusted network: the connections' unencrypted path through the same faults.
check "fault injection, trusted network" "$ROOT/tools/faults" --bin "$BUILD" --trusted-network \
  --seconds "${FAULTS_TRUSTED_SECONDS:-15}"
echo "$CHECKS passed, 0 failed"
