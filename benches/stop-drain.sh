#!/usr/bin/env bash
# What waiting for units to stop costs, with and without cgroups.
#
# 1. Wait CPU: UNITS services that ignore SIGTERM, TimeoutStopSec=TIMEOUT.
#    The supervisor is told to stop them all (aikore: SIGTERM to the daemon,
#    which stops every unit; s6: s6-svc -d on every service, with the same
#    timeout-kill), then its utime+stime (/proc/PID/stat, all threads) is read
#    at 0.5 s and at TIMEOUT-1 s: the CPU it spends waiting for the
#    deadline, as % of one core. aikore with cgroups and with
#    AIKORE_CGROUP=off, s6 (s6-svscan + every s6-supervise) in the same run.
# 2. Stop time: UNITS services that exit on SIGTERM; SIGTERM to aikore, then
#    the time until every unit process is gone (reaped) and until the daemon
#    has exited (every unit seen stopped, shutdown done), both modes.
# Targets (issue 18): <= 1 % of a core while waiting, <= 0.1 s until all gone.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

UNITS="${UNITS:-100}"
TIMEOUT="${TIMEOUT:-10}"   # TimeoutStopSec / timeout-kill, seconds

bench_init drain
need s6-svscan s6-svc curl

declare -A WAIT_CPU WAIT_MS WHOLE_CPU GONE EXITED

# cpu_of PID...: summed utime+stime in seconds.
# One python for all pids: s6 has a supervisor per service, and the reading must not take seconds.
cpu_of() {
    python3 - "$@" <<'EOP'
import os, sys
total = 0
for pid in sys.argv[1:]:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    total += int(rest[11]) + int(rest[12])
print(total / os.sysconf("SC_CLK_TCK"))
EOP
}
pct() { python3 -c "import sys; print(f'{(float(sys.argv[2]) - float(sys.argv[1])) * 100 / float(sys.argv[3]):.2f}')" "$@"; }

# write_units DIR KIND: UNITS unit files; KIND ignore (traps TERM) or obey.
write_units() {
    local dir=$1 kind=$2 i
    mkdir -p "$dir"
    for i in $(seq 1 "$UNITS"); do
        if [[ $kind == ignore ]]; then
            printf '[Service]\nExecStart=/bin/sh -c %s\nTimeoutStopSec=%ss\n' \
                "'trap \"\" TERM; exec sleep 100000'" "$TIMEOUT" >"$dir/u$i.service"
        else
            printf '[Service]\nExecStart=/bin/sleep 100000\n' >"$dir/u$i.service"
        fi
    done
}

# all_started PORT: every unit reports started.
all_started() {
    local n
    n=$(curl -fsS "http://127.0.0.1:$1/api/v1/units" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
units = d["units"] if isinstance(d, dict) else d
print(sum(1 for u in units if u.get("status") == "started"))') || return 1
    [[ $n == "$UNITS" ]]
}

sleepers_of() { python3 "$PROCPY" children "$1" sleep | wc -w; }

# start_mode MODE KIND: aikore with UNITS units; MODE cgroup or off.
start_mode() {
    local mode=$1 kind=$2 dir="$BENCH_TMP/$1-$2" port
    write_units "$dir/units" "$kind"
    port=$(free_port)
    AIKORE_CGROUP=$([[ $mode == off ]] && echo off || echo on) AIKORE_SHUTDOWN_TIMEOUT=60s \
        start_aikore "$dir/data" "$dir/units" "$port"
    wait_for 60 all_started "$port" || die "$mode: not all $UNITS units started (see $dir/data/aikore.stderr)"
    wait_for 20 test "$(sleepers_of "$AIKORE_PID")" -ge "$UNITS" || die "$mode: the unit processes are not all up"
    local tracking
    tracking=$(curl -fsS "http://127.0.0.1:$port/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tracking"])')
    log "aikore ($mode): $UNITS units started, tracking=$tracking"
    [[ $mode == off && $tracking == process-group ]] || [[ $mode == cgroup && $tracking == cgroup ]] \
        || die "$mode: aikore tracks by $tracking"
}

# measure_wait NAME PID...: CPU of PIDs over [0.5, TIMEOUT-1] s after now
# (the last second is left out: the processes must still be there at its end).
measure_wait() {
    local name=$1; shift
    local c0 c1 c2 t0 window left
    t0=$(date +%s.%N)
    c0=$(cpu_of "$@")
    sleep 0.5
    c1=$(cpu_of "$@")
    window=$(python3 -c "print($TIMEOUT - 1.5)")
    python3 -c "import time; time.sleep(max(0, $t0 + $TIMEOUT - 1 - time.time()))"
    c2=$(cpu_of "$@")
    # Still waiting at the end of the window, or the measurement is of something else.
    left=$(python3 "$PROCPY" children "$1" sleep | wc -w)
    [[ $left -ge $UNITS ]] || die "$name: only $left of $UNITS processes left at $((TIMEOUT - 1)) s (they ignore SIGTERM)"
    WAIT_CPU[$name]=$(pct "$c1" "$c2" "$window")
    WAIT_MS[$name]=$(python3 -c "print(round(($c2 - $c1) * 1000))")
    WHOLE_CPU[$name]=$(pct "$c0" "$c2" "$((TIMEOUT - 1))")
    log "$name: ${WAIT_CPU[$name]} % of a core while waiting, ${WHOLE_CPU[$name]} % from the stop on"
}

