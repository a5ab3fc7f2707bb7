"""Rescale to uint8 (for viewers and 8-bit models), one pass per block."""
from __future__ import annotations

import math
import os
from fractions import Fraction
from typing import Any

import numpy as np

from .. import backends
from .._normalize import real_number
from ..errors import InvalidArgumentError
from ..engine import RunOptions
from ..spec import ELEMENTWISE, Operator, Param, Port, layout_params
from ..volume import Volume
from ..kernel_table import CTYPES as CUDA_DTYPES
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


def integer_steps(dtype: Any, lo: Any, hi: Any) -> tuple[int, np.ndarray]:
    """Exact rescaling of integer data: ``(base, steps)`` such that the output of ``x`` is
    ``base + searchsorted(steps, x, "right")``, the count of levels ``k`` whose least input
    ``b_k`` is at most ``x``.

    ``b_k`` is the least integer ``x`` with ``rint((x - lo) * 255 / (hi - lo)) >= k``, computed in
    rational arithmetic (``rint`` rounds half to even, as NumPy's): exact for every integer
    dtype, int64 and uint64 at their extremes included. ``base`` counts the ``b_k`` at or below
    the dtype's least value; ``steps`` holds the rest that the dtype can hold.

    >>> base, steps = integer_steps("uint8", 0, 255); base, steps[:3].tolist(), steps.size
    (0, [1, 2, 3], 255)
    """
    dt = np.dtype(dtype)
    info = np.iinfo(dt)
    flo, fhi = Fraction(lo), Fraction(hi)
    bounds = []
    for k in range(1, 256):
        t = flo + (k - Fraction(1, 2)) * (fhi - flo) / 255  # x >= k iff x > t, or x == t and k even
        b = t.numerator // t.denominator + 1
        if t.denominator == 1 and k % 2 == 0:
            b = int(t)
        bounds.append(b)
    base = sum(b <= info.min for b in bounds)
    steps = np.array([b for b in bounds if info.min < b <= info.max], dt)
    return base, steps


def rescale_integers(block: np.ndarray, lo: Any, hi: Any) -> np.ndarray:
    """The exact rescaling of an integer block (see :func:`integer_steps`); a table of every
    value for 8 and 16-bit data."""
    base, steps = integer_steps(block.dtype, lo, hi)
    if block.dtype.itemsize <= 2:
        info = np.iinfo(block.dtype)
        every = np.arange(info.min, info.max + 1, dtype=np.int64)
        table = (base + np.searchsorted(steps, every, "right")).astype(np.uint8)
        return table[block.astype(np.int64) - info.min] if info.min else table[block]
    return (base + np.searchsorted(steps, block, "right")).astype(np.uint8)


def rescale_block_cpu(block: np.ndarray, *, lo: float, hi: float, region: Any = None) -> np.ndarray:
    """Float data: ``clip(rint(x * scale - offset), 0, 255)`` as uint8 in float32 arithmetic,
    NaN -> 0: ``(x - lo) * 255 / (hi - lo)`` with no intermediate overflow (see
    :func:`rescale_params`). Integer data: the same formula in exact arithmetic
    (:func:`integer_steps`), so that values above 2**24 are not rounded first.

    >>> rescale_block_cpu(np.array([0.0, 0.5, 1.0, 2.0, np.nan]), lo=0, hi=1)
    array([  0, 128, 255, 255,   0], dtype=uint8)
    >>> rescale_block_cpu(np.array([2**62, 2**62 + 1], np.int64), lo=2**62, hi=2**62 + 2)
    array([  0, 128], dtype=uint8)
    """
    if block.dtype.kind in "ui":
        return rescale_integers(block, lo, hi)
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
# floats: the kernel; integers: the same exact steps on the device
backends.register("rescale", "cuda", "emarray.cuda.elementwise:rescale_block_cuda", CUDA_DTYPES)


def parse_range(value: Any, name: str) -> tuple[int | float, int | float]:
    """``lo,hi`` (text or a pair) as exact numbers with ``lo < hi``.

    >>> parse_range("0,1", "in_range"), parse_range([2**64 - 9, 2**64 - 1], "in_range")[1]
    ((0, 1), 18446744073709551615)
    """
    parts = [p for p in value.split(",") if p.strip()] if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or len(parts) != 2:
        raise InvalidArgumentError(f"{name} takes lo,hi, got {value!r}")
    lo, hi = (real_number(v, name) for v in parts)  # exact for integer data
    if not hi > lo:
        raise InvalidArgumentError(f"{name} needs lo < hi, got lo={lo!r} hi={hi!r}")
    return lo, hi


SPEC = Operator(
    "rescale", "a linear map of [lo, hi] onto uint8 0..255 (clipped, NaN to 0), for viewers "
               "and 8-bit models",
    inputs=(Port("src", "volume", "any real dtype"),),
    output=Port("dst", "volume", "uint8 volume"),
    params=(Param("in_range", "numbers", "the values mapped to 0 and 255 (exact for integer "
                                         "data at any size)", parse=parse_range,
                  aliases=("--range",), metavar="LO,HI"),
            *layout_params()),
    run=ELEMENTWISE, blocks="rescale",
    examples=("emarray rescale prob.zarr prob8.zarr --in-range 0,1",))


@SPEC.function
def rescale(src: Volume | str | os.PathLike, dst: str | os.PathLike, in_range: Any, *,
            chunks: Any = None, shards: Any = None, compression: str = "zstd",
            options: RunOptions | None = None, **run: Any) -> Volume:
    """Map ``[lo, hi]`` of ``src`` linearly onto uint8 ``0..255`` (clipped; NaN -> 0) at ``dst``.

    Float data are mapped in float32 arithmetic (the CUDA kernel's twin); integer data in exact
    arithmetic (:func:`integer_steps`), so that values above 2**24 are not rounded first.

    Returns
    -------
    Volume
        The uint8 volume.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> src = emarray.create_volume(os.path.join(d, "p.zarr"), (1, 1, 3), "float32", 1)
    >>> src.write((slice(0, 1), slice(0, 1), slice(0, 3)), np.array([[[0, .5, 1]]], "float32"))
    >>> emarray.rescale(src, os.path.join(d, "u8.zarr"), (0, 1)).read().ravel()
    array([  0, 128, 255], dtype=uint8)
    """
    opts = RunOptions.make(options, **run)
    src = as_volume(src, opts.allow_incomplete)
    lo, hi = parse_range(in_range, "in_range")
    if src.dtype.kind == "f":
        rescale_params(lo, hi)  # refuse a range float32 cannot represent, before any work
    return run_elementwise("rescale", src, dst, np.uint8, {"lo": lo, "hi": hi},
                           {"lo": lo, "hi": hi}, opts, chunks=chunks, shards=shards,
                           compression=compression)
