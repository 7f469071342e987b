#!/usr/bin/env bash
# The GPU device check on a lent machine that has no network, CPU onnxruntime only, and takes at most 64 MiB
# per call (see bench/README.md, "GPU device check"). From the repository root:
#
#   here, with network:  bench/gpu_check.sh pack [PYTHON_VERSION]   wheels + models -> bench/.carry/batch-NN
#   there, first call:   bench/gpu_check.sh probe                    card, driver, Python, what is installed
#   there, per batch:    bench/gpu_check.sh receive bench/.carry/batch-NN   (carry that folder with the call)
#   there, at the end:   bench/gpu_check.sh install && bench/gpu_check.sh run [gpu_check.py options]
#
# Pieces and the installed runtime stay under /tmp while the machine is warm (BGMASK_CARRY_STORE,
# BGMASK_GPU_SITE). ORT_GPU=onnxruntime-gpu==X.Y.Z picks another build (a driver that only supports CUDA 12
# needs one built for CUDA 12: `pack` prints the CUDA version of the wheel it took).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STORE=${BGMASK_CARRY_STORE:-/tmp/bgmask-carry}
SITE=${BGMASK_GPU_SITE:-/tmp/bgmask-gpu-site}
VENV=${BGMASK_GPU_VENV:-/tmp/bgmask-gpu-venv}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64
           --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

case "${1:-}" in
probe)
  nvidia-smi || echo "no nvidia-smi"
  "$PY" -V
  "$PY" -m pip list 2>/dev/null | grep -i -E '^(onnxruntime|nvidia|torch|numpy|pillow|pyzmq|msgpack|platformdirs) ' || true
  df -h /tmp | tail -1
  ls -la "$STORE" 2>/dev/null | tail -3 || true
  ;;
pack)
  pyver=${2:-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
  work=$(mktemp -d)
  pip_get=("$PY" -m pip download --only-binary=:all: --python-version "$pyver" --implementation cp "${PLATFORMS[@]}" -d "$work")
  "${pip_get[@]}" --no-deps "${ORT_GPU:-onnxruntime-gpu}"
  wheel=$(ls "$work"/onnxruntime_gpu-*.whl)
  unzip -p "$wheel" 'onnxruntime/capi/build_and_package_info.py' | grep -E 'version' || true
  # The NVIDIA wheels of its [cuda,cudnn] extras (with what they need), less cuFFT and NVRTC, which the CUDA
  # provider does not load for these models (preload_dlls() treats them as optional), and the Python packages
  # that onnxruntime-gpu and bgmask need, so that the device's own site-packages play no part.
  nvidia=$(unzip -p "$wheel" '*.dist-info/METADATA' | sed -n 's/^Requires-Dist: \(nvidia-[^;]*\); extra == "\(cuda\|cudnn\)".*/\1/p' \
           | grep -v -E '^nvidia-(cufft|cuda-nvrtc)' | tr -d ' ')
  "${pip_get[@]}" $nvidia numpy pillow pyzmq msgpack platformdirs flatbuffers packaging protobuf
  rm -f "$work"/nvidia_cufft* "$work"/nvidia_cuda_nvrtc*
  models=$(PYTHONPATH=server "$PY" -c 'from bgmask.models import download; from bgmask.models.catalog import Catalog
for name in ("u2netp", "isnet-general-use"): print(download.ensure_model(Catalog.load().get(name)))')
  ls -la "$work"
  "$PY" bench/carry.py pack "$work"/*.whl $models --out bench/.carry --batch-mib 56
  rm -rf "$work"
  ;;
receive)
  "$PY" bench/carry.py receive "${2:?which batch folder}" --store "$STORE"
  "$PY" bench/carry.py missing --store "$STORE" || true
  ;;
install)
  "$PY" bench/carry.py assemble --store "$STORE" --out "$STORE/files"
  rm -rf "$SITE" "$VENV"
  "$PY" -m pip install --no-index --no-deps --quiet --target "$SITE" "$STORE"/files/*.whl
  "$PY" -m venv --without-pip "$VENV"  # no system site-packages: its CPU onnxruntime stays out of sight
  models=$(PYTHONPATH="$SITE:server" "$VENV/bin/python" -c 'from bgmask import paths; print(paths.models_dir())')
  mkdir -p "$models"
  cp "$STORE"/files/*.onnx "$models"/
  rm -f "$STORE"/files/*.whl  # the pieces stay in the store; the joined wheels are installed
  PYTHONPATH="$SITE" "$VENV/bin/python" -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())'
  ;;
run)
  shift
  PYTHONPATH="$SITE" "$VENV/bin/python" bench/gpu_check.py --out "${OUT:-bench/results}" "$@"
  ;;
*)
  sed -n '2,15p' "$0"
  exit 2
  ;;
esac
