"""Threshold a probability map into a uint8 0/1 mask, one pass per block."""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .. import backends
from .._normalize import numeric_dtype, real_number
from ..errors import InvalidArgumentError
from ..engine import RunOptions
from ..spec import ELEMENTWISE, Operator, Param, Port, layout_params
from ..volume import Volume
from ..kernel_table import CTYPES as CUDA_DTYPES
from .common import as_volume, run_elementwise

OPS = ("gt", "ge", "lt", "le")


def normalize_threshold(dtype: Any, value: Any, op: str = "gt") -> tuple[str, Any]:
    """Rewrite ``x > value`` (``>=``, ``<``, ``<=``) as an exact comparison in ``dtype`` itself.

    The result compares the stored values exactly as real numbers, with no upcast per voxel:
    float32 data get the nearest float32 threshold on the correct side, integer data an integer
    threshold with ``ge`` (``lt`` for the lower side). Returns ``(op, scalar)``, or
    ``("all", 1)`` / ``("none", 0)`` when every / no value of the dtype passes.

    >>> normalize_threshold("uint8", 127.5)
    ('ge', np.uint8(128))
    >>> normalize_threshold("uint8", 255)
    ('none', 0)
    >>> normalize_threshold("uint8", 127.5, "lt")
    ('lt', np.uint8(128))
    """
    if op not in OPS:
        raise InvalidArgumentError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    t = real_number(value, "threshold")  # an int stays exact: 2**64 - 2 is not 2**64
    dt = numeric_dtype(dtype, "the input")
    if dt.kind == "f":
        try:
            f = dt.type(t)
        except OverflowError:  # a whole number beyond every float: compares as +-inf
            f = dt.type(np.inf if t > 0 else -np.inf)
        if op == "gt" and float(f) > t:
            f = np.nextafter(f, dt.type(-np.inf))
        if op == "ge" and float(f) < t:
            f = np.nextafter(f, dt.type(np.inf))
        if op == "lt" and float(f) < t:
            f = np.nextafter(f, dt.type(np.inf))
        if op == "le" and float(f) > t:
            f = np.nextafter(f, dt.type(-np.inf))
        return op, f
    info = np.iinfo(dt)
    if op in ("lt", "le"):  # x < k with k = ceil(t) (lt) or floor(t) + 1 (le)
        k = math.ceil(t) if op == "lt" else math.floor(t) + 1
        if k > info.max:
            return "all", 1
        if k <= info.min:
            return "none", 0
        return "lt", dt.type(k)
    k = math.floor(t) + 1 if op == "gt" else math.ceil(t)
    if k <= info.min:
        return "all", 1
    if k > info.max:
        return "none", 0
    return "ge", dt.type(k)


def threshold_block_cpu(block: np.ndarray, *, op: str, value: Any, region: Any = None) -> np.ndarray:
    """CPU twin of the threshold kernel: a uint8 0/1 block, written in one pass, no temporaries."""
    out = np.empty(block.shape, np.uint8)
    if op == "all" or op == "none":
        out.fill(1 if op == "all" else 0)
    else:
        compare = {"gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal}
        compare[op](block, value, out=out.view(np.bool_))
    return out


backends.register("threshold", "cpu", threshold_block_cpu)
backends.register("threshold", "cuda", "emarray.cuda.elementwise:threshold_block_cuda", CUDA_DTYPES)


def _says(v: Volume, args: dict[str, Any]) -> list[str]:
    return [f"wrote {v.url}: {v.shape} uint8 mask"]


SPEC = Operator(
    "threshold", "a uint8 0/1 mask where a map passes a threshold, compared exactly",
    inputs=(Port("src", "volume", "probability or boundary map (any real dtype)"),),
    output=Port("dst", "volume", "the uint8 0/1 mask (voxel size and axes of src)", labels=True),
    params=(Param("value", "number", "the threshold, compared exactly against the stored values "
                                     "(whole numbers exact at any size)", aliases=("-t",)),
            Param("compare", "choice", "gt: src > value; ge: >=; lt: < (the cell interiors of a "
                                       "boundary map); le: <=. NaN voxels give 0 for each",
                  choices=OPS),
            *layout_params()),
    run=ELEMENTWISE, says=_says, blocks="threshold",
    examples=("emarray threshold prob.zarr mask.zarr --value 0.5",
              "emarray threshold boundary.zarr cells.zarr --value 0.3 --compare lt"))


@SPEC.function
def threshold(src: Volume | str | os.PathLike, dst: str | os.PathLike, value: float,
              compare: str = "gt", *, chunks: Any = None, shards: Any = None,
              compression: str = "zstd", options: RunOptions | None = None,
              **run: Any) -> Volume:
    """Threshold ``src`` into a uint8 0/1 volume at ``dst``: ``1`` where ``src > value``.

    The comparison is exact in the input's own dtype (see :func:`normalize_threshold`): no
    voxel is upcast, and a whole-number threshold stays exact at any size.

    Returns
    -------
    Volume
        The written mask.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> src = emarray.create_volume(os.path.join(d, "p.zarr"), (4, 4, 4), "float32", 2)
    >>> src.write((slice(0, 4),) * 3, np.linspace(0, 1, 64, dtype="float32").reshape(4, 4, 4))
    >>> m = emarray.threshold(src, os.path.join(d, "m.zarr"), 0.5)
    >>> int(m.read().sum())
    32
    """
    opts = RunOptions.make(options, **run)
    src = as_volume(src, opts.allow_incomplete)
    op_n, value_n = normalize_threshold(src.dtype, value, compare)
    return run_elementwise("threshold", src, dst, np.uint8, {"op": op_n, "value": value_n},
                           {"value": value, "op": compare}, opts,
                           chunks=chunks, shards=shards,
                           compression=compression)
