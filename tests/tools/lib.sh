# Shared by the tool tests: a temporary directory that is cleaned up, and checks.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${CAIRN_BUILD_DIR:?run with meson test}
T=$(mktemp -d /tmp/cairn-tooltest-XXXXXX)
chmod 755 "$T"
CHECKS=0

unmount_all() {
  for m in "$@"; do
    if mountpoint -q "$m" 2>/dev/null; then
      fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || fusermount3 -uz "$m"
    fi
  done
}

fail() {
  echo "FAIL: $*" >&2
  for log in "$T"/state/*.log; do
    [ -f "$log" ] && { echo "---- $log" >&2; tail -n 20 "$log" >&2; }
  done
  exit 1
}

check() {  # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then
    CHECKS=$((CHECKS + 1))
  else
    fail "$what"
  fi
}

# The tests that run a local cluster under load: its cleanup, and the verify workload (fio with
# crc32c verification and appendcheck) on each of some mounts.
CLUSTER="$ROOT/tools/cluster"
# tools/cluster up makes the cluster's CA and credentials under $T/state/tls: cairnctl talks as
# its administrator. (A test with a plain-text cluster unsets this.)
export CAIRN_TLS="$T/state/tls/admin"
LOAD_PIDS=()
cluster_cleanup() {
  cd /
  for p in "${LOAD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "$CLUSTER" down --dir "$T/state" --bin "$BUILD" >/dev/null 2>&1 || true
  rm -rf "$T"
}

start_verify_load() {  # start_verify_load SECONDS NAME... (mounts at $T/NAME)
  local seconds=$1 m
  shift
  for m in "$@"; do
    mkdir "$T/$m/app-$m" "$T/$m/fio-$m"
    "$BUILD/tools/appendcheck" "$T/$m/app-$m" --files 4 --seconds "$seconds" \
      > "$T/app-$m.log" 2>&1 &
    LOAD_PIDS+=($!)
    fio --name="load-$m" --directory="$T/$m/fio-$m" --rw=randwrite --bs=4k --size=8m \
      --verify=crc32c --verify_backlog=128 --verify_fatal=1 --verify_state_save=0 \
      --do_verify=1 --ioengine=psync --fsync=32 --time_based --runtime="$seconds" \
      --output="$T/fio-$m.out" > /dev/null 2>&1 &
    LOAD_PIDS+=($!)
  done
}

check_verify_load() {  # check_verify_load NAME...: waits for the load, then no error anywhere
  local rc=0 p m
  for p in "${LOAD_PIDS[@]}"; do wait "$p" || rc=$?; done
  LOAD_PIDS=()
  for m in "$@"; do
    cat "$T/app-$m.log"
    grep -h -E "err=|verify" "$T/fio-$m.out" | head -2 || true
  done
  check "appendcheck and fio saw no error (exit status $rc)" test "$rc" -eq 0
  for m in "$@"; do
    check "appendcheck on mount $m: no errors" grep -q ", 0 errors, 0 verify errors" "$T/app-$m.log"
  done
  check "no client was evicted" bash -c '! grep -q "evicted by" "$1"/state/mount*.log' _ "$T"
}

# Credentials for tests that start servers themselves: a CA in $T/tls/ca and a credentials
# directory $T/tls/NAME for each server NAME given, plus $T/tls/client and $T/tls/admin (which
# cairnctl then uses).
make_tls() {  # make_tls SERVER_NAME...
  local ctl="$BUILD/tools/cairnctl" n
  "$ctl" ca init --dir "$T/tls/ca" > /dev/null
  for n in "$@"; do "$ctl" cert issue --ca "$T/tls/ca" --server "$n" --out "$T/tls/$n" > /dev/null; done
  "$ctl" cert issue --ca "$T/tls/ca" --client testhost --out "$T/tls/client" > /dev/null
  "$ctl" cert issue --ca "$T/tls/ca" --admin tester --out "$T/tls/admin" > /dev/null
  export CAIRN_TLS="$T/tls/admin"
}

# A second "host" for the multi-host tests: a network namespace joined to the test's own by a
# veth pair on a random /30 of 10/8. Sets NS, HOST_IF, HOST_IP (this side), NS_IP (the other);
# drop_netns removes both (the namespace's end of the pair goes with it).
make_netns() {  # make_netns PREFIX (a few letters: interface names are at most 15 characters)
  NS="cairn-$1-$$"
  HOST_IF="$1$$h"
  local ns_if="$1$$n"
  local net="10.$((RANDOM % 200 + 20)).$((RANDOM % 250)).$((RANDOM % 60 * 4))"
  HOST_IP="${net%.*}.$((${net##*.} + 1))"
  NS_IP="${net%.*}.$((${net##*.} + 2))"
  ip netns add "$NS"
  ip link add "$HOST_IF" type veth peer name "$ns_if"
  ip link set "$ns_if" netns "$NS"
  ip addr add "$HOST_IP/30" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  ip netns exec "$NS" ip addr add "$NS_IP/30" dev "$ns_if"
  ip netns exec "$NS" ip link set "$ns_if" up
  ip netns exec "$NS" ip link set lo up
}

drop_netns() {
  [ -n "${HOST_IF:-}" ] && ip link del "$HOST_IF" 2>/dev/null || true
  [ -n "${NS:-}" ] && ip netns del "$NS" 2>/dev/null || true
}

stop_pids() {  # stop_pids PID...: SIGTERM, up to 5 s each, then SIGKILL (only what we started)
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}
