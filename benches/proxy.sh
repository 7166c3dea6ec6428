#!/usr/bin/env bash
# Requests/s and p99 latency of an instance reached through NGINX
# (/app/<name>/) versus straight on its port, on loopback only.
#
# Starts a private aikore (temp data dir, the stock nginx unit, free ports),
# creates one instance running tests/fixtures/echo_app.py, loads both paths
# for DURATION seconds each, prints a table, and removes everything it made.
#
#   benches/proxy.sh                 # uses target/release/aikore or target/debug/aikore
#   AIKORE_BIN=/path/aikore DURATION=10 CONNECTIONS=64 benches/proxy.sh
#
# Load generator: wrk (Debian: apt-get install wrk) when installed, else a
# bounded Python one (stdlib; slower, so compare rows, not absolute numbers).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
# Every run is bounded: wrk and the Python generator stop after DURATION.
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 120 ]] || { echo "DURATION must be 1-120 seconds" >&2; exit 2; }

# shellcheck source=lib.sh
source "$repo/benches/lib.sh"
bin=$AIKORE
[[ -x ${bin:-} ]] || { echo "no aikore binary: cargo build --release, or set AIKORE_BIN" >&2; exit 2; }
[[ -x /usr/sbin/nginx ]] || { echo "NGINX is not installed (/usr/sbin/nginx)" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d)
daemon_pid=
cleanup() {
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

api_port=$(free_port)
public_port=$(free_port)
# The apps origin: instances are served there, not on the dashboard's port.
apps_port=$(free_port)
first=$(free_port)
mkdir -p "$work/stock" "$work/data/blueprints"
cp "$repo/units/nginx.service" "$work/stock/"
cat >"$work/data/blueprints/echo.sh" <<EOF
#!/usr/bin/env bash
### AIKORE-METADATA-START ###
# aikore.name = Echo (bench)
# aikore.proxy = subpath
### AIKORE-METADATA-END ###
exec python3 $repo/tests/fixtures/echo_app.py --port "\$WEBUI_PORT"
EOF

# The API and the apps sit behind aikore's login: a bearer token on every request
# (through NGINX that costs one auth subrequest per request, as in real use).
TOKEN="bench-$$"
export CURL_HOME="$work"
printf 'header = "Authorization: Bearer %s"\n' "$TOKEN" >"$CURL_HOME/.curlrc"
AIKORE_API_TOKEN=$TOKEN AIKORE_PORT=$public_port AIKORE_APPS_PORT=$apps_port AIKORE_PORT_RANGE="$first-$((first + 9))" AIKORE_BLUEPRINTS_DIR="$repo/blueprints" \
    "$bin" serve --data-dir "$work/data" --units-dir "$work/stock" --listen "127.0.0.1:$api_port" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
api="http://127.0.0.1:$api_port"

wait_for() { # what, command...
    local what=$1; shift
    for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "timed out waiting for $what; daemon log:" >&2; cat "$work/daemon.log" >&2; exit 1
}
wait_for "the API" curl -fsS "$api/healthz"
curl -fsS -X POST -H 'Content-Type: application/json' \
    -d '{"name":"bench","blueprint":"echo","start":true}' "$api/api/v1/instances" >/dev/null
wait_for "the instance" sh -c "curl -fsS $api/api/v1/instances/bench | grep -q '\"status\":\"started\"'"
app_port=$(curl -fsS "$api/api/v1/instances/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["current_port"])')
wait_for "the NGINX route" curl -fsS "http://127.0.0.1:$apps_port/app/bench/ping"

# The peer the gate is judged against: the same NGINX route without the login
# gate (a hand-written snippet: the generated location minus its auth lines,
# at /nogate/bench/), loaded after NGINX picks it up on a reload.
python3 - "$work/data/nginx/routes" <<'EOP'
import re, sys
routes = sys.argv[1]
text = open(f"{routes}/aikore.conf").read()
block = re.search(r"location \^~ /app/bench/ \{\n(.*?)\n\}", text, re.S).group(1).splitlines()
drop = re.compile(r"auth_request|error_page 401|aikore_cookie|aikore_authorization|^\s*if |proxy_pass ")
lines = ["        proxy_pass http://aikore_app_bench/;"] + [l for l in block if not drop.search(l)]
open(f"{routes}/zz-bench-nogate.conf", "w").write("location ^~ /nogate/bench/ {\n" + "\n".join(lines) + "\n}\n")
EOP
kill -HUP "$(cat "$work/data/nginx/nginx.pid")"
wait_for "the route without the gate" curl -fsS "http://127.0.0.1:$apps_port/nogate/bench/ping"

direct="http://127.0.0.1:$app_port/ping"
proxied="http://127.0.0.1:$apps_port/app/bench/ping"
nogate="http://127.0.0.1:$apps_port/nogate/bench/ping"

# Prints "requests_per_s p99_ms".
load_wrk() {
    local out
    out=$(wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "$1")
    python3 - "$out" <<'EOF'
import re, sys
out = sys.argv[1]
rps = re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)
m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
scale = {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
print(f"{float(rps):.0f} {float(m.group(1)) * scale:.2f}")
EOF
}

load_python() {
    python3 - "$1" "$CONNECTIONS" "$DURATION" "$TOKEN" <<'EOF'
import http.client, sys, threading, time, urllib.parse
url, conns, duration = urllib.parse.urlsplit(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
auth = {"Authorization": "Bearer " + sys.argv[4]}
lat, lock = [], threading.Lock()
end = time.monotonic() + duration
def worker():
    c, mine = http.client.HTTPConnection(url.hostname, url.port, timeout=10), []
    while time.monotonic() < end:
        t = time.perf_counter()
        c.request("GET", url.path, headers=auth)
        c.getresponse().read()
        mine.append(time.perf_counter() - t)
    with lock:
        lat.extend(mine)
threads = [threading.Thread(target=worker) for _ in range(min(conns, 16))]
for t in threads: t.start()
for t in threads: t.join()
lat.sort()
print(f"{len(lat) / duration:.0f} {lat[int(len(lat) * 0.99)] * 1000:.2f}")
EOF
}

if command -v wrk >/dev/null; then gen=wrk; load=load_wrk; else gen="python (wrk not installed)"; load=load_python; fi
read -r d_rps d_p99 < <($load "$direct")
read -r n_rps n_p99 < <($load "$nogate")
read -r p_rps p_p99 < <($load "$proxied")
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('n/a' if b==0 else f'{a/b:.2f}')" "$1" "$2"; }
echo "load: $gen, ${DURATION}s, $CONNECTIONS connections, GET /ping on echo_app.py (one asyncio process)"
printf '%-30s %12s %10s %10s %10s\n' "path" "requests/s" "p99 ms" "x direct" "x no-gate"
printf '%-30s %12s %10s %10s %10s\n' "direct 127.0.0.1:$app_port" "$d_rps" "$d_p99" 1.00 ""
printf '%-30s %12s %10s %10s %10s\n' "nginx, no gate /nogate/bench/" "$n_rps" "$n_p99" "$(ratio "$n_rps" "$d_rps")" 1.00
printf '%-30s %12s %10s %10s %10s\n' "nginx + gate /app/bench/" "$p_rps" "$p_p99" "$(ratio "$p_rps" "$d_rps")" "$(ratio "$p_rps" "$n_rps")"
echo "gate p99 / no-gate p99: $(ratio "$p_p99" "$n_p99") (goal: rate >= 0.90x no-gate, p99 <= 1.10x)"
result "app requests through the login gate" "r/s" "$p_rps" "same NGINX, no gate" "$n_rps" \
    "(goal >= 0.9; p99 $p_p99 vs $n_p99 ms)"
