#!/usr/bin/env bash
# Image size: AiKore's two image variants against the peer, bookworm-slim +
# Debian's NGINX, all built in this run with podman from the same base image
# (tests/container/base-image.sh: debootstrapped from the apt mirror, made like
# the official bookworm-slim; no registry, no Docker engine):
#   peer   tests/container/baseline.Dockerfile (base + nginx)
#   slim   Dockerfile, PREBUILT=1 PERSISTENT=0 (no persistent mode)
#   full   Dockerfile, PREBUILT=1 (persistent mode: Xvnc, noVNC, Firefox ESR)
# Prints each size and its ratio to the peer (goal: slim <= 2.5x), each
# image's layers with what they cost (`podman history`), and the biggest
# Debian packages each variant adds (bytes on disk, from dpkg's file lists),
# so a reader sees where the megabytes are.
#
#   benches/image.sh                       # as root; about 4 min on 2 busy cores
#   IMAGE_BENCH_STORE=/var/tmp/aikore-image benches/image.sh   # keep the store:
#       the base image and the layer cache are reused by the next run
#
# Environment: AIKORE_BINARY (default: this checkout's target/release/aikore),
# DEBIAN_MIRROR (default: the one apt uses), IMAGE_BENCH_STORE (above),
# REBASE=1 (debootstrap again even when the kept store has a base image).
# Network: the Debian mirror only (debootstrap, apt inside the builds).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=benches/lib.sh
source benches/lib.sh
# shellcheck source=tests/container/base-image.sh
source tests/container/base-image.sh

