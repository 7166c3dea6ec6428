#!/usr/bin/env bash
# The container test: builds the real image from the repo's Dockerfile with
# podman (no Docker engine, no registry), runs it and checks what the image
# promises: aikore is PID 1, /healthz answers through NGINX, a unit started
# through the API runs, `stop` is a clean ordered shutdown, a restart brings
# units back with their data from /config, persistent mode's programs show an
# app's page on the virtual display (tests/container/vnc-probe.py). Then the
# slim variant (PERSISTENT=0): none of persistent mode, aikore is PID 1, the
# login page comes through NGINX. Prints image sizes and cold starts beside a
# plain bookworm-slim + NGINX image built the same way.
#
# Offline by design: the base image is debootstrapped from the Debian mirror
# apt already uses (once per run) and `podman import`ed; the Rust stage is
# skipped with PREBUILT=1 after a `cargo build --release --locked` here.
#
#   bash tests/container/run.sh          # as root, Debian 12
#
# Switches (environment):
#   INSTANCES_API=auto|1|0  how the "a unit runs" check starts something:
#       1    through POST /api/v1/instances (fails when the API is missing)
#       0    a unit file in /config/units, /api/v1/reload, /units/<n>/start
#       auto the API when it exists, else the unit file, saying so (default 1)
#   CHECK_PUID=0|1  checks PUID/PGID handling (default 1): /config belongs
#       to PUID/PGID and units without User= run as that user.
#   FROM_SOURCE=1   also build the image the default way (PREBUILT=0: cargo
#       inside the Rust stage), from a Rust image made of the host's toolchain
#       (tests/container/rust-builder.Dockerfile) and crates from the host's
#       cargo cache (offline); adds ~10 min on 2 cores
#   AIKORE_BINARY   a prebuilt aikore to use instead of running cargo
#   DEBIAN_MIRROR   debootstrap's mirror (default: the one apt uses)
#   KEEP=1          keep containers, images and the temp dir for debugging
# The whole run is bounded by TEST_TIMEOUT seconds (default 1500 = 25 min).
set -euo pipefail

TEST_TIMEOUT=${TEST_TIMEOUT:-1500}
if [ -z "${_AIKORE_CT_BOUNDED:-}" ]; then
  # timeout sends TERM at the limit; the EXIT trap below still cleans up.
  exec timeout -k 60 "$TEST_TIMEOUT" env _AIKORE_CT_BOUNDED=1 bash "$0" "$@"
fi

cd "$(dirname "$0")/../.."
REPO=$(pwd)
INSTANCES_API=${INSTANCES_API:-1}
# Every API and app request carries the container's API token (the API and
# the apps behind NGINX sit behind aikore's login).
TOKEN=ct-token-$$
CHECK_PUID=${CHECK_PUID:-1}
FROM_SOURCE=${FROM_SOURCE:-0}
KEEP=${KEEP:-0}

