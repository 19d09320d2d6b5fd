#!/bin/bash
# Data integrity: fsx on one mount, on one file through two mounts, and while servers are
# killed and restarted under it; fio with crc32c verification; stress-ng's filesystem stressors.
source "$(dirname "$0")/lib.sh"
cleanup() {
  cd /
  # (a failing command here would end the trap under set -e, and nothing would be stopped)
  [ -n "${FSX_PID:-}" ] && kill "$FSX_PID" 2>/dev/null || true
  "$ROOT/tools/cluster" down --dir "$T/state" --bin "$BUILD" >/dev/null 2>&1 || true
  rm -rf "$T"
}
trap cleanup EXIT
FSX="$BUILD/tools/fsx"
"$ROOT/tools/cluster" up --dir "$T/state" --mount "$T/a" --bin "$BUILD" >/dev/null
"$ROOT/tools/cluster" mount --dir "$T/state" --bin "$BUILD" "$T/b" >/dev/null
OPS=${FSX_OPS:-4000}

for seed in 1 2 3; do
  check "fsx seed $seed on one mount" "$FSX" --seed $seed --ops "$OPS" "$T/a/fsx-$seed"
done
check "fsx through two mounts of one file" "$FSX" --seed 11 --ops "$OPS" "$T/a/shared" --also "$T/b/shared"

# Servers killed (-9) and restarted while fsx runs: it must not notice.
"$FSX" --seed 21 --seconds 8 "$T/a/restart" > "$T/fsx-restart.log" 2>&1 &
FSX_PID=$!
names=(meta0 data0 data1)
for i in 0 1 2; do
  sleep 1.5
  # A crash and a restart on the same port.
  "$ROOT/tools/cluster" kill --dir "$T/state" --bin "$BUILD" "${names[$i]}"
  sleep 0.3
  "$ROOT/tools/cluster" start --dir "$T/state" --bin "$BUILD" "${names[$i]}" >/dev/null
done
rc=0
wait "$FSX_PID" || rc=$?
FSX_PID=
cat "$T/fsx-restart.log"
check "fsx across kill -9 and restart of every server (exit status $rc)" test $rc -eq 0

check "fio with crc32c verification" fio --name=verify --directory="$T/a" --rw=randrw \
  --bs=4k --bsrange=4k-256k --size=32m --numjobs=2 --verify=crc32c --verify_fatal=1 --verify_state_save=0 \
  --do_verify=1 --ioengine=psync --fsync=64 --output="$T/fio.out"
check "fio sequential write then verify" fio --name=seq --directory="$T/a" --rw=write \
  --bs=1m --size=64m --verify=crc32c --verify_fatal=1 --verify_state_save=0 --ioengine=psync --output="$T/fio2.out"

mkdir "$T/a/stress"
check "stress-ng filesystem stressors" stress-ng --temp-path "$T/a/stress" --timeout 8s --verify \
  --hdd 1 --hdd-bytes 8M --dir 1 --dentry 1 --link 1 --symlink 1 --rename 1 --chmod 1 \
  --chown 1 --fstat 1 --seek 1 --utime 1 --xattr 1 --mmap 1 --mmap-bytes 8M --fpunch 1 --quiet
echo "$CHECKS passed, 0 failed"
