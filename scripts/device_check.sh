#!/usr/bin/env bash
# The whole GPU check for the device machine, in one run (budget: under 6 minutes):
#   1. GPU parity tests (packed runtime, varlen attention, bf16) against the Hugging Face reference;
#   2. scripts/gpu_check.py: packed runtime vs the model card pipeline on the exact Llama-3-8B shape.
# Prepare here with `make gpu-check-prepare` (writes build/gpu/: the tokenizer file and pure-Python test
# tools), then run on the device with build/gpu carried:  bash scripts/device_check.sh
# The device has torch, transformers, safetensors and numpy; nothing is installed there.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/build/gpu/site${PYTHONPATH:+:$PYTHONPATH}"
export ARMORM_LLAMA3_TOKENIZER_JSON="$PWD/build/gpu/tokenizer.json"
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
status=0
timeout 150 "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py tests/test_packed.py \
  tests/test_heads.py || status=1
timeout 240 "$PYTHON" scripts/gpu_check.py "$@" || status=1
exit $status
