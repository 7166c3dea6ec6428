#!/usr/bin/env bash
# What persistent mode costs at idle: the memory (RSS and PSS summed over
# every process of the unit) and CPU of one `test-http` instance with
# PersistentMode=yes (Xvnc, window manager, websockify, the app, Firefox ESR
# showing the app's page) against the same instance without it (the app alone).
#
# Starts a private aikore (temp data dir, free ports, no NGINX needed), runs
# the plain instance, then the persistent one, each alone, lets each settle
# for SETTLE seconds, samples CPU over WINDOW seconds, prints a table and
# removes everything it made.
#
#   benches/persistent.sh
#   AIKORE_BIN=/path/aikore SETTLE=20 WINDOW=30 benches/persistent.sh
#
# Needs: python3, Xvnc, websockify, novnc, firefox-esr, xdotool (see
# .ci/run). The first Firefox start on a profile is slower than later ones;
# the figures are taken after it shows the page, at idle (no viewer connected).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
SETTLE=${SETTLE:-15}
WINDOW=${WINDOW:-20}
[[ $SETTLE =~ ^[0-9]+$ && $SETTLE -le 300 ]] || { echo "SETTLE must be 0-300 seconds" >&2; exit 2; }
[[ $WINDOW =~ ^[0-9]+$ && $WINDOW -ge 1 && $WINDOW -le 300 ]] || { echo "WINDOW must be 1-300 seconds" >&2; exit 2; }

