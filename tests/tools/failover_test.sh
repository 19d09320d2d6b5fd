#!/bin/bash
# Failover pairs under load: a cluster with a standby for every target (`tools/cluster up
# --failover`), fio with crc32c verification and appendcheck (files kept open, appending,
# fsyncing, reading back) on two mounts, while
#   1. `tools/cluster upgrade` goes through failover (standby restarted on the new binary takes
#      over, the old server comes back as the standby), to another version;
#   2. the active server of every target is killed with SIGKILL, one after the other, and its
#      partner takes over;
#   3. `tools/cluster upgrade` again, which also restarts the killed standbys;
#   4. `cairnctl upgrade --group 2`: each pair upgraded in place through failover.
# Zero failed operations, zero verify errors, the first descriptors still working at the end,
# no client evicted, and never two servers serving one target.
source "$(dirname "$0")/lib.sh"
trap cluster_cleanup EXIT
"$CLUSTER" up --failover --dir "$T/state" --mount "$T/a" --bin "$BUILD" >/dev/null
"$CLUSTER" mount --dir "$T/state" --bin "$BUILD" "$T/b" >/dev/null
SECONDS_=${FAILOVER_LOAD_SECONDS:-24}

status() { "$CLUSTER" status --dir "$T/state" --bin "$BUILD" --json; }

# One serving server per target, and the other standing by (or stopped).
one_serves() {
  python3 -c '
import json, sys, collections
s = json.loads(sys.argv[1])
serving = collections.Counter((x["kind"], x["target"]) for x in s["servers"] if x["state"] == "serving")
targets = {(x["kind"], x["target"]) for x in s["servers"]}
assert all(serving[t] == 1 for t in targets), serving
' "$(status)"
}
check "every target has one server serving" one_serves

start_verify_load "$SECONDS_" a b
sleep 3
check "upgrade through failover to another version" \
  env CAIRN_VERSION_OVERRIDE=0.1.99-failover-test "$CLUSTER" upgrade --dir "$T/state" --bin "$BUILD"
check "after the upgrade, one server serves each target" one_serves

# SIGKILL the serving server of each target in turn (by the pid the cluster recorded).
for target in meta:0 data:0 data:1; do
  sleep 2
  pid=$(python3 -c '
import json, sys
kind, index = sys.argv[2].split(":")
s = json.loads(sys.argv[1])
print(next(x["pid"] for x in s["servers"]
           if x["state"] == "serving" and x["kind"] == kind and x["target"] == int(index)))
' "$(status)" "$target")
  kill -9 "$pid"
  deadline=$((SECONDS + 20))
  until one_serves 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || fail "no partner took $target over after kill -9 of $pid"
    sleep 0.05
  done
  CHECKS=$((CHECKS + 1))
done
sleep 2
check "upgrade again (restarting the killed servers as standbys)" \
  env CAIRN_VERSION_OVERRIDE=0.1.99-failover-test "$CLUSTER" upgrade --dir "$T/state" --bin "$BUILD"

sleep 1
META=$(python3 -c 'import json, sys
print(",".join(s["address"] for s in json.load(open(sys.argv[1]))["servers"] if s["kind"] == "meta"))' \
  "$T/state/cluster.json")
check "cairnctl upgrade, two data targets at a time, through failover" \
  "$BUILD/tools/cairnctl" --server "$META" upgrade --bin "$BUILD/objserver/cairn-server" \
  --version-override 0.1.97-pairs --group 2
check "after it, one server serves each target" one_serves

check_verify_load a b
check "every server runs the new version, one serving and one standing by per target" python3 -c '
import json, sys, collections
s = json.loads(sys.argv[1])
assert all(x["version"] == "0.1.97-pairs" for x in s["servers"]), s
roles = collections.Counter((x["kind"], x["target"], x["state"]) for x in s["servers"])
assert all(n == 1 for n in roles.values()) and len(roles) == 6, roles
' "$(status)"
echo "$CHECKS passed, 0 failed"
