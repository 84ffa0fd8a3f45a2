#!/usr/bin/env bash
# Syncthing side by side with cue-bench: two Syncthing instances on 127.0.0.1 (relays,
# global and local discovery, NAT and usage reporting off; each knows the other's
# address), one shared folder with the watcher at its fastest setting (fsWatcherDelayS=1),
# then the same measurements as `cue-bench`:
#   - save→peer latency: a 4 KB note with a unique marker line saved in place on A, the
#     file on B polled every millisecond until the marker is there (SAVES saves, 5 more
#     unmeasured first, 50 ms between one arriving and the next save);
#   - bursts, as `cue-bench --burst N,M`: N (then M) Markdown files of 4 KB, the bytes
#     and paths cue-bench writes (`note(i, 4096, "marker: burst")` at
#     notes/NN/note-NNNNN.md), written into A's running folder one after the other as
#     fast as the disk takes them; timed until every file is on B with the right bytes
#     (RUNS runs of each, both folders idle between runs; each run writes below a folder
#     of its own, run-K/, and the earlier runs' files stay: Syncthing did not settle when
#     a run wrote again the paths just deleted); RSS of both instances after the last.
#
# Usage: bench/syncthing.sh            (installs syncthing from Debian's packages if absent)
#        SAVES=30 FILES=1000,3000 RUNS=3 bench/syncthing.sh
# Needs python3. Writes bench/syncthing-results.json unless OUT is set.
set -euo pipefail

SAVES=${SAVES:-100}
FILES=${FILES:-1000}
RUNS=${RUNS:-1}
OUT=${OUT:-$(dirname "$0")/syncthing-results.json}

if ! command -v syncthing >/dev/null; then
    apt-get install -y syncthing
fi
syncthing --version

