"""asv: the CUDA threshold kernel, device-resident and host-streamed (skipped without a GPU)."""
from __future__ import annotations

import numpy as np


def _need_gpu():
    from emarray.backends import cuda_available
    if not cuda_available():
        raise NotImplementedError("no CUDA device")  # asv skips the benchmark


class ThresholdDevice:
    params = (["uint8", "float32"], [10**7, 10**8, 10**9])
    param_names = ["dtype", "n"]

    def setup(self, dtype, n):
        _need_gpu()
        import cupy
        from emarray.cuda.elementwise import threshold_device
        self.a = cupy.random.random(n, dtype=cupy.float32)
        if dtype == "uint8":
            self.a = (self.a * 255).astype(cupy.uint8)
        self.out = cupy.empty(n, cupy.uint8)
        self.value = np.dtype(dtype).type(0.5 if dtype == "float32" else 127)
        threshold_device(self.a, "gt", self.value, out=self.out)
        cupy.cuda.Device().synchronize()

    def time_threshold_device(self, dtype, n):
        import cupy
        from emarray.cuda.elementwise import threshold_device
        threshold_device(self.a, "gt", self.value, out=self.out)
        cupy.cuda.Device().synchronize()


class ThresholdStreamed:
    params = ([10**8, 10**9],)
    param_names = ["n"]

    def setup(self, n):
        _need_gpu()
        self.host = np.random.default_rng(0).random(n, dtype=np.float32)

    def time_threshold_streamed(self, n):
        import cupy
        from emarray.cuda.elementwise import threshold_block_cuda
        threshold_block_cuda(self.host, op="gt", value=np.float32(0.5))
        cupy.cuda.Device().synchronize()
