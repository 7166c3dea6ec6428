#!/usr/bin/env bash
### AIKORE-METADATA-START ###
# aikore.name = Stable Diffusion WebUI Forge
# aikore.category = Image generation
# aikore.description = A1111-style WebUI (Forge) for SD 1.5, SDXL and Flux.
# aikore.venv_type = venv
# aikore.venv_path = ./env
# aikore.proxy = subpath
# aikore.framework = gradio
### AIKORE-METADATA-END ###
#
# Proxy: Forge (like A1111) has --subpath, passed to Gradio as its root path
# as f"/{subpath}"; so the value carries no leading slash: app/<name>.
set -euo pipefail

if [[ -z "${AIKORE_BLUEPRINTS_DIR:-}" || ! -r "${AIKORE_BLUEPRINTS_DIR:-}/functions.sh" ]]; then
    echo "launch.sh: AIKORE_BLUEPRINTS_DIR must name the dir holding functions.sh (aikore sets it)" >&2
    exit 1
fi
# shellcheck source=functions.sh
source "$AIKORE_BLUEPRINTS_DIR/functions.sh"
require_instance_env

# The pinned Forge commit (Forge publishes no version tags). Starting an
# instance never updates it; to upgrade, change this (or set FORGE_REF in the
# unit's Environment=) and restart.
FORGE_REF=${FORGE_REF:-b6cfd7fce399dbb8fcae0960c7581a27a1cb7209}
FORGE_REPO=${FORGE_REPO:-https://github.com/lllyasviel/stable-diffusion-webui-forge.git}
APP_DIR=./stable-diffusion-webui-forge

PYTHON=$(pick_python 3.10 3.11)

# The install phase: a job aikore shows as `installing` (docs/operations.md).
install() {
    install_step "Forge ${FORGE_REF:0:12}"
    clone_or_update "$FORGE_REPO" "$APP_DIR" "$FORGE_REF"
    install_step "Python env"
    ensure_venv ./env "$PYTHON"
    # Forge's own launcher defaults to torch 2.3.1 / torchvision 0.18.1 (cu121);
    # install the same build so launch.py finds it and leaves it alone.
    install_step "torch"
    ensure_torch "https://download.pytorch.org/whl/cu121" torch==2.3.1 torchvision==0.18.1
    install_step "requirements"
    pip_install_requirements "$APP_DIR/requirements_versions.txt"
}
run_install 4 "$FORGE_REF" "$FORGE_REPO" "${TORCH_INDEX_URL:-}" "${TORCH_PACKAGES:-}"
ensure_venv ./env "$PYTHON"

# Forge's folder names, mapped onto the shared names ComfyUI uses.
link_shared_models "$APP_DIR/models" \
    Stable-diffusion:checkpoints Lora:loras VAE:vae ControlNet:controlnet ESRGAN:upscale_models
link_shared_models "$APP_DIR" embeddings
# Forge writes txt2img-images/, img2img-images/, ... under outputs/.
link_outputs "$APP_DIR/outputs"

args=(--server-name 127.0.0.1 --port "$WEBUI_PORT" --subpath "app/$INSTANCE_NAME")
if [[ -z "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    log "no GPU assigned (CUDA_VISIBLE_DEVICES empty): skipping Forge's CUDA test"
    args+=(--skip-torch-cuda-test)
fi
extra=()
read_extra_args extra
log "starting Forge ${FORGE_REF:0:12} on 127.0.0.1:$WEBUI_PORT under /app/$INSTANCE_NAME/"
cd "$APP_DIR"
exec python launch.py "${args[@]}" "${extra[@]}"
