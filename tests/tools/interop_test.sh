#!/bin/bash
# Interop across versions: the previous release (tools/releases.txt), built from its commit next
# to this tree, against this tree's binaries, with fio (crc32c verification) and appendcheck
# running on two mounts, one of each version:
#   old servers with an old and a new client; a cluster half old and half new; a full rolling
#   upgrade to the new version; a full rolling downgrade back to the old one.
# Zero failed operations, zero verify errors, no client evicted, each server at the version
# expected after each step, and each mount on the wire expected with each server (sealed records
# between two ends that both have them, TLS records otherwise). Until a release older than the
# tree exists, the version override stands in for the old side (same binaries, another version
# string).
source "$(dirname "$0")/lib.sh"
trap cluster_cleanup EXIT
NEW_VERSION=$("$BUILD/objserver/cairn-server" --version | awk '{print $2}')

# The newest release older than this tree.
read -r OLD_VERSION OLD_COMMIT < <(python3 - "$ROOT/tools/releases.txt" "$NEW_VERSION" <<'PY'
import sys
def key(v):
    return tuple(int(p) if p.isdigit() else 0 for p in v.split("-")[0].split("."))
new = sys.argv[2]
older = [l.split() for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
older = [r for r in older if key(r[0]) < key(new)]
print(*(older[-1] if older else ("", "")))
PY
)
OLD_ENV=()
if [ -z "$OLD_VERSION" ]; then
  echo "no release older than $NEW_VERSION: the version override stands in for the old side"
  OLD_BIN="$BUILD"
  OLD_VERSION="$NEW_VERSION-previous"
  OLD_ENV=(env CAIRN_VERSION_OVERRIDE="$OLD_VERSION")
else
  # Built once per build directory, from the release's commit (git history needed).
  OLD_SRC="$BUILD/interop/$OLD_COMMIT"
  OLD_BIN="$OLD_SRC/build"
  if [ ! -x "$OLD_BIN/objserver/cairn-server" ] || [ ! -x "$OLD_BIN/fusefs/cairn-mount" ] ||
     [ ! -x "$OLD_BIN/tools/cairnctl" ]; then
    if ! git -C "$ROOT" cat-file -e "$OLD_COMMIT^{commit}" 2>/dev/null; then
      if ! git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        echo "SKIP: not a git checkout, so release $OLD_VERSION ($OLD_COMMIT) cannot be built"
        exit 77
      fi
      fail "release $OLD_VERSION's commit $OLD_COMMIT is not in this clone (git fetch --unshallow)"
    fi
    echo "building release $OLD_VERSION ($OLD_COMMIT) in $OLD_SRC"
    rm -rf "$OLD_SRC"
    mkdir -p "$OLD_SRC"
    git -C "$ROOT" archive "$OLD_COMMIT" | tar -x -C "$OLD_SRC"
    # -O1 without debug info: half the compile time of the usual build, and speed is not
    # what this test measures.
    meson setup "$OLD_BIN" "$OLD_SRC" -Doptimization=1 -Ddebug=false > "$T/old-build.log" 2>&1 ||
      { tail -20 "$T/old-build.log"; fail "meson setup of release $OLD_VERSION"; }
    ninja -C "$OLD_BIN" objserver/cairn-server fusefs/cairn-mount tools/cairnctl \
      >> "$T/old-build.log" 2>&1 || { tail -20 "$T/old-build.log"; fail "build of release $OLD_VERSION"; }
  fi
  check "the old build is release $OLD_VERSION" \
    test "$("$OLD_BIN/objserver/cairn-server" --version)" = "cairn-server $OLD_VERSION"
fi
echo "old: $OLD_VERSION ($OLD_BIN), new: $NEW_VERSION ($BUILD)"

versions() {  # the version each server reports, in the cluster's order
  "$CLUSTER" status --dir "$T/state" --bin "$BUILD" --json |
    python3 -c 'import json, sys; print(" ".join(s.get("version", "-") for s in json.load(sys.stdin)["servers"]))'
}

# Which wire each link of a mount's last connections used, as its log says: "meta=V/WIRE
# data0=V/WIRE data1=V/WIRE" (V the server's version). Release 0.2.0 and later releases offer
# TLS; sealed records came after 0.2.0, so the two ends use them only if both offer them.
wires() {  # wires MOUNT_LOG
  python3 - "$1" <<'PY'
import re, sys
last = {}
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"link (\S+): connected to \S+ \(version (\S+), instance \d+, (.*)\)$", line)
    if m:
        last[m.group(1)] = f"{m.group(2)}/{m.group(3)}"
print(" ".join(f"{k}={last.get(k, '-')}" for k in ("meta", "data0", "data1")))
PY
}
expect_wires() {  # expect_wires MOUNT_LOG VERSION WIRE: every link of that mount
  local want="meta=$2/$3 data0=$2/$3 data1=$2/$3" i
  # A mount reconnects on its own once a server is back: give the last one a moment.
  for i in $(seq 100); do [ "$(wires "$1")" = "$want" ] && break; sleep 0.1; done
  check "$(basename "$1"): $(wires "$1") (want $want)" test "$(wires "$1")" = "$want"
}
OLD_LOG="$T/state/mount0.log"
NEW_LOG="$T/state/mount1.log"

# Mutual TLS throughout, as a cluster runs by default.
"${OLD_ENV[@]}" "$CLUSTER" up --dir "$T/state" --mount "$T/old" --bin "$OLD_BIN" >/dev/null
"$CLUSTER" mount --dir "$T/state" --bin "$BUILD" "$T/new" >/dev/null
check "old servers: $(versions)" test "$(versions)" = "$OLD_VERSION $OLD_VERSION $OLD_VERSION"
OLD_WIRE="TLS"
NEW_WIRE="sealed after TLS authentication"
if [ "$OLD_BIN" = "$BUILD" ]; then OLD_WIRE=$NEW_WIRE; fi  # the override: the same binaries
# The new mount falls back to the old servers' TLS records.
expect_wires "$NEW_LOG" "$OLD_VERSION" "$OLD_WIRE"

SECONDS_=${INTEROP_LOAD_SECONDS:-20}
start_verify_load "$SECONDS_" old new
sleep 3
check "half the cluster upgraded (data0)" \
  "$CLUSTER" upgrade --dir "$T/state" --bin "$BUILD" --only data0
check "half old, half new: $(versions)" \
  test "$(versions)" = "$OLD_VERSION $NEW_VERSION $OLD_VERSION"
sleep 2
check "rolling upgrade of every server" "$CLUSTER" upgrade --dir "$T/state" --bin "$BUILD"
check "all new: $(versions)" test "$(versions)" = "$NEW_VERSION $NEW_VERSION $NEW_VERSION"
# After reconnecting: the new mount seals its records with the new servers; the old one keeps
# TLS's with them.
expect_wires "$NEW_LOG" "$NEW_VERSION" "$NEW_WIRE"
expect_wires "$OLD_LOG" "$NEW_VERSION" "$OLD_WIRE"
sleep 2
check "rolling downgrade of every server" \
  "${OLD_ENV[@]}" "$CLUSTER" upgrade --dir "$T/state" --bin "$OLD_BIN"
check "all old again: $(versions)" test "$(versions)" = "$OLD_VERSION $OLD_VERSION $OLD_VERSION"
expect_wires "$NEW_LOG" "$OLD_VERSION" "$OLD_WIRE"

check_verify_load old new
echo "$CHECKS passed, 0 failed"
