"""Euclidean distance transform of a mask, out of core, with an exact contract.

Each block is read with a halo of ``ceil(D / voxel)`` voxels per axis (clipped at the volume's
edges: nothing outside the volume counts as background, as for SciPy) and transformed whole;
its own region is written. A voxel whose nearest background voxel lies within ``D`` finds it
inside the halo, so its distance is exact; any other voxel gets at least ``D``. Clipped at ``D``
the result therefore equals ``min(scipy.ndimage.distance_transform_edt(mask, sampling=voxel), D)``
on the whole volume, for any chunking, within float32 rounding.
"""
from __future__ import annotations

import math
import os
import re
from functools import partial
from typing import Any

import numpy as np

from .. import backends
from .._normalize import finite_number, micrometres
from ..engine import BlockContext, BlockGrid, Read, RunOptions, Stage, Write
from ..errors import InvalidArgumentError
from ..spec import ELEMENTWISE, Operator, Param, Port, layout_params
from ..volume import Volume
from ._nan import count_nan, warn_nan
from .common import as_volume, run_blockwise, work_layout

_LENGTH = re.compile(r"^\s*([-+0-9.eE]+)\s*([A-Za-zµμ]*)\s*$")


def parse_length(value: Any, name: str) -> tuple[float, str | None]:
    """A length as given: a number (in the volume's unit) or a number with its unit
    (``100nm``, ``0.1um``); returns ``(number, unit or None)``.

    >>> parse_length("100nm", "max_distance"), parse_length(2.5, "max_distance")
    ((100.0, 'nanometer'), (2.5, None))
    """
    from .._normalize import parse_unit
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = finite_number(value, name), None
    else:
        m = _LENGTH.match(str(value))
        if not m:
            raise InvalidArgumentError(f"{name} must be a length such as 100nm, 0.1um or a "
                                       f"number in the volume's unit, got {value!r}")
        number = finite_number(m.group(1), name)
        try:
            unit = parse_unit(m.group(2)) if m.group(2) else None
        except InvalidArgumentError:
            raise InvalidArgumentError(f"{name} has an unknown unit {m.group(2)!r} (give nm, um "
                                       f"or another spatial unit), got {value!r}") from None
    if not number > 0:
        raise InvalidArgumentError(f"{name} must be > 0, got {value!r}")
    return number, unit


def mask_of(block: np.ndarray, threshold: Any, below: bool) -> np.ndarray:
    """The foreground: ``block > 0``, or ``block > threshold`` (``< threshold`` with ``below``).
    A NaN voxel is never foreground (NaN is neither above nor below any number)."""
    if threshold is None:
        return block < 0 if below else block > 0
    return block < threshold if below else block > threshold


def distance_block_cpu(mask: np.ndarray, *, sampling: tuple[float, ...], signed: bool,
                       cap: float, cores: int = 1) -> np.ndarray:
    """The EDT of one (grown) block with seung-lab's ``edt``, in physical units, clipped at
    ``cap``; ``signed``: minus the background's distance to the foreground outside.

    ``edt`` holds the GIL, so blocks of one process run one at a time: each uses ``cores``
    threads of its own (the process's share of the host, given by the engine)."""
    import edt
    # 0/1 uint8, not bool: edt's uint8 path is twice as fast, with the same distances
    m = np.ascontiguousarray(mask).view(np.uint8)
    inside = edt.edt(m, anisotropy=sampling, black_border=False,
                     parallel=cores).astype(np.float32, copy=False)
    np.minimum(inside, np.float32(cap), out=inside)
    if signed:
        outside = edt.edt(1 - m, anisotropy=sampling, black_border=False,
                          parallel=cores).astype(np.float32, copy=False)
        np.minimum(outside, np.float32(cap), out=outside)
        inside -= outside
    return inside


backends.register("distance", "cpu", distance_block_cpu)
backends.register("distance", "cuda", "emarray.cuda.distance:distance_block_cuda", ("bool",))