T0=$(date +%s%N)
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
say() { local ms; ms=$(ms_since "$T0"); printf '[%4d.%ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }

PASSED=0
FAILED=0
FAILURES=()
pass() { PASSED=$((PASSED + 1)); say "PASS $1"; }
fail() { FAILED=$((FAILED + 1)); FAILURES+=("$1"); say "FAIL $1${2:+: $2}"; }
# check NAME CMD...: pass when CMD succeeds.
check() { local name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }

die() { say "FATAL $*"; FAILED=$((FAILED + 1)); exit 1; }

# ---- cleanup ------------------------------------------------------------
ID="ct$$"
TMP=$(mktemp -d "/tmp/aikore-container-test.XXXXXX")
STORE=$TMP/storage
BASE_IMAGE="localhost/aikore-ct-base:$ID"
IMAGE="localhost/aikore-ct:$ID"
BASELINE_IMAGE="localhost/aikore-ct-baseline:$ID"
SLIM_IMAGE="localhost/aikore-ct-slim:$ID"
CONTAINERS=()
STAGED_BINARY=""
finish() {
  local rc=$?
  set +e
  if [ "$KEEP" = 1 ]; then
    say "KEEP=1: kept everything in $TMP; use: podman --root $STORE/root --runroot $STORE/run ..."
  else
    for c in "${CONTAINERS[@]}"; do pm rm -f -t 0 "$c" >/dev/null 2>&1; done
    pm rm -af -t 0 >/dev/null 2>&1
    pm rmi -af >/dev/null 2>&1
    # Whatever the store still has mounted (overlay layers) before rm -rf.
    awk -v d="$TMP/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l 2>/dev/null
    rm -rf "$TMP"
  fi
  [ -n "$STAGED_BINARY" ] && rm -f "$STAGED_BINARY"
  if [ ${#FAILURES[@]} -gt 0 ]; then
    echo "failed:"; printf '  - %s\n' "${FAILURES[@]}"
  fi
  say "total $(( $(ms_since "$T0") / 1000 ))s"
  [ "$rc" -ne 0 ] && [ "$FAILED" -eq 0 ] && FAILED=1
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ] && exit 0 || exit 1
}
trap finish EXIT
trap 'say "interrupted (time limit ${TEST_TIMEOUT}s?)"; exit 124' TERM INT

# ---- prerequisites --------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (rootful podman, debootstrap)"
need=()
for pair in podman:podman runc:runc debootstrap:debootstrap newuidmap:uidmap \
            slirp4netns:slirp4netns fuse-overlayfs:fuse-overlayfs \
            docker-compose:docker-compose curl:curl python3:python3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  say "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
RUNC=$(command -v runc || echo /usr/sbin/runc)
# A private podman store under $TMP: the run never touches (or is confused
# by) images and containers of the machine's own store, and cleanup is rm -rf.
PM=(podman --root "$STORE/root" --runroot "$STORE/run" --runtime "$RUNC")
pm() { "${PM[@]}" "$@"; }
# podman start/stop add and remove a systemd timer for HEALTHCHECK and, with
# no systemd (CI), log an error about it: drop just those lines.
no_systemd_noise() { grep -v 'unable to get systemd connection' >&2; }
pm_start() { pm start "$1" >/dev/null 2> >(no_systemd_noise); }
pm_stop() { pm stop -t 40 "$1" >/dev/null 2> >(no_systemd_noise); }
# podman's default RLIMIT_NOFILE/NPROC (1048576) are above what some hosts
# allow: without CAP_SYS_RESOURCE (CI's VMs: nofile hard limit 20000) runc
# fails "error setting rlimits". Ask for at most the hard limit we have;
# nproc above 32768 fails there too, whatever `ulimit -Hu` says.
hard_nofile=$(ulimit -Hn); [ "$hard_nofile" = unlimited ] && hard_nofile=65536
NOFILE=$(( hard_nofile < 65536 ? hard_nofile : 65536 ))
LIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit nproc=32768:32768)
say "$(podman --version), runc $("$RUNC" --version | head -1 | awk '{print $3}')"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- docker-compose.yml -----------------------------------------------------
t=$(date +%s%N)
check "docker-compose.yml validates (docker-compose config)" \
  docker-compose -f docker-compose.yml config -q
compose_json=$(docker-compose -f docker-compose.yml config 2>/dev/null | python3 -c 'import json,sys,yaml; print(json.dumps(yaml.safe_load(sys.stdin)))')
compose_has() { python3 -c "import json,sys; c=json.loads(sys.argv[1]); sys.exit(0 if ($1) else 1)" "$compose_json"; }
check "compose: aikore always, prometheus + grafana only in profile monitoring" compose_has \
  "{n: s.get('profiles', []) for n, s in c['services'].items()} == {'aikore': [], 'prometheus': ['monitoring'], 'grafana': ['monitoring']}"
check "compose: grafana mounts ./grafana/provisioning and ./grafana/dashboards" compose_has \
  "sorted(v.split(':')[1] for v in c['services']['grafana']['volumes'] if v.startswith('/')) == ['/etc/grafana/provisioning', '/var/lib/grafana/dashboards']"
check "compose: aikore reserves every NVIDIA GPU" compose_has \
  "c['services']['aikore']['deploy']['resources']['reservations']['devices'][0]=={'driver':'nvidia','count':'all','capabilities':['gpu']}"
check "compose: stop_grace_period 40s, /config volume, PUID/PGID/TZ" compose_has \
  "c['services']['aikore']['stop_grace_period']=='40s' and any((isinstance(v,str) and v.split(':')[1] == '/config') or (isinstance(v,dict) and v.get('target')=='/config') for v in c['services']['aikore']['volumes']) and all(k in c['services']['aikore']['environment'] for k in ('PUID','PGID','TZ','AIKORE_PASSWORD'))"
check "monitoring/prometheus.yml scrapes aikore:9000/metrics with the scrape token" python3 -c '
import sys, yaml
c = yaml.safe_load(open("monitoring/prometheus.yml"))
job = [j for j in c["scrape_configs"] if j["job_name"] == "aikore"][0]
auth = job.get("authorization", {})
sys.exit(0 if job.get("metrics_path", "/metrics") == "/metrics" and "aikore:9000" in job["static_configs"][0]["targets"] and auth.get("credentials_file") == "/etc/prometheus/secrets/metrics.token" else 1)'
check "compose: aikore publishes the dashboard (9000) and the apps origin (9100)" compose_has \
  "{str(p.get('target')) for p in c['services']['aikore']['ports']} >= {'9000', '9100'}"
for d in grafana/provisioning grafana/dashboards; do
  [ -d "$d" ] || say "note: $d (mounted by the grafana service) is not in this checkout yet"
done
say "compose checks took $(ms_since "$t") ms"

# ---- the aikore binary ----------------------------------------------------
t=$(date +%s%N)
if [ -n "${AIKORE_BINARY:-}" ]; then
  BIN=$(realpath "$AIKORE_BINARY")
else
  command -v cargo >/dev/null || die "cargo is missing (or set AIKORE_BINARY)"
  say "cargo build --release --locked (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target})"
  cargo build --release --locked --quiet || die "cargo build failed"
  BIN=$(realpath "${CARGO_TARGET_DIR:-target}/release/aikore")
fi
[ -x "$BIN" ] || die "no aikore binary at $BIN"
# The image takes the dashboard's npm libraries from the context (PREBUILT=1).
if [ ! -d web/node_modules/@xterm/xterm ]; then
  say "npm ci --prefix web (xterm.js for the image)"
  npm ci --prefix web --no-audit --no-fund --silent || die "npm ci failed"
fi
# The build context only lets in target/release/aikore and
# target/container/aikore (.dockerignore): a copy goes to the latter, without
# its symbol table when strip is here (2.7 of 15 MiB; the release profile
# already drops debug info).
mkdir -p target/container
STAGED_BINARY=$REPO/target/container/aikore
if command -v strip >/dev/null; then strip -o "$STAGED_BINARY" "$BIN"; else cp "$BIN" "$STAGED_BINARY"; fi
CONTEXT_BINARY=target/container/aikore
say "binary $BIN ($(( $(stat -c %s "$BIN") / 1024 / 1024 )) MiB) ready after $(ms_since "$t") ms"

# ---- base image: debootstrap + podman import --------------------------------
# shellcheck source=tests/container/base-image.sh
. tests/container/base-image.sh
MIRROR=${DEBIAN_MIRROR:-$(mirror_from_apt)}
t=$(date +%s%N)
say "debootstrap --variant=minbase bookworm from $MIRROR"
base_image "$TMP/rootfs" "$MIRROR" "$TMP/debootstrap.log" "$BASE_IMAGE" "${PM[@]}" \
  || die "debootstrap or podman import of the base image failed"
BASE_MS=$(ms_since "$t")
say "base image $BASE_IMAGE ready after $BASE_MS ms"

image_size() { pm image inspect --format '{{.Size}}' "$1"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# ---- build ------------------------------------------------------------------
# --format docker: OCI image configs have no HEALTHCHECK. Layers stay on
# (buildah 1.28 with --layers=false fails removing the `FROM build-N AS build`
# alias stage); they live in the private store anyway.
build() { # build TAG CONTEXT DOCKERFILE LOG ARGS...
  local tag=$1 ctx=$2 file=$3 log=$4; shift 4
  timeout 900 "${PM[@]}" build --pull=never --network=host --format docker \
    --build-arg "DEBIAN_IMAGE=$BASE_IMAGE" "$@" -t "$tag" -f "$file" "$ctx" >"$log" 2>&1
}
t=$(date +%s%N)
if build "$IMAGE" . Dockerfile "$TMP/build.log" --build-arg PREBUILT=1 --build-arg "AIKORE_BINARY=$CONTEXT_BINARY"; then
  BUILD_MS=$(ms_since "$t"); pass "image builds from the Dockerfile (PREBUILT=1) in $BUILD_MS ms"
else
  tail -30 "$TMP/build.log"; die "podman build of Dockerfile failed"
fi
t=$(date +%s%N)
if build "$BASELINE_IMAGE" tests/container tests/container/baseline.Dockerfile "$TMP/baseline-build.log"; then
  BASELINE_BUILD_MS=$(ms_since "$t"); pass "baseline image builds in $BASELINE_BUILD_MS ms"
else
  tail -30 "$TMP/baseline-build.log"; die "podman build of baseline.Dockerfile failed"
fi
# The slim variant: the same Dockerfile without persistent mode. Its common
# layers come from the cache the build above filled, so this costs seconds.
t=$(date +%s%N)
SLIM_OK=0
if build "$SLIM_IMAGE" . Dockerfile "$TMP/slim-build.log" --build-arg PREBUILT=1 \
  --build-arg "AIKORE_BINARY=$CONTEXT_BINARY" --build-arg PERSISTENT=0; then
  SLIM_BUILD_MS=$(ms_since "$t"); SLIM_OK=1; pass "slim image builds (PERSISTENT=0) in $SLIM_BUILD_MS ms"
else
  tail -30 "$TMP/slim-build.log"; fail "podman build of Dockerfile with PERSISTENT=0"; SLIM_BUILD_MS=0
fi

# ---- the image's metadata and contents ---------------------------------------
cfg() { pm image inspect --format "$1" "$IMAGE"; }
check "ENTRYPOINT is aikore serve (no wrapper)" test "$(cfg '{{json .Config.Entrypoint}}')" = '["/usr/local/bin/aikore","serve"]'
check "STOPSIGNAL SIGTERM" test "$(cfg '{{.Config.StopSignal}}')" = SIGTERM
check "HEALTHCHECK curls /healthz" grep -q healthz <<<"$(cfg '{{json .Config.Healthcheck}}')"
check "VOLUME /config" grep -q '"/config"' <<<"$(cfg '{{json .Config.Volumes}}')"
check "LABEL io.aikore.persistent=1 (the default build has persistent mode)" \
  test "$(cfg '{{index .Config.Labels "io.aikore.persistent"}}')" = 1
ports=$(cfg '{{json .Config.ExposedPorts}}')
check "EXPOSE 9000, 9100 and 19001-19999" python3 -c '
import json, sys
p = json.loads(sys.argv[1])
# Docker expands a range into one key per port; buildah keeps "19001-19999/tcp".
want = {"9000/tcp", "9100/tcp"} | {"%d/tcp" % n for n in range(19001, 20000)}
ok = want <= set(p) or {"9000/tcp", "9100/tcp", "19001-19999/tcp"} <= set(p)
print("  ExposedPorts:", sorted(p)[:3], "...", len(p), "keys"); sys.exit(0 if ok else 1)' "$ports"
envs=$(cfg '{{json .Config.Env}}')
for kv in AIKORE_DATA_DIR=/config AIKORE_UNITS_DIR=/etc/aikore/units AIKORE_PORT=9000 AIKORE_APPS_PORT=9100 PUID=1000 PGID=1000 TZ=Etc/UTC; do
  check "ENV $kv" grep -q "\"$kv\"" <<<"$envs"
done
inside() { pm run --rm --network=none "${LIMITS[@]}" --no-healthcheck --entrypoint /bin/sh "$IMAGE" -c "$1"; }
check "user aikore is 1000:1000 in the image" test "$(inside 'id -u aikore; id -g aikore' | tr '\n' :)" = "1000:1000:"
check "runtime tools present (nginx git python3 venv curl ps bash, ca-certs, persistent mode)" inside \
  'for c in /usr/sbin/nginx git python3 curl ps bash Xvnc websockify firefox-esr matchbox-window-manager; do command -v $c >/dev/null || exit 1; done; test -f /usr/share/novnc/vnc.html;
   python3 -m venv /tmp/v && /tmp/v/bin/python -c "import sys" && test -s /etc/ssl/certs/ca-certificates.crt'
check "apt lists cleaned, no recommends-only extras" inside \
  'test -z "$(ls /var/lib/apt/lists | grep -v -e ^lock -e ^partial)" && ! dpkg -s build-essential >/dev/null 2>&1'
check "stock units, nginx template, blueprints dir in place" inside \
  'test -f /etc/aikore/units/nginx.service && test -f /etc/aikore/nginx/nginx.conf && test -d /opt/aikore/blueprints && /usr/local/bin/aikore check /etc/aikore/units/nginx.service >/dev/null'
check "TZ is honoured (TZ=Asia/Tokyo date says JST)" test "$(pm run --rm --network=none "${LIMITS[@]}" --no-healthcheck -e TZ=Asia/Tokyo --entrypoint date "$IMAGE" +%Z)" = JST

# ---- run it -------------------------------------------------------------------
CONFIG=$TMP/config
mkdir -p "$CONFIG/units"
# The host user of a typical install: the image's default PUID:PGID.
chown -R 1000:1000 "$CONFIG"
PORT=$(free_port)
APPS_PORT=$(free_port)
API_PORT=$(free_port)
PROBE_PORT=$(free_port)
CTR="aikore-ct-$ID"
BASE_URL="http://127.0.0.1:$PORT"
APPS_URL="http://127.0.0.1:$APPS_PORT"
CONTAINERS+=("$CTR")
# --health-interval=disable: podman runs HEALTHCHECK from systemd timers,
# and CI has no systemd; `podman healthcheck run` below runs it by hand.
pm create --name "$CTR" --network=host "${LIMITS[@]}" --health-interval=disable \
  -e AIKORE_PORT="$PORT" -e AIKORE_APPS_PORT="$APPS_PORT" -e AIKORE_LISTEN="127.0.0.1:$API_PORT" -e TZ=Asia/Tokyo -e AIKORE_API_TOKEN="$TOKEN" \
  -v "$CONFIG:/config" "$IMAGE" >/dev/null

# wait_healthz URL TIMEOUT_S: 0 once /healthz answers 200.
wait_healthz() {
  local deadline=$(( $(date +%s) + $2 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    curl -fsS --max-time 1 "$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.01
  done
  return 1
}
api() { curl -sS --max-time 10 -H "Authorization: Bearer $TOKEN" -o "$TMP/body" -w '%{http_code}' "$@"; }

t=$(date +%s%N)
pm_start "$CTR"
if wait_healthz "$BASE_URL" 60; then
  COLD_MS=$(ms_since "$t"); pass "cold start: /healthz through NGINX on :$PORT after $COLD_MS ms"
else
  pm logs "$CTR" 2>&1 | tail -30; die "no /healthz through NGINX within 60 s"
fi
health=$(curl -fsS "$BASE_URL/healthz")
say "healthz: $health"
check "healthz: status ok and pid1 true" python3 -c '
import json, sys; h = json.loads(sys.argv[1]); sys.exit(0 if h["status"] == "ok" and h["pid1"] is True else 1)' "$health"
check "PID 1 in the container is 'aikore serve'" \
  test "$(pm exec "$CTR" cat /proc/1/cmdline | tr '\0' ' ')" = "/usr/local/bin/aikore serve "
check "NGINX runs as a child of PID 1: master root, workers www-data (not the instance user)" pm exec "$CTR" sh -c \
  'ps -o ppid=,user=,args= -C nginx | grep -q "^ *1 root .*nginx: master" && ps -o user=,args= -C nginx | grep -q "^www-data .*nginx: worker"'
check "the dashboard's scripts and xterm.js are served through NGINX" sh -c \
  "curl -fsS --max-time 5 -o /dev/null '$BASE_URL/static/app.js' && curl -fsS --max-time 5 -o /dev/null '$BASE_URL/vendor/xterm.js'"
check "podman healthcheck run: healthy" pm healthcheck run "$CTR"

# ---- something runs under aikore ----------------------------------------------
cat >"$CONFIG/units/probe.service" <<EOF
# Written by tests/container/run.sh: records each start in /config/probe.
[Unit]
Description=container test probe
After=nginx.service

[Service]
ExecStartPre=/bin/sh -c 'mkdir -p /config/probe && echo "\$(date +%%Z) uid=\$(id -u)" >> /config/probe/runs'
ExecStart=/usr/bin/python3 -m http.server $PROBE_PORT --bind 127.0.0.1 --directory /config/probe
ReadyCheck=http://127.0.0.1:$PROBE_PORT/
Restart=on-failure
EOF

# As Debian's daemons harden themselves (issue 14): in an unprivileged
# container the kernel refuses some of it, and the unit must still run and
# its log say which keys were not applied, never fail or stay silent.
cat >"$CONFIG/units/hardened.service" <<'EOF'
[Service]
ExecStart=/bin/sh -c 'echo hardened-ok; exec sleep 100000'
PrivateDevices=yes
PrivateTmp=yes
ProtectSystem=strict
ProtectHome=yes
ProtectProc=invisible
NoNewPrivileges=yes
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
DevicePolicy=closed
IPAddressDeny=any
IPAddressAllow=localhost
KillMode=process
EOF

# wait_status UNIT STATUS TIMEOUT_S
wait_status() {
  local deadline=$(( $(date +%s) + $3 )) s=""
  while [ "$(date +%s)" -lt "$deadline" ]; do
    s=$(curl -fsS --max-time 2 -H "Authorization: Bearer $TOKEN" "$BASE_URL/api/v1/units/$1" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' 2>/dev/null || true)
    [ "$s" = "$2" ] && return 0
    sleep 0.1
  done
  say "unit $1 is '$s', wanted '$2'"
  return 1
}

# The instances API: an instance from a custom blueprint in /config/blueprints,
# reached through NGINX at /app/<name>/ (with the API token: apps sit behind
# aikore's login).
instance_check() {
  mkdir -p "$CONFIG/blueprints"
  cat >"$CONFIG/blueprints/ct-http.sh" <<'EOF'
#!/bin/bash
### AIKORE-METADATA-START ###
# aikore.name = Container test HTTP server
# aikore.category = test
# aikore.description = python3 -m http.server on WEBUI_PORT
# aikore.venv_type = none
# aikore.venv_path = none
### AIKORE-METADATA-END ###
exec python3 -m http.server "$WEBUI_PORT" --bind 127.0.0.1
EOF
  chmod +x "$CONFIG/blueprints/ct-http.sh"
  local code
  code=$(api -X POST -H 'Content-Type: application/json' \
    -d '{"name":"ctprobe","blueprint":"ct-http","port":"auto","gpus":"","autostart":true,"start":true}' \
    "$BASE_URL/api/v1/instances")
  check "POST /api/v1/instances creates ctprobe (HTTP $code)" test "${code:0:1}" = 2
  check "instance ctprobe reaches 'started'" wait_status ctprobe started 60
  check "instance ctprobe answers through NGINX on the apps origin at /app/ctprobe/" \
    curl -fsS --max-time 5 -H "Authorization: Bearer $TOKEN" -o /dev/null "$APPS_URL/app/ctprobe/"
}

use_api=0
case "$INSTANCES_API" in
  1) use_api=1 ;;
  0) use_api=0 ;;
  auto)
    code=$(api -X POST -H 'Content-Type: application/json' -d '{}' "$BASE_URL/api/v1/instances")
    if [ "$code" = 404 ] || [ "$code" = 405 ]; then
      say "note: POST /api/v1/instances answers $code: checking with a unit file instead (INSTANCES_API=1 to require the API)"
    else
      use_api=1
    fi ;;
  *) die "INSTANCES_API must be auto, 1 or 0" ;;
esac
[ "$use_api" = 1 ] && instance_check

code=$(api -X POST "$BASE_URL/api/v1/reload")
check "POST /api/v1/reload picks up /config/units/probe.service and hardened.service (HTTP $code)" \
  python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["units"] >= 3 else 1)' "$TMP/body"
