#!/usr/bin/env bash
# The accelerator suite (benchmarks/device_suite.py): one JSON of the rates that decide a published run's wall
# time. On a lent GPU, after `pip install -e . "jax[cuda12]"`:
#     bash benchmarks/device_suite.sh device_suite.json
# PYTHON=... picks the interpreter (default: python). On a CPU, toy sizes only (what the slow test runs):
#     bash benchmarks/device_suite.sh /tmp/suite.json --reduced
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-device_suite.json}"
shift || true
exec "${PYTHON:-python}" benchmarks/device_suite.py --out "$out" "$@"
