#!/usr/bin/env bash
# GPU readiness check (issue 31): one unattended command for a lent GPU machine, at most 8 minutes.
# It runs benchmarks/gpu_check.py with the Python that has ComfyUI's requirements and writes
# benchmarks/results/gpu-check-<device>[-tiny].{json,md}. Exit status 1: a cell failed or a target was missed.
#
#   COMFYUI_PATH=~/ComfyUI benchmarks/gpu_check.sh                 # the GPU: SD1.5 512², SDXL 1024², 50 steps
#   COMFYUI_PATH=~/ComfyUI benchmarks/gpu_check.sh --cpu --tiny    # a CPU: the same matrix at 64² / 128², 4 steps
#
# Environment: COMFYUI_PATH (the ComfyUI checkout), PYTHON (default: python3 on PATH, or the active venv's),
# SPDINV_TEST_CACHE (where the random test checkpoints are built and reused; building them takes minutes).
# Other options: benchmarks/gpu_check.sh --help.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
exec "$python" "$here/gpu_check.py" "$@"
