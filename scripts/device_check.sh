#!/usr/bin/env bash
# The device check: the served system on a GPU, in one command that needs only the project's tracked files and
# the device kit (make device-kit → build/device, ≤ 60 MiB; carry it). Nothing is installed: the kit is unpacked
# under /tmp and found through environment variables.
#
#   bash scripts/device_check.sh [--kit build/device] [--only gpu-tests,packed,served] [--shape llama3-8b]
#
# Steps, each bounded by its own timeout; a failed step does not stop the later ones:
#   gpu-tests  GPU parity tests (varlen attention, bf16) and the packed-runtime/heads unit tests;
#   packed     scripts/gpu_check.py: in-process packed runtime vs the model card pipeline (exact 8B shape);
#   served     scripts/bench.py: tritonserver (backbone KIND_GPU) through armorm-serve, async gRPC client at a
#              concurrency sweep on the short and long mixes and best-of-8, the model card pipeline in the
#              same run on the same conversations.
# Writes results.json files, bench.png and device_check.log under $OUT (or build/device-out) and prints the
# summary table last. `make device-rehearsal` runs this same script here, on CPU with the small shape.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KIT=build/device
ONLY=gpu-tests,packed,served
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
OUTDIR=${OUT:-build/device-out}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
exec > >(tee -a "$OUTDIR/device_check.log") 2>&1
[ -f "$KIT/manifest.json" ] || { echo "no kit at $KIT: run make device-kit and carry build/device" >&2; exit 2; }
KIT=$(cd "$KIT" && pwd)

WORK=$(mktemp -d /tmp/armorm-device.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "== unpacking the kit into $WORK"
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
# The 8B sweep, sized so that the three steps fit one 10-minute device call (the served step writes and exports an
# 8B random checkpoint, then loads it in tritonserver). Override with SERVED_ARGS / *_TIMEOUT.
if [ "$SHAPE" = "llama3-8b" ]; then
  SERVED_ARGS=${SERVED_ARGS:---conversations 64 --long-conversations 16 --prompts 8 --concurrency 8,32 --repeats 2 --min-seconds 3}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU: CPU run"
"$PYTHON" -c "import torch, numpy; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__)"

declare -a SUMMARY=()
status=0
step() {  # step NAME SECONDS COMMAND...: run it if selected, record its exit code and time
  local name=$1 limit=$2; shift 2
  case ",$ONLY," in *",$name,"*) ;; *) return 0 ;; esac
  echo "== $name (at most ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  [ $rc -eq 0 ] || status=1
  SUMMARY+=("$(printf '%-10s %s in %ss' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)")" $((SECONDS - start)))")
}

step gpu-tests "${GPU_TESTS_TIMEOUT:-90}" "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_gpu.py tests/test_packed.py tests/test_heads.py
step packed "${PACKED_TIMEOUT:-150}" "$PYTHON" scripts/gpu_check.py --shape "$SHAPE" --output "$OUTDIR/packed" \
  ${PACKED_ARGS:-}
step served "${SERVED_TIMEOUT:-330}" "$PYTHON" scripts/bench.py --shape "$SHAPE" --output "$OUTDIR/served" \
  ${SERVED_ARGS:-}

echo "== summary (log, results.json, bench.png under $OUTDIR)"
"$PYTHON" scripts/device_summary.py "$OUTDIR" || status=1
printf '%s\n' "${SUMMARY[@]}"
exit $status