wait_cpu_aikore() {
    local mode=$1 name="aikore-$1"
    start_mode "$mode" ignore
    kill -TERM "$AIKORE_PID"
    measure_wait "$name" "$AIKORE_PID"
    wait_for $((TIMEOUT + 20)) bash -c "! kill -0 $AIKORE_PID 2>/dev/null || grep -q '^State:.*Z' /proc/$AIKORE_PID/status" \
        || die "$name: the daemon did not exit after TimeoutStopSec"
    stop_tracked "$AIKORE_PID"
}

wait_cpu_s6() {
    local scan="$BENCH_TMP/s6scan" i
    mkdir -p "$scan"
    for i in $(seq 1 "$UNITS"); do
        mkdir -p "$scan/u$i"
        printf '#!/bin/sh\ntrap "" TERM\nexec sleep 100000\n' >"$scan/u$i/run"
        chmod +x "$scan/u$i/run"
        echo $((TIMEOUT * 1000)) >"$scan/u$i/timeout-kill"
    done
    start_s6 "$scan"
    wait_for 30 test "$(python3 "$PROCPY" children "$S6_PID" sleep | wc -w)" -ge "$UNITS" \
        || die "s6: the services did not all start"
    local sups
    sups=$(python3 "$PROCPY" children "$S6_PID" s6-supervise)
    log "s6: $UNITS services up under $(wc -w <<<"$sups") s6-supervise"
    for i in $(seq 1 "$UNITS"); do s6-svc -d "$scan/u$i"; done
    # shellcheck disable=SC2086
    measure_wait s6 "$S6_PID" $sups
    stop_tracked "$S6_PID"
}

# stop_time MODE: SIGTERM to a daemon with UNITS services that exit on it.
stop_time() {
    local mode=$1
    start_mode "$mode" obey
    local pids
    pids=$(python3 "$PROCPY" children "$AIKORE_PID" sleep)
    read -r GONE[$mode] EXITED[$mode] < <(python3 - "$AIKORE_PID" $pids <<'EOP'
import os, signal, sys, time
daemon, units = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]

def gone(pid):
    # Reaped (no /proc entry) or a zombie nobody has reaped yet (the daemon's own parent is this shell).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True

t0 = time.monotonic()
os.kill(daemon, signal.SIGTERM)
left, t_gone, t_exit = set(units), None, None
while t_exit is None and time.monotonic() - t0 < 60:
    left = {p for p in left if not gone(p)}
    now = time.monotonic()
    if not left and t_gone is None:
        t_gone = now - t0
    if gone(daemon):
        t_exit = now - t0
    time.sleep(0.0005)
fmt = lambda t: "n/a" if t is None else f"{t:.3f}"
print(fmt(t_gone), fmt(t_exit))
EOP
)
    log "aikore ($mode): $UNITS units gone after ${GONE[$mode]} s, daemon exited after ${EXITED[$mode]} s"
    stop_tracked "$AIKORE_PID"
}

wait_cpu_aikore cgroup
wait_cpu_aikore off
wait_cpu_s6
stop_time cgroup
stop_time off

echo
echo "== stop-drain: $UNITS units ignoring SIGTERM, ${TIMEOUT}s stop timeout: supervisor CPU while waiting =="
printf '%-14s %14s %16s %18s %10s\n' supervisor "CPU ms (wait)" "% core (wait)" "% core (from stop)" "x s6"
for k in aikore-cgroup aikore-off s6; do
    printf '%-14s %14s %16s %18s %10s\n' "$k" "${WAIT_MS[$k]}" "${WAIT_CPU[$k]}" "${WHOLE_CPU[$k]}" \
        "$(ratio "${WAIT_CPU[$k]}" "${WAIT_CPU[s6]}")"
done
echo "(wait = from 0.5 s to $((TIMEOUT - 1)) s after the stop; from stop = 0 to $((TIMEOUT - 1)) s, signalling included;"
echo " CPU comes in 10 ms clock ticks: $(python3 -c "print(f'{1 / ($TIMEOUT - 1.5):.2f}')") % of a core is one tick in the wait window; x s6 is n/a when s6 used no tick)"
echo
echo "== stop-drain: $UNITS units that exit on SIGTERM, SIGTERM to aikore =="
printf '%-14s %18s %18s\n' tracking "all gone (s)" "daemon exited (s)"
for k in cgroup off; do printf '%-14s %18s %18s\n' "$k" "${GONE[$k]}" "${EXITED[$k]}"; done
echo "targets: <= 1 % of a core while waiting, <= 0.1 s until all gone"
