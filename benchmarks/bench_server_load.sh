#!/usr/bin/env bash
# Refresh benchmarks/results/server_load.json (quoted in the README): the bounded 32-client load test on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
TWOSTAGE_RESULTS_DIR=benchmarks/results python -m pytest -q -s tests/test_server_load.py
