#!/usr/bin/env bash
### AIKORE-METADATA-START ###
# aikore.name = Test HTTP server
# aikore.category = Testing
# aikore.description = Tiny HTTP server for aikore's tests: no internet, no GPU.
# aikore.venv_type = none
# aikore.proxy = subpath
### AIKORE-METADATA-END ###
#
# Knobs (set with Environment= in the instance unit):
#   TEST_DELAY_SEC  seconds to wait before opening the port (to see `stalled`)
#   TEST_EXIT_CODE  exit with this status instead of serving
# Serves the instance dir on 127.0.0.1:$WEBUI_PORT with relative links only,
# so it works under /app/<name>/.
set -euo pipefail

echo "INSTANCE_NAME=${INSTANCE_NAME:-}"
echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}"
echo "CUDA_DEVICE_ORDER=${CUDA_DEVICE_ORDER:-}"
echo "WEBUI_PORT=${WEBUI_PORT:-}"
echo "BLUEPRINT_ID=${BLUEPRINT_ID:-}"
echo "INSTANCE_CONF_DIR=${INSTANCE_CONF_DIR:-}"
echo "INSTANCE_OUTPUT_DIR=${INSTANCE_OUTPUT_DIR:-}"
echo "AIKORE_UNIT=${AIKORE_UNIT:-}"
echo "INSTANCE_URL_PATH=${INSTANCE_URL_PATH:-}"

if [[ -z "${WEBUI_PORT:-}" ]]; then
    echo "test-http: WEBUI_PORT is not set" >&2
    exit 2
fi

delay=${TEST_DELAY_SEC:-0}
if [[ "$delay" != 0 ]]; then
    echo "test-http: waiting ${delay}s before listening"
    sleep "$delay"
fi

if [[ -n "${TEST_EXIT_CODE:-}" ]]; then
    echo "test-http: exiting with status $TEST_EXIT_CODE as asked"
    exit "$TEST_EXIT_CODE"
fi

echo "test-http: serving ${INSTANCE_CONF_DIR:-$PWD} on 127.0.0.1:$WEBUI_PORT"
export PYTHONUNBUFFERED=1
exec python3 -m http.server "$WEBUI_PORT" --bind 127.0.0.1 --directory "${INSTANCE_CONF_DIR:-$PWD}"
