#!/usr/bin/env bash
# SC2016: `bash -c '...' _ args` is single-quoted on purpose (the child expands
# $1...). SC2317: helpers called only through `check`/`run` look unreachable.
# shellcheck disable=SC2016,SC2317
# Tests for the stock blueprints: shellcheck on every script, then the
# helpers in blueprints/functions.sh against real git repos, real venvs and
# real directories in a temp dir. No network, no GPU.
# Exit status is non-zero on any failure; the last line is "N passed, N failed".
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BP="$ROOT/blueprints"
PASS=0
FAIL=0

ok() { PASS=$((PASS + 1)); echo "ok   - $*"; }
not_ok() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
check() { # check DESCRIPTION COMMAND...
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}
finish() {
    echo "$PASS passed, $FAIL failed"
    ((FAIL == 0))
    exit $?
}

# ---------------------------------------------------------------- shellcheck
if ! command -v shellcheck >/dev/null 2>&1; then
    not_ok "shellcheck is installed (apt-get install -y shellcheck)"
else
    for f in "$BP"/*.sh "$ROOT/tests/blueprints.sh"; do
        if out=$(shellcheck -x -P SCRIPTDIR "$f" 2>&1); then
            ok "shellcheck $(basename "$f")"
        else
            not_ok "shellcheck $(basename "$f")"
            echo "$out"
        fi
    done
fi

# ---------------------------------------------------------------- metadata
for f in "$BP"/*.sh; do
    # Helpers, not blueprints: the shared functions and persistent mode's wrapper.
    [[ "$(basename "$f")" == functions.sh || "$(basename "$f")" == persistent-run.sh ]] && continue
    name=$(basename "$f")
    meta=$(sed -n '/^### AIKORE-METADATA-START ###$/,/^### AIKORE-METADATA-END ###$/p' "$f")
    check "$name starts with #!/usr/bin/env bash" test "$(head -n1 "$f")" = "#!/usr/bin/env bash"
    check "$name has a metadata block on line 2" test "$(sed -n 2p "$f")" = "### AIKORE-METADATA-START ###"
    for key in name category description venv_type proxy; do
        check "$name declares aikore.$key" grep -qE "^# aikore\.$key = .+" <<<"$meta"
    done
    check "$name has a valid venv_type" grep -qE '^# aikore\.venv_type = (venv|conda|none)$' <<<"$meta"
    check "$name has a valid proxy" grep -qE '^# aikore\.proxy = (subpath|port)$' <<<"$meta"
    check "$name has no or a known framework" bash -c '! grep -q "^# aikore\.framework" <<<"$1" || grep -qE "^# aikore\.framework = gradio$" <<<"$1"' _ "$meta"
    check "$name ends by exec-ing the app" grep -qE '^exec ' "$f"
    check "$name is executable" test -x "$f"
done

# ---------------------------------------------------------------- helpers
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export GIT_AUTHOR_NAME=test GIT_AUTHOR_EMAIL=test@example.invalid
export GIT_COMMITTER_NAME=test GIT_COMMITTER_EMAIL=test@example.invalid
export GIT_CONFIG_NOSYSTEM=1 HOME="$TMP/home"
mkdir -p "$HOME"
git config --global init.defaultBranch main
git config --global protocol.file.allow always

export INSTANCE_NAME=t1
export INSTANCE_CONF_DIR="$TMP/data/instances/t1"
export INSTANCE_OUTPUT_DIR="$TMP/data/outputs/t1"
export AIKORE_DATA_DIR="$TMP/data"
mkdir -p "$INSTANCE_CONF_DIR"
cd "$INSTANCE_CONF_DIR" || exit 1
# shellcheck source=../blueprints/functions.sh
source "$BP/functions.sh"

# Runs a helper in a subshell (die exits it, not the test), output to a log.
run() { ( "$@" ) >>"$TMP/helpers.log" 2>&1; }

# --- clone_or_update: an upstream with two tags, then a branch commit.
UP="$TMP/upstream"
git init -q "$UP"
mkdir -p "$UP/models/checkpoints"
echo one >"$UP/app.txt"
echo placeholder >"$UP/models/checkpoints/put_checkpoints_here"
git -C "$UP" add -A && git -C "$UP" commit -qm one && git -C "$UP" tag v1
echo two >"$UP/app.txt"
git -C "$UP" commit -qam two && git -C "$UP" tag v2
echo three >"$UP/app.txt"
git -C "$UP" commit -qam three
V1=$(git -C "$UP" rev-parse v1)
V2=$(git -C "$UP" rev-parse v2)
head_of() { git -C "$1" rev-parse HEAD; }

check "clone_or_update clones at the pinned tag" run clone_or_update "$UP" ./App v1
check "  HEAD is v1, not upstream's newest" test "$(head_of App)" = "$V1"
check "  file content is v1's" test "$(cat App/app.txt)" = one

echo "local edit" >>App/app.txt
git -C "$UP" tag -f v1 "$V2" >/dev/null # upstream moves the tag: must not matter
check "same ref again succeeds" run clone_or_update "$UP" ./App v1
check "  unchanged checkout left alone (HEAD still v1)" test "$(head_of App)" = "$V1"
check "  local edit kept" grep -q "local edit" App/app.txt
git -C "$UP" tag -f v1 "$V1" >/dev/null

# link_shared_models on a tracked dir, then a ref change must still work.
check "link_shared_models on a tracked model dir" run link_shared_models ./App/models checkpoints
check "ref change to v2 succeeds" run clone_or_update "$UP" ./App v2
check "  HEAD is v2" test "$(head_of App)" = "$V2"
check "  local edit stashed with a message" grep -q "aikore: local edits before moving from v1 to v2" <<<"$(git -C App stash list)"
check "  working tree has v2's content" test "$(cat App/app.txt)" = two

pinned_commit=$(git -C "$UP" rev-parse HEAD)
check "ref change to a bare commit id" run clone_or_update "$UP" ./App "$pinned_commit"
check "  HEAD is that commit" test "$(head_of App)" = "$pinned_commit"
check "unknown ref fails" bash -c '! ( source "$1/functions.sh"; clone_or_update "$2" ./App v9 ) >/dev/null 2>&1' _ "$BP" "$UP"
check "  and leaves HEAD where it was" test "$(head_of App)" = "$pinned_commit"

mkdir -p NotGit && echo x >NotGit/file
check "non-empty non-git dir is refused" bash -c '! ( source "$1/functions.sh"; clone_or_update "$2" ./NotGit v1 ) >/dev/null 2>&1' _ "$BP" "$UP"
check "  and left untouched" test -f NotGit/file

# --- ensure_venv
check "ensure_venv creates a venv" run ensure_venv ./env python3
check "  env/bin/python works" ./env/bin/python -c ''
touch ./env/marker
check "ensure_venv again keeps it" run ensure_venv ./env python3
check "  (marker still there)" test -e ./env/marker
touch "$INSTANCE_CONF_DIR/.rebuild-env"
check "ensure_venv with .rebuild-env rebuilds" run ensure_venv ./env python3
check "  old env gone (marker removed)" test ! -e ./env/marker
check "  trigger removed" test ! -e "$INSTANCE_CONF_DIR/.rebuild-env"
check "  new env works" ./env/bin/python -c ''
ensure_venv ./env python3 >/dev/null
check "ensure_venv activates (python is the venv's)" test "$(command -v python)" = "$INSTANCE_CONF_DIR/env/bin/python"

# --- ensure_torch / pip_install_requirements, offline: a fake torch install
# and a hand-made wheel.
SITE=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$SITE/torch" "$SITE/torch-2.5.1+cu124.dist-info"
echo '__version__ = "2.5.1+cu124"' >"$SITE/torch/__init__.py"
printf 'Metadata-Version: 2.1\nName: torch\nVersion: 2.5.1+cu124\n' >"$SITE/torch-2.5.1+cu124.dist-info/METADATA"
: >"$SITE/torch-2.5.1+cu124.dist-info/RECORD"
check "ensure_torch leaves an installed torch alone (no network used)" \
    bash -c 'TORCH_INDEX_URL=http://127.0.0.1:9/none; source "$1/functions.sh"; ensure_torch | grep -q "torch 2.5.1+cu124 already installed"' _ "$BP"

WHL="$TMP/app/dist/aikoretestpkg-1.0-py3-none-any.whl"
mkdir -p "$TMP/app/dist"
python - "$WHL" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("aikoretestpkg.py", "VALUE = 42\n")
    z.writestr("aikoretestpkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: aikoretestpkg\nVersion: 1.0\n")
    z.writestr("aikoretestpkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr("aikoretestpkg-1.0.dist-info/RECORD", "")
PY
printf -- '--no-index\ntorch==2.0.0\ntorchsde==0.2.6\n' >"$TMP/app/more.txt"
printf -- '# app requirements\n-r more.txt\nTorchVision>=0.1\nxformers\n./dist/aikoretestpkg-1.0-py3-none-any.whl\n' >"$TMP/app/requirements.txt"

# The filter alone: torch family gone (at any depth), torchsde kept.
_AIKORE_REQ_N=0
_AIKORE_REQ_SOURCES=()
mkdir -p "$TMP/filter"
_aikore_filter_requirements "$TMP/app/requirements.txt" "$TMP/filter/out.txt" "$TMP/filter" >/dev/null
filtered_all=$(cat "$TMP/filter"/*.txt)
check "filter drops torch, TorchVision and xformers lines" bash -c '! grep -qiE "^(torch|torchvision|xformers)([^a-z]|$)" <<<"$1"' _ "$filtered_all"
check "filter keeps torchsde" grep -q '^torchsde==0.2.6$' <<<"$filtered_all"
check "filter rewrites -r to an absolute filtered copy" grep -qE "^-r $TMP/filter/included-1.txt$" "$TMP/filter/out.txt"

# The whole thing, offline (--no-index comes from the included file); the
# torchsde line would need the network, so use a file without it.
printf -- '--no-index\ntorch==2.0.0\n' >"$TMP/app/more.txt"
check "pip_install_requirements installs (relative wheel path, torch line skipped)" run pip_install_requirements "$TMP/app/requirements.txt"
check "  package importable" python -c 'import aikoretestpkg; assert aikoretestpkg.VALUE == 42'
check "  torch build untouched" test "$(python -c 'import importlib.metadata as m; print(m.version("torch"))')" = "2.5.1+cu124"
check "  constraints logged" grep -q "keeping the installed torch build: torch==2.5.1+cu124" "$TMP/helpers.log"
check "second run skips pip (requirements unchanged)" bash -c 'source "$1/functions.sh"; export PATH="$2/bin:$PATH"; pip_install_requirements "$3" | grep -q "unchanged since the last install"' _ "$BP" "$INSTANCE_CONF_DIR/env" "$TMP/app/requirements.txt"

# --- link_shared_models
mkdir -p "$AIKORE_DATA_DIR/models/checkpoints" App2/models/Stable-diffusion App2/models/Lora
echo shared >"$AIKORE_DATA_DIR/models/checkpoints/already-shared.safetensors"
echo mine >App2/models/Stable-diffusion/model-a.safetensors
echo same >App2/models/Lora/same.txt
mkdir -p "$AIKORE_DATA_DIR/models/loras" && echo same >"$AIKORE_DATA_DIR/models/loras/same.txt"
check "link_shared_models with app:shared names" run link_shared_models App2/models Stable-diffusion:checkpoints Lora:loras VAE:vae
check "  Stable-diffusion is a symlink to models/checkpoints" test "$(readlink App2/models/Stable-diffusion)" = "$AIKORE_DATA_DIR/models/checkpoints"
check "  existing model moved into the shared dir" test "$(cat "$AIKORE_DATA_DIR/models/checkpoints/model-a.safetensors")" = mine
check "  shared files visible through the link" test -f App2/models/Stable-diffusion/already-shared.safetensors
check "  identical duplicate dropped, no backup made" bash -c '! compgen -G "App2/models/Lora.aikore-backup-*" >/dev/null'
check "  missing app dir (VAE) linked, shared dir created" test -L App2/models/VAE -a -d "$AIKORE_DATA_DIR/models/vae"
check "running it again is a no-op" run link_shared_models App2/models Stable-diffusion:checkpoints Lora:loras VAE:vae
check "  still linked" test "$(readlink App2/models/Stable-diffusion)" = "$AIKORE_DATA_DIR/models/checkpoints"

mkdir -p App3/models/checkpoints
echo different >App3/models/checkpoints/model-a.safetensors
echo new >App3/models/checkpoints/model-b.safetensors
check "name clash with different contents" run link_shared_models App3/models checkpoints
check "  shared copy not overwritten" test "$(cat "$AIKORE_DATA_DIR/models/checkpoints/model-a.safetensors")" = mine
check "  non-clashing file moved" test -f "$AIKORE_DATA_DIR/models/checkpoints/model-b.safetensors"
check "  clashing file kept in a backup dir" bash -c 'grep -qx different App3/models/checkpoints.aikore-backup-*/model-a.safetensors'
check "  and the dir is linked" test -L App3/models/checkpoints
check "link_shared_models without AIKORE_DATA_DIR fails" bash -c '! ( unset AIKORE_DATA_DIR; source "$1/functions.sh"; link_shared_models App2/models x ) >/dev/null 2>&1' _ "$BP"