code=$(api -X POST "$BASE_URL/api/v1/units/probe/start")
check "POST /api/v1/units/probe/start (HTTP $code)" test "${code:0:1}" = 2
check "probe reaches 'started'" wait_status probe started 30
check "probe serves from /config on :$PROBE_PORT" curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$PROBE_PORT/runs"
check "units inherit TZ (probe recorded JST)" grep -q '^JST ' "$CONFIG/probe/runs"
check "state and logs live in /config (aikore.db, logs/probe.log)" \
  test -s "$CONFIG/aikore.db" -a -f "$CONFIG/logs/probe.log"
code=$(api -X POST "$BASE_URL/api/v1/units/hardened/start")
check "a unit with Debian's hardening keys starts in the container (HTTP $code)" wait_status hardened started 30
hardened_filtered() {
  grep -q hardened-ok "$CONFIG/logs/hardened.log" &&
    pm exec "$CTR" sh -c 'p=$(pgrep -xf "sleep 100000") && grep -q "^Seccomp:.2" /proc/$p/status && grep -q "^NoNewPrivs:.1" /proc/$p/status'
}
check "its process runs under the seccomp filter with no_new_privs" hardened_filtered
# What the container's kernel refused, as the unit's log says it (for the reader of CI's output).
grep -h 'not applied\|not enforced' "$CONFIG/logs/hardened.log" | sort -u | sed 's/^/    hardened: /' || true
check "every key the container refused is named in the unit's log, none silently" python3 -c '
import sys
notes = [l for l in open(sys.argv[1]).read().splitlines() if "not applied" in l or "not enforced" in l]
sys.exit(0 if all("=" in l for l in notes) else 1)' "$CONFIG/logs/hardened.log"

