# shellcheck shell=bash
# Shared helpers for the AiKore benchmarks. Source it; don't run it.
# Every script: set -euo pipefail, a private temp dir, and a trap that kills
# every process it started (by pid, never by name) even when a step fails.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
# The binary under test: AIKORE (or AIKORE_BIN), else this checkout's release
# build, else its debug build (CARGO_TARGET_DIR is honoured).
find_aikore() {
    local target="${CARGO_TARGET_DIR:-$REPO_DIR/target}" candidate
    for candidate in "$target/release/aikore" "$target/debug/aikore"; do
        [[ -x $candidate ]] && { echo "$candidate"; return 0; }
    done
    echo "$target/release/aikore"
}
AIKORE="${AIKORE:-${AIKORE_BIN:-$(find_aikore)}}"
PROCPY="$BENCH_DIR/proc.py"

# Pids to stop on exit (process-group leaders are killed as groups too).
declare -a BENCH_PIDS=()
BENCH_TMP=""

bench_init() {
    BENCH_TMP="$(mktemp -d "/tmp/aikore-bench-${1:-x}.XXXXXX")"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    [[ -x "$AIKORE" ]] || die "no aikore binary at $AIKORE (run benches/run-all.sh, or cargo build --release)"
    # The API sits behind aikore's login: every daemon started here accepts
    # this bearer token, and curl sends it on every request (its .curlrc).
    export AIKORE_API_TOKEN="bench-$$"
    export CURL_HOME="$BENCH_TMP"
    printf 'header = "Authorization: Bearer %s"\n' "$AIKORE_API_TOKEN" >"$CURL_HOME/.curlrc"
}

die() { echo "error: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# Remember a pid we started, so the trap can stop it.
track() { BENCH_PIDS+=("$1"); }

# SIGTERM each tracked pid, give them a moment, then SIGKILL what is left.
# Children of the supervisors (units, programs, s6-supervise) go with them:
# every supervisor here stops its children on SIGTERM; the SIGKILL sweep over
# their descendants catches the rest.
bench_cleanup() {
    local rc=$? pid d
    local -a all=()
    for pid in "${BENCH_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        all+=("$pid")
        for d in $(python3 "$PROCPY" descendants "$pid" 2>/dev/null); do all+=("$d"); done
    done
    for pid in "${BENCH_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${BENCH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    BENCH_PIDS=()
    if [[ -n "$BENCH_TMP" && -z "${BENCH_KEEP:-}" ]]; then rm -rf "$BENCH_TMP"; fi
    return $rc
}

# Stop one tracked supervisor now (between phases) and forget it.
stop_tracked() {
    local pid=$1 d
    local -a all=("$pid")
    for d in $(python3 "$PROCPY" descendants "$pid" 2>/dev/null); do all+=("$d"); done
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    for d in "${all[@]}"; do kill -KILL "$d" 2>/dev/null || true; done
    wait "$pid" 2>/dev/null || true
    local -a keep=()
    for d in "${BENCH_PIDS[@]}"; do [[ $d == "$pid" ]] || keep+=("$d"); done
    BENCH_PIDS=("${keep[@]+"${keep[@]}"}")
}

# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds.
wait_for() {
    local limit=$1; shift
    local deadline=$(( $(date +%s) + limit ))
    until "$@"; do
        (( $(date +%s) < deadline )) || return 1
        sleep 0.1
    done
}

# A free loopback TCP port for the aikore API.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ratio A B -> A/B with 2 decimals ("n/a" when B is 0).
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('n/a' if b==0 else f'{a/b:.2f}')" "$1" "$2"; }

# Write an aikore unit: write_unit DIR NAME <<body
write_unit() { cat > "$1/$2.service"; }

# start_aikore DATA UNITS PORT: start the daemon in the background, tracked;
# sets AIKORE_PID. Its own stderr goes to DATA/aikore.stderr.
start_aikore() {
    local data=$1 units=$2 port=$3
    mkdir -p "$data"
    AIKORE_SHUTDOWN_TIMEOUT="${AIKORE_SHUTDOWN_TIMEOUT:-10s}" \
        "$AIKORE" serve --data-dir "$data" --units-dir "$units" --listen "127.0.0.1:$port" \
        2>"$data/aikore.stderr" &
    AIKORE_PID=$!
    track "$AIKORE_PID"
    wait_for 20 curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" \
        || { tail -20 "$data/aikore.stderr" >&2; die "aikore did not answer on :$port"; }
}

# supervisord needs a config with a unix socket we own (so supervisorctl works
# and no system-wide supervisord is touched). start_supervisord CONF sets SUPD_PID.
start_supervisord() {
    local conf=$1
    # Its own chatter (CRIT running as root, one WARN per stopped program) to a file.
    supervisord -n -c "$conf" >"$(dirname "$conf")/supervisord.out" 2>&1 &
    SUPD_PID=$!
    track "$SUPD_PID"
}

# supervisord_conf DIR: the [supervisord] header; programs are appended.
supervisord_conf() {
    local dir=$1
    cat <<EOC
[supervisord]
nodaemon=true
logfile=$dir/supervisord.log
pidfile=$dir/supervisord.pid
childlogdir=$dir
loglevel=warn

[unix_http_server]
file=$dir/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://$dir/supervisor.sock
EOC
}

# start_s6 SCANDIR: s6-svscan on a scan dir, tracked; sets S6_PID.
start_s6() {
    s6-svscan "$1" >"$1/.svscan.out" 2>&1 &
    S6_PID=$!
    track "$S6_PID"
}

# Tools the peers need; run-all.sh installs them.
need() { local t; for t in "$@"; do command -v "$t" >/dev/null || die "missing $t (run benches/run-all.sh to install it)"; done; }

# result SCENARIO UNIT AIKORE PEER PEER_VALUE [NOTE]: one row of the summary
# run-all.sh prints at the end (ratio = aikore / peer: below 1 means aikore
# uses less, whether time, memory or CPU). Printed here too; appended to
# $BENCH_RESULTS when run-all.sh set it.
result() {
    local scenario=$1 unit=$2 ours=$3 peer=$4 theirs=$5 note=${6:-} r
    r=$(ratio "$ours" "$theirs")
    printf 'RESULT %-44s aikore %10s %-4s  %-18s %10s  ratio %s %s\n' "$scenario" "$ours" "$unit" "$peer" "$theirs" "$r" "$note"
    if [[ -n ${BENCH_RESULTS:-} ]]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$unit" "$ours" "$peer" "$theirs" "$r" "$note" >>"$BENCH_RESULTS"
    fi
}
