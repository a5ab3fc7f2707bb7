"""Rescale to uint8 (for viewers and 8-bit models), one pass per block."""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .. import backends
from .._normalize import finite_number
from ..errors import InvalidArgumentError
from ..engine import RunOptions
from ..volume import Volume
from ..cuda.instantiations import CTYPES as CUDA_DTYPES
from .common import as_volume, run_elementwise


def rescale_params(lo: float, hi: float) -> tuple[np.float32, np.float32]:
    """float32 ``offset = lo * scale`` and ``scale = 255 / (hi - lo)``, shared with the CUDA
    kernel so both give identical bytes (``x * scale - offset``).

    Both are computed in float64 (``hi - lo`` can overflow float32) and then rounded; a range
    whose offset or scale float32 cannot hold is refused.

    >>> rescale_params(-3.4e38, 3.4e38)[1] > 0
    np.True_
    """
    f32 = np.finfo(np.float32)
    for name, v in (("lo", lo), ("hi", hi)):
        if abs(v) > float(f32.max):
            raise InvalidArgumentError(
                f"rescale range {name}={v!r} is beyond float32 (|value| <= {float(f32.max):.6g})")
    lo32, hi32 = np.float32(lo), np.float32(hi)
    scale = 255.0 / (float(hi32) - float(lo32)) if hi32 > lo32 else math.inf
    scale32 = np.float32(scale)
    offset32 = np.float32(float(lo32) * float(scale32))
    if not (math.isfinite(scale) and np.isfinite(scale32) and scale32 > 0
            and np.isfinite(offset32)):
        raise InvalidArgumentError(
            f"rescale range lo={lo!r} hi={hi!r} is too narrow for float32 arithmetic")
    return offset32, scale32


def rescale_block_cpu(block: np.ndarray, *, lo: float, hi: float, region: Any = None) -> np.ndarray:
    """``clip(rint(x * scale - offset), 0, 255)`` as uint8 in float32 arithmetic, NaN -> 0:
    ``(x - lo) * 255 / (hi - lo)`` with no intermediate overflow (see :func:`rescale_params`).

    >>> rescale_block_cpu(np.array([0.0, 0.5, 1.0, 2.0, np.nan]), lo=0, hi=1)
    array([  0, 128, 255, 255,   0], dtype=uint8)
    """
    offset, scale = rescale_params(lo, hi)
    v = block.astype(np.float32, copy=True)
    with np.errstate(over="ignore", invalid="ignore"):  # +-inf saturate to 255 / 0 below
        np.multiply(v, scale, out=v)
        np.subtract(v, offset, out=v)
    np.rint(v, out=v)
    np.nan_to_num(v, copy=False, nan=0.0)
    np.clip(v, 0, 255, out=v)
    return v.astype(np.uint8)


backends.register("rescale", "cpu", rescale_block_cpu)
backends.register("rescale", "cuda", "emarray.cuda.ops:rescale_block_cuda", CUDA_DTYPES)


def rescale(src: Volume | str | os.PathLike, dst: str | os.PathLike, lo: float, hi: float, *,
            chunks: Any = None, shards: Any = None, compression: str = "zstd",
            options: RunOptions | None = None, **run: Any) -> Volume:
    """Map ``[lo, hi]`` of ``src`` linearly onto uint8 ``0..255`` (clipped; NaN -> 0) at ``dst``.

    Options as for :func:`emarray.threshold`.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> src = emarray.create_volume(os.path.join(d, "p.zarr"), (1, 1, 3), "float32", 1)
    >>> src.write((slice(0, 1), slice(0, 1), slice(0, 3)), np.array([[[0, .5, 1]]], "float32"))
    >>> emarray.rescale(src, os.path.join(d, "u8.zarr"), 0, 1).read().ravel()
    array([  0, 128, 255], dtype=uint8)
    """
    opts = RunOptions.make(options, **run)
    src = as_volume(src, opts.allow_incomplete)
    lo, hi = finite_number(lo, "lo"), finite_number(hi, "hi")
    if not hi > lo:
        raise InvalidArgumentError(f"rescale needs lo < hi, got lo={lo!r} hi={hi!r}")
    rescale_params(lo, hi)  # refuse a range float32 cannot represent, before any work
    return run_elementwise("rescale", src, dst, np.uint8, {"lo": lo, "hi": hi},
                           {"lo": lo, "hi": hi}, opts, chunks=chunks, shards=shards,
                           compression=compression)
