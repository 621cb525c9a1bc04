#!/usr/bin/env bash
# The device check: the served system on a GPU, in one command that needs only the project's tracked files and
# the device kit (make device-kit → build/device, ≤ 60 MiB; carry it). Nothing is installed: the kit is unpacked
# under /tmp and found through environment variables.
#
#   bash scripts/device_check.sh [--kit build/device] [--only preflight,gpu-tests,packed,served] [--shape llama3-8b]
#
# Budget on an H100 (estimates; the lease is 15 minutes with the machine's start, 10 per command): the whole call
# ≤ 7 minutes, so that a rerun of any one step fits what is left.
#   setup      ~15 s   unpack the kit, the model processes' venv
#   preflight  ≤ 10 s  the model processes' Python exactly as Triton starts it: numpy, torch, transformers, the
#                      varlen kernel's signature and the keywords chosen
#   gpu-tests  ≤ 60 s  GPU parity tests (varlen attention, bf16) and the packed-runtime/heads unit tests
#   packed     ≤ 90 s  scripts/gpu_check.py: in-process packed runtime vs the model card pipeline (8B shape),
#                      weights drawn on the GPU, fp32 reference on the GPU
#   served     ≤ 245 s scripts/bench.py: 8B random weights drawn on the GPU and written once (scratch under /tmp),
#                      exported without the CPU fp32 parity check (the steps above check parity on the GPU),
#                      tritonserver (backbone KIND_GPU) through armorm-serve, a concurrency sweep on the short and
#                      long mixes and best-of-8, the card in the same run, fp32 reference on a subset on the GPU
#   total      ≈ 420 s
# Each step has its own timeout and writes its results as each phase ends; a failed or killed step does not stop the
# later ones, and the summary names what is missing. $OUT (default build/device-out) ends with at most 8 files of
# ≤ 16 MiB, one folder down at most: summary.txt, device_check.log.xz, preflight.txt, packed/results.json,
# served/results.json, served/bench.png (checked by scripts/device_summary.py --check-limits).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KIT=build/device
ONLY=preflight,gpu-tests,packed,served
SHAPE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kit) KIT=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --shape) SHAPE=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
OUTDIR=${OUT:-build/device-out}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG="$OUTDIR/device_check.log"
rm -f "$LOG" "$LOG.xz"
# Everything to the log as well; the tee is waited for at the end, so the last lines are never lost.
exec 3>&1 4>&2
exec > >(tee -a "$LOG") 2>&1
TEE=$!
[ -f "$KIT/manifest.json" ] || { echo "no kit at $KIT: run make device-kit and carry build/device" >&2; exit 2; }
KIT=$(cd "$KIT" && pwd)

WORK=$(mktemp -d /tmp/armorm-device.XXXXXX)  # scratch: checkpoints, repositories, server logs; never under $OUT
finish() {
  local rc=$?
  rm -rf "$WORK"
  exec 1>&3 2>&4
  wait "$TEE" 2>/dev/null
  xz -f -9 "$LOG" 2>/dev/null || true
  exit $rc
}
trap finish EXIT
echo "== setup: unpacking the kit into $WORK"
setup_start=$SECONDS
want=$("$PYTHON" -c "import json; print(json.load(open('$KIT/manifest.json'))['python'])")
have=$("$PYTHON" -c "import sys; print(f'{sys.version_info.major}.{sys.version_info.minor}')")
[ "$want" = "$have" ] || { echo "the kit is for Python $want; $PYTHON is $have: make device-kit for $have" >&2; exit 2; }
tar -xJf "$KIT/triton.tar.xz" -C "$WORK"
mkdir -p "$WORK/site"
tar -xJf "$KIT/site.tar.xz" -C "$WORK/site"
xz -dc "$KIT/tokenizer.json.xz" > "$WORK/tokenizer.json"
# The project's packages under their import names: nothing is pip-installed here.
ln -s "$ROOT/armorm" "$WORK/site/armorm"
ln -s "$ROOT/export" "$WORK/site/armorm_export"
ln -s "$ROOT/client" "$WORK/site/armorm_client"
export PYTHONPATH="$WORK/site:$ROOT"
# The model processes' Python: isolated (PYTHONPATH ignored), it takes the site-packages of the python3 first on
# PATH. A venv of our own gives them numpy 1.x first, then the kit's site and this Python's packages (.pth).
"$PYTHON" -m venv --without-pip "$WORK/stub-venv"
STUB_SITE=$("$WORK/stub-venv/bin/python" -c "import site; print(site.getsitepackages()[0])")
"$PYTHON" -m zipfile -e "$KIT"/numpy-*.whl "$STUB_SITE"
{ echo "$WORK/site"; "$PYTHON" -c "import site; print(chr(10).join(site.getsitepackages()))"; } \
  > "$STUB_SITE/armorm-device.pth"