def _distance(ctx: BlockContext, block: np.ndarray, *, threshold: Any, below: bool,
              sampling: tuple[float, ...], signed: bool, cap: float) -> tuple[np.ndarray, int]:
    own = tuple(slice(w.start - r.start, w.stop - r.start)
                for w, r in zip(ctx.region, ctx.reads[0]))
    out = ctx.state(mask_of(block, threshold, below), sampling=sampling, signed=signed, cap=cap)
    return out, count_nan(block, own)


def _add(a: int, b: int) -> int:
    return a + b


def _record_nan(count: Any, *, out: Volume) -> int:
    """Driver: keep the job's count of NaN voxels in the output (for the warning)."""
    g = out.open_group()
    g.attrs["emarray"] = {**dict(g.attrs.get("emarray") or {}), "nan_voxels": int(count or 0)}
    return int(count or 0)


def check_max_distance(cap: float, given: str, voxel: tuple[float, ...],
                       shape: tuple[int, ...], unit: str) -> None:
    """Refuse a D that means nothing for this volume, in one line: below the smallest voxel
    size every foreground voxel is D (a mask, not distances); beyond the volume's diagonal no
    distance inside it comes near D, and each block would read the whole volume."""
    smallest = min(voxel)
    diagonal = math.sqrt(sum((n * v) ** 2 for n, v in zip(shape, voxel)))
    if smallest <= cap <= diagonal:
        return
    why = (f"is below the smallest voxel size, {smallest:g} {unit} (every foreground voxel "
           "would be D)" if cap < smallest else
           f"is beyond the volume's diagonal, {diagonal:g} {unit} (no distance inside it is "
           "longer: give the diagonal for an unclipped transform)")
    raise InvalidArgumentError(f"max_distance {given} {why}; give a length from {smallest:g} "
                               f"to {diagonal:g} {unit}")


def _says(v: Volume, args: dict[str, Any]) -> list[str]:
    d = v.attrs.get("emarray", {}).get("distance", {})
    return [f"wrote {v.url}: {v.shape} float32 distances in {v.unit}, clipped at "
            f"{d.get('max_distance')}"]


SPEC = Operator(
    "distance", "the Euclidean distance transform of a mask in physical units, exact up to a "
                "stated distance for any chunking",
    needs=("edt",),
    inputs=(Port("src", "volume", "a mask (foreground > 0) or a map thresholded with threshold; "
                                  "NaN is never foreground"),),
    output=Port("dst", "volume", "float32 distances in the volume's unit"),
    params=(Param("threshold", "number", "foreground is src > threshold (< with below); default: "
                                         "src > 0"),
            Param("below", "flag", "foreground is src < threshold: the cell interiors of a "
                                   "boundary map"),
            Param("max_distance", "text", "the distance up to which the result is exact (and at "
                                          "which it is clipped): a length with its unit (100nm, "
                                          "0.1um) or a number in the volume's unit, from the "
                                          "smallest voxel size to the volume's diagonal; "
                                          "default: the shortest physical extent of one storage "
                                          "chunk (shard)",
                  parse=parse_length, metavar="LENGTH"),
            Param("signed", "flag", "inside positive, outside negative (the background's distance "
                                    "to the foreground)"),
            *layout_params()),
    run=ELEMENTWISE, says=_says, blocks="distance",
    examples=("emarray distance boundary.zarr dist.zarr --threshold 0.5 --below "
              "--max-distance 200nm",))


