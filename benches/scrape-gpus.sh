#!/usr/bin/env bash
# /metrics scrape cost with GPUs: one daemon, 100 instances (each a sleeping
# process; pinned round-robin to 8 GPUs), scraped first with a fake GPU file
# that lists no GPU, then with 8 fake H200s (AIKORE_GPU_FAKE; the fixture of
# src/gpu/fixtures) whose process lists hold every instance's pid, so each
# scrape reads 8 GPUs, matches 100 GPU processes to units and renders the
# GPU, health, placement and per-unit VRAM series. Prints p50/p99 and size.
#
# Usage: benches/scrape-gpus.sh [SCRAPES]   (default 200)
#   AIKORE / AIKORE_BIN: the binary (default: this checkout's newest build)
# Needs curl and python3. Bounded by BENCH_TIMEOUT seconds (default 300).
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"

SCRAPES=${1:-200}
INSTANCES=100
GPUS=8
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
if [[ -z "${BENCH_BOUNDED:-}" ]]; then
    BENCH_BOUNDED=1 exec timeout --signal=TERM --kill-after=20 "$BENCH_TIMEOUT" "$0" "$@"
fi
need curl python3
bench_init scrape-gpus

data=$BENCH_TMP/data
units=$BENCH_TMP/units
fake=$BENCH_TMP/gpus.json
mkdir -p "$data/blueprints" "$units"
echo '{"gpus": []}' > "$fake"
# A custom blueprint: one sleeping process per instance (no port: each stays
# `starting`, which is a running unit for the scrape, at no CPU cost).
cat > "$data/blueprints/sleeper.sh" <<'SH'
#!/usr/bin/env bash
### AIKORE-METADATA-START ###
# aikore.name = Sleeper
# aikore.description = benchmark: one idle process
# aikore.venv_type = none
### AIKORE-METADATA-END ###
exec sleep 100000
SH

port=$(free_port)
AIKORE_GPU_FAKE=$fake AIKORE_PORT_RANGE=30000-30199 start_aikore "$data" "$units" "$port"
api=http://127.0.0.1:$port
log "creating $INSTANCES instances"
for i in $(seq 0 $((INSTANCES - 1))); do
    curl -fs -o /dev/null -X POST -H 'Content-Type: application/json' \
        -d "{\"name\":\"inst$i\",\"blueprint\":\"sleeper\",\"gpus\":\"$((i % GPUS))\",\"start\":true}" \
        "$api/api/v1/instances" || die "creating inst$i failed"
done
running() { [[ $(curl -fs "$api/api/v1/instances" | grep -o '"pid":[0-9]*' | wc -l) -ge $INSTANCES ]]; }
wait_for 120 running || die "the instances did not all start"

# Prints "p50 p99" ms over $SCRAPES scrapes on one keep-alive connection, after 5 warm-ups.
measure() {
    local url=$api/metrics args=()
    for _ in 1 2 3 4 5; do curl -fs -o /dev/null "$url"; done
    for _ in $(seq "$SCRAPES"); do args+=(-o /dev/null "$url"); done
    curl -fs -w '%{time_total}\n' "${args[@]}" | sort -n | awk '
        { t[NR] = $1 * 1000 }
        END { printf "%.2f %.2f\n", t[int(NR * 0.50 + 0.5)], t[int(NR * 0.99 + 0.5)] }'
}
row() { printf '%-52s %9s %9s %9s\n' "$@"; }

echo "binary: $AIKORE  scrapes: $SCRAPES  cpus: $(nproc)"
row "target" "p50 ms" "p99 ms" "bytes"
read -r p50 p99 < <(measure)
row "$INSTANCES instances, no GPU" "$p50" "$p99" "$(curl -fs "$api/metrics" | wc -c)"

# 8 H200s; each instance's pid holds 1-4 GiB on its GPU.
curl -fs "$api/api/v1/instances" | python3 -c '
import json, sys
fixture, out, gpus = sys.argv[1], sys.argv[2], int(sys.argv[3])
machine = json.load(open(fixture))
for inst in json.load(sys.stdin):
    i = int(inst["name"][4:])
    g = machine["gpus"][i % gpus]
    g["processes"].append({"pid": inst["pid"], "used_bytes": (1 + i % 4) << 30})
json.dump(machine, open(out + ".tmp", "w"))
' "$REPO_DIR/src/gpu/fixtures/h200x8-driver580.json" "$fake" "$GPUS"
mv "$fake.tmp" "$fake"
attributed() { curl -fs "$api/metrics" | grep -c '^aikore_unit_gpu_memory_bytes{' | { read -r n; [[ $n -ge $INSTANCES ]]; }; }
wait_for 20 attributed || die "VRAM was not attributed to every instance"
read -r p50 p99 < <(measure)
row "$INSTANCES instances, $GPUS fake GPUs, $INSTANCES GPU processes" "$p50" "$p99" "$(curl -fs "$api/metrics" | wc -c)"
