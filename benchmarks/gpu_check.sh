#!/usr/bin/env bash
# One command on a fresh GPU machine, from anywhere in the repository:   bash benchmarks/gpu_check.sh
# Installs CUDA torch 2.13.0 and the project's locked packages into .venv-gpu, then on one GPU trains the GPT-2-124M
# and Llama-style 125M presets for STEPS steps in bf16 under ZeRO 1 and ZeRO 3 and in a plain PyTorch loop (same model
# class, same batches, one fresh process each: benchmarks/bench_train.py), and writes tokens/s, MFU, peak GPU memory
# and the loss after STEPS steps to benchmarks/results/gpu.json. Budget: under 8 minutes on an H200.
#
# Where torch comes from, first match wins (the machine may have no network):
#   1. .venv-gpu already holds a working CUDA torch 2.13.0 (a rerun);
#   2. the system Python has a CUDA torch 2.13.0 (a GPU image): .venv-gpu sees it (--system-site-packages);
#   3. .whl/ (from `make gpu-wheels` on a machine with internet): offline, pip --no-index --find-links .whl;
#   4. the registries: torch from TORCH_INDEX, the rest from PyPI.
# Settings (environment): STEPS (30), MICRO_BATCH (8), PRESETS, CONFIGS, OUT, TORCH_INDEX, CHILD_TIMEOUT (150 s).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
VENV=${GPU_VENV:-.venv-gpu}
STEPS=${STEPS:-30}
MICRO_BATCH=${MICRO_BATCH:-8}
PRESETS=${PRESETS:-gpt2-124m llama-125m}
CONFIGS=${CONFIGS:-plain:bf16 zero1:bf16 zero3:bf16}
OUT=${OUT:-benchmarks/results/gpu.json}
TORCH_VERSION=2.13.0
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}
CHILD_TIMEOUT=${CHILD_TIMEOUT:-150}
LOCK=requirements/py311-worker.txt
export PIP_DISABLE_PIP_VERSION_CHECK=1 DS_ACCELERATOR=cuda PYTHONPATH="$PWD"

log() { printf '[gpu_check %3ds] %s\n' $((SECONDS - started)) "$*"; }
has_cuda_torch() {
  "$1" -c "import sys, torch; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' and \
torch.cuda.is_available() else 1)" 2>/dev/null
}
# The locked packages the benchmark imports (and their locked dependencies), as name==version, without torch.
pins() { grep -E '^[A-Za-z0-9_.-]+==' "$LOCK" | sed 's/ *\\$//' | grep -viE '^(torch|nvidia-|triton)'; }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  || { echo "gpu_check: no NVIDIA driver here (nvidia-smi)"; exit 2; }
PYTHON=$(command -v python3.11 || command -v python3)

if [ -x "$VENV/bin/python" ] && has_cuda_torch "$VENV/bin/python"; then
  log "reusing $VENV"
elif has_cuda_torch "$PYTHON"; then
  log "the system Python has CUDA torch $TORCH_VERSION: $VENV on top of it"
  "$PYTHON" -m venv --system-site-packages "$VENV"
  if [ -d .whl ]; then
    pins | "$VENV/bin/pip" install --quiet --no-index --find-links .whl --no-deps -r /dev/stdin
  else
    pins | "$VENV/bin/pip" install --quiet --no-deps -r /dev/stdin
  fi
elif [ -d .whl ]; then
  log "installing from .whl/ (offline)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --no-index --find-links .whl "torch==$TORCH_VERSION"
  pins | "$VENV/bin/pip" install --quiet --no-index --find-links .whl --no-deps -r /dev/stdin
else
  log "installing from the registries (torch from $TORCH_INDEX)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX"
  pins | "$VENV/bin/pip" install --quiet --no-deps -r /dev/stdin
fi
has_cuda_torch "$VENV/bin/python" || { echo "gpu_check: torch in $VENV does not see a GPU"; exit 3; }
log "installed; training ($PRESETS) x ($CONFIGS), $STEPS steps, micro-batch $MICRO_BATCH"

# shellcheck disable=SC2086  # PRESETS and CONFIGS are word lists
"$VENV/bin/python" benchmarks/bench_train.py --device cuda --presets $PRESETS --configs $CONFIGS \
  --steps "$STEPS" --micro-batch "$MICRO_BATCH" --vocab 50257 --child-timeout "$CHILD_TIMEOUT" --out "$OUT"
log "done: $OUT"
