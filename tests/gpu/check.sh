#!/usr/bin/env bash
# The GPU truth check (issue 17), for an NVIDIA machine; CI never runs it.
#
# Starts aikore (a release binary) with one instance pinned to GPU 0 whose
# app is a small PyTorch program that allocates 2 GiB on the GPU, then prints
# side by side what nvidia-smi and aikore (/metrics, /api/v1/system) say
# about every GPU, the instance's torch.cuda.device_count() and the VRAM
# aikore attributes to it, and exits non-zero when any pair differs by more
# than 1 % (or a count differs at all).
#
# Usage: tests/gpu/check.sh
#   AIKORE_BIN=path      use this binary (default: target/release/aikore, built
#                        with `cargo build --release` when cargo is there)
#   TORCH_PYTHON=path    a python that already has torch with CUDA (default:
#                        a venv under $CHECK_CACHE made with `pip install torch`)
#   TORCH_WHEEL=path     install torch from this wheel instead of the index
#                        (a box without network: copy the wheel, and its
#                        nvidia-* dependency wheels beside it, there first)
#   CHECK_CACHE=dir      where the venv lives (default ~/.cache/aikore-gpu-check)
#   CUDA_PROBE=libcuda   no torch at all: the instance allocates through the
#                        driver's libcuda.so.1 (ctypes, nothing to install) and
#                        reports cuDeviceGetCount instead of torch.cuda.device_count()
#   KEEP=1               keep the work dir (data dir, logs) for a look after
# Needs: nvidia-smi, curl, python3 (with venv), and network for pip unless
# TORCH_PYTHON or TORCH_WHEEL is given. The torch wheel is ~2.5 GB with its
# CUDA libraries: the first run takes minutes, later runs reuse the venv.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TOLERANCE_PCT=1
ALLOC_GIB=2

die() { echo "check.sh: $*" >&2; exit 2; }
for tool in nvidia-smi curl python3; do
    command -v "$tool" >/dev/null || die "missing $tool"
done
nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi cannot see a GPU (driver loaded? container started with --gpus?)"

BIN=${AIKORE_BIN:-$ROOT/target/release/aikore}
if [[ -z ${AIKORE_BIN:-} ]]; then
    if command -v cargo >/dev/null; then
        (cd "$ROOT" && cargo build --release --locked) || die "cargo build --release failed"
    fi
fi
[[ -x $BIN ]] || die "no aikore binary at $BIN: build it (cargo build --release) or set AIKORE_BIN"

# --- torch (or the driver's libcuda) ------------------------------------------
CUDA_PROBE=${CUDA_PROBE:-torch}
CHECK_CACHE=${CHECK_CACHE:-$HOME/.cache/aikore-gpu-check}
if [[ $CUDA_PROBE == libcuda ]]; then
    PY=python3
    python3 -c 'import ctypes; ctypes.CDLL("libcuda.so.1")' || die "libcuda.so.1 cannot be loaded"
elif [[ -n ${TORCH_PYTHON:-} ]]; then
    PY=$TORCH_PYTHON
else
    PY=$CHECK_CACHE/venv/bin/python
    if ! "$PY" -c 'import torch' 2>/dev/null; then
        echo "== installing torch into $CHECK_CACHE/venv (first run only)"
        python3 -m venv "$CHECK_CACHE/venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        if [[ -n ${TORCH_WHEEL:-} ]]; then
            "$PY" -m pip install --no-index --find-links "$(dirname "$TORCH_WHEEL")" "$TORCH_WHEEL" \
                || die "installing $TORCH_WHEEL failed (its nvidia-* dependency wheels must sit beside it)"
        else
            "$PY" -m pip install torch \
                || die "pip install torch failed (no network? set TORCH_WHEEL or TORCH_PYTHON, or CUDA_PROBE=libcuda)"
        fi
    fi
fi
if [[ $CUDA_PROBE != libcuda ]]; then
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || die "$PY has torch without a usable CUDA (torch.cuda.is_available() is False)"
fi
echo "== probe: $CUDA_PROBE ($PY)"

