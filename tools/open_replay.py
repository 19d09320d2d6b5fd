"""Open replay, measured: files held open on one mount while the metadata server is upgraded.

Shared by tools/bench (a row of its table) and tools/upgrade-bench. Processes on the mount open
COUNT files (several processes: one may hold no more than RLIMIT_NOFILE's hard limit of
descriptors), `tools/cluster upgrade --only meta0` restarts the metadata server under them
through a controlled shutdown, the time the client took to open them all again is read from
its log, and every descriptor is then used (fstat) and closed: each must still work.
"""
import json
import os
import re
import resource
import subprocess
import sys
import time

HOLDER = """
import os, resource, sys
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
fds = [os.open(os.path.join(sys.argv[1], str(i)), os.O_CREAT | os.O_RDWR, 0o644)
       for i in range(int(sys.argv[2]), int(sys.argv[3]))]
print("open", flush=True)
sys.stdin.read()
for fd in fds:
    os.fstat(fd)
    os.close(fd)
print("closed", flush=True)
"""


def measure(cluster, common, state, mnt, count, meta="meta0"):
    """Returns {"files", "ms", "upgrade_s", "usable"}; "files" and "ms" are None if the client
    logged no open replay. `cluster` is tools/cluster, `common` its --dir/--bin arguments, `mnt`
    a mount of that cluster (the first one: its log is read)."""
    d = os.path.join(mnt, f"opens-{count}")
    os.makedirs(d)
    per = max(1000, resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 200)
    holders = []
    try:
        for first in range(0, count, per):
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLDER, d, str(first), str(min(count, first + per))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            holders.append(holder)
            if holder.stdout.readline().strip() != "open":
                raise RuntimeError("open replay: a holder could not open its files")
        log = json.load(open(os.path.join(state, "cluster.json")))["mounts"][0]["log"]
        before = os.path.getsize(log)
        t0 = time.time()
        subprocess.run([cluster, "upgrade", *common, "--only", meta, "--timeout", "600"],
                       check=True, stdout=subprocess.DEVNULL)
        took = time.time() - t0
        usable = all("closed" in h.communicate("")[0] for h in holders)
        with open(log) as f:
            f.seek(before)
            found = re.findall(r"open replay: (\d+) files re-opened in (\d+) ms", f.read())
    finally:
        for h in holders:
            if h.poll() is None:
                h.kill()
                h.wait()
    files, ms = (int(found[-1][0]), int(found[-1][1])) if found else (None, None)
    return {"files": files, "ms": ms, "upgrade_s": took, "usable": usable}
