"""CUDA pooling (mean and mode, 2x2x2 and 1x2x2) of one block; other modes use the CPU twin."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ops.pool import pool_twin, pooled_shape
from .elementwise import THREADS, launch_grid
from ..kernel_table import pool_name
from .modules import get_kernel
from .streaming import in_slabs


def pool_device(a: Any, factors: Sequence[int], mode: str, stream: Any = None) -> Any:
    """Pool the 3-D device array ``a`` by (1|2, 2, 2) with ``mode`` mean or mode."""
    import cupy
    a = cupy.ascontiguousarray(a)
    oz, oy, ox = pooled_shape(a.shape, factors)
    out = cupy.empty((oz, oy, ox), a.dtype)
    if out.size:
        k = get_kernel("pool.cu", pool_name(a.dtype, mode, int(factors[0])))
        k(launch_grid(out.size), (THREADS,), (a, out, *(np.int64(s) for s in a.shape),
                                        np.int64(oz), np.int64(oy), np.int64(ox)),
          stream=stream)
    return out


def pool_block_cuda(block: np.ndarray, *, factors: Sequence[int], mode: str,
                    memory_limit: Any = None) -> np.ndarray:
    """CUDA twin of :func:`emarray.ops.pool.pool_twin` for mean and mode by (1|2, 2, 2)."""
    import cupy
    if mode not in ("mean", "mode") or tuple(factors[1:]) != (2, 2) or factors[0] not in (1, 2):
        return pool_twin(block, factors, mode)
    fz = int(factors[0])
    out = np.empty(pooled_shape(block.shape, factors), block.dtype)

    def slab(a: int, b: int) -> None:  # input planes a:b, whole windows (a multiple of fz)
        out[a // fz:-(-b // fz)] = cupy.asnumpy(pool_device(cupy.asarray(block[a:b]), factors,
                                                            mode))
    # under the cap; out of memory: slabs of half the planes, and so on
    in_slabs(slab, block.shape[0], memory_limit, "pooling the block", multiple=fz)
    return out