# --- aikore with one torch instance --------------------------------------------
WORK=$(mktemp -d /tmp/aikore-gpu-check.XXXXXX)
AIKORE_PID=""
cleanup() {
    local rc=$?
    if [[ -n $AIKORE_PID ]]; then
        kill -TERM "$AIKORE_PID" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$AIKORE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$AIKORE_PID" 2>/dev/null || true
    fi
    if [[ -n ${KEEP:-} ]]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT

mkdir -p "$WORK/data/blueprints" "$WORK/units"
cat > "$WORK/data/blueprints/torch-check.sh" <<SH
#!/usr/bin/env bash
### AIKORE-METADATA-START ###
# aikore.name = Torch check
# aikore.description = tests/gpu/check.sh: holds ${ALLOC_GIB} GiB on its GPU and serves its port
# aikore.venv_type = none
### AIKORE-METADATA-END ###
exec "$PY" - <<'PYEOF'
import ctypes, http.server, os
GIB = ${ALLOC_GIB}
if "${CUDA_PROBE}" == "libcuda":
    # The driver API straight from libcuda.so.1: no torch needed.
    cuda = ctypes.CDLL("libcuda.so.1")
    def ok(rc, what):
        if rc != 0:
            raise SystemExit("%s failed: CUresult %d" % (what, rc))
    ok(cuda.cuInit(0), "cuInit")
    n = ctypes.c_int()
    ok(cuda.cuDeviceGetCount(ctypes.byref(n)), "cuDeviceGetCount")
    print("device_count=%d" % n.value, flush=True)
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    ok(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ok(cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
    ok(cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(GIB << 30)), "cuMemAlloc")
    ok(cuda.cuMemsetD8_v2(ptr, ctypes.c_ubyte(1), ctypes.c_size_t(GIB << 30)), "cuMemsetD8")
    ok(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
    print("allocated=%d" % (GIB << 30), flush=True)
else:
    import torch
    print("device_count=%d" % torch.cuda.device_count(), flush=True)
    held = torch.empty(GIB * (1 << 30), dtype=torch.uint8, device="cuda:0")
    held.fill_(1)
    torch.cuda.synchronize()
    print("allocated=%d" % held.numel(), flush=True)
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["WEBUI_PORT"])), http.server.SimpleHTTPRequestHandler)
server.serve_forever()
PYEOF
SH

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AIKORE_API_TOKEN="gpu-check-$$"
AUTH=(-H "Authorization: Bearer $AIKORE_API_TOKEN")
API=http://127.0.0.1:$PORT
AIKORE_SHUTDOWN_TIMEOUT=10s "$BIN" serve --data-dir "$WORK/data" --units-dir "$WORK/units" \
    --listen "127.0.0.1:$PORT" > "$WORK/aikore.log" 2>&1 &
AIKORE_PID=$!
for _ in $(seq 200); do curl -fs -o /dev/null "$API/healthz" && break; sleep 0.1; done
curl -fs -o /dev/null "$API/healthz" || { tail -30 "$WORK/aikore.log"; die "aikore did not answer"; }

curl -fs "${AUTH[@]}" -X POST -H 'Content-Type: application/json' \
    -d '{"name":"torch-check","blueprint":"torch-check","gpus":"0","start":true}' \
    "$API/api/v1/instances" > /dev/null || { tail -30 "$WORK/aikore.log"; die "creating the instance failed"; }