WORK=$(mktemp -d /tmp/st-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

for n in a b; do
    mkdir -p "$WORK/$n/data"
    syncthing generate --home="$WORK/$n/home" --no-default-folder --skip-port-probing >/dev/null
    port=$(free_port)
    gui=$(free_port)
    echo "$port" >"$WORK/$n/port"
    echo "$gui" >"$WORK/$n/gui"
    # Everything off that would leave 127.0.0.1 or wait on the network.
    python3 - "$WORK/$n/home/config.xml" "$port" "$gui" <<'EOF'
import sys, xml.etree.ElementTree as ET
path, port, gui = sys.argv[1], sys.argv[2], sys.argv[3]
tree = ET.parse(path)
root = tree.getroot()
opts = root.find("options")
def put(name, value):
    el = opts.find(name)
    if el is None:
        el = ET.SubElement(opts, name)
    el.text = value
put("listenAddress", f"tcp://127.0.0.1:{port}")
for name, value in [("globalAnnounceEnabled", "false"), ("localAnnounceEnabled", "false"),
                    ("relaysEnabled", "false"), ("natEnabled", "false"), ("urAccepted", "-1"),
                    ("startBrowser", "false"), ("crashReportingEnabled", "false"),
                    ("autoUpgradeIntervalH", "0"), ("setLowPriority", "false")]:
    put(name, value)
root.find("gui").find("address").text = f"127.0.0.1:{gui}"
root.find("gui").find("apikey").text = "cue-bench-key"
tree.write(path)
EOF
    STNODEFAULTFOLDER=1 STNOUPGRADE=1 syncthing serve --home="$WORK/$n/home" --no-browser \
        --no-restart --no-upgrade --logfile="$WORK/$n/log" >/dev/null 2>&1 &
    PIDS+=($!)
    echo $! >"$WORK/$n/pid"
    syncthing serve --home="$WORK/$n/home" --device-id >"$WORK/$n/id"
done

python3 - "$WORK" "$SAVES" "$FILES" "$OUT" "$RUNS" <<'EOF'
import json, os, statistics, sys, time, urllib.request

work, saves, out = sys.argv[1], int(sys.argv[2]), sys.argv[4]
sizes, runs = [int(n) for n in sys.argv[3].split(",") if int(n) > 0], int(sys.argv[5])
peers = {}
for n in "ab":
    rd = lambda f: open(f"{work}/{n}/{f}").read().strip()
    peers[n] = dict(port=rd("port"), gui=rd("gui"), id=rd("id"), pid=int(rd("pid")),
                    data=f"{work}/{n}/data")

def api(n, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{peers[n]['gui']}{path}", method=method,
                                 headers={"X-API-Key": "cue-bench-key"},
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        data = r.read()
    return json.loads(data) if data else None

def wait(what, cond, deadline=120.0):
    start = time.monotonic()
    pause = 0.001
    while True:
        try:
            if cond():
                return time.monotonic() - start
        except OSError:
            pass
        if time.monotonic() - start > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)

def load1():
    return float(open("/proc/loadavg").read().split()[0])

def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def worker(pid):
    # `syncthing serve` (with a log file) is a monitor process running the real one as its child.
    kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    return int(kids[0]) if kids else pid

for n in "ab":
    wait(f"{n}'s API", lambda: api(n, "GET", "/rest/system/ping")["ping"] == "pong")
for n, other in [("a", "b"), ("b", "a")]:
    o = peers[other]
    api(n, "PUT", f"/rest/config/devices/{o['id']}", {
        "deviceID": o["id"], "name": other, "addresses": [f"tcp://127.0.0.1:{o['port']}"],
        "autoAcceptFolders": False})
    api(n, "PUT", "/rest/config/folders/bench", {
        "id": "bench", "label": "bench", "path": peers[n]["data"], "type": "sendreceive",
        "devices": [{"deviceID": peers[n]["id"]}, {"deviceID": o["id"]}],
        "fsWatcherEnabled": True, "fsWatcherDelayS": 1, "rescanIntervalS": 3600})
for n, other in [("a", "b"), ("b", "a")]:
    wait(f"{n} connected to {other}",
         lambda: api(n, "GET", "/rest/system/connections")["connections"]
         .get(peers[other]["id"], {}).get("connected"))
    wait(f"{n}'s folder idle",
         lambda: api(n, "GET", "/rest/db/status?folder=bench")["state"] == "idle")

def note(i, marker):
    # cue-bench's `note`, byte for byte: the same words, the same generator.
    words = ["sync", "local", "first", "relay", "daemon", "merge", "edit", "peer", "note",
             "file", "change", "folder", "device", "offline", "commit", "history", "text",
             "line", "the", "a", "of", "and", "to", "in", "is", "that", "with", "for", "on",
             "markdown"]
    m = 2**64
    s = f"---\ntitle: Note {i}\ntags: [bench, t{i % 10}]\n---\n# Note {i}\n\n{marker}\n\n"
    x, col = (i * 6364136223846793005 + 1442695040888963407) % m, 0
    while len(s) < 4096:
        x = (x * 6364136223846793005 + 1442695040888963407) % m
        w = words[(x >> 33) % len(words)]
        if col > 70:
            s += "\n"; col = 0
        elif col:
            s += " "; col += 1
        s += w; col += len(w)
    return (s[:4095] + "\n").encode()

def pct(v, p):
    v = sorted(v)
    k = max(1, -(-len(v) * p // 100))
    return v[int(k) - 1]

a, b = peers["a"]["data"], peers["b"]["data"]
lat_a, lat_b = f"{a}/lat.md", f"{b}/lat.md"
open(lat_a, "wb").write(note(0, "marker: none"))
wait("lat.md on b", lambda: os.path.exists(lat_b))
lat, lost = [], 0
for i in range(5 + saves):
    marker = f"marker: {os.getpid()}-{i}".encode()
    content = note(0, marker.decode())
    t0 = time.monotonic()
    with open(lat_a, "wb") as f:
        f.write(content)
    while time.monotonic() - t0 < 30:
        try:
            if marker in open(lat_b, "rb").read():
                break
        except OSError:
            pass
        time.sleep(0.001)
    else:
        lost += 1
        continue
    if i >= 5:
        lat.append((time.monotonic() - t0) * 1e3)
    time.sleep(0.05)
load_lat = load1()

def idle(n):
    return api(n, "GET", "/rest/db/status?folder=bench")["state"] == "idle"

def burst(nfiles, top):
    """One copy-in, as cue-bench's burst run: the files written into A (below `top`) one
    after the other; seconds until every one is on B with its bytes."""
    paths = [f"{top}/notes/{i // 100:02}/note-{i:05}.md" for i in range(nfiles)]
    notes = [note(i, "marker: burst") for i in range(nfiles)]
    t0 = time.monotonic()
    for p, content in zip(paths, notes):
        os.makedirs(os.path.dirname(f"{a}/{p}"), exist_ok=True)
        with open(f"{a}/{p}", "wb") as f:
            f.write(content)
    missing = list(range(nfiles))
    def arrived():
        nonlocal missing
        def ok(i):
            try:
                return open(f"{b}/{paths[i]}", "rb").read() == notes[i]
            except OSError:
                return False
        missing = [i for i in missing if not ok(i)]
        return not missing
    wait(f"{nfiles} files on b", arrived, deadline=600)
    return time.monotonic() - t0

bursts = []
k = 0
for nfiles in sizes:
    times, loads = [], []
    for run in range(runs):
        wait("a's folder idle", lambda: idle("a"))
        wait("b's folder idle", lambda: idle("b"))
        times.append(burst(nfiles, f"run-{k}"))
        k += 1
        loads.append(load1())
        print(f"burst of {nfiles}, run {run}: {times[-1]:.2f} s (load {loads[-1]:.1f})",
              file=sys.stderr)
    bursts.append({"files": nfiles, "copy_s": times, "median_s": statistics.median(times),
                   "load1": loads})
wait("a's folder idle", lambda: idle("a"))
wait("b's folder idle", lambda: idle("b"))
res = {
    "syncthing": os.popen("syncthing --version").read().strip(),
    "saves": len(lat), "lost": lost,
    "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99), "max": max(lat)},
    "load1_latency": load_lat,
    "bursts": bursts,
    "rss_mib": {n: rss_mib(worker(peers[n]["pid"])) for n in "ab"},
    "monitor_rss_mib": {n: rss_mib(peers[n]["pid"]) for n in "ab"},
}
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res, indent=2))
l = res["latency_ms"]
print(f"| Syncthing save→peer (fsWatcherDelayS=1), {len(lat)} saves | p50 {l['p50']:.0f} ms, "
      f"p95 {l['p95']:.0f} ms, p99 {l['p99']:.0f} ms | load {load_lat:.1f} |")
for r in bursts:
    print(f"| Syncthing {r['files']} × 4 KB copied in, until all on the peer "
          f"(median of {len(r['copy_s'])}) | {r['median_s']:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in r['copy_s'])}) | load "
          f"{', '.join(f'{l:.1f}' for l in r['load1'])} |")
print(f"| Syncthing RSS after it (A / B, each + its monitor process) | {res['rss_mib']['a']:.0f} / "
      f"{res['rss_mib']['b']:.0f} MiB (+ {res['monitor_rss_mib']['a']:.0f} / {res['monitor_rss_mib']['b']:.0f}) |")
EOF
