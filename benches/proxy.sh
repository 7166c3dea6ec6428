#!/usr/bin/env bash
# Requests/s and p99 latency of an instance reached through NGINX
# (/app/<name>/) versus straight on its port, on loopback only.
#
# The gate is measured the way a browser meets it: logged in through the
# dashboard and the apps origin's handshake, sending the cookies it got, and
# keeping the newest fast-path cookie the gate sets (a wrk script; the
# no-gate row runs the same script, so the client's cost is the same). The
# peer is the same NGINX route with the gate's lines removed. Extra rows: a
# bearer-token client (the API's path through the gate), and the fast path
# against the peer with plain wrk (no script: NGINX's own cost alone).
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

# The API and the apps sit behind aikore's login: the API calls here send a
# bearer token (curl's .curlrc); the browser's login uses the password.
TOKEN="bench-$$"
PASSWORD="bench-password-$$"
export CURL_HOME="$work"
printf 'header = "Authorization: Bearer %s"\n' "$TOKEN" >"$CURL_HOME/.curlrc"
AIKORE_PASSWORD=$PASSWORD AIKORE_API_TOKEN=$TOKEN AIKORE_PORT=$public_port AIKORE_APPS_PORT=$apps_port AIKORE_PORT_RANGE="$first-$((first + 9))" AIKORE_BLUEPRINTS_DIR="$repo/blueprints" \
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
drop = re.compile(
    r"auth_request|error_page 401|error_page 418|aikore_gate|recursive_error_pages|aikore_cookie|aikore_authorization|^\s*if |proxy_pass "
)
lines = ["        proxy_pass http://aikore_app_bench/;"] + [l for l in block if not drop.search(l)]
open(f"{routes}/zz-bench-nogate.conf", "w").write("location ^~ /nogate/bench/ {\n" + "\n".join(lines) + "\n}\n")
EOP
kill -HUP "$(cat "$work/data/nginx/nginx.pid")"
wait_for "the route without the gate" curl -fsS "http://127.0.0.1:$apps_port/nogate/bench/ping"

# A browser's login: the dashboard's form, then the apps origin's handshake
# (aikore_app), then the app itself once (aikore_gate, the fast path's
# cookie). -q: no .curlrc, so no bearer: a browser has none.
jar="$work/cookies.txt"
curl -q -fsS -o /dev/null -c "$jar" -b "$jar" --data-urlencode "password=$PASSWORD" "http://127.0.0.1:$public_port/login"
curl -q -fsS -o /dev/null -L -c "$jar" -b "$jar" -H 'Accept: text/html' \
    "http://127.0.0.1:$public_port/app-login?next=%2Fapp%2Fbench%2Fping"
# The jar: tab-separated, the cookie's name and value in the last two fields.
COOKIE=$(awk -F'\t' 'NF >= 7 && $6 ~ /^aikore_(session|app|gate)$/ { printf "%s%s=%s", sep, $6, $7; sep="; " }' "$jar")
[[ $COOKIE == *aikore_app=* && $COOKIE == *aikore_gate=* ]] || { echo "the browser login gave no app or gate cookie: $COOKIE" >&2; exit 1; }
export BENCH_COOKIE=$COOKIE
# wrk's script: sends the cookies, keeps the newest aikore_gate (as a
# browser would: one lives 2 s at most), and counts the answers that set one
# (each a pass through aikore's gate: the slow path).
cat >"$work/browser.lua" <<'EOF'
local cookie = os.getenv("BENCH_COOKIE") or ""
local req
slow = 0
function request()
  if not req then
    if cookie ~= "" then wrk.headers["Cookie"] = cookie end
    req = wrk.format()
  end
  return req
end
function response(status, headers, body)
  local set = headers["Set-Cookie"]
  if set then
    local gate = set:match("^(aikore_gate=[^;]*)")
    if gate then
      slow = slow + 1
      cookie = cookie:gsub("aikore_gate=[^;]*", gate)
      req = nil
    end
  end
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("slow") end
  io.write(string.format("slow-passes: %d of %d\n", n, summary.requests))
