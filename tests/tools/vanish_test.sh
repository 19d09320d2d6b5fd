#!/bin/bash
# A client that vanishes during a controlled shutdown, across a real network stack: the servers
# listen on the test's side of a veth pair, one mount runs in a network namespace of its own
# (another "host") and keeps a file open, another mount runs beside the servers with appendcheck
# going. The far client's link is cut (ip link set ... down): it sends no FIN, no RST. A
# controlled shutdown of the metadata server calls every client back; the far one cannot answer,
# so it is evicted after the lock timeout and the shutdown completes (the server marks its target
# clean). The near client sees no error. When the link comes back, the far client is told it was
# evicted: its old descriptor fails with EIO, and its mount works again for new opens.
source "$(dirname "$0")/lib.sh"
PIDS=()
FAR="$T/far"
NEAR="$T/near"
cleanup() {
  cd /
  [ -n "${HOST_IF:-}" ] && ip link set "$HOST_IF" up 2>/dev/null || true
  unmount_all "$NEAR" "$FAR"
  stop_pids "${PIDS[@]}"
  unmount_all "$NEAR" "$FAR"
  drop_netns
  rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$T/state" "$FAR" "$NEAR"

make_netns cvn
S_IP=$HOST_IP  # the servers' side; the far client is at $NS_IP

SERVER="$BUILD/objserver/cairn-server"
CTL="$BUILD/tools/cairnctl"
FS_UUID=$(python3 -c 'import uuid; print(uuid.uuid4().hex)')
"$SERVER" format --dir "$T/state/meta" --kind meta --fs vn --fs-uuid "$FS_UUID" > /dev/null
"$SERVER" format --dir "$T/state/data" --kind data --fs vn --fs-uuid "$FS_UUID" > /dev/null

start_server() {  # start_server NAME ARGS...: listens on the servers' side, any port
  local name=$1
  shift
  rm -f "$T/state/$name.port"
  "$SERVER" serve "$@" --lock-timeout 2 --tls "$T/tls/$name" --log-file "$T/state/$name.log" \
    --port-file "$T/state/$name.port" < /dev/null > /dev/null 2>> "$T/state/$name.stderr" &
  PIDS+=($!)
  for _ in $(seq 200); do [ -s "$T/state/$name.port" ] && return 0; sleep 0.05; done
  fail "$name did not start"
}
# Across hosts, as in production: mutual TLS.
make_tls meta data
start_server meta --dir "$T/state/meta" --kind meta --listen "$S_IP:0"
META_PID=${PIDS[-1]}
META="$S_IP:$(cat "$T/state/meta.port")"
start_server data --dir "$T/state/data" --kind data --listen "$S_IP:0" --mgs "$META"

mount_at() {  # mount_at DIR [ip netns exec NS]
  local dir=$1
  shift
  "$@" "$BUILD/fusefs/cairn-mount" "$META" "$dir" -f -o "log_file=$dir.log,tls=$T/tls/client" \
    < /dev/null > /dev/null 2>> "$dir.stderr" &
  PIDS+=($!)
  for _ in $(seq 200); do mountpoint -q "$dir" && return 0; sleep 0.05; done
  fail "mounting $dir failed"
}
mount_at "$NEAR"
# nsenter, not `ip netns exec`: that one also enters a mount namespace of its own, where the
# FUSE mount would be invisible to this test.
mount_at "$FAR" nsenter --net="/var/run/netns/$NS"
check "both clients connected" bash -c \
  "'$CTL' --server $META status --json | python3 -c 'import json, sys
assert sum(c[\"connected\"] for c in json.load(sys.stdin)[\"clients\"]) == 2'"

echo "opened before the cut" > "$FAR/kept"
exec 7<> "$FAR/kept"  # the far client's descriptor, held by this shell
mkdir "$NEAR/app"
"$BUILD/tools/appendcheck" "$NEAR/app" --files 4 --seconds 60 > "$T/app.log" 2>&1 &
APP=$!
sleep 1

ip link set "$HOST_IF" down  # the far host vanishes
sleep 0.5
SECONDS=0
check "controlled shutdown completes without the vanished client" \
  "$CTL" --server "$META" --timeout 30 shutdown
check "...after its lock timeout (${SECONDS} s)" test "$SECONDS" -le 10
wait "$META_PID"
check "the metadata server exited cleanly" test $? -eq 0
check "the vanished client was evicted" grep -q "evicting client" "$T/state/meta.log"
check "the target is marked clean" grep -q "marked clean" "$T/state/meta.log"
start_server meta --dir "$T/state/meta" --kind meta --listen "$META"
check "restarted after a clean shutdown" grep -q "previous shutdown was clean" "$T/state/meta.log"

ip link set "$HOST_IF" up
check "the far client is told it was evicted" bash -c \
  "for _ in \$(seq 300); do grep -q 'evicted by the metadata server' '$FAR.log' && exit 0; sleep 0.1; done; exit 1"
check "its old descriptor fails (EIO)" bash -c '! cat <&7 > /dev/null 2>&1'
exec 7>&-
check "its mount works again for new opens" bash -c \
  "echo after > '$FAR/new' && test \"\$(cat '$FAR/new')\" = after && test \"\$(cat '$FAR/kept')\" = 'opened before the cut'"

kill -TERM "$APP"
rc=0
wait "$APP" || rc=$?
cat "$T/app.log"
check "the near client saw no error (exit status $rc)" grep -q ", 0 errors, 0 verify errors" "$T/app.log"
check "the near client was not evicted" bash -c '! grep -q evicted "$1"' _ "$NEAR.log"
echo "$CHECKS passed, 0 failed"
