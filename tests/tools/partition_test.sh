#!/bin/bash
# A partitioned server across a real network stack. The metadata target's pair runs on two
# "hosts": server A in a network namespace of its own, joined to the test's namespace by a veth
# pair; server B, a data server and the mount in the test's namespace. Both reach the target
# directory (as shared storage). With appendcheck running on the mount:
#   1. A's link is cut (ip link set ... down): the client cannot reach A and asks B; B cannot
#      reach A either, so it fences A through the heartbeat record; A, still beating on its
#      storage, reads the request and stops serving at once; B takes over.
#   2. The link flaps (down, up, down, up): A, now the standby, is asked for nothing and fences
#      nobody; B keeps serving.
# Zero failed operations, no lost or doubled record, never two servers serving the target.
source "$(dirname "$0")/lib.sh"
PIDS=()
MNT="$T/mnt"
cleanup() {
  cd /
  unmount_all "$MNT"
  stop_pids "${PIDS[@]}"
  drop_netns
  rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$T/state" "$MNT"

make_netns cpt
A_IP=$NS_IP    # server A's host
B_IP=$HOST_IP  # server B's, the data server's and the mount's

SERVER="$BUILD/objserver/cairn-server"
CTL="$BUILD/tools/cairnctl"
FS_UUID=$(python3 -c 'import uuid; print(uuid.uuid4().hex)')
"$SERVER" format --dir "$T/state/meta" --kind meta --fs pt --fs-uuid "$FS_UUID" > /dev/null
"$SERVER" format --dir "$T/state/data" --kind data --fs pt --fs-uuid "$FS_UUID" > /dev/null
A="$A_IP:7001"  # the namespace is new: any port is free there
B="$B_IP:$(python3 -c '
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$B_IP")"

start() {  # start NAME [ip netns exec NS] ARGS...
  local name=$1
  shift
  "$@" --log-file "$T/state/$name.log" --port-file "$T/state/$name.port" \
    < /dev/null > /dev/null 2>> "$T/state/$name.stderr" &
  PIDS+=($!)
  for _ in $(seq 200); do [ -s "$T/state/$name.port" ] && return 0; sleep 0.05; done
  fail "$name did not start"
}
state_of() { "$CTL" --server "$1" --timeout 1 status --json 2>/dev/null |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])' 2>/dev/null || echo unreachable; }

# Across hosts, as in production: mutual TLS.
make_tls metaA metaB data
start metaA ip netns exec "$NS" "$SERVER" serve --dir "$T/state/meta" --kind meta \
  --listen "$A" --partner "$B" --tls "$T/tls/metaA"
start metaB "$SERVER" serve --dir "$T/state/meta" --kind meta --listen "$B" --partner "$A" \
  --tls "$T/tls/metaB"
start data "$SERVER" serve --dir "$T/state/data" --kind data --listen 127.0.0.1:0 --mgs "$A,$B" \
  --tls "$T/tls/data"
check "A serves, B stands by" test "$(state_of "$A")/$(state_of "$B")" = serving/standby

"$BUILD/fusefs/cairn-mount" "$A,$B" "$MNT" -f -o "log_file=$T/state/mount.log,tls=$T/tls/client" \
  < /dev/null > /dev/null 2>> "$T/state/mount.stderr" &
PIDS+=($!)
for _ in $(seq 200); do mountpoint -q "$MNT" && break; sleep 0.05; done
check "mounted" mountpoint -q "$MNT"
mkdir "$MNT/app"
"$BUILD/tools/appendcheck" "$MNT/app" --files 4 --seconds "${PARTITION_LOAD_SECONDS:-40}" \
  > "$T/app.log" 2>&1 &
APP=$!
sleep 3

# 1. Cut A off.
ip link set "$HOST_IF" down
deadline=$((SECONDS + 40))
until [ "$(state_of "$B")" = serving ]; do
  [ $SECONDS -lt $deadline ] || fail "B did not take over from the partitioned A"
  sleep 0.1
done
CHECKS=$((CHECKS + 1))
check "A stopped serving once fenced" \
  grep -q "stopped serving at once: takeover requested by $B" "$T/state/metaA.log"
check "B fenced A because clients asked for the target" \
  grep -q "unreachable for .* while clients ask for the target" "$T/state/metaB.log"

# 2. The link flaps; A, now the standby, must fence nobody.
for _ in 1 2; do
  ip link set "$HOST_IF" up
  sleep 1.5
  check "while the link is up: A stands by, B serves" \
    test "$(state_of "$A")/$(state_of "$B")" = standby/serving
  ip link set "$HOST_IF" down
  sleep 1.5
done
ip link set "$HOST_IF" up
sleep 1
check "after the flapping: A stands by, B serves" \
  test "$(state_of "$A")/$(state_of "$B")" = standby/serving
check "A never asked for the target back" bash -c '! grep -q "fencing the partner" "$1"' _ \
  "$T/state/metaA.log"

kill -TERM "$APP" 2>/dev/null || true  # ends the run early; it still verifies everything
rc=0
wait "$APP" || rc=$?
cat "$T/app.log"
check "appendcheck saw no error (exit status $rc)" test "$rc" -eq 0
check "appendcheck: no errors" grep -q ", 0 errors, 0 verify errors" "$T/app.log"
check "the client was not evicted" bash -c '! grep -q "evicted" "$1"' _ "$T/state/mount.log"
echo "$CHECKS passed, 0 failed"