# --- link_outputs
mkdir -p App2/outputs/txt2img
echo img >App2/outputs/txt2img/1.png
check "link_outputs moves existing outputs and links" run link_outputs App2/outputs
check "  outputs dir is a symlink to INSTANCE_OUTPUT_DIR" test "$(readlink App2/outputs)" = "$INSTANCE_OUTPUT_DIR"
check "  old output moved" test -f "$INSTANCE_OUTPUT_DIR/txt2img/1.png"
ln -sfn /nonexistent App2/outputs
check "link_outputs replaces a wrong symlink" run link_outputs App2/outputs
check "  now points at INSTANCE_OUTPUT_DIR" test "$(readlink App2/outputs)" = "$INSTANCE_OUTPUT_DIR"
check "link_outputs without INSTANCE_OUTPUT_DIR fails" bash -c '! ( unset INSTANCE_OUTPUT_DIR; source "$1/functions.sh"; link_outputs x ) >/dev/null 2>&1' _ "$BP"

# --- test-http.sh: the blueprint aikore's own tests use.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
out=$(WEBUI_PORT=$port TEST_EXIT_CODE=7 CUDA_VISIBLE_DEVICES=1 "$BP/test-http.sh" 2>&1)
rc=$?
check "test-http.sh exits with TEST_EXIT_CODE" test "$rc" = 7
check "  and logs its environment" bash -c 'grep -qx "INSTANCE_NAME=t1" <<<"$1" && grep -qx "CUDA_VISIBLE_DEVICES=1" <<<"$1" && grep -qx "WEBUI_PORT=$2" <<<"$1"' _ "$out" "$port"
echo hello >"$INSTANCE_CONF_DIR/probe.txt"
WEBUI_PORT=$port TEST_DELAY_SEC=1 "$BP/test-http.sh" >"$TMP/http.log" 2>&1 &
http_pid=$!
got=""
for _ in $(seq 1 50); do
    got=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=1).read().decode().strip())' "http://127.0.0.1:$port/probe.txt" 2>/dev/null) && break
    sleep 0.1
