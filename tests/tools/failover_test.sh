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
PIDS=()
cleanup() {
  cd /
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "$ROOT/tools/cluster" down --dir "$T/state" --bin "$BUILD" >/dev/null 2>&1 || true
  rm -rf "$T"
}
trap cleanup EXIT
CLUSTER="$ROOT/tools/cluster"
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

for m in a b; do
  mkdir "$T/$m/app-$m" "$T/$m/fio-$m"
  "$BUILD/tools/appendcheck" "$T/$m/app-$m" --files 4 --seconds "$SECONDS_" > "$T/app-$m.log" 2>&1 &
  PIDS+=($!)
  fio --name=failover-$m --directory="$T/$m/fio-$m" --rw=randwrite --bs=4k --size=8m \
    --verify=crc32c --verify_backlog=128 --verify_fatal=1 --verify_state_save=0 --do_verify=1 --ioengine=psync \
    --fsync=32 --time_based --runtime="$SECONDS_" --output="$T/fio-$m.out" > /dev/null 2>&1 &
  PIDS+=($!)
done
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

rc=0
for p in "${PIDS[@]}"; do wait "$p" || rc=$?; done
PIDS=()
cat "$T/app-a.log" "$T/app-b.log"
grep -h -E "err=|verify" "$T/fio-a.out" "$T/fio-b.out" | head -4 || true
check "appendcheck and fio saw no error (exit status $rc)" test "$rc" -eq 0
check "appendcheck on mount a: no errors" grep -q ", 0 errors, 0 verify errors" "$T/app-a.log"
check "appendcheck on mount b: no errors" grep -q ", 0 errors, 0 verify errors" "$T/app-b.log"
check "every server runs the new version, one serving and one standing by per target" python3 -c '
import json, sys, collections
s = json.loads(sys.argv[1])
assert all(x["version"] == "0.1.97-pairs" for x in s["servers"]), s
roles = collections.Counter((x["kind"], x["target"], x["state"]) for x in s["servers"])
assert all(n == 1 for n in roles.values()) and len(roles) == 6, roles
' "$(status)"
check "no client was evicted" bash -c '! grep -q "evicted by" "$1"/state/mount*.log' _ "$T"
echo "$CHECKS passed, 0 failed"
