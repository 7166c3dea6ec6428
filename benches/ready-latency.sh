#!/usr/bin/env bash
# Readiness detection latency of instances (see ready_latency.py).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
python3 benches/ready_latency.py