# ---- stop: clean, ordered, within the grace period ---------------------------------
t=$(date +%s%N)
pm_stop "$CTR"
STOP_MS=$(ms_since "$t")
exit_code=$(pm inspect --format '{{.State.ExitCode}}' "$CTR")
check "podman stop -t 40: exit code 0 ($exit_code) in $STOP_MS ms" test "$exit_code" = 0 -a "$STOP_MS" -lt 40000
pm logs "$CTR" >"$TMP/life1.log" 2>&1
check "daemon log: ordered shutdown (probe stopped before nginx), then 'aikore stopped'" python3 - "$TMP/life1.log" <<'EOF'
import re, sys
lines = open(sys.argv[1], errors="replace").read().splitlines()
def first(pattern, start=0):
    for i in range(start, len(lines)):
        if re.search(pattern, lines[i]):
            return i
    return None
begin = first(r"shutting down")
if begin is None:
    sys.exit("no 'shutting down' line")
probe = first(r"unit=probe.*status=stopped", begin)
nginx = first(r"unit=nginx.*status=stopped", begin)
end = first(r"aikore stopped.*code=0|code=0.*aikore stopped", begin)
print(f"  shutting down @{begin}, probe stopped @{probe}, nginx stopped @{nginx}, aikore stopped @{end}")
ok = None not in (probe, nginx, end) and begin < probe < nginx < end
if not ok:
    print("\n".join("  | " + l for l in lines[begin:]))
