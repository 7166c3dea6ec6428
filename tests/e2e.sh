#!/usr/bin/env bash
# Browser end-to-end tests of the dashboard: headless Chromium (Debian's
# `chromium` package) driven by playwright-core against a debug build, on
# the API port and, in deployed.test.mjs, through the stock NGINX unit.
# Screenshots go to target/screenshots/ (or $AIKORE_SCREENSHOTS).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || { echo "e2e: chromium is not installed (apt-get install -y chromium)" >&2; exit 1; }
# The deployed-path suite drives the stock nginx.service.
[ -x /usr/sbin/nginx ] || { echo "e2e: nginx is not installed (apt-get install -y nginx)" >&2; exit 1; }
# A binary given in AIKORE_BIN (.ci/run passes the one `cargo test` built) is
# used as is; otherwise this checkout's debug build, brought up to date.
if [ -z "${AIKORE_BIN:-}" ]; then
  cargo build --quiet
  AIKORE_BIN="${CARGO_TARGET_DIR:-target}/debug/aikore"
fi
[ -x "$AIKORE_BIN" ] || { echo "e2e: no aikore binary at $AIKORE_BIN" >&2; exit 1; }
AIKORE_BIN=$(realpath "$AIKORE_BIN")
export AIKORE_BIN
npm ci --prefix web --no-audit --no-fund --silent
cd web
node --test --test-reporter=spec tests/
