#!/usr/bin/env bash
# Dashboard page weight and time to first render of a 100-instance table,
# in headless Chromium against a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
npm ci --prefix web --no-audit --no-fund --silent
AIKORE_BIN="${AIKORE_BIN:-${CARGO_TARGET_DIR:-target}/release/aikore}" node web/bench/dashboard.mjs
