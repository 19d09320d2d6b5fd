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
