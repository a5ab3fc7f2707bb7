"""Device-side elementwise steps: launch a kernel from ``kernels/`` on CuPy arrays.

Each ``*_device`` function takes and returns device arrays, so consecutive steps on one block
stay on the GPU. :mod:`emarray.cuda.streaming` moves host blocks through them.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..ops.rescale import integer_steps, rescale_params
from ..kernel_table import THREADS, launch_blocks, rescale_name, threshold_name
from .modules import get_kernel
from .streaming import run_steps


@functools.lru_cache(maxsize=None)
def _sm_count(device: int) -> int:
    import cupy
    return cupy.cuda.Device(device).attributes["MultiProcessorCount"]


def launch_grid(n: int) -> tuple[int]:
    import cupy
    # enough blocks to fill the device; grid-stride loops cover the rest
    return launch_blocks(n, _sm_count(cupy.cuda.Device().id))


def threshold_device(a: Any, op: str, value: Any, out: Any = None, stream: Any = None) -> Any:
    """``out = a > value`` (op ``gt``; ``ge``, ``lt``, ``le`` alike) as uint8 0/1, on the device.

    ``value`` must already be exact in ``a``'s dtype (see ``normalize_threshold``); ``a`` must be
    C-contiguous. Uses 16-byte vector loads when both pointers are aligned.
    """
    import cupy
    a = cupy.ascontiguousarray(a)
    out = cupy.empty(a.shape, cupy.uint8) if out is None else out
    n = a.size
    if n == 0:
        return out
    vec = 16 // a.dtype.itemsize
    aligned = int(a.data.ptr % 16 == 0 and out.data.ptr % vec == 0)
    k = get_kernel("threshold.cu", threshold_name(a.dtype, op))
    k(launch_grid(n // vec if aligned else n), (THREADS,),
      (a, out, np.int64(n), a.dtype.type(value), np.int32(aligned)), stream=stream)
    return out


def rescale_u8_device(a: Any, lo: float, hi: float, out: Any = None, stream: Any = None) -> Any:
    """``clip(rint(a * scale - offset), 0, 255)`` as uint8 (NaN -> 0), on the device; integer
    data exactly, by the CPU's steps (:func:`emarray.ops.rescale.integer_steps`)."""
    import cupy
    a = cupy.ascontiguousarray(a)
    out = cupy.empty(a.shape, cupy.uint8) if out is None else out
    if a.size and a.dtype.kind in "ui":
        base, steps = integer_steps(a.dtype, lo, hi)
        with cupy.cuda.Stream.null if stream is None else stream:
            out[...] = (cupy.searchsorted(cupy.asarray(steps), a, side="right") + base).astype(
                cupy.uint8)
    elif a.size:
        offset, scale = rescale_params(lo, hi)
        get_kernel("convert.cu", rescale_name(a.dtype))(
            launch_grid(a.size), (THREADS,), (a, out, np.int64(a.size), offset, scale), stream=stream)
    return out


# -- the per-block functions the operators register (twins of the CPU ones) ------------------
def threshold_block_cuda(block: np.ndarray, *, op: str, value: Any, region: Any = None,
                         memory_limit: Any = None) -> np.ndarray:
    """CUDA twin of :func:`emarray.ops.threshold.threshold_block_cpu`."""
    if op in ("all", "none"):  # the answer does not depend on the data: no device needed
        from ..ops.threshold import threshold_block_cpu
        return threshold_block_cpu(block, op=op, value=value)
    return run_steps(block, [lambda d, s: threshold_device(d, op, value, stream=s)], np.uint8,
                     memory_limit=memory_limit, region=region)


def rescale_block_cuda(block: np.ndarray, *, lo: float, hi: float, region: Any = None,
                       memory_limit: Any = None) -> np.ndarray:
    """CUDA twin of :func:`emarray.ops.rescale.rescale_block_cpu`."""
    return run_steps(block, [lambda d, s: rescale_u8_device(d, lo, hi, stream=s)], np.uint8,
                     memory_limit=memory_limit, region=region)
