"""CUDA Gaussian smoothing: three separable passes of ``kernels/smooth.cu`` on one block."""
from __future__ import annotations

from typing import Any

import numpy as np

from .elementwise import THREADS, launch_grid
from ..kernel_table import smooth_name
from .modules import get_kernel
from .streaming import whole_block


def smooth_device(a: Any, weights: tuple[np.ndarray | None, ...], stream: Any = None) -> Any:
    """float32 separable smoothing of the 3-D device array ``a`` with each axis's weights
    (reflect inside the block)."""
    import cupy
    cur = cupy.ascontiguousarray(a)
    nz, ny, nx = cur.shape
    n = cur.size
    for axis, w64 in enumerate(weights):
        if w64 is None:
            continue
        w = cupy.asarray(w64.astype(np.float32))
        out = cupy.empty(cur.shape, cupy.float32)
        k = get_kernel("smooth.cu", smooth_name(cur.dtype))
        k(launch_grid(n), (THREADS,), (cur, out, np.int64(nz), np.int64(ny), np.int64(nx),
                                 np.int32(axis), w, np.int32(w.size // 2)), stream=stream)
        cur = out
    return cur if cur.dtype == cupy.float32 else cur.astype(cupy.float32)


def smooth_block_cuda(block: np.ndarray, *, weights: tuple[np.ndarray | None, ...],
                      memory_limit: Any = None) -> np.ndarray:
    """CUDA twin of :func:`emarray.ops.smooth.smooth_block_twin` for one (grown) block."""
    import cupy
    if block.ndim == 4:  # channels: each smoothed alone
        return np.stack([smooth_block_cuda(c, weights=weights[1:], memory_limit=memory_limit)
                         for c in block])
    return whole_block(lambda: cupy.asnumpy(smooth_device(cupy.asarray(block), weights)),
                       memory_limit, f"smoothing a block of {block.shape}")
