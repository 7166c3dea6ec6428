#!/usr/bin/env bash
### AIKORE-METADATA-START ###
# aikore.name = ComfyUI
# aikore.category = Image generation
# aikore.description = Node-based Stable Diffusion / Flux / video UI.
# aikore.venv_type = venv
# aikore.venv_path = ./env
# aikore.proxy = subpath
# aikore.drain = comfyui
### AIKORE-METADATA-END ###
#
# Proxy: ComfyUI's front end builds every API and WebSocket URL from the
# page's own path, so it works under /app/<name>/ with no flag (NGINX strips
# the prefix). Custom nodes that hard-code absolute paths need the "comfyui"
# active slot instead (see docs/proxy.md, "The ComfyUI slot").
set -euo pipefail

if [[ -z "${AIKORE_BLUEPRINTS_DIR:-}" || ! -r "${AIKORE_BLUEPRINTS_DIR:-}/functions.sh" ]]; then
    echo "launch.sh: AIKORE_BLUEPRINTS_DIR must name the dir holding functions.sh (aikore sets it)" >&2
    exit 1
fi
# shellcheck source=functions.sh
source "$AIKORE_BLUEPRINTS_DIR/functions.sh"
require_instance_env

# The ComfyUI release: `latest` (the default) installs the newest release
# tag at the first install and records it (.aikore-version); starts keep it
# until the dashboard's "Update" moves to the newest one. A tag or commit in
# COMFYUI_REF (the unit's Environment=) pins it instead; changing it
# reinstalls at the next start (the checkout moves, local edits are stashed).
COMFYUI_REF=${COMFYUI_REF:-latest}
COMFYUI_REPO=${COMFYUI_REPO:-https://github.com/comfyanonymous/ComfyUI.git}
APP_DIR=./ComfyUI
PYTHON=$(pick_python 3.12 3.11 3.10)
COMFYUI_VERSION=$(release_ref "$COMFYUI_REPO" "$COMFYUI_REF")

# The install phase: a job aikore shows as `installing` (docs/operations.md).
install() {
    install_step "ComfyUI $COMFYUI_VERSION"
    clone_or_update "$COMFYUI_REPO" "$APP_DIR" "$COMFYUI_VERSION"
    install_step "Python env"
    ensure_venv ./env "$PYTHON"
    install_step "torch"
    ensure_torch "https://download.pytorch.org/whl/cu124"
    install_step "requirements"
    pip_install_requirements "$APP_DIR/requirements.txt"
}
run_install 4 "$COMFYUI_VERSION" "$COMFYUI_REPO" "${TORCH_INDEX_URL:-}" "${TORCH_PACKAGES:-}"
ensure_venv ./env "$PYTHON"

link_shared_models "$APP_DIR/models" \
    checkpoints loras vae controlnet clip unet upscale_models embeddings

args=(--listen 127.0.0.1 --port "$WEBUI_PORT" --output-directory "$INSTANCE_OUTPUT_DIR")
if [[ -z "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    log "no GPU assigned (CUDA_VISIBLE_DEVICES empty): running on the CPU"
    args+=(--cpu)
fi
extra=()
read_extra_args extra
log "starting ComfyUI $COMFYUI_VERSION on 127.0.0.1:$WEBUI_PORT"
cd "$APP_DIR"
exec python main.py "${args[@]}" "${extra[@]}"
