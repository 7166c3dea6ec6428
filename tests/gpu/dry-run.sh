#!/usr/bin/env bash
# Runs tests/gpu/check.sh on a machine WITHOUT a GPU, against stand-ins: a
# fake `nvidia-smi` and a fake `torch` that both read and write the same
# AIKORE_GPU_FAKE file aikore reads. It proves only that check.sh's plumbing
# works (starting aikore, the blueprint, the API calls, the comparison and
# its exit status), nothing about NVIDIA's driver: that is check.sh's job on
# a real machine. Not run by CI.
#
# Usage: tests/gpu/dry-run.sh [skew-percent]   (default 0; 5 must make check.sh fail)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SKEW=${1:-0}
FAKES=$(mktemp -d /tmp/aikore-gpu-dry.XXXXXX)
trap 'rm -rf "$FAKES"' EXIT
cp "$ROOT/src/gpu/fixtures/h100x4-driver580.json" "$FAKES/gpus.json"
export AIKORE_GPU_FAKE=$FAKES/gpus.json DRY_SKEW=$SKEW

mkdir -p "$FAKES/bin" "$FAKES/py/torch"
cat > "$FAKES/bin/nvidia-smi" <<'PY'
#!/usr/bin/env python3
# Stand-in: answers the three queries check.sh makes from $AIKORE_GPU_FAKE
# (memory.used skewed by $DRY_SKEW percent).
import json, os, sys
m = json.load(open(os.environ["AIKORE_GPU_FAKE"]))
skew = 1 + float(os.environ.get("DRY_SKEW", "0")) / 100
MIB = 1 << 20
args = " ".join(sys.argv[1:])
for g in m["gpus"]:
    used = g.get("memory_used_bytes", sum(p["used_bytes"] for p in g["processes"]))
    if "-L" in sys.argv:
        print(f"GPU {g['index']}: {g['name']} (UUID: {g['uuid']})")
    elif "--query-gpu" in args:
        print(f"{g['index']}, {g['uuid']}, {g['name']}, {g['memory_total_bytes'] // MIB}, {used * skew / MIB:.0f}, 0, 31, 71.00, {g['power_limit_milliwatts'] / 1000:.2f}")
    elif "--query-compute-apps" in args:
        for p in g["processes"]:
            print(f"{p['pid']}, {p['used_bytes'] // MIB}")
PY
cat > "$FAKES/py/torch/__init__.py" <<'PY'
"""Stand-in for torch: "allocating" on cuda:0 adds this pid to the fake file's GPU 0."""
import json, os
class cuda:
    @staticmethod
    def is_available():
        return True
    @staticmethod
    def device_count():
        return len([d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d])
    @staticmethod
    def synchronize():
        pass
uint8 = "uint8"
class _Tensor:
    def __init__(self, n):
        self.n = n
        path = os.environ["DRY_FAKE"]
        m = json.load(open(path))
        m["gpus"][0]["processes"].append({"pid": os.getpid(), "used_bytes": n + (500 << 20)})
        json.dump(m, open(path + ".tmp", "w"))
        os.rename(path + ".tmp", path)
    def fill_(self, v):
        return self
    def numel(self):
        return self.n
def empty(n, dtype=None, device=None):
    return _Tensor(n)
PY
cat > "$FAKES/bin/python-torch" <<SH
#!/usr/bin/env bash
# aikore gives units no AIKORE_* variable: the file's path is baked in.
DRY_FAKE=$FAKES/gpus.json PYTHONPATH=$FAKES/py exec python3 "\$@"
SH
chmod +x "$FAKES/bin/nvidia-smi" "$FAKES/bin/python-torch"
PATH=$FAKES/bin:$PATH TORCH_PYTHON=$FAKES/bin/python-torch \
    AIKORE_BIN=${AIKORE_BIN:-$ROOT/target/debug/aikore} "$ROOT/tests/gpu/check.sh"
