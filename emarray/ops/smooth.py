"""Gaussian smoothing, out of core: each block is read with a halo and filtered whole.

The result equals ``scipy.ndimage.gaussian_filter`` on the whole volume (mode ``reflect``, the
same ``truncate``) for every chunking, blocks smaller than the halo included: the engine grows
each block's read by the filter radius and fills what lies past the volume's edges by SciPy's
reflection, then crops the filtered block back to its write region.
"""
from __future__ import annotations

import dataclasses
import math
import os
from functools import partial
from typing import Any

import numpy as np

from .. import backends
from .._normalize import parse_tuple
from ..kernel_table import SMOOTH_DTYPES
from ..engine import BlockContext, BlockGrid, Read, RunOptions, Stage, Write
from ..spec import ELEMENTWISE, Operator, Param, Port, layout_params
from ..engine.contract import source_index
from ..errors import InvalidArgumentError
from ..volume import Volume
from .common import as_volume, run_blockwise

UNITS = ("voxel", "physical")


#: at this many sigmas the Gaussian's float64 weights are exactly 0 (exp(-746) underflows),
#: so no filter is longer than this whatever truncate says
ZERO_BEYOND = 38.7
#: longest weight vector computed (a sigma of ~430,000 voxels); longer ones are refused
MAX_WEIGHTS = 2**25


def gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D Gaussian SciPy uses: radius ``int(truncate * sigma + 0.5)``
    (the weights past ``38.7 sigma``, exactly 0 in float64, left out).

    >>> gaussian_weights(1.0, 1.0).round(4).tolist()
    [0.2741, 0.4519, 0.2741]
    """
    radius = min(int(truncate * sigma + 0.5), math.ceil(ZERO_BEYOND * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    return phi / phi.sum()


def fold_weights(w: np.ndarray, n: int) -> np.ndarray:
    """The same filter for an axis of ``n`` voxels, at most ``n`` voxels long each side.

    Under SciPy's ``reflect`` boundary the extended axis repeats every ``2 n`` voxels, so
    weights ``2 n`` apart always meet the same voxel: they are summed into one (radius ``n``,
    the two ends sharing the class ``n`` half and half). The result equals the long filter's
    within float rounding, while reading no more than the volume's own extent as halo.

    >>> fold_weights(np.full(9, 1 / 9), 2).round(4).tolist()
    [0.1111, 0.2222, 0.3333, 0.2222, 0.1111]
    """
    r = w.size // 2
    if r <= n:
        return w
    period = 2 * n
    classes = np.zeros(period, np.float64)
    np.add.at(classes, np.arange(-r, r + 1) % period, w)
    out = np.empty(2 * n + 1, np.float64)
    out[n:2 * n] = classes[:n]          # offsets 0 .. n-1
    out[:n] = classes[np.arange(-n, 0) % period]  # offsets -n .. -1
    out[0] = out[2 * n] = classes[n] / 2  # offset n and -n: one class, shared
    return out


def axis_weights(sigma: tuple[float, ...], truncate: float,
                 shape: tuple[int, ...]) -> tuple[np.ndarray | None, ...]:
    """Per axis, the weights the volume of ``shape`` is filtered with (None: not filtered),
    folded on axes shorter than the filter; refused when a sigma is too large to compute."""
    out: list[np.ndarray | None] = []
    for s, n in zip(sigma, shape):
        if s <= 0:
            out.append(None)
            continue
        length = 2 * min(int(truncate * s + 0.5), math.ceil(ZERO_BEYOND * s)) + 1
        if length > MAX_WEIGHTS:
            raise InvalidArgumentError(
                f"sigma {s:g} voxels is too large: its filter would need {length:,} weights "
                f"(at most {MAX_WEIGHTS:,}); the result would be almost constant anyway")
        out.append(fold_weights(gaussian_weights(s, truncate), n))
    return tuple(out)


def smooth_halo(weights: tuple[np.ndarray | None, ...]) -> tuple[int, ...]:
    """Voxels of context each axis needs: the filter's radius (0 on axes not filtered)."""
    return tuple(0 if w is None else w.size // 2 for w in weights)


def output_dtype(dtype: Any) -> np.dtype:
    """float64 stays float64; everything else is smoothed into float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def smooth_block_cpu(block: np.ndarray, *, weights: tuple[np.ndarray | None, ...],
                     core: tuple[slice, ...] | None = None) -> np.ndarray:
    """The CPU path: SciPy's ``correlate1d`` with each axis's weights on the block (grown by
    its halo), axis after axis as ``gaussian_filter`` does.

    With ``core`` (the block without its halo, in the grown block's coordinates), each axis is
    cut to its core once it is filtered: the later axes filter fewer lines (15 % fewer for
    σ = 2 on 64×256×256 blocks), and every line they filter is the same line as before, so the
    result is the grown result's core, bit for bit.
    """
    from scipy import ndimage
    v = block.astype(output_dtype(block.dtype), copy=False)
    for axis, w in enumerate(weights):
        if w is not None:
            v = ndimage.correlate1d(v, w, axis, mode="reflect")
        if core is not None:
            v = v[(slice(None),) * axis + (core[axis],)]
    return v


def smooth_block_twin(block: np.ndarray, *, weights: tuple[np.ndarray | None, ...]) -> np.ndarray:
    """NumPy twin of ``kernels/smooth.cu``: the same float32 sums in the same order, per axis."""
    v = block.astype(np.float32)
    for axis, w64 in enumerate(weights):
        if w64 is None:
            continue
        w = w64.astype(np.float32)
        r, n = w.size // 2, v.shape[axis]
        padded = np.take(v, source_index(np.arange(-r, n + r), n, "reflect"), axis=axis)
        acc = np.zeros_like(v)
        for j in range(w.size):
            part = np.take(padded, np.arange(j, j + n), axis=axis)
            acc = acc + w[j] * part  # float32 multiply, then float32 add: no fused multiply-add
        v = acc
    return v


backends.register("smooth", "cpu", smooth_block_cpu)
backends.register("smooth", "cuda", "emarray.cuda.smooth:smooth_block_cuda", SMOOTH_DTYPES)


def _smooth(ctx: BlockContext, block: np.ndarray, *, weights: tuple[np.ndarray | None, ...]) -> np.ndarray:
    if ctx.state is smooth_block_cpu:
        core = tuple(slice(w.start - r.start, w.stop - r.start)
                     for w, r in zip(ctx.writes[0], ctx.reads[0]))
        return smooth_block_cpu(block, weights=weights, core=core)
    return ctx.state(block, weights=weights)


def voxel_sigma(src: Volume, sigma: Any, unit: str) -> tuple[float, ...]:
    """Sigma per axis of ``src`` in voxels (``physical``: in the volume's unit, divided by the
    voxel size); a channel axis gets 0."""
    if unit not in UNITS:
        raise InvalidArgumentError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    n_space = len(src.spatial_axes)
    s = parse_tuple(sigma, "sigma", n_space, kind=float, positive=False)
    if any(v < 0 for v in s):
        raise InvalidArgumentError(f"sigma must be >= 0 on every axis, got {sigma!r}")
    if not any(v > 0 for v in s):
        raise InvalidArgumentError(f"sigma must be > 0 on at least one axis, got {sigma!r}")
    if unit == "physical":
        s = tuple(v / size for v, size in zip(s, src.voxel_size))
    it = iter(s)
    return tuple(next(it) if i in src.spatial_axes else 0.0 for i in range(src.ndim))


def check_block_memory(src: Volume, halo: tuple[int, ...], dtype: np.dtype, *,
                       block: tuple[int, ...] | None = None, doing: str = "smoothing",
                       advice: str = "use a smaller sigma or truncate") -> None:
    """Refuse, before any work, a filter whose blocks (``block``, default the storage
    block) grown by the halo would not fit in memory (the read, its float copy and the
    result: three arrays of the grown block)."""
    import psutil
    grown = [min(b, n) + 2 * h for b, n, h in zip(block or src.block_shape, src.shape, halo)]
    need = 3 * math.prod(grown) * dtype.itemsize
    budget = psutil.virtual_memory().total // 4
    if need > budget:
        raise InvalidArgumentError(
            f"{doing} {src.url} with a halo of {','.join(map(str, halo))} voxels would read blocks "
            f"of {','.join(map(str, grown))} voxels: {need / 2**30:.1f} GiB each, more than the "
            f"{budget / 2**30:.1f} GiB a block may take here; {advice}, "
            "or store the volume in smaller chunks")


SPEC = Operator(
    "smooth", "Gaussian smoothing into float32, equal to scipy.ndimage.gaussian_filter on the "
              "whole volume for any chunking",
    inputs=(Port("src", "volume", "z,y,x (or c,z,y,x: channels are not mixed), any real dtype"),),
    output=Port("dst", "volume", "float32 (float64 stays float64)"),
    params=(Param("sigma", "zyx-float", "standard deviation: one number or z,y,x", positive=False,
                  metavar="Z,Y,X"),
            Param("unit", "choice", "sigma in voxels, or in the volume's physical unit",
                  choices=UNITS),
            Param("truncate", "float", "cut the filter at this many standard deviations "
                                       "(SciPy's default 4)", minimum=1e-300),
            *layout_params()),
    run=ELEMENTWISE, blocks="smooth",
    examples=("emarray smooth raw.zarr smooth.zarr --sigma 2",
              "emarray smooth raw.zarr smooth.zarr --sigma 50,8,8 --unit physical"))


@SPEC.function
def smooth(src: Volume | str | os.PathLike, dst: str | os.PathLike, sigma: Any, *,
           unit: str = "voxel", truncate: float = 4.0, chunks: Any = None, shards: Any = None,
           compression: str = "zstd", options: RunOptions | None = None, **run: Any) -> Volume:
    """Gaussian-smooth ``src`` into ``dst`` (float32; float64 stays float64).

    Equals ``scipy.ndimage.gaussian_filter(src, sigma, mode="reflect", truncate=truncate)``
    on the whole volume, for any chunking. A filter longer than the volume along an axis is
    folded onto it (:func:`fold_weights`), so its halo never exceeds the volume; blocks whose
    grown read would not fit in memory are refused before any work.

    The CPU path is SciPy's (float64 sums); ``backend="cuda"`` runs ``kernels/smooth.cu``
    (float32 sums, equal to :func:`smooth_block_twin`, within float32 rounding of SciPy). So
    that a volume is never written by both, ``auto`` means the CPU here and the backend is
    part of the job: every block of a job runs the one asked for (a worker without CUDA
    refuses), and a ``resume`` with the other backend is refused.

    Returns
    -------
    Volume
        The smoothed volume.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> from scipy import ndimage
    >>> d = tempfile.mkdtemp()
    >>> a = np.random.default_rng(0).random((9, 10, 11)).astype("float32")
    >>> v = emarray.create_volume(os.path.join(d, "a.zarr"), a.shape, "float32", (4, 4, 4))
    >>> v.write((slice(0, 9), slice(0, 10), slice(0, 11)), a)
    >>> s = emarray.smooth(v, os.path.join(d, "s.zarr"), 1.5)
    >>> bool(np.allclose(s.read(), ndimage.gaussian_filter(a, 1.5), atol=1e-6))
    True
    """
    opts = RunOptions.make(options, **run)
    # one algorithm per volume: auto is the CPU (SciPy); cuda only when asked
    opts = dataclasses.replace(opts, backend="cuda" if str(opts.backend).lower() == "cuda" else "cpu")
    src = as_volume(src, opts.allow_incomplete)
    sig = voxel_sigma(src, sigma, unit)
    truncate = float(truncate)
    if not truncate > 0:
        raise InvalidArgumentError(f"truncate must be > 0, got {truncate!r}")
    weights = axis_weights(sig, truncate, src.shape)
    halo = smooth_halo(weights)
    out_dtype = output_dtype(src.dtype)
    check_block_memory(src, halo, out_dtype)

    def stages(out: Volume, setup: dict[str, Any]) -> list[Stage]:
        return [Stage("smooth", partial(_smooth, weights=weights),
                      BlockGrid(src.shape, src.block_shape),
                      [Read(src, halo=halo, boundary="reflect")], [Write(out)], **setup)]

    return run_blockwise("smooth", src, dst, out_dtype, {"sigma": list(sig), "truncate": truncate,
                                                         "backend": opts.backend},
                         opts, stages, chunks=chunks, shards=shards, compression=compression,
                         backend="smooth")