done
check "test-http.sh serves INSTANCE_CONF_DIR after its delay" test "$got" = hello
kill "$http_pid" 2>/dev/null
wait "$http_pid" 2>/dev/null
check "  the server was the exec'd main process (killed by one signal)" bash -c '! kill -0 "$1" 2>/dev/null' _ "$http_pid"

# --- comfyui.sh end to end, offline: a local stand-in for the ComfyUI repo
# (tag v0.3.43, a main.py that records its argv), a pre-made env with a fake
# torch. Checks the blueprint's whole flow and the command line it execs.
FAKE="$TMP/fake-comfyui"
git init -q "$FAKE"
mkdir -p "$FAKE/models/checkpoints"
echo placeholder >"$FAKE/models/checkpoints/put_checkpoints_here"
printf -- '--no-index\ntorch\ntorchvision\n' >"$FAKE/requirements.txt"
cat >"$FAKE/main.py" <<'PY'
import os, sys
with open(os.path.join(os.environ["INSTANCE_CONF_DIR"], "argv.txt"), "w") as f:
    f.write("\n".join(sys.argv[1:]) + "\n")
    f.write("exe=" + sys.executable + "\n")
PY
git -C "$FAKE" add -A && git -C "$FAKE" commit -qm fake && git -C "$FAKE" tag v0.3.43
INST2="$TMP/data/instances/c1"
mkdir -p "$INST2"
cp -a "$INSTANCE_CONF_DIR/env" "$INST2/env" # venv with the fake torch
cp "$BP/comfyui.sh" "$INST2/launch.sh"
(
    cd "$INST2" && env INSTANCE_NAME=c1 INSTANCE_CONF_DIR="$INST2" \
        INSTANCE_OUTPUT_DIR="$TMP/data/outputs/c1" WEBUI_PORT=19123 CUDA_VISIBLE_DEVICES= \
        AIKORE_BLUEPRINTS_DIR="$BP" AIKORE_DATA_DIR="$AIKORE_DATA_DIR" \
        COMFYUI_REPO="$FAKE" AIKORE_PYTHON=python3 EXTRA_ARGS="--preview-method auto" \
        PATH="$PATH" HOME="$HOME" ./launch.sh
) >"$TMP/comfyui.log" 2>&1
check "comfyui.sh runs to its exec (offline stand-in repo)" test -f "$INST2/argv.txt"
argv=$(cat "$INST2/argv.txt" 2>/dev/null)
check "  listens on 127.0.0.1:WEBUI_PORT" grep -qz -- "--listen.127.0.0.1.--port.19123" <<<"$argv"
check "  outputs to INSTANCE_OUTPUT_DIR" grep -q -- "^$TMP/data/outputs/c1$" <<<"$argv"
check "  --cpu when CUDA_VISIBLE_DEVICES is empty" grep -qx -- "--cpu" <<<"$argv"
check "  EXTRA_ARGS appended" grep -qz -- "--preview-method.auto" <<<"$argv"
check "  runs the instance venv's python" grep -qx "exe=$INST2/env/bin/python" <<<"$argv"
check "  models/checkpoints linked to the shared dir" test "$(readlink "$INST2/ComfyUI/models/checkpoints")" = "$AIKORE_DATA_DIR/models/checkpoints"
check "  the newest release tag installed and recorded" grep -qx v0.3.43 "$INST2/.aikore-version"
check "  the install phase says its steps (aikore shows them)" grep -q '^\[aikore-install\] step 4/4: requirements' "$TMP/comfyui.log"
check "  the install has its own log" grep -q 'step 2/4: Python env' "$INST2/install.log"
rm -f "$INST2/argv.txt"
(
    cd "$INST2" && env INSTANCE_NAME=c1 INSTANCE_CONF_DIR="$INST2" \
        INSTANCE_OUTPUT_DIR="$TMP/data/outputs/c1" WEBUI_PORT=19123 CUDA_VISIBLE_DEVICES= \
        AIKORE_BLUEPRINTS_DIR="$BP" AIKORE_DATA_DIR="$AIKORE_DATA_DIR" \
        COMFYUI_REPO="$FAKE" AIKORE_PYTHON=python3 PATH="$PATH" HOME="$HOME" ./launch.sh
) >"$TMP/comfyui2.log" 2>&1
check "  a second start skips the install (stamp) and still runs the venv's python" \
    bash -c 'grep -q "^\[aikore-install\] skipped: v0.3.43" "$1" && grep -qx "exe=$2/env/bin/python" "$2/argv.txt"' _ "$TMP/comfyui2.log" "$INST2"
check "launch.sh without AIKORE_BLUEPRINTS_DIR fails with a clear error" \
    bash -c 'cd "$1" || exit 1; out=$(env -u AIKORE_BLUEPRINTS_DIR ./launch.sh 2>&1); rc=$?
             ((rc != 0)) && [[ "$out" == *"AIKORE_BLUEPRINTS_DIR must name"* ]]' _ "$INST2"
if ((FAIL > 0)); then
    echo "--- comfyui.sh output ---"
    cat "$TMP/comfyui.log"
fi

if ((FAIL > 0)); then
    echo "--- helper output ---"
    cat "$TMP/helpers.log"
fi
finish
