#!/usr/bin/env bash
# Supervisor CPU over a WINDOW-second window with one crash-looping unit
# (/bin/false, restart always): utime+stime of the supervisor's own
# process(es) from /proc/PID/stat before and after, and how many restarts
# happened in the window. aikore vs supervisord vs s6.
# Every peer runs the same run script: append a line to a counter file, then
# exec /bin/false; so restarts are counted the same way everywhere (aikore's
# API restart count is shown as a cross-check).
# Policies, as configured (and why the restart counts differ):
#   aikore:      Restart=always RestartSec=100ms StartLimitBurst=0; aikore
#                doubles RestartSec after each failed run, capped at 60 s.
#   supervisord: autorestart=true startsecs=0 startretries=1000000: restarts
#                on its next main-loop pass.
#   s6:          s6-supervise waits 1 s before restarting a run script that
#                died less than 1 s after starting (not configurable in 2.11).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

WINDOW="${WINDOW:-30}"   # seconds measured per supervisor
WARMUP="${WARMUP:-1}"    # seconds after start before the window opens

bench_init crashloop
need supervisord s6-svscan curl

RUN="$BENCH_TMP/crash.sh"
cat > "$RUN" <<'EOS'
#!/bin/sh
echo x >> "$1"
exec /bin/false
EOS
chmod +x "$RUN"

declare -A CPU RESTARTS EXTRA

# cpu_of PID...: summed utime+stime in seconds.
cpu_of() { local s=0 p; for p in "$@"; do s=$(python3 -c "print($s + $(python3 "$PROCPY" cputicks "$p"))"); done; echo "$s"; }
lines() { [[ -f $1 ]] && wc -l < "$1" || echo 0; }

# window NAME COUNTER PID...: measure CPU and restarts over WINDOW seconds.
window() {
    local name=$1 counter=$2; shift 2
    sleep "$WARMUP"
    local c0 r0 c1 r1
    c0=$(cpu_of "$@"); r0=$(lines "$counter")
    sleep "$WINDOW"
    c1=$(cpu_of "$@"); r1=$(lines "$counter")
    CPU[$name]=$(python3 -c "print(f'{$c1 - $c0:.2f}')")
    RESTARTS[$name]=$(( r1 - r0 ))
    log "$name: cpu ${CPU[$name]} s, ${RESTARTS[$name]} starts in ${WINDOW}s"
}

bench_aikore() {
    local units="$BENCH_TMP/aikore-units" port counter="$BENCH_TMP/count.aikore"
    mkdir -p "$units"
    write_unit "$units" crash <<EOU
[Service]
ExecStart=/bin/sh $RUN $counter
Restart=always
RestartSec=100ms
StartLimitBurst=0
EOU
    port=$(free_port)
    start_aikore "$BENCH_TMP/aikore-data" "$units" "$port"
    window aikore "$counter" "$AIKORE_PID"
    EXTRA[aikore]="API: $(curl -fsS "http://127.0.0.1:$port/api/v1/units/crash" | python3 -c '
import json, sys; u = json.load(sys.stdin); print("restarts=%s status=%s" % (u["restarts"], u["status"]))')"
    stop_tracked "$AIKORE_PID"
}

bench_supervisord() {
    local dir="$BENCH_TMP/supd" counter="$BENCH_TMP/count.supd"
    mkdir -p "$dir"
    {
        supervisord_conf "$dir"
        printf '\n[program:crash]\ncommand=/bin/sh %s %s\nautorestart=true\nstartsecs=0\nstartretries=1000000\n' "$RUN" "$counter"
    } > "$dir/supervisord.conf"
    start_supervisord "$dir/supervisord.conf"
    window supervisord "$counter" "$SUPD_PID"
    stop_tracked "$SUPD_PID"
}

bench_s6() {
    local scan="$BENCH_TMP/s6scan" counter="$BENCH_TMP/count.s6"
    mkdir -p "$scan/crash"
    printf '#!/bin/sh\nexec /bin/sh %s %s\n' "$RUN" "$counter" > "$scan/crash/run"
    chmod +x "$scan/crash/run"
    start_s6 "$scan"
    wait_for 10 test -n "$(python3 "$PROCPY" children "$S6_PID" s6-supervise)" || die "s6-supervise did not start"
    local sup; sup=$(python3 "$PROCPY" children "$S6_PID" s6-supervise)
    # s6-svscan + the one s6-supervise: both are the supervisor here.
    window s6 "$counter" "$S6_PID" $sup
    stop_tracked "$S6_PID"
}

bench_aikore
bench_supervisord
bench_s6

echo
echo "== crashloop-cpu: one crash-looping unit, supervisor CPU over ${WINDOW}s (ratio = peer / aikore) =="
printf '%-12s %10s %9s %13s %10s %12s\n' supervisor "CPU s" "restarts" "CPU ms/start" "CPU x" "restarts x"
for k in aikore supervisord s6; do
    per=$(python3 -c "r=${RESTARTS[$k]}; print(f'{${CPU[$k]}*1000/r:.2f}' if r else 'n/a')")
    printf '%-12s %10s %9s %13s %10s %12s\n' "$k" "${CPU[$k]}" "${RESTARTS[$k]}" "$per" \
        "$(ratio "${CPU[$k]}" "${CPU[aikore]}")" "$(ratio "${RESTARTS[$k]}" "${RESTARTS[aikore]}")"
done
echo "(CPU comes in clock ticks of 10 ms: 0.00 means under 10 ms in the window, and ratios against it read n/a)"
echo "aikore ${EXTRA[aikore]} (whole run, including the ${WARMUP}s warm-up)"
echo "(aikore backs off: RestartSec doubles per failed run, capped at 60 s; supervisord restarts at once;"
echo " s6-supervise waits 1 s after a run that lived < 1 s. CPU s for s6 = s6-svscan + s6-supervise.)"
