#!/usr/bin/env bash
# Supervisor's own memory with N idle units (sleep infinity), once all are up
# and settled: aikore vs supervisord vs s6-svscan (+ its s6-supervise helpers).
# RSS from /proc/PID/status VmRSS; PSS from /proc/PID/smaps_rollup (shared
# pages split between sharers: the fairer figure for s6's many small processes).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N="${N:-100}"          # idle units per supervisor
SETTLE="${SETTLE:-5}"  # seconds to let each settle after all N are up

bench_init idle-rss
need supervisord s6-svscan curl

# all_up PID: true once PID has N `sleep` descendants.
all_up() { [[ "$(python3 "$PROCPY" count-desc "$1" sleep)" -ge "$N" ]]; }

# settle_and_measure NAME PID...: wait, then record "NAME rss pss".
declare -A RSS PSS
measure() {
    local name=$1; shift
    local m; m=$(python3 "$PROCPY" mem "$@")
    RSS[$name]=${m% *}; PSS[$name]=${m#* }
    log "$name: rss=${RSS[$name]} KiB pss=${PSS[$name]} KiB over $# process(es)"
}

bench_aikore() {
    local units="$BENCH_TMP/aikore-units" port i
    mkdir -p "$units"
    for i in $(seq 1 "$N"); do
        write_unit "$units" "idle$i" <<EOU
[Service]
ExecStart=/bin/sleep infinity
Restart=always
RestartSec=100ms
EOU
    done
    port=$(free_port)
    start_aikore "$BENCH_TMP/aikore-data" "$units" "$port"
    wait_for 60 all_up "$AIKORE_PID" || die "aikore: not all $N units up"
    local started
    started=$(curl -fsS "http://127.0.0.1:$port/api/v1/units" | python3 -c 'import json,sys; print(sum(u["status"]=="started" for u in json.load(sys.stdin)))')
    log "aikore: $N sleeps up, API says $started started; settling ${SETTLE}s"
    sleep "$SETTLE"
    measure aikore "$AIKORE_PID"
    stop_tracked "$AIKORE_PID"
}

bench_supervisord() {
    local dir="$BENCH_TMP/supd" i
    mkdir -p "$dir"
    {
        supervisord_conf "$dir"
        for i in $(seq 1 "$N"); do
            # Logs to files (supervisord's default is AUTO files too): same
            # capture duty as aikore's per-unit log.
            printf '\n[program:idle%d]\ncommand=/bin/sleep infinity\nautorestart=true\nstartsecs=0\n' "$i"
        done
    } > "$dir/supervisord.conf"
    start_supervisord "$dir/supervisord.conf"
    wait_for 60 all_up "$SUPD_PID" || die "supervisord: not all $N programs up"
    log "supervisord: $N sleeps up; settling ${SETTLE}s"
    sleep "$SETTLE"
    measure supervisord "$SUPD_PID"
    stop_tracked "$SUPD_PID"
}

bench_s6() {
    local scan="$BENCH_TMP/s6scan" i
    mkdir -p "$scan"
    for i in $(seq 1 "$N"); do
        mkdir -p "$scan/idle$i"
        printf '#!/bin/sh\nexec /bin/sleep infinity\n' > "$scan/idle$i/run"
        chmod +x "$scan/idle$i/run"
    done
    start_s6 "$scan"
    wait_for 60 all_up "$S6_PID" || die "s6: not all $N services up"
    log "s6: $N sleeps up; settling ${SETTLE}s"
    sleep "$SETTLE"
    measure s6-svscan "$S6_PID"
    # shellcheck disable=SC2046
    measure "s6-svscan+supervise" "$S6_PID" $(python3 "$PROCPY" children "$S6_PID" s6-supervise)
    stop_tracked "$S6_PID"
}

bench_aikore
bench_supervisord
bench_s6

echo
echo "== idle-rss: supervisor memory with $N idle units (KiB; ratio = peer / aikore) =="
printf '%-22s %10s %8s %10s %8s\n' supervisor "RSS KiB" "RSS x" "PSS KiB" "PSS x"
for k in aikore supervisord s6-svscan "s6-svscan+supervise"; do
    pr=$(ratio "${RSS[$k]}" "${RSS[aikore]}")
    if [[ ${PSS[$k]} == na || ${PSS[aikore]} == na ]]; then pp=n/a; else pp=$(ratio "${PSS[$k]}" "${PSS[aikore]}"); fi
    printf '%-22s %10s %8s %10s %8s\n' "$k" "${RSS[$k]}" "$pr" "${PSS[$k]}" "$pp"
done
echo "(aikore and supervisord are one process each; s6 is s6-svscan plus one s6-supervise per service)"