sys.exit(0 if ok else 1)
EOF

# ---- restart: units come back with their data -----------------------------------
t=$(date +%s%N)
pm_start "$CTR"
if wait_healthz "$BASE_URL" 60; then
  WARM_MS=$(ms_since "$t"); pass "restart: /healthz through NGINX after $WARM_MS ms"
else
  fail "restart: no /healthz within 60 s"
fi
check "probe is back ('started') after the restart" wait_status probe started 30
check "probe's data in /config survived (2 recorded starts)" test "$(wc -l <"$CONFIG/probe/runs")" -eq 2
check "probe's previous log kept (logs/probe.log.1)" test -f "$CONFIG/logs/probe.log.1"
code=$(api "$BASE_URL/api/v1/journal?unit=probe&limit=1000")
check "journal keeps the first life's events (>= 2 'started')" python3 -c '
import json, sys
body = json.load(open(sys.argv[1]))
events = body if isinstance(body, list) else body.get("events", body.get("journal", []))
n = sum(1 for e in events if "started" in json.dumps(e))
print("  started events:", n); sys.exit(0 if n >= 2 else 1)' "$TMP/body"
pm_stop "$CTR"
check "second stop also exits 0" test "$(pm inspect --format '{{.State.ExitCode}}' "$CTR")" = 0

