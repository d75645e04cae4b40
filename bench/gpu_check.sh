#!/usr/bin/env bash
# The first-run check of the cuda backend on a GPU machine (see bench/gpu_check.py):
#   bash bench/gpu_check.sh [--dry-run] [--out DIR] [--cuda 12|13]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
