#!/usr/bin/env bash
# /metrics scrape latency (p50/p99) of aikore with 0 and with 100 running
# units (each a small process tree: sh + 2 sleeps), beside node_exporter's
# on the same machine in the same run.
#
# Usage: benches/scrape.sh [SCRAPES]   (default 200 per target)
#   AIKORE_BIN=path/to/aikore   default: the newest target/{release,debug}/aikore
#   (with a target dir shared between worktrees, copy your build aside and
#   point AIKORE_BIN at the copy: target/*/aikore is whoever built last)
# Needs curl, python3 (free ports) and prometheus-node-exporter (Debian).
# Bounded: the whole run is killed after BENCH_TIMEOUT seconds (default 300),
# and every process it started is stopped on exit.
set -euo pipefail

SCRAPES=${1:-200}
UNITS=100
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${AIKORE_BIN:-$(ls -t "$TARGET"/release/aikore "$TARGET"/debug/aikore 2>/dev/null | head -1 || true)}
[ -x "$BIN" ] || { echo "no aikore binary: cargo build --release (or set AIKORE_BIN)" >&2; exit 2; }
NODE_EXPORTER=$(command -v prometheus-node-exporter || command -v node_exporter || true)
[ -n "$NODE_EXPORTER" ] || { echo "node_exporter missing: apt-get install prometheus-node-exporter" >&2; exit 2; }

# Re-exec under timeout once, so a hung daemon cannot hold the run forever.
if [ -z "${BENCH_BOUNDED:-}" ]; then
    BENCH_BOUNDED=1 exec timeout --signal=TERM --kill-after=20 "$BENCH_TIMEOUT" "$0" "$@"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # aikore stops its units on SIGTERM; give it its shutdown time.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url
    for _ in $(seq 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done
    echo "no answer from $1" >&2; return 1
}

# Prints "p50 p99" in milliseconds over $SCRAPES scrapes on one keep-alive
# connection (what Prometheus does), after 5 warm-up scrapes.
measure() { # url
    local url=$1 args=()
    for _ in 1 2 3 4 5; do curl -fs -o /dev/null "$url"; done
    # curl's -o applies to one URL: each gets its own.
    for _ in $(seq "$SCRAPES"); do args+=(-o /dev/null "$url"); done
    curl -fs -o /dev/null -w '%{time_total}\n' "${args[@]}" | sort -n | awk '
        { t[NR] = $1 * 1000 }
        END { p50 = t[int(NR * 0.50 + 0.5)]; p99 = t[int(NR * 0.99 + 0.5)]; printf "%.2f %.2f\n", p50, p99 }'
}

# Sets PORT (not echoed: a $(...) subshell would lose the pid in PIDS, and cleanup with it).
start_aikore() { # name units-count
    local dir=$WORK/$1 port
    mkdir -p "$dir/units" "$dir/data"
    for i in $(seq "$2"); do
        [ "$2" -gt 0 ] || break
        printf "[Service]\nExecStart=/bin/sh -c 'sleep 100000 & sleep 100000'\n" > "$dir/units/bench$i.service"
    done
    port=$(free_port)
    AIKORE_SHUTDOWN_TIMEOUT=20s "$BIN" serve --data-dir "$dir/data" --units-dir "$dir/units" \
        --listen "127.0.0.1:$port" > "$dir/aikore.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$port/healthz"
    # Every unit started before measuring.
    for _ in $(seq 600); do
        started=$(curl -fs "http://127.0.0.1:$port/api/v1/units" | grep -o '"status":"started"' | wc -l || true)
        [ "$started" -ge "$2" ] && break
        sleep 0.1
    done
    PORT=$port
}

row() { printf '%-38s %10s %10s %10s\n' "$@"; }

echo "binary: $BIN  scrapes per target: $SCRAPES  cpus: $(nproc)"
ne_port=$(free_port)
"$NODE_EXPORTER" --web.listen-address="127.0.0.1:$ne_port" > "$WORK/node_exporter.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$ne_port/metrics"

start_aikore idle 0
idle_port=$PORT
start_aikore busy "$UNITS"
busy_port=$PORT

row "target" "p50 ms" "p99 ms" "bytes"
declare -A P50
for target in "aikore, 0 units:$idle_port" "aikore, $UNITS units (3 procs each):$busy_port" "node_exporter:$ne_port"; do
    name=${target%:*}
    url="http://127.0.0.1:${target##*:}/metrics"
    read -r p50 p99 < <(measure "$url")
    P50[$name]=$p50
    row "$name" "$p50" "$p99" "$(curl -fs "$url" | wc -c)"
done
# shellcheck source=benches/lib.sh
source benches/lib.sh
result "/metrics scrape p50, $UNITS units" ms "${P50["aikore, $UNITS units (3 procs each)"]}" node_exporter \
    "${P50[node_exporter]}" "(goal <= 1; 0 units: ${P50["aikore, 0 units"]} ms)"
