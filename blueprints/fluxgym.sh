#!/usr/bin/env bash
### AIKORE-METADATA-START ###
# aikore.name = FluxGym
# aikore.category = Training
# aikore.description = Simple Flux LoRA training UI on top of kohya-ss sd-scripts.
# aikore.venv_type = venv
# aikore.venv_path = ./env
# aikore.proxy = subpath
# aikore.framework = gradio
### AIKORE-METADATA-END ###
#
# Proxy: FluxGym is a Gradio app that calls demo.launch() without a root
# path, so Gradio reads GRADIO_ROOT_PATH / GRADIO_SERVER_NAME /
# GRADIO_SERVER_PORT from the environment.
set -euo pipefail

if [[ -z "${AIKORE_BLUEPRINTS_DIR:-}" || ! -r "${AIKORE_BLUEPRINTS_DIR:-}/functions.sh" ]]; then
    echo "launch.sh: AIKORE_BLUEPRINTS_DIR must name the dir holding functions.sh (aikore sets it)" >&2
    exit 1
fi
# shellcheck source=functions.sh
source "$AIKORE_BLUEPRINTS_DIR/functions.sh"
require_instance_env

# Pinned commits (neither project tags releases). Starting an instance never
# updates them; to upgrade, change these (or set FLUXGYM_REF / SD_SCRIPTS_REF
# in the unit's Environment=) and restart. sd-scripts must come from its sd3
# line of development (FluxGym's README clones `-b sd3`).
FLUXGYM_REF=${FLUXGYM_REF:-886250e8ddc15c0ca6df5151cabe8963ba42a3c2}
FLUXGYM_REPO=${FLUXGYM_REPO:-https://github.com/cocktailpeanut/fluxgym.git}
SD_SCRIPTS_REF=${SD_SCRIPTS_REF:-1b77a4a77c281acef444e9b9c5a15d091cde0eb4}
SD_SCRIPTS_REPO=${SD_SCRIPTS_REPO:-https://github.com/kohya-ss/sd-scripts.git}
APP_DIR=./fluxgym

PYTHON=$(pick_python 3.10 3.11 3.12)

# The install phase: a job aikore shows as `installing` (docs/operations.md).
install() {
    install_step "FluxGym ${FLUXGYM_REF:0:12}"
    clone_or_update "$FLUXGYM_REPO" "$APP_DIR" "$FLUXGYM_REF"
    install_step "sd-scripts ${SD_SCRIPTS_REF:0:12}"
    clone_or_update "$SD_SCRIPTS_REPO" "$APP_DIR/sd-scripts" "$SD_SCRIPTS_REF"
    install_step "Python env"
    ensure_venv ./env "$PYTHON"
    # FluxGym's requirements.txt pins torch 2.5.1 / torchvision 0.20.1 / torchaudio 2.5.1.
    install_step "torch"
    ensure_torch "https://download.pytorch.org/whl/cu124" torch==2.5.1 torchvision==0.20.1 torchaudio==2.5.1
    install_step "requirements"
    pip_install_requirements "$APP_DIR/sd-scripts/requirements.txt"
    pip_install_requirements "$APP_DIR/requirements.txt"
}
run_install 5 "${FLUXGYM_REF:0:12}+${SD_SCRIPTS_REF:0:12}" "$FLUXGYM_REPO" "$FLUXGYM_REF" "$SD_SCRIPTS_REPO" \
    "$SD_SCRIPTS_REF" "${TORCH_INDEX_URL:-}" "${TORCH_PACKAGES:-}"
ensure_venv ./env "$PYTHON"

# FluxGym downloads Flux into models/{unet,vae,clip}: the same folders ComfyUI uses.
link_shared_models "$APP_DIR/models" unet vae clip
# Trained LoRAs, samples and training scripts land in outputs/<lora name>/.
link_outputs "$APP_DIR/outputs"

export GRADIO_SERVER_NAME=127.0.0.1
export GRADIO_SERVER_PORT="$WEBUI_PORT"
export GRADIO_ROOT_PATH="/app/$INSTANCE_NAME"
export GRADIO_ANALYTICS_ENABLED=False
extra=()
read_extra_args extra
log "starting FluxGym ${FLUXGYM_REF:0:12} on 127.0.0.1:$WEBUI_PORT under $GRADIO_ROOT_PATH/"
# app.py opens models.yaml and sd-scripts relative to the working directory.
cd "$APP_DIR"
exec python app.py "${extra[@]}"
