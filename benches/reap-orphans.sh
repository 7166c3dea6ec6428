#!/usr/bin/env bash
# Orphans reaped per second as PID 1 of a PID namespace:
# aikore (the producer is one of its units) vs tini (the producer is its child).
# orphan-producer.c forks children that each fork grandchildren and exit, so
# the grandchildren land on PID 1; it times from its first fork until the
# namespace's /proc is back to its starting size (every orphan reaped), and
# counts Z-state processes. We then check for zombies again from outside,
# through nsenter, before stopping the namespace.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ORPHANS="${ORPHANS:-10000}"  # orphans per run
REPS="${REPS:-3}"            # runs per (PID 1, shape); the median is reported
# Shapes: CHILDREN:GRANDCHILDREN[:hold]. 10000:1 = one orphan at a time (the
# brief); 100:100 = orphans in bursts of 100. In both, forking is the
# bottleneck, so orphans/s mostly says "PID 1 keeps up". :hold = all orphans
# alive first, then released at once: the time is PID 1 draining 10,000 exits.
SHAPES="${SHAPES:-$ORPHANS:1 $((ORPHANS / 100)):100 $ORPHANS:1:hold}"

bench_init reap
need tini unshare nsenter gcc
PRODUCER="$BENCH_TMP/orphan-producer"
gcc -O2 -Wall -o "$PRODUCER" "$BENCH_DIR/orphan-producer.c"

# zombies_in_ns HOSTPID: Z-state processes in the PID namespace of HOSTPID.
zombies_in_ns() {
    nsenter --target "$1" --pid --mount -- python3 -c '
import os
n = 0
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        s = open(f"/proc/{p}/stat").read()
    except OSError:
        continue
    n += s[s.rindex(")") + 2] == "Z"
print(n)'
}

# ns_init UNSHARE_PID: host pid of the namespace's PID 1 (unshare's child).
ns_init() { pgrep -P "$1" | head -1; }

# run_once KIND CHILDREN PER HOLD RUN_DIR: one run; prints the producer's result
# line plus " zombies_after=N" from the outside check.
run_once() {
    local kind=$1 children=$2 per=$3 hold=$4 dir=$5 result="$5/result"
    [[ ! -e $dir ]] || die "$dir exists: a stale result would be read"
    mkdir -p "$dir"
    case $kind in
    aikore)
        mkdir -p "$dir/units"
        write_unit "$dir/units" producer <<EOU
[Service]
ExecStart=$PRODUCER $children $per $result $hold
Restart=no
EOU
        AIKORE_SHUTDOWN_TIMEOUT=5s unshare --pid --fork --mount-proc \
            "$AIKORE" serve --data-dir "$dir/data" --units-dir "$dir/units" \
            --listen "127.0.0.1:$(free_port)" 2>"$dir/aikore.stderr" &
        ;;
    tini)
        unshare --pid --fork --mount-proc tini -- "$PRODUCER" "$children" "$per" "$result" $hold \
            >"$dir/tini.out" 2>&1 &
        ;;
    esac
    local ush=$!
    track "$ush"
    wait_for 90 test -s "$result" || die "$kind: no result from the producer (see $dir)"
    local init; init=$(ns_init "$ush")
    # Let stragglers settle, then look from outside too.
    sleep 0.5
    local z
    if ! kill -0 "$init" 2>/dev/null || ! z=$(zombies_in_ns "$init"); then
        # PID 1 died before we could look: keep its stderr for a post-mortem.
        z="?"
        mkdir -p /tmp/aikore-bench-failures
        cp -r "$dir" "/tmp/aikore-bench-failures/$(basename "$dir")-$(date +%s)" 2>/dev/null || true
        log "WARNING: $kind PID 1 (host pid ${init:-none}) was gone 0.5 s after the result; kept $dir in /tmp/aikore-bench-failures"
    fi
    # SIGTERM PID 1: aikore stops its units; tini forwards it to the producer.
    kill -TERM "$init" 2>/dev/null || true
    wait_for 15 bash -c "! kill -0 $ush 2>/dev/null" || true
    stop_tracked "$ush"
    echo "$(cat "$result") zombies_after=$z"
}

# field LINE KEY
field() { sed -n "s/.*\b$2=\([^ ]*\).*/\1/p" <<<"$1"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A RATE ZOMB PROD TOT
for shape in $SHAPES; do
    IFS=: read -r children per hold <<<"$shape"
    for kind in aikore tini; do
        totals=(); prods=(); zs=0
        for r in $(seq 1 "$REPS"); do
            line=$(run_once "$kind" "$children" "$per" "$hold" "$BENCH_TMP/$kind-$children-$per${hold:+-hold}-$r")
            log "$kind ${children}x$per${hold:+-hold} run $r: $line"
            [[ $(field "$line" left) == 0 ]] || log "WARNING: $kind left $(field "$line" left) pids unreaped after 60 s"
            totals+=("$(field "$line" total_s)"); prods+=("$(field "$line" produce_s)")
            za=$(field "$line" zombies_after)
            if [[ $za == "?" || $zs == "?" ]]; then zs="?"; else zs=$(( zs + $(field "$line" zombies) + za )); fi
            orphans=$(field "$line" orphans)
        done
        t=$(median "${totals[@]}")
        RATE[$kind,$shape]=$(python3 -c "print(f'{$orphans/$t:.0f}')")
        PROD[$kind,$shape]=$(median "${prods[@]}")
        TOT[$kind,$shape]=$t
        ZOMB[$kind,$shape]=$zs
    done
done

echo
echo "== reap-orphans: orphans reaped per second as PID 1 (median of $REPS runs; ratio = aikore / tini) =="
printf '%-14s %-8s %9s %11s %11s %12s %10s\n' shape pid1 orphans produce_s total_s "orphans/s" zombies
for shape in $SHAPES; do
    IFS=: read -r children per hold <<<"$shape"
    label="${children}x$per${hold:+-hold}"
    for kind in aikore tini; do
        printf '%-14s %-8s %9s %11s %11s %12s %10s\n' "$label" "$kind" "$((children * per))" \
            "${PROD[$kind,$shape]}" "${TOT[$kind,$shape]}" "${RATE[$kind,$shape]}" "${ZOMB[$kind,$shape]}"
    done
    echo "  $label: aikore/tini orphans/s = $(ratio "${RATE[aikore,$shape]}" "${RATE[tini,$shape]}")"
done
echo "(produce_s: the producer's own forking time, a floor for total_s; for -hold rows total_s"
echo " runs from the release of 10,000 live orphans to the last reaped; zombies: Z-state"
echo " processes seen at the end by the producer plus by an nsenter check 0.5 s later, summed over runs: 0 = none left)"
