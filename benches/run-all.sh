#!/usr/bin/env bash
# Runs every AiKore benchmark: installs the peers if missing (apt: tini, s6,
# runit, supervisor, prometheus-node-exporter, wrk, nginx, gcc; nothing else
# from the network), builds aikore in release mode, then runs each script in
# turn, and ends with one table: every figure beside its peer, measured in the
# same run, and the ratio. Whole suite: about 15 minutes on 2 cores, plus
# image.sh's builds. Not in CI
# (timings on a shared box are noise there; no functional test asserts one).
# image.sh (image sizes) builds with podman from a debootstrapped base: it
# needs the Debian mirror (debootstrap, apt inside the builds; no registry)
# and takes the longest (about 4 min from scratch on 2 busy cores).
# Usage: benches/run-all.sh [script-name...]   (default: the list below)
# Absolute figures move with the machine's load; read the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=$PWD/target}"
export CARGO_TARGET_DIR

install_peers() {
    local -a missing=()
    command -v tini >/dev/null || missing+=(tini)
    command -v s6-svscan >/dev/null || missing+=(s6)
    command -v supervisord >/dev/null || missing+=(supervisor)
    command -v runsvdir >/dev/null || missing+=(runit)
    command -v prometheus-node-exporter >/dev/null || command -v node_exporter >/dev/null \
        || missing+=(prometheus-node-exporter)
    command -v gcc >/dev/null || missing+=(gcc)
    command -v curl >/dev/null || missing+=(curl)
    command -v nsenter >/dev/null || missing+=(util-linux)
    # proxy.sh: the login gate against the same NGINX route without it.
    command -v wrk >/dev/null || missing+=(wrk)
    [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    if ((${#missing[@]})); then
        echo "installing: ${missing[*]}"
        # Debian's supervisor package may try to start its service; we don't
        # use it (policy-rc.d-less containers just skip that).
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        # Where an init ran the packaged node_exporter service, stop it: the
        # scrape benchmark starts its own on a free port.
        if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
            systemctl stop prometheus-node-exporter 2>/dev/null || true
        fi
    fi
}

install_peers
echo "building aikore (release) into $CARGO_TARGET_DIR"
cargo build --release --quiet

scripts=("$@")
((${#scripts[@]})) || scripts=(log-throughput proxy start-100 idle-rss scrape stop-drain reap-orphans crashloop-cpu image)
BENCH_RESULTS=$(mktemp /tmp/aikore-bench-results.XXXXXX)
export BENCH_RESULTS
failed=()
for s in "${scripts[@]}"; do
    echo
    echo "################ $s ################"
    # Each script is bounded by its own waits; this is a last-resort guard.
    limit=600
    [[ ${s%.sh} == image ]] && limit=1800 # debootstrap and three image builds
    if ! timeout "$limit" "benches/${s%.sh}.sh"; then failed+=("$s"); fi
done
echo
echo "################ summary (aikore / peer, same run) ################"
printf '%-44s %12s %-4s  %-20s %12s  %6s  %s\n' scenario aikore "" peer "peer value" ratio note
while IFS=$'\t' read -r scenario unit ours peer theirs r note; do
    printf '%-44s %12s %-4s  %-20s %12s  %6s  %s\n' "$scenario" "$ours" "$unit" "$peer" "$theirs" "$r" "$note"
done <"$BENCH_RESULTS"
rm -f "$BENCH_RESULTS"
echo "(throughput rows: higher ratio is better; time and memory rows: lower is better)"
if ((${#failed[@]})); then echo "FAILED: ${failed[*]}"; exit 1; fi
echo "all benchmarks ran"
