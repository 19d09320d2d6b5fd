#!/bin/bash
# Interop across versions: the previous release (tools/releases.txt), built from its commit next
# to this tree, against this tree's binaries, with fio (crc32c verification) and appendcheck
# running on two mounts, one of each version:
#   old servers with an old and a new client; a cluster half old and half new; a full rolling
#   upgrade to the new version; a full rolling downgrade back to the old one.
# Zero failed operations, zero verify errors, no client evicted, each server at the version
# expected after each step. Until a release older than the tree exists, the version override
# stands in for the old side (same binaries, another version string).
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

# Release 0.1.0 speaks plain text only: the mixed cluster does too.
unset CAIRN_TLS
"${OLD_ENV[@]}" "$CLUSTER" up --dir "$T/state" --mount "$T/old" --bin "$OLD_BIN" \
  --insecure-plaintext >/dev/null
"$CLUSTER" mount --dir "$T/state" --bin "$BUILD" "$T/new" >/dev/null
check "old servers: $(versions)" test "$(versions)" = "$OLD_VERSION $OLD_VERSION $OLD_VERSION"

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
sleep 2
check "rolling downgrade of every server" \
  "${OLD_ENV[@]}" "$CLUSTER" upgrade --dir "$T/state" --bin "$OLD_BIN"
check "all old again: $(versions)" test "$(versions)" = "$OLD_VERSION $OLD_VERSION $OLD_VERSION"

check_verify_load old new
echo "$CHECKS passed, 0 failed"
