#!/usr/bin/env bash
# The three presets for a fixed number of steps on one CUDA GPU, in the precision `auto` picks (bf16-mixed on a
# GPU with native bf16): a table of step time, samples or tokens/s, MFU and peak GPU memory (bench/gpu_steps.py; its docstring documents the FLOP formulas). Under
# 8 minutes on one modern GPU (a hard limit stops it there). Without a GPU it fails with one line.
#
#   bench/gpu.sh                       # from the repo root or anywhere; real data from $AIGC_DATA_DIR, else synthetic
#   bench/gpu.sh --steps 500 --systems mlm seq2seq
#   bench/gpu.sh --callbacks           # with the launcher's default callbacks and TensorBoard logging
#   bench/gpu.sh --cpu                 # tiny configs on the CPU: a smoke test of the script
#
# Python: $PYTHON, else the repo's .venv, else python3. AIGC_DATA_DIR defaults to ../shared/data where it exists.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="python3"; fi
fi
if [[ -z "${AIGC_DATA_DIR:-}" && -d "$ROOT/../shared/data/mnist" ]]; then
  export AIGC_DATA_DIR="$ROOT/../shared/data"
fi
if [[ " $* " != *" --cpu "* ]] && ! command -v nvidia-smi >/dev/null 2>&1 && [[ ! -e /dev/nvidia0 && ! -e /dev/kfd ]]; then
  # no driver tool, no device node: say so before paying for the torch import (gpu_steps.py checks CUDA itself)
  echo "error: no GPU on this machine (no nvidia-smi, no /dev/nvidia0); run bench/gpu.sh on a machine with a CUDA GPU, or pass --cpu for the CPU smoke test" >&2
  exit 1
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"  # a checkout with the dependencies, installed or not
LIMIT_S="${GPU_BENCH_LIMIT_S:-480}"
status=0
timeout "$LIMIT_S" "$PY" "$ROOT/bench/gpu_steps.py" "$@" || status=$?
if [[ $status -eq 124 ]]; then
  echo "error: bench/gpu.sh stopped after ${LIMIT_S} s (the 8-minute budget); rows above are complete" >&2
fi
exit $status