@SPEC.function
def distance(src: Volume | str | os.PathLike, dst: str | os.PathLike, *, threshold: Any = None,
             below: bool = False, max_distance: Any = None, signed: bool = False,
             chunks: Any = None, shards: Any = None, compression: str = "zstd",
             options: RunOptions | None = None, **run: Any) -> Volume:
    """The Euclidean distance from each foreground voxel of ``src`` to the nearest background
    voxel, in the volume's physical unit (anisotropic voxels included), into ``dst``.

    With ``max_distance`` D the result equals
    ``min(scipy.ndimage.distance_transform_edt(mask, sampling=voxel_size), D)`` on the whole
    volume, for any chunking, within float32 rounding: each block reads a halo of
    ``ceil(D / voxel)`` voxels per axis. Where the mask has no background at all, every voxel
    is D (SciPy measures to a point outside the array there). D must lie between the smallest
    voxel size (below it every foreground voxel would be D) and the volume's diagonal (no
    distance inside the volume is longer: the diagonal gives the unclipped transform).

    A NaN voxel is never foreground (it is neither above nor below any threshold: with
    ``below`` it is boundary, as for ``watershed`` and ``agglomerate``); a job whose input
    holds NaN warns once, with their count. Blocks are whole output chunks, grown past tiny
    ones to at least the halo along each axis and 1024 voxels: the result is the same.

    Returns
    -------
    Volume
        float32 distances; ``attrs["emarray"]["distance"]`` records D and the unit.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> from scipy import ndimage
    >>> d = tempfile.mkdtemp()
    >>> m = np.ones((4, 8, 8), np.uint8); m[2, 4, 4] = 0
    >>> v = emarray.create_volume(os.path.join(d, "m.zarr"), m.shape, "uint8", (2, 4, 4),
    ...                           voxel_size=(2, 1, 1))
    >>> v.write((slice(0, 4), slice(0, 8), slice(0, 8)), m)
    >>> got = emarray.distance(v, os.path.join(d, "d.zarr"), max_distance=3).read()
    >>> want = np.minimum(ndimage.distance_transform_edt(m, sampling=(2, 1, 1)), 3)
    >>> bool(np.allclose(got, want, atol=1e-6))
    True
    """
    opts = RunOptions.make(options, **run)
    src = as_volume(src, opts.allow_incomplete)
    if src.ndim != 3:
        raise InvalidArgumentError(f"distance needs a z,y,x volume; {src.url} has shape {src.shape}")
    if threshold is None and below:
        raise InvalidArgumentError("below needs a threshold (foreground is src < threshold)")
    if threshold is not None and src.dtype.kind == "f" and not math.isfinite(float(threshold)):
        raise InvalidArgumentError(f"threshold must be finite, got {threshold!r}")
    voxel = tuple(float(v) for v in src.voxel_size)
    if max_distance is None:
        cap = min(b * v for b, v in zip(src.block_shape, voxel))
    else:
        number, unit = max_distance
        cap = number * (micrometres(unit) / micrometres(src.unit) if unit else 1.0)
        check_max_distance(cap, f"{number:g} {unit or src.unit}", voxel, src.shape, src.unit)
    halo = tuple(min(math.ceil(cap / v), n) for v, n in zip(voxel, src.shape))
    # blocks of whole output chunks, at least the halo along each axis (tiny chunks grown)
    block = work_layout(src, chunks, shards, compression, halo)
    from .smooth import check_block_memory
    check_block_memory(src, halo, np.dtype(np.float32), block=block,
                       doing="the distance transform of", advice="use a smaller max-distance")
    fn = partial(_distance, threshold=threshold, below=below, sampling=voxel, signed=signed,
                 cap=cap)

    def stages(out: Volume, setup: dict[str, Any]) -> list[Stage]:
        return [Stage("distance", fn, BlockGrid(src.shape, block),
                      [Read(src, halo=halo, boundary="none")], [Write(out)], combine=_add,
                      finalize=partial(_record_nan, out=out), **setup)]

    result = run_blockwise("distance", src, dst, np.float32,
                           {"threshold": threshold, "below": below, "max_distance": cap,
                            "signed": signed, "block": list(block)}, opts, stages,
                           chunks=chunks, shards=shards, compression=compression,
                           backend="distance", grid_block=block,
                           attrs={"distance": {"max_distance": cap, "unit": src.unit,
                                               "signed": signed}})
    warn_nan(src, int(result.attrs.get("emarray", {}).get("nan_voxels", 0)), "distance")
    return result
