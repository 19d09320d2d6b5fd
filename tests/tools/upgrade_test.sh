#!/bin/bash
# Rolling upgrade under load (Simplified Interoperation, point 5): fio with crc32c verification
# and appendcheck (files kept open, appending, fsyncing, reading back through the same
# descriptors) run on two mounts while `tools/cluster upgrade` restarts every server through a
# controlled shutdown, twice: once with the same version, once as another version; then
# the mounts' processes are replaced by new ones without unmounting (`tools/cluster takeover`);
# then `cairnctl upgrade` upgrades every server in place to a third. Zero failed operations, zero
# verify errors, the descriptors opened first still working at the end.
source "$(dirname "$0")/lib.sh"
trap cluster_cleanup EXIT
"$CLUSTER" up --dir "$T/state" --mount "$T/a" --bin "$BUILD" >/dev/null
"$CLUSTER" mount --dir "$T/state" --bin "$BUILD" "$T/b" >/dev/null
SECONDS_=${UPGRADE_LOAD_SECONDS:-24}

start_verify_load "$SECONDS_" a b
sleep 3
check "upgrade of every server, same version" "$CLUSTER" upgrade --dir "$T/state" --bin "$BUILD"
sleep 2
check "upgrade of every server to another version" \
  env CAIRN_VERSION_OVERRIDE=0.1.99-upgrade-test "$CLUSTER" upgrade --dir "$T/state" --bin "$BUILD"

sleep 1
# The clients too, without unmounting: a new cairn-mount takes each mount over, twice for one.
for m in a b a; do
  check "client upgrade of mount $m by takeover" \
    "$CLUSTER" takeover --dir "$T/state" --bin "$BUILD" "$T/$m"
done
sleep 1
# cairnctl upgrade: every server upgraded in place (same pid, same port). A binary that is not a
# cairn-server stops it at the first target with a report, and nothing changes; run again with
# the right binary, it completes; run once more, it has nothing left to do.
META=$(python3 -c 'import json, sys
print(next(s["address"] for s in json.load(open(sys.argv[1]))["servers"] if s["kind"] == "meta"))' \
  "$T/state/cluster.json")
# The plan: in the order the new release declares (cairn-server --upgrade-order), or as asked.
plan_order() {  # the targets of a --dry-run --json plan, in order
  "$BUILD/tools/cairnctl" --server "$META" upgrade --bin "$BUILD/objserver/cairn-server" \
    --dry-run --json "$@" | python3 -c 'import json, sys
print(" ".join(e["target"] for e in map(json.loads, sys.stdin) if e["event"] == "plan"))'
}
check "the dry run follows the release's declared order ($("$BUILD/objserver/cairn-server" --upgrade-order))" \
  test "$(plan_order)" = "data0 data1 meta0"
check "--order meta-first puts the metadata target first" \
  test "$(plan_order --order meta-first)" = "meta0 data0 data1"
check "cairnctl upgrade refuses a binary that is not a cairn-server" \
  bash -c '! "$1" --server "$2" upgrade --bin /bin/true > "$3" 2>&1' _ "$BUILD/tools/cairnctl" \
  "$META" "$T/bad.out"
check "... and says where it stopped" grep -q "upgrade stopped at data0" "$T/bad.out"
check "cairnctl upgrade to a third version, in place" "$BUILD/tools/cairnctl" --server "$META" \
  upgrade --bin "$BUILD/objserver/cairn-server" --version-override 0.1.98-in-place --json \
  > "$T/upgrade.json"
check "its last line says it is done" \
  python3 -c 'import json, sys; e = json.loads(open(sys.argv[1]).read().splitlines()[-1])
assert e["event"] == "done" and e["ok"], e' "$T/upgrade.json"
"$BUILD/tools/cairnctl" --server "$META" upgrade --bin "$BUILD/objserver/cairn-server" \
  --version-override 0.1.98-in-place > "$T/again.out"
check "run again, it skips every target" test "$(grep -c "already at the version" "$T/again.out")" -eq 3

check_verify_load a b
json=$("$CLUSTER" status --dir "$T/state" --bin "$BUILD" --json)
check "every server serves the new version" python3 -c '
import json, sys
s = json.loads(sys.argv[1])
assert all(x["state"] == "serving" and x["version"] == "0.1.98-in-place" for x in s["servers"]), s
' "$json"
echo "$CHECKS passed, 0 failed"