# ---- PUID/PGID -------------------------------------------------------------------
# aikore's own state in /config stays root's (docs/security.md); instances run
# as PUID:PGID, services without User= as root.
if [ "$CHECK_PUID" = 1 ]; then
  CONFIG2=$TMP/config-puid
  mkdir -p "$CONFIG2/units"
  # No User=: a service runs as root, as under systemd.
  sed -e "s/$PROBE_PORT/$(free_port)/g" "$CONFIG/units/probe.service" >"$CONFIG2/units/probe.service"
  PORT2=$(free_port)
  CTR2="aikore-ct-puid-$ID"
  CONTAINERS+=("$CTR2")
  pm run -d --name "$CTR2" --network=host "${LIMITS[@]}" --health-interval=disable \
    -e AIKORE_PORT="$PORT2" -e AIKORE_APPS_PORT="$(free_port)" -e AIKORE_LISTEN="127.0.0.1:$(free_port)" -e PUID=1234 -e PGID=2345 -e AIKORE_API_TOKEN="$TOKEN" \
    -v "$CONFIG2:/config" "$IMAGE" >/dev/null 2> >(no_systemd_noise)
  if wait_healthz "http://127.0.0.1:$PORT2" 60; then
    BASE_URL="http://127.0.0.1:$PORT2" wait_status probe started 30 || true
    check "PUID: nothing of aikore's state in /config belongs to 1234 or is writable by others" sh -c \
      "stray=\$(find '$CONFIG2' -not -path '$CONFIG2/instances/*' -not -path '*/nginx/tmp*' \\( -uid 1234 -o -gid 2345 -o -perm -o+w \\) -printf '%p %u:%g\\n'); echo \"\$stray\" | head -5; test -z \"\$stray\""
    check "PUID: a service without User= runs as root (probe recorded uid=0)" grep -q 'uid=0$' "$CONFIG2/probe/runs"
  else
    fail "PUID: container with PUID=1234 did not come up"
  fi
  pm_stop "$CTR2"
else
  say "PUID/PGID checks off (CHECK_PUID=0)"
fi

# ---- baseline: bookworm-slim + NGINX ----------------------------------------------
BPORT=$(free_port)
BCTR="aikore-ct-baseline-$ID"
CONTAINERS+=("$BCTR")
pm create --name "$BCTR" --network=host "${LIMITS[@]}" -e PORT="$BPORT" "$BASELINE_IMAGE" >/dev/null
t=$(date +%s%N)
pm_start "$BCTR"
if wait_healthz "http://127.0.0.1:$BPORT" 60; then
  BASELINE_COLD_MS=$(ms_since "$t"); pass "baseline cold start: /healthz after $BASELINE_COLD_MS ms"
