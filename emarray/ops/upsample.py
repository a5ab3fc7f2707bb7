"""Bring a coarse volume back onto a finer grid (``--like`` a reference volume).

Each output voxel's centre is mapped, through both volumes' voxel sizes and translations,
to a position in the coarse volume: ``nearest`` takes the voxel there (labels: ids are never
interpolated), ``linear`` interpolates between the two neighbours along each axis (images).
Positions past the coarse volume's edge take its edge value.
"""
from __future__ import annotations

import math
import os
from fractions import Fraction
from functools import partial
from typing import Any

import numpy as np

from ..engine import BlockContext, BlockGrid, Read, RunOptions, Stage, Write, run_job
from ..spec import COMPRESSIONS, ENGINE, INCOMPLETE, REPLACE, Operator, Param, Port
from ..speaking import given
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..volume import Volume, create_volume
from .common import as_volume, job_identity, layout_of
from ..volume import is_labels

MODES = ("auto", "nearest", "linear")


def source_coords(region: slice, scale: float, offset: float) -> np.ndarray:
    """Positions in the coarse volume (in its voxels) of the output voxels ``region``."""
    return np.arange(region.start, region.stop, dtype=np.float64) * scale + offset


def _upsample(ctx: BlockContext, block: np.ndarray, *, scales: tuple[float, ...],
              offsets: tuple[float, ...], src_shape: tuple[int, ...], mode: str) -> np.ndarray:
    lo = [r.start for r in ctx.reads[0]]
    if mode == "nearest":
        idx = [np.clip(np.floor(source_coords(w, s, o) + 0.5).astype(np.int64), 0, n - 1) - lo0
               for w, s, o, n, lo0 in zip(ctx.region, scales, offsets, src_shape, lo)]
        return block[np.ix_(*idx)]
    out = block.astype(np.float64)
    for axis, (w, s, o, n, lo0) in enumerate(zip(ctx.region, scales, offsets, src_shape, lo)):
        u = np.clip(source_coords(w, s, o), 0, n - 1)
        i0 = np.minimum(np.floor(u).astype(np.int64), n - 1)
        i1 = np.minimum(i0 + 1, n - 1)
        t = (u - i0).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, i0 - lo0, axis=axis) * (1 - t) + np.take(out, i1 - lo0, axis=axis) * t
    if block.dtype.kind in "ui":
        info = np.iinfo(block.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(block.dtype)
    return out.astype(block.dtype)


def _check_covers(src: Volume, ref: Volume, scales: tuple[float, ...],
                  offsets: tuple[float, ...], f: float) -> None:
    """Refuse a source whose voxels do not cover every voxel centre of the reference grid
    (half a source voxel past its edge at most), before any work."""
    for axis, (a, s, o, n, m) in enumerate(zip("zyx", scales, offsets, src.shape, ref.shape)):
        lo, hi = o, (m - 1) * s + o  # the reference's first and last centres, in src voxels
        if lo < -0.5 - 1e-6 or hi > n - 0.5 + 1e-6:
            t = (src.translation or (0.0,) * 3)[axis]
            v = src.voxel_size[axis]
            raise InvalidArgumentError(
                f"{src.url} covers {a} = {t - v / 2:g} to {t + (n - 0.5) * v:g} {src.unit}, but "
                f"the grid of {ref.url} reaches {a} = {t + lo * v:g} to {t + hi * v:g}: the "
                "source does not cover it (is it a level of another volume, or the wrong one?)")


SPEC = Operator(
    "upsample", "a coarse volume resampled onto another volume's grid (shape, voxel size, "
                "translation): nearest for labels, linear for images",
    inputs=(Port("src", "volume", "the coarse volume (a pyramid level by its path: X.zarr/2)"),
            Port("like", "volume", "the reference whose grid the output gets", option=True)),
    output=Port("dst", "volume", "src on the grid of like"),
    params=(Param("mode", "choice", "auto: nearest for labels, linear for images",
                  choices=MODES),
            Param("chunks", "zyx", "output chunk shape (default: the reference's)",
                  unit="voxels"),
            Param("compression", "choice", "output compression", choices=COMPRESSIONS)),
    run=ENGINE + REPLACE + INCOMPLETE,
    examples=("emarray upsample mask.zarr/2 mask-full.zarr --like raw.zarr",))


@SPEC.function
def upsample(src: Volume | str | os.PathLike, dst: str | os.PathLike,
             like: Volume | str | os.PathLike, *, mode: str = "auto", chunks: Any = None,
             compression: str = "zstd", options: RunOptions | None = None, **run: Any) -> Volume:
    """Resample ``src`` onto the voxel grid of ``like`` (its shape, voxel size, translation).

    Each output voxel's centre is mapped through both volumes' voxel sizes and translations to
    a position in ``src``: ``nearest`` takes the voxel there, ``linear`` interpolates. A source
    that does not cover the reference's grid is refused before any work.

    Returns
    -------
    Volume
        The resampled volume.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> fine = emarray.create_volume(os.path.join(d, "f.zarr"), (2, 4, 4), "uint32", 2,
    ...                              voxel_size=(1, 1, 1))
    >>> coarse = emarray.create_volume(os.path.join(d, "c.zarr"), (1, 2, 2), "uint32", 2,
    ...                                voxel_size=(2, 2, 2), translation=(0.5, 0.5, 0.5))
    >>> coarse.write((slice(0, 1), slice(0, 2), slice(0, 2)), np.array([[[1, 2], [3, 4]]], "u4"))
    >>> up = emarray.upsample(coarse, os.path.join(d, "u.zarr"), like=fine)
    >>> up.read()[0].tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    """
    opts = RunOptions.make(options, **run)
    src = as_volume(src, opts.allow_incomplete)
    ref = as_volume(like, opts.allow_incomplete)
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if src.ndim != 3 or ref.ndim != 3:
        raise ShapeMismatchError(f"upsample takes z,y,x volumes; got {src.shape} and {ref.shape}")
    labels = is_labels(src)
    if labels and mode == "linear":
        raise InvalidArgumentError(f"{src.url} holds labels: their ids must not be interpolated; "
                                   f"use {given('mode', 'nearest')}")
    how = ("nearest" if labels else "linear") if mode == "auto" else mode
    from .._normalize import micrometres, parse_tuple
    f = micrometres(ref.unit) / micrometres(src.unit)  # ref's unit in src's unit
    s_ref = [v * f for v in ref.voxel_size]
    t_ref = [v * f for v in (ref.translation or (0.0,) * 3)]
    t_src = list(src.translation or (0.0,) * 3)
    scales = tuple(r / s for r, s in zip(s_ref, src.voxel_size))
    offsets = tuple((tr - ts) / s for tr, ts, s in zip(t_ref, t_src, src.voxel_size))
    _check_covers(src, ref, scales, offsets, f)
    out_chunks = (parse_tuple(chunks, "chunks", 3) if chunks is not None else ref.chunks)
    out_chunks = tuple(min(c, s) for c, s in zip(out_chunks, ref.shape))
    ident = job_identity("upsample", {"mode": how, "like": ref.fingerprint()}, [src],
                         layout_of(out_chunks, None, compression))
    halo = tuple(int(math.ceil(abs(o))) + 1 for o in offsets)
    read = Read(src, halo=halo,
                scale=tuple(Fraction(s).limit_denominator(10**6) for s in scales),
                boundary="nearest")

    def create(path: str) -> Volume:
        return create_volume(path, ref.shape, src.dtype, out_chunks, compression=compression,
                             voxel_size=s_ref, unit=src.unit, axes=ref.axes,
                             attrs={"job": ident})

    def stages(out: Volume) -> list[Stage]:
        fn = partial(_upsample, scales=scales, offsets=offsets, src_shape=src.shape, mode=how)
        return [Stage("upsample", fn, BlockGrid(ref.shape, out.block_shape), [read],
                      [Write(out)])]

    return run_job(dst, create, job=ident, stages=stages, options=opts, inputs=[src],
                   desc="upsample")