# shellcheck source=lib.sh
source "$repo/benches/lib.sh"
bin=$AIKORE
[[ -x ${bin:-} ]] || { echo "no aikore binary: cargo build --release, or set AIKORE_BIN" >&2; exit 2; }
for tool in Xvnc websockify firefox-esr xdotool python3; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 2; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d)
daemon_pid=
cleanup() {
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 200); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
    if [[ -n ${BENCH_KEEP:-} ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM

api_port=$(free_port)
first=$(free_port)
mkdir -p "$work/stock" "$work/data"
data=$(cd "$work/data" && pwd -P)
token="bench-$$-$RANDOM"
AIKORE_API_TOKEN=$token AIKORE_PORT_RANGE="$first-$((first + 19))" AIKORE_BLUEPRINTS_DIR="$repo/blueprints" AIKORE_LOG=warn \
    "$bin" serve --data-dir "$data" --units-dir "$work/stock" --listen "127.0.0.1:$api_port" >"$work/daemon.log" 2>&1 &
daemon_pid=$!

api() {
    local method=$1 path=$2 body=${3:-}
    python3 - "$method" "http://127.0.0.1:$api_port$path" "$token" "$body" <<'PY'
import sys, urllib.request
method, url, token, body = sys.argv[1:5]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None,
                             headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.read().decode())
    sys.exit(1)
PY
}

for _ in $(seq 100); do api GET /healthz >/dev/null 2>&1 && break; sleep 0.1; done
api GET /healthz >/dev/null || { cat "$work/daemon.log" >&2; exit 1; }

title="AiKore bench page"
status_of() { { api GET "/api/v1/units/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'; } 2>/dev/null || true; }

# measure NAME: pids, RSS and PSS sums (KiB), CPU seconds over WINDOW.
measure() {
    python3 - "$1" "$data" "$WINDOW" <<'PY'
import os, sys, time
unit, data, window = sys.argv[1], sys.argv[2], float(sys.argv[3])
clk = os.sysconf("SC_CLK_TCK")
want = {f"AIKORE_UNIT={unit}".encode(), f"AIKORE_DATA_DIR={data}".encode()}
def pids():
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            env = set(open(f"/proc/{p}/environ", "rb").read().split(b"\0"))
        except OSError:
            continue
        if want <= env:
            out.append(int(p))
    return out
def cpu(pid):
    try:
        s = open(f"/proc/{pid}/stat").read()
        f = s[s.rindex(")") + 2:].split()
        return (int(f[11]) + int(f[12])) / clk
    except OSError:
        return None
def mem(pid):
    rss = pss = 0
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Rss:"): rss = int(line.split()[1])
            if line.startswith("Pss:"): pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss
before = {p: cpu(p) for p in pids()}
t0 = time.monotonic()
time.sleep(window)
elapsed = time.monotonic() - t0
now = pids()
used = 0.0
for p in now:
    c = cpu(p)
    if c is None:
        continue
    used += c - (before.get(p) or 0.0)
rss = pss = 0
names = {}
for p in now:
    r, s = mem(p)
    rss += r; pss += s
    try:
        comm = open(f"/proc/{p}/comm").read().strip()
    except OSError:
        continue
    names[comm] = names.get(comm, 0) + 1
print(len(now), rss, pss, f"{100 * used / elapsed:.2f}", ",".join(f"{k}x{v}" if v > 1 else k for k, v in sorted(names.items())))
PY
}

run_case() {
    local name=$1 persistent=$2
    api POST /api/v1/instances "{\"name\": \"$name\", \"blueprint\": \"test-http\", \"persistent_mode\": $persistent}" >/dev/null
    printf '<!doctype html><title>%s</title><h1>%s</h1>\n' "$title" "$title" >"$data/instances/$name/index.html"
    api POST "/api/v1/instances/$name/start" >/dev/null
    for _ in $(seq 600); do [[ $(status_of "$name") == started ]] && break; sleep 0.1; done
    [[ $(status_of "$name") == started ]] || { echo "$name did not start" >&2; tail -20 "$data/logs/$name.log" >&2; exit 1; }
    if [[ $persistent == true ]]; then
        # Idle means the page is on the display: wait for Firefox's window title.
        local display="" shown=0
        for _ in $(seq 1200); do
            display=$(grep -o 'display :[0-9]*' "$data/logs/$name.log" | head -1 | cut -d: -f2 || true)
            if [[ -n $display ]] && DISPLAY=":$display" xdotool search --name "$title" >/dev/null 2>&1; then shown=1; break; fi
            sleep 0.1
        done
        [[ $shown == 1 ]] || { echo "Firefox never showed the page" >&2; tail -30 "$data/logs/$name.log" >&2; exit 1; }
    fi
    sleep "$SETTLE"
    measure "$name"
    api POST "/api/v1/instances/$name/stop" >/dev/null
    for _ in $(seq 300); do [[ $(status_of "$name") == stopped ]] && break; sleep 0.1; done
}

echo "settle ${SETTLE}s, CPU over ${WINDOW}s, $(nproc) CPUs, $(firefox-esr --version 2>/dev/null)" >&2
read -r p_n p_rss p_pss p_cpu p_names < <(run_case plain false)
read -r v_n v_rss v_pss v_cpu v_names < <(run_case pv true)

python3 - "$p_n" "$p_rss" "$p_pss" "$p_cpu" "$p_names" "$v_n" "$v_rss" "$v_pss" "$v_cpu" "$v_names" <<'PY'
import sys
a = sys.argv[1:]
rows = [("test-http", a[0:5]), ("test-http persistent", a[5:10])]
print(f"{'instance':<22} {'procs':>5} {'RSS MiB':>9} {'PSS MiB':>9} {'CPU %':>7}  processes")
for name, (n, rss, pss, cpu, names) in rows:
    print(f"{name:<22} {n:>5} {int(rss)/1024:9.1f} {int(pss)/1024:9.1f} {float(cpu):7.2f}  {names}")
(_, (_, r0, p0, c0, _)), (_, (_, r1, p1, c1, _)) = rows
print(f"{'extra (persistent)':<22} {'':>5} {(int(r1)-int(r0))/1024:9.1f} {(int(p1)-int(p0))/1024:9.1f} {float(c1)-float(c0):7.2f}")
PY