else
  fail "baseline: no /healthz within 60 s"; BASELINE_COLD_MS=-1
fi
t=$(date +%s%N)
pm_stop "$BCTR"
BASELINE_STOP_MS=$(ms_since "$t")

# ---- persistent mode's programs in the full image ------------------------------------
# persistent-run.sh as an instance runs it (as the instance user), around a
# page that is all magenta: websockify must relay Xvnc's greeting, and Xvnc's
# screen must show the page, drawn by Firefox with no OpenGL in the image.
PCTR="aikore-ct-persistent-$ID"
CONTAINERS+=("$PCTR")
mkdir -p "$TMP/persistent/site"
printf '<!doctype html><title>probe</title><body style="margin:0;background:#ff00ff"></body>\n' >"$TMP/persistent/site/index.html"
chown -R 1000:1000 "$TMP/persistent"
t=$(date +%s%N)
pm run -d --name "$PCTR" --network=none "${LIMITS[@]}" --no-healthcheck --shm-size=256m --user 1000:1000 \
  -e PERSISTENT_DISPLAY=42 -e PERSISTENT_VNC_PORT=5942 -e PERSISTENT_WS_PORT=6080 -e PERSISTENT_BROWSER=yes \
  -e WEBUI_PORT=8000 -e INSTANCE_CONF_DIR=/work -e HOME=/work \
  -v "$TMP/persistent:/work" -v "$REPO/tests/container/vnc-probe.py:/probe.py:ro" -w /work/site \
  --entrypoint /bin/bash "$IMAGE" /opt/aikore/blueprints/persistent-run.sh python3 -m http.server 8000 --bind 127.0.0.1 \
  >/dev/null 2> >(no_systemd_noise)