end
EOF

direct="http://127.0.0.1:$app_port/ping"
proxied="http://127.0.0.1:$apps_port/app/bench/ping"
nogate="http://127.0.0.1:$apps_port/nogate/bench/ping"

# Prints "requests_per_s p99_ms slow_passes non_2xx"; extra args go to wrk.
load_wrk() {
    local url=$1 out
    shift
    local script=(-s "$work/browser.lua")
    [[ -z ${PLAIN:-} ]] || script=()
    out=$(wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" --latency "${script[@]}" "$@" "$url")
    python3 - "$out" <<'EOF'
import re, sys
out = sys.argv[1]
rps = re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)
m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
scale = {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
slow = re.search(r"slow-passes: (\d+)", out)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
print(f"{float(rps):.0f} {float(m.group(1)) * scale:.2f} {slow.group(1) if slow else 0} {bad.group(1) if bad else 0}")
EOF
}

# The same without wrk (slower: compare rows, not absolute numbers).
load_python() {
    python3 - "$1" "$CONNECTIONS" "$DURATION" "${2:-}" <<'EOF'
import http.client, sys, threading, time, urllib.parse
url, conns, duration = urllib.parse.urlsplit(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
header = sys.argv[4]
lat, slow, lock = [], [0], threading.Lock()
end = time.monotonic() + duration
def worker():
    c, mine, passes = http.client.HTTPConnection(url.hostname, url.port, timeout=10), [], 0
    sent = dict([header.split(": ", 1)]) if header else {}
    while time.monotonic() < end:
        t = time.perf_counter()
        c.request("GET", url.path, headers=sent)
        r = c.getresponse()
        r.read()
        gate = (r.getheader("Set-Cookie") or "").split(";")[0]
        if gate.startswith("aikore_gate=") and "Cookie" in sent:
            passes += 1
            sent["Cookie"] = "; ".join(gate if p.startswith("aikore_gate=") else p for p in sent["Cookie"].split("; "))
        mine.append(time.perf_counter() - t)
    with lock:
        lat.extend(mine)
        slow[0] += passes
threads = [threading.Thread(target=worker) for _ in range(min(conns, 16))]
for t in threads: t.start()
for t in threads: t.join()
lat.sort()
print(f"{len(lat) / duration:.0f} {lat[int(len(lat) * 0.99)] * 1000:.2f} {slow[0]} 0")
EOF
}

browser="Cookie: $COOKIE"
bearer="Authorization: Bearer $TOKEN"
if command -v wrk >/dev/null; then
    gen=wrk
    run() { if [[ -n ${2:-} ]]; then load_wrk "$1" -H "$2"; else load_wrk "$1"; fi; }
else
    gen="python (wrk not installed)"
    run() { load_python "$1" "${2:-}"; }
fi
# The browser's two rows alternate, three times each, and each row gives
# its medians: other work on a shared box moves single runs more than the
# gate does.
median() { # "rps p99 slow bad" lines -> the median rps, median p99, their slow passes and non-2xx summed
    python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
print(f"{statistics.median(r[0] for r in rows):.0f} {statistics.median(r[1] for r in rows):.2f} {sum(r[2] for r in rows):.0f} {sum(r[3] for r in rows):.0f}")'
}
read -r d_rps d_p99 _ _ < <(run "$direct")
n_runs=() p_runs=()
for _ in 1 2 3; do
    n_runs+=("$(run "$nogate" "$browser")")
    p_runs+=("$(run "$proxied" "$browser")")
done
read -r n_rps n_p99 _ n_bad < <(printf '%s\n' "${n_runs[@]}" | median)
read -r p_rps p_p99 p_slow p_bad < <(printf '%s\n' "${p_runs[@]}" | median)
read -r b_rps b_p99 _ b_bad < <(run "$proxied" "$bearer")
# What the fast path costs NGINX alone, without the script's cost in the
# client (the rows above share one; on 2 busy cores it narrows the gap): a
# cookie signed here for an hour with NGINX's secret (aikore issues none so
# long), against the route without the gate, both with plain wrk.
s_rows=""
if [[ $gen == wrk ]]; then
    signed=$(python3 - "$work/data/nginx/gate.conf" <<'EOF'
import base64, hashlib, sys, time
secret = open(sys.argv[1]).read().split('default "')[1].split('"')[0]
expires = int(time.time()) + 3600
digest = hashlib.md5(f"{expires}|app/bench|{secret}".encode()).digest()
print(f"aikore_gate={expires}.{base64.urlsafe_b64encode(digest).decode().rstrip('=')}")
EOF
)
    s_n=() s_p=()
    for _ in 1 2 3; do
        s_n+=("$(PLAIN=1 run "$nogate" "Cookie: $signed")")
        s_p+=("$(PLAIN=1 run "$proxied" "Cookie: $signed")")
    done
    read -r sn_rps sn_p99 _ sn_bad < <(printf '%s\n' "${s_n[@]}" | median)
    read -r sp_rps sp_p99 _ sp_bad < <(printf '%s\n' "${s_p[@]}" | median)
    s_rows=1
fi
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('n/a' if b==0 else f'{a/b:.2f}')" "$1" "$2"; }
echo "load: $gen, ${DURATION}s, $CONNECTIONS connections, GET /ping on echo_app.py (one asyncio process)"
echo "browser rows: a real login's cookies, the newest aikore_gate kept; medians of 3 alternating runs each"
echo "runs (requests/s p99 slow-passes non-2xx): no gate ${n_runs[*]/%/;} browser ${p_runs[*]/%/;}"
printf '%-34s %12s %10s %10s %10s\n' "path" "requests/s" "p99 ms" "x direct" "x no-gate"
printf '%-34s %12s %10s %10s %10s\n' "direct 127.0.0.1:$app_port" "$d_rps" "$d_p99" 1.00 ""
printf '%-34s %12s %10s %10s %10s\n' "nginx, no gate /nogate/bench/" "$n_rps" "$n_p99" "$(ratio "$n_rps" "$d_rps")" 1.00
printf '%-34s %12s %10s %10s %10s\n' "nginx + gate, browser /app/bench/" "$p_rps" "$p_p99" "$(ratio "$p_rps" "$d_rps")" "$(ratio "$p_rps" "$n_rps")"
printf '%-34s %12s %10s %10s %10s\n' "nginx + gate, bearer /app/bench/" "$b_rps" "$b_p99" "$(ratio "$b_rps" "$d_rps")" "$(ratio "$b_rps" "$n_rps")"
if [[ -n $s_rows ]]; then
    echo "without the browser script (plain wrk; medians of 3 alternating runs): no gate ${s_n[*]/%/;} gate ${s_p[*]/%/;}"
    printf '%-34s %12s %10s %10s %10s\n' "plain wrk: nginx, no gate" "$sn_rps" "$sn_p99" "$(ratio "$sn_rps" "$d_rps")" 1.00
    printf '%-34s %12s %10s %10s %10s\n' "plain wrk: gate, signed cookie" "$sp_rps" "$sp_p99" "$(ratio "$sp_rps" "$d_rps")" "$(ratio "$sp_rps" "$sn_rps")"
    n_bad=$((n_bad + sn_bad + sp_bad))
fi
echo "browser through the gate: $p_slow requests in its 3 runs went through aikore's gate (the slow path); NGINX checked the rest alone"
echo "gate p99 / no-gate p99: $(ratio "$p_p99" "$n_p99") (goal: rate >= 0.90x no-gate, p99 <= 1.10x)"
if ((n_bad + p_bad + b_bad)); then echo "error: non-2xx answers (no gate $n_bad, browser $p_bad, bearer $b_bad)" >&2; exit 1; fi
result "app requests through the login gate" "r/s" "$p_rps" "same NGINX, no gate" "$n_rps" \
    "(goal >= 0.9; p99 $p_p99 vs $n_p99 ms)"
