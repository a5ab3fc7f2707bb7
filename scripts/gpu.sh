#!/usr/bin/env bash
# On a machine with a CUDA GPU and CuPy (but maybe without dask/zarr): install the wheels that
# ../shared/tools/gpu-wheels.sh fetched into ./.whl, check that the kernels are found from an
# installed emarray and from this checkout, then run the gpu tests and the GPU benchmarks.
#   here:        ../shared/tools/gpu-wheels.sh tinybrain connected-components-3d fastremap edt dask-cuda
#   GPU machine: bash scripts/gpu.sh            (results in $OUT or ./gpu-compare)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
site=${TMPDIR:-/tmp}/emarray-gpu-site
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || exit 1
fi
out=${OUT:-gpu-compare}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
# installed as a user would (no network: the build backend that is there), then from a checkout
inst=${TMPDIR:-/tmp}/emarray-gpu-installed
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$inst" . \
  >"$out/install.txt" 2>&1 || { cat "$out/install.txt"; exit 1; }
(cd / && PYTHONPATH="$inst:$site" python3 -c \
  "import emarray.cuda.modules as m; print('installed: kernels in', m.kernel_dir()); m.get_kernel('threshold.cu', 'emarray_threshold<float, 0>'); print('installed: compiled')") \
  2>&1 | tee -a "$out/device.txt"
export PYTHONPATH="$site:$PWD"
python3 -c "import emarray.cuda.modules as m; print('checkout: kernels in', m.kernel_dir())" \
  | tee -a "$out/device.txt"
timeout "${GPU_TEST_SECONDS:-300}" python3 -m pytest -m gpu -p no:cacheprovider -q --timeout 150 \
  tests/test_cuda.py tests/test_label.py tests/test_pyramid.py tests/test_smooth.py \
  tests/test_predict.py tests/test_train.py 2>&1 | tee "$out/gpu-tests.txt"
timeout "${GPU_COMPARE_SECONDS:-150}" python3 benchmarks/gpu_compare.py --out "$out" "$@" 2>&1 \
  | tee "$out/gpu-compare.txt"
timeout "${GPU_MORE_SECONDS:-130}" python3 benchmarks/gpu_more.py --out "$out" 2>&1 \
  | tee -a "$out/gpu-compare.txt"
