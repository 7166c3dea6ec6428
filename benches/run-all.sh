#!/usr/bin/env bash
# Runs every AiKore benchmark: installs the peers if missing (apt: tini, s6,
# supervisor, wrk, nginx; nothing else from the network), builds aikore in release mode,
# then runs each script in turn. Whole suite: about 7 minutes on 2 cores.
# Usage: benches/run-all.sh [script-name...]   (default: the six below)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=$PWD/target}"
export CARGO_TARGET_DIR

install_peers() {
    local -a missing=()
    command -v tini >/dev/null || missing+=(tini)
    command -v s6-svscan >/dev/null || missing+=(s6)
    command -v supervisord >/dev/null || missing+=(supervisor)
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
    fi
}

install_peers
echo "building aikore (release) into $CARGO_TARGET_DIR"
cargo build --release --quiet

scripts=("$@")
((${#scripts[@]})) || scripts=(idle-rss reap-orphans log-throughput crashloop-cpu stop-drain proxy)
failed=()
for s in "${scripts[@]}"; do
    echo
    echo "################ $s ################"
    # Each script is bounded by its own waits; this is a last-resort guard.
    if ! timeout 300 "benches/${s%.sh}.sh"; then failed+=("$s"); fi
done
echo
if ((${#failed[@]})); then echo "FAILED: ${failed[*]}"; exit 1; fi
echo "all benchmarks ran"
