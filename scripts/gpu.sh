#!/usr/bin/env bash
# On a machine with a CUDA GPU and CuPy (but maybe without dask/zarr): install the wheels that
# ../shared/tools/gpu-wheels.sh fetched into ./.whl, then run the gpu tests and GPU benchmarks.
#   here:        ../shared/tools/gpu-wheels.sh imagecodecs hypothesis pytest-timeout
#   GPU machine: bash scripts/gpu.sh            (results in $OUT or ./gpu-compare)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target .site .whl/*.whl
  export PYTHONPATH=$PWD/.site:$PWD
fi
out=${OUT:-gpu-compare}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/device.txt"
python3 -m pytest -m gpu -p no:cacheprovider -v tests/ 2>&1 | tee "$out/gpu-tests.txt"
python3 benchmarks/gpu_compare.py --out "$out" "$@" 2>&1 | tee "$out/gpu-compare.txt"
