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
cargo build --quiet
npm ci --prefix web --no-audit --no-fund --silent
export AIKORE_BIN="${AIKORE_BIN:-${CARGO_TARGET_DIR:-target}/debug/aikore}"
cd web
node --test --test-reporter=spec tests/
