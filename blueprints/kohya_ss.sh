#!/usr/bin/env bash
### AIKORE-METADATA-START ###
# aikore.name = kohya_ss
# aikore.category = Training
# aikore.description = bmaltais' Gradio GUI for kohya-ss LoRA / DreamBooth / fine-tune training.
# aikore.venv_type = venv
# aikore.venv_path = ./env
# aikore.proxy = subpath
# aikore.framework = gradio
### AIKORE-METADATA-END ###
#
# Proxy: kohya_gui.py takes --root_path and hands it to Gradio's launch();
# GRADIO_ROOT_PATH is exported too, for versions that pass no root path.
set -euo pipefail

if [[ -z "${AIKORE_BLUEPRINTS_DIR:-}" || ! -r "${AIKORE_BLUEPRINTS_DIR:-}/functions.sh" ]]; then
    echo "launch.sh: AIKORE_BLUEPRINTS_DIR must name the dir holding functions.sh (aikore sets it)" >&2
    exit 1
fi
# shellcheck source=functions.sh
source "$AIKORE_BLUEPRINTS_DIR/functions.sh"
require_instance_env

# The kohya_ss release (its sd-scripts submodule comes with it): `latest`
# (the default) installs the newest release tag at the first install and
# records it; the dashboard's "Update" moves to the newest one. A tag or
# commit in KOHYA_REF (the unit's Environment=) pins it instead.
KOHYA_REF=${KOHYA_REF:-latest}
KOHYA_REPO=${KOHYA_REPO:-https://github.com/bmaltais/kohya_ss.git}
APP_DIR=./kohya_ss
PYTHON=$(pick_python 3.10 3.11)
KOHYA_VERSION=$(release_ref "$KOHYA_REPO" "$KOHYA_REF")

# The install phase: a job aikore shows as `installing` (docs/operations.md).
install() {
    install_step "kohya_ss $KOHYA_VERSION"
    clone_or_update "$KOHYA_REPO" "$APP_DIR" "$KOHYA_VERSION"
    install_step "Python env"
    ensure_venv ./env "$PYTHON"
    install_step "torch"
    ensure_torch "https://download.pytorch.org/whl/cu124" torch==2.5.1 torchvision==0.20.1
    install_step "requirements"
    # kohya's requirements_linux.txt is read by its own installer, which allows
    # several requirements on one line ("torch==... torchvision==... --extra-index-url
    # ..."); pip does not. Rewrite it one requirement per line, options dropped.
    local reqs="$APP_DIR/requirements_linux.txt"
    if [[ -f "$reqs" ]]; then
        awk '{
            sub(/#.*/, "")
            if ($0 ~ /^[[:space:]]*-/ || $0 ~ /;/) { print; next }
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^--?[a-z]/) { i++; continue }
                print $i
            }
        }' "$reqs" >"$APP_DIR/.aikore-requirements-linux.txt"
        pip_install_requirements "$APP_DIR/.aikore-requirements-linux.txt"
    else
        pip_install_requirements "$APP_DIR/requirements.txt"
    fi
}
run_install 4 "$KOHYA_VERSION" "$KOHYA_REPO" "${TORCH_INDEX_URL:-}" "${TORCH_PACKAGES:-}"
ensure_venv ./env "$PYTHON"

# kohya asks for every path in its forms; offer the shared folders at
# predictable places inside the app dir.
link_shared_models "$APP_DIR/models" checkpoints vae loras
link_outputs "$APP_DIR/outputs"

export GRADIO_ROOT_PATH="/app/$INSTANCE_NAME"
export GRADIO_ANALYTICS_ENABLED=False
extra=()
read_extra_args extra
log "starting kohya_ss $KOHYA_VERSION on 127.0.0.1:$WEBUI_PORT under $GRADIO_ROOT_PATH/"
cd "$APP_DIR"
exec python kohya_gui.py --listen 127.0.0.1 --server_port "$WEBUI_PORT" \
    --root_path "$GRADIO_ROOT_PATH" --headless "${extra[@]}"