status=""
for _ in $(seq 600); do
    status=$(curl -fs "${AUTH[@]}" "$API/api/v1/units/torch-check" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    [[ $status == started || $status == failed || $status == error ]] && break
    sleep 0.5
done
instance_log() {
    curl -fs "${AUTH[@]}" "$API/api/v1/units/torch-check/logs?tail=500" \
        | python3 -c 'import json,sys; print("\n".join(l["text"] for l in json.load(sys.stdin)["lines"]))' || true
}
LOG=$(instance_log)
[[ $status == started ]] || { echo "$LOG"; tail -30 "$WORK/aikore.log"; die "the torch instance is $status, not started"; }
# aikore's watch and NVML's process list settle within a few seconds.
sleep 6

# --- side by side --------------------------------------------------------------
FIELDS=index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,power.limit
nvidia-smi --query-gpu=$FIELDS --format=csv,noheader,nounits > "$WORK/smi.csv"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits > "$WORK/apps.csv" || true
curl -fs "${AUTH[@]}" "$API/metrics" > "$WORK/metrics.txt"
curl -fs "${AUTH[@]}" "$API/api/v1/system" > "$WORK/system.json"
curl -fs "${AUTH[@]}" "$API/api/v1/instances/torch-check" > "$WORK/instance.json"
instance_log > "$WORK/instance.log"

echo "== nvidia-smi --query-gpu=$FIELDS --format=csv"
cat "$WORK/smi.csv"
echo "== nvidia-smi --query-compute-apps=pid,used_memory"
cat "$WORK/apps.csv"
echo "== aikore /metrics (GPU series)"
grep -E '^aikore_(gpu_|unit_gpu_)' "$WORK/metrics.txt" || true
echo "== instance log"
grep -E '^(device_count|allocated|CUDA_VISIBLE_DEVICES)=' "$WORK/instance.log" || true

python3 - "$WORK" "$TOLERANCE_PCT" "$ALLOC_GIB" <<'PYEOF'
import json, re, sys
work, tol, alloc_gib = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
MIB = 1 << 20
smi = {}
for line in open(f"{work}/smi.csv"):
    f = [x.strip() for x in line.split(",")]
    if len(f) < 9:
        continue
    smi[int(f[0])] = dict(uuid=f[1], name=f[2], total=float(f[3]) * MIB, used=float(f[4]) * MIB,
                          util=f[5], temp=f[6], power=f[7], limit=f[8])
metrics = {}
for line in open(f"{work}/metrics.txt"):
    m = re.match(r'^(aikore_\w+)\{([^}]*)\} (\S+)$', line.strip())
    if m:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        metrics.setdefault(m.group(1), []).append((labels, float(m.group(3))))
def series(name, **want):
    return [v for labels, v in metrics.get(name, []) if all(labels.get(k) == str(x) for k, x in want.items())]
system = json.load(open(f"{work}/system.json"))
api_gpus = {g["index"]: g for g in system.get("gpus", [])}
instance = json.load(open(f"{work}/instance.json"))
log = open(f"{work}/instance.log").read()

failures = []
def compare(what, truth, seen, pct=tol, floor=0):
    """Within pct % of the truth, or within `floor` (nvidia-smi prints memory in whole MiB)."""
    ok = seen is not None and truth is not None and abs(seen - truth) <= max(abs(truth) * pct / 100, floor)
    print(f"{what:<44} {truth if truth is not None else '-':>16} {seen if seen is not None else '-':>16}  {'ok' if ok else 'MISMATCH'}")
    if not ok:
        failures.append(what)

print(f"\n{'':<44} {'nvidia-smi':>16} {'aikore':>16}")
if set(smi) != set(api_gpus):
    failures.append(f"GPU indices: nvidia-smi {sorted(smi)} vs /api/v1/system {sorted(api_gpus)}")
for i, s in sorted(smi.items()):
    a = api_gpus.get(i, {})
    m_total = (series("aikore_gpu_memory_total_bytes", gpu=i) or [None])[0]
    m_used = (series("aikore_gpu_memory_used_bytes", gpu=i) or [None])[0]
    compare(f"GPU {i} memory.total (metrics)", s["total"], m_total, floor=MIB)
    compare(f"GPU {i} memory.total (api)", s["total"], a.get("memory_total_bytes"), floor=MIB)
    compare(f"GPU {i} memory.used (metrics)", s["used"], m_used, floor=MIB)
    compare(f"GPU {i} memory.used (api)", s["used"], a.get("memory_used_bytes"), floor=MIB)
    if s["limit"] not in ("[N/A]", "N/A"):
        compare(f"GPU {i} power.limit W (metrics)", float(s["limit"]), (series("aikore_gpu_power_limit_watts", gpu=i) or [None])[0])
    print(f"{'GPU ' + str(i) + ' uuid':<44} {s['uuid']:>16.16} {a.get('uuid', '-'):>16.16}  {'ok' if a.get('uuid') == s['uuid'] else 'MISMATCH'}")
    if a.get("uuid") != s["uuid"]:
        failures.append(f"GPU {i} uuid")
    health = (series("aikore_gpu_healthy", gpu=i) or [None])[0]
    print(f"{'GPU ' + str(i) + ' healthy (aikore)':<44} {'':>16} {health!s:>16}  {a.get('unhealthy_reason') or ''}")

m = re.search(r"^device_count=(\d+)$", log, re.M)
compare("device_count in the instance (GPUs=0 pinned)", 1, int(m.group(1)) if m else None, pct=0)
pid = instance.get("pid")
def tree(root):
    """root and its descendants, as this namespace's /proc sees them."""
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            import os
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]
        except OSError:
            pass
    return out
apps = {}
for line in open(f"{work}/apps.csv"):
    f = [x.strip() for x in line.split(",")]
    if len(f) == 2 and f[0].isdigit() and f[1].replace(".", "").isdigit():
        apps[int(f[0])] = float(f[1]) * MIB
mine = [p for p in tree(pid) if p in apps] if pid else []
smi_vram = sum(apps[p] for p in mine) if mine else None
aikore_vram = sum(series("aikore_unit_gpu_memory_bytes", unit="torch-check")) or None
compare("VRAM of the instance's processes", smi_vram, aikore_vram, floor=MIB)
print(f"  instance pid {pid}; nvidia-smi compute pids {sorted(apps)}; the instance's: {mine}")
if not mine:
    print("  nvidia-smi lists none of the instance's pids: the driver reports pids of another namespace")
if aikore_vram is not None and aikore_vram < alloc_gib * (1 << 30):
    failures.append(f"attributed VRAM {aikore_vram:.0f} is below the {alloc_gib} GiB the instance holds")
compare("instance vram_bytes (api) vs metrics", aikore_vram, instance.get("vram_bytes"))
compare("instance placed_gpus == [0]", 1, 1 if instance.get("placed_gpus") == [0] else 0, pct=0)
if system.get("gpu_pid_note"):
    print("aikore:", system["gpu_pid_note"])
print()
if failures:
    print("FAILED:", "; ".join(failures))
    sys.exit(1)
print("all figures agree within", tol, "%")
PYEOF
