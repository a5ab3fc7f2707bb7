"""Clip: values limited to [lo, hi], in the input's own dtype, one pass per block."""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .. import backends
from ..engine import RunOptions
from ..errors import InvalidArgumentError
from ..spec import ELEMENTWISE, Operator, Param, Port, layout_params
from ..volume import Volume
from .common import as_volume, run_elementwise


def clip_block_cpu(block: np.ndarray, *, lo: Any, hi: Any) -> np.ndarray:
    """``min(max(x, lo), hi)`` in the block's dtype; NaN stays NaN (as ``np.clip``).

    >>> clip_block_cpu(np.array([-3, 0, 7, 200], np.int16), lo=0, hi=100)
    array([  0,   0,   7, 100], dtype=int16)
    """
    return np.clip(block, lo, hi)


backends.register("clip", "cpu", clip_block_cpu)


def _bound(dtype: np.dtype, value: Any, side: str) -> Any:
    """``value`` as a bound in ``dtype``, exactly: for integer data the least integer at or
    above ``lo`` (the greatest at or below ``hi``), held to the dtype's range."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        whole = math.ceil(value) if side == "lo" else math.floor(value)
        return dtype.type(min(max(whole, int(info.min)), int(info.max)))
    return dtype.type(value)


SPEC = Operator(
    "clip", "values limited to [lo, hi], in the input's own dtype",
    inputs=(Port("src", "volume", "any real dtype"),),
    output=Port("dst", "volume", "src with values below lo raised to lo and above hi lowered to "
                                 "hi (same dtype)"),
    params=(Param("lo", "number", "the least value kept"),
            Param("hi", "number", "the greatest value kept"),
            *layout_params()),
    run=ELEMENTWISE, blocks="clip",
    examples=("emarray clip raw.zarr clipped.zarr --lo 20 --hi 235",))


@SPEC.function
def clip(src: Volume | str | os.PathLike, dst: str | os.PathLike, lo: Any, hi: Any, *,
         chunks: Any = None, shards: Any = None, compression: str = "zstd",
         options: RunOptions | None = None, **run: Any) -> Volume:
    """Limit the values of ``src`` to ``[lo, hi]`` into ``dst``, in ``src``'s own dtype.

    Equals ``numpy.clip`` on the whole volume (NaN stays NaN); the bounds are taken exactly in
    the input's dtype (an integer volume clipped at 2.5 keeps values up to 2).

    Returns
    -------
    Volume
        The clipped volume.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> v = emarray.create_volume(os.path.join(d, "a.zarr"), (1, 1, 4), "int16", 2)
    >>> v.write((slice(0, 1), slice(0, 1), slice(0, 4)), np.array([[[-3, 0, 7, 200]]], "i2"))
    >>> emarray.clip(v, os.path.join(d, "c.zarr"), 0, 100).read().ravel().tolist()
    [0, 0, 7, 100]
    """
    opts = RunOptions.make(options, **run)
    src = as_volume(src, opts.allow_incomplete)
    if not lo <= hi:
        raise InvalidArgumentError(f"clip needs lo <= hi, got lo={lo!r} hi={hi!r}")
    params = {"lo": _bound(src.dtype, lo, "lo"), "hi": _bound(src.dtype, hi, "hi")}
    return run_elementwise("clip", src, dst, src.dtype, params, {"lo": lo, "hi": hi}, opts,
                           chunks=chunks, shards=shards, compression=compression)
