"""CUDA twin of the sweep's per-block joint histogram (emarray.ops.sweep.histogram_block_cpu)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .elementwise import THREADS, launch_grid
from ..kernel_table import (HIST_BUCKET_DTYPES, HIST_LEVEL_DTYPES, bucket_hist_name,
                             level_hist_name)
from .modules import get_kernel
from .streaming import in_slabs

SHARED_BYTES = 48 * 1024  # dynamic shared memory available to every block without opt-in


def histogram_block_cuda(prob: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *,
                         truth_value: Any = None, ignore_value: Any = None, edges: np.ndarray,
                         table: Any, memory_limit: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Joint (bucket x class) histogram of one block on the GPU; same result as the CPU one.

    Maps of a dtype without a kernel (integer maps other than uint8/uint16) use the CPU twin.
    """
    import cupy
    from ..ops.sweep import histogram_block_cpu, truth_classes
    dt = prob.dtype
    if dt not in HIST_BUCKET_DTYPES and dt not in HIST_LEVEL_DTYPES:
        return histogram_block_cpu(prob, truth, mask, truth_value=truth_value,
                                   ignore_value=ignore_value, edges=edges, table=table)
    cls = truth_classes(truth, truth_value=truth_value, ignore_value=ignore_value, mask=mask)
    x = np.ascontiguousarray(prob).reshape(-1)
    c = np.ascontiguousarray(cls).reshape(-1)
    total: list[np.ndarray] = []

    def part(a: int, b: int) -> None:  # counts add up: a block that does not fit goes in halves
        hist, nan = histogram_device(cupy.asarray(x[a:b]), cupy.asarray(c[a:b]), edges)
        counts = (hist.get().astype(np.int64), nan.get().astype(np.int64))
        if total:
            total[0] += counts[0]
            total[1] += counts[1]
        else:
            total.extend(counts)
    in_slabs(part, x.size, memory_limit, "the sweep's histogram of the block")
    if not total:  # an empty block
        part(0, 0)
    return total[0].reshape(-1, 3), total[1]


def histogram_device(x: Any, cls: Any, edges: np.ndarray, stream: Any = None) -> tuple[Any, Any]:
    """Device-resident joint histogram: flat uint64 ``(buckets * 3)`` counts and NaN counts.

    ``x`` (float32/float64, or uint8/uint16 for one bucket per level) and ``cls`` (uint8 class
    per voxel) are 1-D CuPy arrays; ``edges`` are exact thresholds in ``x``'s dtype.
    """
    import cupy
    dt = x.dtype
    n = np.int64(x.size)
    nan = cupy.zeros(3, cupy.uint64)
    if dt in HIST_LEVEL_DTYPES:
        levels = int(np.iinfo(dt).max) + 1
        hist = cupy.zeros(levels * 3, cupy.uint64)
        shared = levels * 3 * 4 <= SHARED_BYTES
        get_kernel("histogram.cu", level_hist_name(dt))(
            launch_grid(x.size), (THREADS,), (x, cls, n, np.int32(levels), hist, np.int32(shared)),
            shared_mem=levels * 3 * 4 if shared else 0, stream=stream)
    else:
        k = edges.size
        hist = cupy.zeros((k + 1) * 3, cupy.uint64)
        shared = (k + 1) * 3 * 4 <= SHARED_BYTES
        ts = cupy.asarray(edges.astype(dt))
        get_kernel("histogram.cu", bucket_hist_name(dt))(
            launch_grid(x.size), (THREADS,), (x, cls, n, ts, np.int32(k), hist, nan, np.int32(shared)),
            shared_mem=(k + 1) * 3 * 4 if shared else 0, stream=stream)
    return hist, nan
