#!/usr/bin/env bash
# Supervisor's own memory with N idle units (sleep infinity), once all are up
# and settled: aikore vs runit (runsvdir + a runsv per service) vs supervisord
# vs s6-svscan (+ its s6-supervise helpers); then aikore alone at each count
# of AIKORE_NS (default 0 100 1000), for the cost per unit.
# RSS from /proc/PID/status VmRSS; PSS from /proc/PID/smaps_rollup (shared
# pages split between sharers: the fairer figure for s6's many small processes).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N="${N:-100}"          # idle units per supervisor
SETTLE="${SETTLE:-5}"  # seconds to let each settle after all N are up

bench_init idle-rss
AIKORE_NS="${AIKORE_NS:-0 100 1000}"
need supervisord s6-svscan runsvdir curl

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
    local N=${1:-$N} name=${2:-aikore}
    local units="$BENCH_TMP/aikore-units-$N" port i
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
    start_aikore "$BENCH_TMP/aikore-data-$N" "$units" "$port"
    wait_for 120 all_up "$AIKORE_PID" || die "aikore: not all $N units up"
    local started
    started=$(curl -fsS "http://127.0.0.1:$port/api/v1/units" | python3 -c 'import json,sys; print(sum(u["status"]=="started" for u in json.load(sys.stdin)))')
    log "aikore: $N sleeps up, API says $started started; settling ${SETTLE}s"
    sleep "$SETTLE"
    measure "$name" "$AIKORE_PID"
    stop_tracked "$AIKORE_PID"
}

bench_runit() {
    local dir="$BENCH_TMP/runit" i
    mkdir -p "$dir"
    for i in $(seq 1 "$N"); do
        mkdir -p "$dir/idle$i"
        printf '#!/bin/sh\nexec /bin/sleep infinity\n' > "$dir/idle$i/run"
        chmod +x "$dir/idle$i/run"
    done
    runsvdir -P "$dir" >"$BENCH_TMP/runsvdir.out" 2>&1 &
    RUNIT_PID=$!
    track "$RUNIT_PID"
    wait_for 60 all_up "$RUNIT_PID" || die "runit: not all $N services up"
    log "runit: $N sleeps up; settling ${SETTLE}s"
    sleep "$SETTLE"
    # shellcheck disable=SC2046
    measure "runsvdir+runsv" "$RUNIT_PID" $(python3 "$PROCPY" children "$RUNIT_PID" runsv)
    stop_tracked "$RUNIT_PID"
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
bench_runit
bench_supervisord
bench_s6
for n in $AIKORE_NS; do bench_aikore "$n" "aikore, $n units"; done

echo
echo "== idle-rss: supervisor memory with $N idle units (KiB; ratio = peer / aikore) =="
printf '%-22s %10s %8s %10s %8s\n' supervisor "RSS KiB" "RSS x" "PSS KiB" "PSS x"
for k in aikore "runsvdir+runsv" supervisord s6-svscan "s6-svscan+supervise"; do
    pr=$(ratio "${RSS[$k]}" "${RSS[aikore]}")
    if [[ ${PSS[$k]} == na || ${PSS[aikore]} == na ]]; then pp=n/a; else pp=$(ratio "${PSS[$k]}" "${PSS[aikore]}"); fi
    printf '%-22s %10s %8s %10s %8s\n' "$k" "${RSS[$k]}" "$pr" "${PSS[$k]}" "$pp"
done
echo "(aikore and supervisord are one process each; s6 is s6-svscan plus one s6-supervise per service)"
echo
echo "== idle-rss: aikore alone by unit count (PSS KiB) =="
for n in $AIKORE_NS; do
    k="aikore, $n units"
    printf '%-22s %10s\n' "$k" "${PSS[$k]}"
done
first=${AIKORE_NS%% *}; last=${AIKORE_NS##* }
if [[ $first != "$last" && ${PSS["aikore, $first units"]} != na ]]; then
    echo "per unit: $(python3 -c "print(f'{(${PSS["aikore, $last units"]} - ${PSS["aikore, $first units"]}) / ($last - $first):.1f}')") KiB PSS"
fi
result "memory, $N idle services (PSS)" KiB "${PSS[aikore]}" "runit (1+$N procs)" "${PSS["runsvdir+runsv"]}" \
    "(goal <= 1; s6 ${PSS["s6-svscan+supervise"]}, supervisord ${PSS[supervisord]})"