[[ $(id -u) -eq 0 ]] || die "run as root (rootful podman, debootstrap)"
need_apt=()
for pair in podman:podman runc:runc debootstrap:debootstrap fuse-overlayfs:fuse-overlayfs; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [[ -x /usr/sbin/${pair%%:*} ]] || need_apt+=("${pair##*:}")
done
if ((${#need_apt[@]})); then
    log "apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

BIN=$(realpath "${AIKORE_BINARY:-${CARGO_TARGET_DIR:-target}/release/aikore}")
[[ -x $BIN ]] || die "no aikore binary at $BIN (cargo build --release --locked, or set AIKORE_BINARY)"
[[ -d web/node_modules/@xterm/xterm ]] || die "web/node_modules/@xterm missing (npm ci --prefix web)"

TMP=$(mktemp -d /tmp/aikore-bench-image.XXXXXX)
STORE=${IMAGE_BENCH_STORE:-$TMP/storage}
KEEP_STORE=${IMAGE_BENCH_STORE:+1}
RUNC=$(command -v runc || echo /usr/sbin/runc)
PM=(podman --root "$STORE/root" --runroot "$STORE/run" --runtime "$RUNC")
pm() { "${PM[@]}" "$@"; }
# podman's default RLIMIT_NOFILE/NPROC are above what hosts without
# CAP_SYS_RESOURCE allow (runc: "error setting rlimits"), as in the container test.
hard_nofile=$(ulimit -Hn); [[ $hard_nofile == unlimited ]] && hard_nofile=65536
NOFILE=$((hard_nofile < 65536 ? hard_nofile : 65536))
LIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit nproc=32768:32768)
BASE=localhost/aikore-bench-base:bookworm
PEER=localhost/aikore-bench-peer:latest
SLIM=localhost/aikore-bench:slim
FULL=localhost/aikore-bench:full
STAGED=""
CTR=""
cleanup() {
    local rc=$?
    set +e
    [[ -n $CTR ]] && pm rm -f -t 0 "$CTR" >/dev/null 2>&1
    [[ -n $STAGED ]] && rm -f "$STAGED"
    if [[ -z $KEEP_STORE ]]; then
        pm rmi -af >/dev/null 2>&1
        awk -v d="$TMP/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l 2>/dev/null
    else
        # Only the layer cache and the base stay: dangling intermediates go.
        pm image prune -f >/dev/null 2>&1
    fi
    rm -rf "$TMP"
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the base image ---------------------------------------------------------
if [[ ${REBASE:-0} == 1 ]] || ! pm image exists "$BASE"; then
    MIRROR=${DEBIAN_MIRROR:-$(mirror_from_apt)}
    log "debootstrap --variant=minbase bookworm from $MIRROR"
    t=$(date +%s)
    base_image "$TMP/rootfs" "$MIRROR" "$TMP/debootstrap.log" "$BASE" "${PM[@]}" || die "base image failed"
    log "base image ready after $(($(date +%s) - t)) s"
else
    log "reusing $BASE from $STORE"
fi

# ---- the binary, inside the build context -------------------------------------
# .dockerignore lets in target/release/aikore and target/container/aikore only:
# a copy goes to the latter without its symbol table (2.7 of 15 MiB; the
# release profile already drops debug info), as tests/container/run.sh does.
mkdir -p target/container
STAGED=$REPO/target/container/aikore
if command -v strip >/dev/null; then strip -o "$STAGED" "$BIN"; else cp "$BIN" "$STAGED"; fi
CONTEXT_BINARY=target/container/aikore

# ---- builds -------------------------------------------------------------------
build() { # build TAG CONTEXT DOCKERFILE ARGS...
    local tag=$1 ctx=$2 file=$3 log t
    shift 3
    log="$TMP/build-${tag##*:}.log"
    t=$(date +%s)
    log "building $tag"
    # --format docker: OCI configs have no HEALTHCHECK (as tests/container/run.sh).
    timeout 1200 "${PM[@]}" build --pull=never --network=host --format docker --layers \
        --build-arg "DEBIAN_IMAGE=$BASE" "$@" -t "$tag" -f "$file" "$ctx" >"$log" 2>&1 \
        || { tail -30 "$log" >&2; die "podman build of $tag failed"; }
    log "$tag built in $(($(date +%s) - t)) s"
}
build "$PEER" tests/container tests/container/baseline.Dockerfile
# The full image first: the slim one is its first layers (PERSISTENT is read
# by the last RUN only), so its build is all cache hits.
build "$FULL" . Dockerfile --build-arg PREBUILT=1 --build-arg "AIKORE_BINARY=$CONTEXT_BINARY"
build "$SLIM" . Dockerfile --build-arg PREBUILT=1 --build-arg "AIKORE_BINARY=$CONTEXT_BINARY" --build-arg PERSISTENT=0

# ---- what each costs ---------------------------------------------------------------
size() { pm image inspect --format '{{.Size}}' "$1"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

layers() { # layers IMAGE: every layer that has bytes, oldest first
    echo
    echo "layers of $1 (MiB, oldest first; metadata-only steps left out):"
    pm history --no-trunc --format json "$1" | python3 -c '
import json, re, sys
for layer in reversed(json.load(sys.stdin)):
    if layer["size"] <= 0:
        continue
    cmd = re.sub(r"\s+", " ", layer["CreatedBy"])
    cmd = re.sub(r"^/bin/sh -c #\(nop\) ", "", cmd)
    cmd = re.sub(r"^(\|\d+ (\S+=\S* )*)?/bin/sh -c ", "RUN ", cmd)
    if len(cmd) > 110:
        cmd = cmd[:107] + "..."
    print("  %8.1f  %s" % (layer["size"] / 1048576, cmd))'
}

# packages IMAGE: "bytes<TAB>package" for every installed package, bytes being
# what its files take on disk in the image (dpkg's lists; excluded docs are
# not counted, unlike Installed-Size).
packages() {
    pm run --rm --network=none "${LIMITS[@]}" --no-healthcheck --entrypoint /usr/bin/python3 "$1" -c '
import glob, os, stat
seen = set()  # hard links (one file under many names) count once
for lst in sorted(glob.glob("/var/lib/dpkg/info/*.list")):
    total = 0
    for path in open(lst, errors="replace").read().splitlines():
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_size
    name = os.path.basename(lst)[:-5].split(":")[0]
    print("%d\t%s" % (total, name))'
}
peer_packages() {
    # shellcheck disable=SC2016 # a dpkg-query format, not a shell expansion
    pm run --rm --network=none "${LIMITS[@]}" --entrypoint /usr/bin/dpkg-query "$PEER" -W -f '${Package}\n'
}
# biggest WHAT OURS THEIRS N: the N biggest packages in file OURS not named in THEIRS.
biggest() {
    echo
    echo "biggest packages $1 (MiB on disk):"
    awk -F'\t' 'NR == FNR { seen[$1] = 1; next } !($2 in seen) { print }' "$3" "$2" | sort -rn | head -"$4" |
        awk -F'\t' '{ printf "  %8.1f  %s\n", $1 / 1048576, $2 }'
    awk -F'\t' 'NR == FNR { seen[$1] = 1; next } !($2 in seen) { n++; s += $1 } END { printf "  %8.1f  all %d of them\n", s / 1048576, n }' "$3" "$2"
}

S_BASE=$(size "$BASE")
S_PEER=$(size "$PEER")
S_SLIM=$(size "$SLIM")
S_FULL=$(size "$FULL")

layers "$SLIM"
layers "$FULL"
peer_packages >"$TMP/peer.pkgs"
packages "$SLIM" >"$TMP/slim.pkgs"
packages "$FULL" >"$TMP/full.pkgs"
cut -f2 "$TMP/slim.pkgs" >"$TMP/slim.names"
biggest "the slim image adds to the peer" "$TMP/slim.pkgs" "$TMP/peer.pkgs" 15
biggest "persistent mode adds (full, not in slim)" "$TMP/full.pkgs" "$TMP/slim.names" 15

echo
printf '%-44s %10s %8s\n' image "MiB" "x peer"
printf '%-44s %10s %8s\n' "base (debootstrap minbase, slimmed)" "$(mib "$S_BASE")" "$(ratio "$S_BASE" "$S_PEER")"
printf '%-44s %10s %8s\n' "peer: bookworm-slim + NGINX" "$(mib "$S_PEER")" 1.00
printf '%-44s %10s %8s\n' "aikore slim (PERSISTENT=0)" "$(mib "$S_SLIM")" "$(ratio "$S_SLIM" "$S_PEER")"
printf '%-44s %10s %8s\n' "aikore full (PERSISTENT=1, the default)" "$(mib "$S_FULL")" "$(ratio "$S_FULL" "$S_PEER")"
printf '%-44s %10s\n' "  of which the aikore binary" "$(mib "$(stat -c %s "$STAGED")")"
echo
result "image size, slim (no persistent mode)" MiB "$(mib "$S_SLIM")" "bookworm-slim+nginx" "$(mib "$S_PEER")" "goal <= 2.5"
result "image size, full (persistent mode)" MiB "$(mib "$S_FULL")" "bookworm-slim+nginx" "$(mib "$S_PEER")"