# probe_until TIMEOUT_S ARGS...: vnc-probe.py inside the container until it says yes.
probe_until() {
  local deadline=$(( $(date +%s) + $1 )); shift
  while [ "$(date +%s)" -lt "$deadline" ]; do
    pm exec "$PCTR" python3 /probe.py "$@" >"$TMP/probe.out" 2>&1 && { sed 's/^/  /' "$TMP/probe.out"; return 0; }
    sleep 1
  done
  sed 's/^/  /' "$TMP/probe.out"
  return 1
}
ws_page() { pm exec "$PCTR" curl -fsS --max-time 5 -o /dev/null http://127.0.0.1:6080/vnc.html; }
wait_ws_page() {
  local deadline=$(( $(date +%s) + 60 ))
  until ws_page 2>/dev/null; do [ "$(date +%s)" -lt "$deadline" ] || return 1; sleep 0.5; done
}
check "persistent mode: websockify serves noVNC's vnc.html from /usr/share/novnc" wait_ws_page
check "persistent mode: a WebSocket through websockify reaches Xvnc (RFB greeting)" probe_until 30 ws 6080
if probe_until 120 screen 5942 ff00ff; then
  pass "persistent mode: Firefox shows the app's page on the display after $(ms_since "$t") ms"
else
  pm logs "$PCTR" 2>&1 | tail -30
  fail "persistent mode: the display does not show the app's page within 120 s"
fi
pm rm -f -t 0 "$PCTR" >/dev/null 2>&1

# ---- the slim image (PERSISTENT=0) ---------------------------------------------------
if [ "$SLIM_OK" = 1 ]; then
  slim_inside() { pm run --rm --network=none "${LIMITS[@]}" --no-healthcheck --entrypoint /bin/sh "$SLIM_IMAGE" -c "$1"; }
  slim_is_slim() {
    [ "$(pm image inspect --format '{{index .Config.Labels "io.aikore.persistent"}}' "$SLIM_IMAGE")" = 0 ] &&
      slim_inside '! command -v Xvnc && ! command -v websockify && ! command -v firefox-esr && ! test -e /usr/share/novnc'
  }
  check "slim image: no persistent mode inside (Xvnc, websockify, Firefox, noVNC), LABEL io.aikore.persistent=0" slim_is_slim
  SCONFIG=$TMP/config-slim
  mkdir -p "$SCONFIG"
  SPORT=$(free_port)
  SCTR="aikore-ct-slim-$ID"
  CONTAINERS+=("$SCTR")
  t=$(date +%s%N)
  pm run -d --name "$SCTR" --network=host "${LIMITS[@]}" --health-interval=disable \
    -e AIKORE_PORT="$SPORT" -e AIKORE_APPS_PORT="$(free_port)" -e AIKORE_LISTEN="127.0.0.1:$(free_port)" \
    -e AIKORE_PASSWORD="ct-slim-$$" -v "$SCONFIG:/config" "$SLIM_IMAGE" >/dev/null 2> >(no_systemd_noise)
  if wait_healthz "http://127.0.0.1:$SPORT" 60; then
    SLIM_COLD_MS=$(ms_since "$t"); pass "slim image: /healthz through NGINX on :$SPORT after $SLIM_COLD_MS ms"
    check "slim image: PID 1 is 'aikore serve'" \
      test "$(pm exec "$SCTR" cat /proc/1/cmdline | tr '\0' ' ')" = "/usr/local/bin/aikore serve "
    check "slim image: the login page (password form, its stylesheet) through NGINX" sh -c \
      "curl -fsS --max-time 5 'http://127.0.0.1:$SPORT/login' | grep -q 'name=\"password\"' && curl -fsS --max-time 5 -o /dev/null 'http://127.0.0.1:$SPORT/static/app.css'"
  else
    pm logs "$SCTR" 2>&1 | tail -20
    fail "slim image: no /healthz through NGINX within 60 s"; SLIM_COLD_MS=-1
  fi
  pm_stop "$SCTR"
  check "slim image: podman stop exits 0" test "$(pm inspect --format '{{.State.ExitCode}}' "$SCTR")" = 0
fi

# ---- optional: the Rust stage (PREBUILT=0) -----------------------------------------
SOURCE_BUILD_MS=-
if [ "$FROM_SOURCE" = 1 ]; then
  RUST_IMAGE="localhost/aikore-ct-rust:$ID"
  SOURCE_IMAGE="localhost/aikore-ct-source:$ID"
  t=$(date +%s%N)
  SYSROOT=$(rustc --print sysroot)
  mkdir -p "$TMP/rust-ctx/toolchain"
  for d in bin lib libexec etc; do
    [ -e "$SYSROOT/$d" ] || continue
    cp -al "$SYSROOT/$d" "$TMP/rust-ctx/toolchain/" 2>/dev/null || cp -a "$SYSROOT/$d" "$TMP/rust-ctx/toolchain/"
  done
  # Every locked crate into the host's cache, then its index + .crate files in.
  cargo fetch --locked --quiet || die "cargo fetch --locked failed"
  HOST_CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
  mkdir -p "$TMP/rust-ctx/cargo/registry"
  for d in index cache; do
    cp -al "$HOST_CARGO_HOME/registry/$d" "$TMP/rust-ctx/cargo/registry/" 2>/dev/null \
      || cp -a "$HOST_CARGO_HOME/registry/$d" "$TMP/rust-ctx/cargo/registry/"
  done
  if build "$RUST_IMAGE" "$TMP/rust-ctx" tests/container/rust-builder.Dockerfile "$TMP/rust-build.log"; then
    pass "Rust build image from the host toolchain ($(rustc --version | awk '{print $2}')) in $(ms_since "$t") ms"
    rm -rf "$TMP/rust-ctx"
    t=$(date +%s%N)
    # PREBUILT=0 spelled out: buildah 1.28 decides which stages to skip from
    # --build-arg values only, not ARG defaults (Docker needs no such help).
    if build "$SOURCE_IMAGE" . Dockerfile "$TMP/source-build.log" --build-arg PREBUILT=0 --build-arg "RUST_IMAGE=$RUST_IMAGE"; then
      SOURCE_BUILD_MS=$(ms_since "$t"); pass "image builds from source (PREBUILT=0, cargo build --locked) in $SOURCE_BUILD_MS ms"
      check "source-built image: its aikore validates the stock units" pm run --rm --network=none "${LIMITS[@]}" \
        --no-healthcheck --entrypoint /usr/local/bin/aikore "$SOURCE_IMAGE" check /etc/aikore/units/nginx.service
      SOURCE_BUILD_MS=$((SOURCE_BUILD_MS / 1000))
    else
      tail -30 "$TMP/source-build.log"; fail "podman build of Dockerfile with PREBUILT=0"
    fi
  else
    tail -30 "$TMP/rust-build.log"; fail "Rust build image from the host toolchain"
  fi
fi

# ---- figures ------------------------------------------------------------------------
S_BASE=$(image_size "$BASE_IMAGE")
S_IMAGE=$(image_size "$IMAGE")
S_BASELINE=$(image_size "$BASELINE_IMAGE")
echo
printf '%-34s %12s %14s %10s %10s\n' image "size MiB" "cold start ms" "stop ms" "build s"
printf '%-34s %12s %14s %10s %10s\n' "base (debootstrap, slimmed)" "$(mib "$S_BASE")" - - "$((BASE_MS / 1000))"
printf '%-34s %12s %14s %10s %10s\n' "bookworm-slim + NGINX (baseline)" "$(mib "$S_BASELINE")" "$BASELINE_COLD_MS" "$BASELINE_STOP_MS" "$((BASELINE_BUILD_MS / 1000))"
printf '%-34s %12s %14s %10s %10s\n' "aikore (PREBUILT=1)" "$(mib "$S_IMAGE")" "$COLD_MS" "$STOP_MS" "$((BUILD_MS / 1000))"
[ "$SLIM_OK" = 1 ] && printf '%-34s %12s %14s %10s %10s\n' "aikore slim (PERSISTENT=0)" "$(mib "$(image_size "$SLIM_IMAGE")")" "${SLIM_COLD_MS:--}" - "$((SLIM_BUILD_MS / 1000))"
[ "$FROM_SOURCE" = 1 ] && printf '%-34s %12s %14s %10s %10s\n' "aikore (PREBUILT=0, from source)" "" - - "$SOURCE_BUILD_MS"
printf '%-34s %12s %14s\n' "aikore, restart (same /config)" "" "${WARM_MS:--}"
echo
