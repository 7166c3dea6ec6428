#!/usr/bin/env bash
# Start N services (default 100) from cold: the supervisor is launched on a
# fresh config and the clock stops when every service runs (each one, a tiny
# C program, appends a byte to a file as its first act: ready-pause.c).
# aikore (a fresh data dir: its SQLite opening and migrations are in the
# time, as at a container's start), s6-svscan, runit's runsvdir, in the same
# run, interleaved, median of REPS. Prints seconds and the ratio to s6.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N="${N:-100}"
REPS="${REPS:-5}"
TIMEOUT="${TIMEOUT:-60}"
PEERS="${PEERS:-aikore s6 runit}"

bench_init start
need gcc curl
case " $PEERS " in *" s6 "*) need s6-svscan ;; esac
case " $PEERS " in *" runit "*) need runsvdir ;; esac

PROG="$BENCH_TMP/ready-pause"
gcc -O2 -o "$PROG" "$BENCH_DIR/ready-pause.c"

declare -A SECS
record() { SECS[$1]="${SECS[$1]:-} $2"; log "$1: $2 s"; }
median() { printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# timed NAME STARTED_FILE CMD...: launch CMD (tracked as SUP_PID), print the
# seconds until STARTED_FILE has N bytes.
timed() {
    local name=$1 file=$2; shift 2
    local waiter t0 t1
    python3 "$BENCH_DIR/start-wait.py" "$file" "$N" "$TIMEOUT" >"$BENCH_TMP/seen" &
    waiter=$!
    sleep 0.3   # the poller is up before the clock starts
    t0=$(date +%s.%N)
    "$@" >"$BENCH_TMP/$name.out" 2>&1 &
    SUP_PID=$!
    track "$SUP_PID"
    wait "$waiter" || die "$name: not all $N services ran within ${TIMEOUT}s"
    t1=$(cat "$BENCH_TMP/seen")
    record "$name" "$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$t0" "$t1")"
}

bench_aikore() {
    local dir="$BENCH_TMP/aikore" i port
    rm -rf "$dir"; mkdir -p "$dir/units" "$dir/data"
    for i in $(seq 1 "$N"); do
        printf '[Service]\nExecStart=%s %s\n' "$PROG" "$dir/started" >"$dir/units/s$i.service"
    done
    port=$(free_port)
    timed aikore "$dir/started" env AIKORE_SHUTDOWN_TIMEOUT=10s \
        "$AIKORE" serve --data-dir "$dir/data" --units-dir "$dir/units" --listen "127.0.0.1:$port"
    stop_tracked "$SUP_PID"
}

bench_s6() {
    local dir="$BENCH_TMP/s6" i
    rm -rf "$dir"; mkdir -p "$dir/scan"
    for i in $(seq 1 "$N"); do
        mkdir -p "$dir/scan/s$i"
        ln -s "$PROG" "$dir/scan/s$i/run"
    done
    # ../started from each service dir.
    timed s6 "$dir/scan/started" s6-svscan "$dir/scan"
    stop_tracked "$SUP_PID"
}

bench_runit() {
    local dir="$BENCH_TMP/runit" i
    rm -rf "$dir"; mkdir -p "$dir/sv"
    for i in $(seq 1 "$N"); do
        mkdir -p "$dir/sv/s$i"
        ln -s "$PROG" "$dir/sv/s$i/run"
    done
    timed runit "$dir/sv/started" runsvdir -P "$dir/sv"
    stop_tracked "$SUP_PID"
}

for r in $(seq 1 "$REPS"); do
    log "round $r of $REPS"
    for p in $PEERS; do "bench_$p"; done
done

echo
echo "== start-$N: launch -> all $N services running (median of $REPS) =="
printf '%-10s %8s %8s\n' supervisor seconds "x s6"
base=""
[[ -n ${SECS[s6]:-} ]] && base=$(median "${SECS[s6]}")
for p in $PEERS; do
    s=$(median "${SECS[$p]}")
    printf '%-10s %8s %8s\n' "$p" "$s" "$([[ -n $base ]] && ratio "$s" "$base" || echo n/a)"
done
echo "(x s6 = time relative to s6-svscan's; lower is faster)"
[[ -n $base && -n ${SECS[aikore]:-} ]] && result "start $N services -> all running" s "$(median "${SECS[aikore]}")" s6 "$base" "(goal <= 1; runit $(median "${SECS[runit]:-n/a}"))"
