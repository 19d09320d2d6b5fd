#!/bin/bash
# tools/cluster up/status/mount/down, cairnctl status, and the mount helper (mount -t fuse.cairn
# and an fstab line), against real processes.
source "$(dirname "$0")/lib.sh"
cleanup() {
  unmount_all "$T/helper" "$T/fstab-mnt"
  "$ROOT/tools/cluster" down --dir "$T/state" --bin "$BUILD" >/dev/null 2>&1 || true
  rm -rf "$T"
}
trap cleanup EXIT
C="$ROOT/tools/cluster"

out=$("$C" up --dir "$T/state" --mount "$T/mnt" --bin "$BUILD" --data-servers 3)
check "up prints every server" test "$(echo "$out" | grep -c '127.0.0.1:')" -ge 4
check "mounted" mountpoint -q "$T/mnt"

json=$("$C" status --dir "$T/state" --bin "$BUILD" --json)
check "status --json lists 4 serving servers with kind, address and pid" python3 -c '
import json, sys
s = json.loads(sys.argv[1])
servers = s["servers"]
assert len(servers) == 4, servers
assert sorted(x["kind"] for x in servers) == ["data", "data", "data", "meta"]
for x in servers:
    assert x["state"] == "serving" and x["pid"] > 0, x
    host, port = x["address"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
assert s["mounts"][0]["mounted"]
' "$json"
text=$("$C" status --dir "$T/state" --bin "$BUILD")
check "status shows one line per server with HOST:PORT" \
  test "$(echo "$text" | grep -cE '^(meta|data) +[0-9]+ +127\.0\.0\.1:[0-9]+')" -eq 4
meta=$(echo "$json" | python3 -c 'import json,sys; print([s["address"] for s in json.load(sys.stdin)["servers"] if s["kind"]=="meta"][0])')
check "cairnctl status" bash -c "'$BUILD/tools/cairnctl' --server $meta status | grep -q 'meta 0'"
# A lookup first: once the root is listed, the client knows every name in it and asks no more.
stat "$T/mnt/nothing-here" 2>/dev/null || true
ls "$T/mnt" >/dev/null
check "cairnctl counts requests by kind" python3 -c '
import json, subprocess, sys
s = json.loads(subprocess.run([sys.argv[1], "--server", sys.argv[2], "status", "--json"],
                              capture_output=True, text=True).stdout)
assert s["rpcs"].get("meta.lookup", 0) >= 1 and s["rpcs"].get("meta.readdir", 0) >= 1, s["rpcs"]
assert sum(s["rpcs"].values()) == s["rpcCount"], s
' "$BUILD/tools/cairnctl" "$meta"

# Many sessions holding many locks (the benchmark's memory figure): held, then all given back.
metapid=$(echo "$json" | python3 -c 'import json,sys; print([s["pid"] for s in json.load(sys.stdin)["servers"] if s["kind"]=="meta"][0])')
out=$("$BUILD/tools/sessionload" --server "$meta" --pid "$metapid" --tls "$T/state/tls/client" \
  --clients 20 --locks 500)
check "sessionload: 20 clients held 10000 locks ($out)" grep -q "20 clients, 10000 locks held" <<<"$out"
check "and their goodbyes gave them back" bash -c \
  "'$BUILD/tools/cairnctl' --server $meta status | grep -qE 'locks +[0-9] granted'"

"$C" mount --dir "$T/state" --bin "$BUILD" "$T/m2" >/dev/null
echo "through one" > "$T/mnt/hello"
check "a second mount sees the first's file" test "$(cat "$T/m2/hello")" = "through one"
check "status counts two clients" \
  test "$("$C" status --dir "$T/state" --bin "$BUILD" | grep -c '^client')" -eq 2

# The mount helper, where it is installed (tools/build installs it as root).
if [ -x /sbin/mount.fuse.cairn ] && command -v cairn-mount >/dev/null; then
  mkdir -p "$T/helper" "$T/fstab-mnt"
  check "mount -t fuse.cairn" mount -t fuse.cairn "$meta" "$T/helper" \
    -o "allow_other,default_permissions,tls=$T/state/tls/client"
  check "the helper's mount works" test "$(cat "$T/helper/hello")" = "through one"
  unmount_all "$T/helper"
  echo "$meta $T/fstab-mnt fuse.cairn defaults,_netdev,allow_other,tls=$T/state/tls/client 0 0" \
    > "$T/fstab"
  check "an fstab line" mount -T "$T/fstab" "$T/fstab-mnt"
  check "the fstab mount works" test "$(cat "$T/fstab-mnt/hello")" = "through one"
  unmount_all "$T/fstab-mnt"
else
  echo "mount helper not installed; run tools/build as root to test it"
fi

pids=$(echo "$json" | python3 -c 'import json,sys; print(" ".join(str(s["pid"]) for s in json.load(sys.stdin)["servers"]))')
"$C" down --dir "$T/state" --bin "$BUILD" >/dev/null
check "down unmounts" bash -c "! mountpoint -q '$T/mnt' && ! mountpoint -q '$T/m2'"
for pid in $pids; do
  # Gone, or a zombie waiting for whoever adopted it to reap it.
  check "down stops server $pid" bash -c "! kill -0 $pid 2>/dev/null || grep -q '^State:.*Z' /proc/$pid/status"
done
check "status after down says stopped" \
  test "$("$C" status --dir "$T/state" --bin "$BUILD" | grep -c ' stopped')" -eq 4

"$C" up --dir "$T/state" --mount "$T/mnt" --bin "$BUILD" >/dev/null
check "data survives down and up" test "$(cat "$T/mnt/hello")" = "through one"
check "up twice is refused" bash -c "! '$C' up --dir '$T/state' --mount '$T/x' --bin '$BUILD' 2>/dev/null"
"$C" down --dir "$T/state" --bin "$BUILD" >/dev/null

# A server from a config file, as the systemd unit cairn-server@.service starts it: the
# example file with this test's paths; SIGTERM (systemctl stop) is a controlled shutdown.
mkdir -p "$T/cfg"
"$BUILD/objserver/cairn-server" format --dir "$T/cfg/meta" --kind meta --fs cfgtest > /dev/null
python3 - "$ROOT/objserver/systemd/cairn-server.toml.example" "$T/cfg" > "$T/cfg/meta.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
d = sys.argv[2]
values = {"log-file": f"{d}/meta.log", "dir": f"{d}/meta", "kind": "meta", "fs": "cfgtest",
          "listen": "127.0.0.1:0", "advertise": None, "mgs": None, "partner": None,
          "metrics": "127.0.0.1:0", "tls": f"{d}/tls"}
out = []
for line in text.splitlines():
    m = re.match(r"^([a-z-]+) = ", line)
    if m and m.group(1) in values:
        v = values[m.group(1)]
        if v is None:
            continue
        line = f'{m.group(1)} = "{v}"'
    out.append(line)
out.append(f'port-file = "{d}/meta.port"')
print("\n".join(out))
PY
"$BUILD/tools/cairnctl" cert issue --ca "$T/state/tls/ca" --server cfgmeta --out "$T/cfg/tls" \
  > /dev/null
"$BUILD/objserver/cairn-server" --config "$T/cfg/meta.toml" serve &
CFG_PID=$!
for _ in $(seq 100); do [ -s "$T/cfg/meta.port" ] && break; sleep 0.05; done
check "a server started from the example config serves" bash -c \
  "'$BUILD/tools/cairnctl' --server 127.0.0.1:$(cat "$T/cfg/meta.port") status | grep -q 'meta 0 of cfgtest'"
kill -TERM "$CFG_PID"
rc=0
wait "$CFG_PID" || rc=$?
check "SIGTERM is a controlled shutdown (exit 0, target marked clean)" \
  bash -c "test $rc -eq 0 && grep -q 'marked clean' '$T/cfg/meta.log'"
if command -v systemd-analyze >/dev/null; then
  sed "s|/usr/local/bin/cairn-server|$BUILD/objserver/cairn-server|" \
    "$ROOT/objserver/systemd/cairn-server@.service" > "$T/cfg/cairn-server@.service"
  check "systemd-analyze verify accepts the unit" \
    bash -c "systemd-analyze verify '$T/cfg/cairn-server@.service' 2>&1 | { ! grep -v -e '^$' -e 'Documentation'; }"
fi

echo "$CHECKS passed, 0 failed"