export ARMORM_STUB_BIN="$WORK/stub-venv/bin"
export ARMORM_TRITON_ROOT="$WORK/pytriton/tritonserver"
export ARMORM_TRITON_CACHE="$WORK/cache"
export ARMORM_LLAMA3_TOKENIZER_JSON="$WORK/tokenizer.json"

if [ -z "$SHAPE" ]; then
  SHAPE=$("$PYTHON" -c "import torch; print('llama3-8b' if torch.cuda.is_available() else 'cpu-small')")
fi
# The 8B sweep, sized to the budget above. Override with SERVED_ARGS / PACKED_ARGS / *_TIMEOUT.
if [ "$SHAPE" = "llama3-8b" ]; then
  SERVED_ARGS=${SERVED_ARGS:---conversations 32 --long-conversations 8 --prompts 4 --concurrency 8,32 --repeats 2 --min-seconds 2 --fidelity-subset 8}
  PACKED_ARGS=${PACKED_ARGS:---short 32 --long 12 --prompts 4}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU: CPU run"
echo "setup done in $((SECONDS - setup_start))s (budget 15s)"

declare -a SUMMARY=()
status=0
step() {  # step NAME SECONDS COMMAND...: run it if selected, record its exit code, time and budget
  local name=$1 limit=$2; shift 2
  case ",$ONLY," in *",$name,"*) ;; *) return 0 ;; esac
  echo "== $name (budget ${limit}s)"
  local start=$SECONDS
  timeout -s INT -k 15 "$limit" "$@"  # SIGINT first: the step stops its server and writes what it has
  local rc=$?
  [ $rc -eq 0 ] || status=1
  local verdict="ok"
  case $rc in 0) ;; 124|137) verdict="KILLED at its ${limit}s timeout" ;; *) verdict="FAILED (exit $rc)" ;; esac
  SUMMARY+=("$(printf '%-10s %-34s %4ss of %ss' "$name" "$verdict" $((SECONDS - start)) "$limit")")
}

# The model processes' Python exactly as tritonserver starts it (the stub's python3 first on PATH, isolated).
step preflight "${PREFLIGHT_TIMEOUT:-10}" env PATH="$ARMORM_STUB_BIN:$PATH" python3 -I scripts/device_preflight.py \
  "$OUTDIR/preflight.txt"
step gpu-tests "${GPU_TESTS_TIMEOUT:-60}" "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_gpu.py tests/test_packed.py tests/test_heads.py
step packed "${PACKED_TIMEOUT:-90}" "$PYTHON" scripts/gpu_check.py --shape "$SHAPE" --output "$OUTDIR/packed" \
  ${PACKED_ARGS:-}
step served "${SERVED_TIMEOUT:-245}" "$PYTHON" scripts/bench.py --shape "$SHAPE" --output "$OUTDIR/served" \
  --scratch "$WORK/served" ${SERVED_ARGS:-}

SUMMARY_FILE="$OUTDIR/summary.txt"
echo "== summary ($SHAPE; results under $OUTDIR)" > "$SUMMARY_FILE"
"$PYTHON" scripts/device_summary.py "$OUTDIR" >> "$SUMMARY_FILE" || status=1
{
  echo "step       verdict                            took of budget"
  printf '%s\n' "${SUMMARY[@]}"
  echo "whole call: ${SECONDS}s (budget 420s)"
} >> "$SUMMARY_FILE"
cat "$SUMMARY_FILE"
exit $status
