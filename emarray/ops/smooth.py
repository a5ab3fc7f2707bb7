"""Gaussian smoothing, out of core: each block is read with a halo and filtered whole.

The result equals ``scipy.ndimage.gaussian_filter`` on the whole volume (mode ``reflect``, the
same ``truncate``) for every chunking, blocks smaller than the halo included: the engine grows
each block's read by the filter radius and fills what lies past the volume's edges by SciPy's
reflection, then crops the filtered block back to its write region.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any

import numpy as np

from .. import backends
from .._normalize import parse_tuple
from ..cuda.instantiations import SMOOTH_DTYPES
from ..engine import BlockGrid, Read, RunOptions, Stage, Write, run_job
from ..engine.contract import _source_index
from ..errors import InvalidArgumentError
from ..volume import Volume, create_volume
from .common import as_volume, backend_stage_setup, job_identity, layout_of, output_layout

UNITS = ("voxel", "physical")


def gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D Gaussian SciPy uses: radius ``int(truncate * sigma + 0.5)``.

    >>> gaussian_weights(1.0, 1.0).round(4).tolist()
    [0.2741, 0.4519, 0.2741]
    """
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    return phi / phi.sum()


def smooth_halo(sigma: tuple[float, ...], truncate: float) -> tuple[int, ...]:
    """Voxels of context each axis needs: the filter radius (0 where sigma is 0)."""
    return tuple(int(truncate * s + 0.5) if s > 0 else 0 for s in sigma)


def output_dtype(dtype: Any) -> np.dtype:
    """float64 stays float64; everything else is smoothed into float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def smooth_block_cpu(block: np.ndarray, *, sigma: tuple[float, ...], truncate: float) -> np.ndarray:
    """The CPU path: SciPy's ``gaussian_filter`` on the block (grown by its halo)."""
    from scipy import ndimage
    return ndimage.gaussian_filter(block.astype(output_dtype(block.dtype), copy=False), sigma,
                                   mode="reflect", truncate=truncate)


def smooth_block_twin(block: np.ndarray, *, sigma: tuple[float, ...], truncate: float) -> np.ndarray:
    """NumPy twin of ``kernels/smooth.cu``: the same float32 sums in the same order, per axis."""
    v = block.astype(np.float32)
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        w = gaussian_weights(s, truncate).astype(np.float32)
        r, n = w.size // 2, v.shape[axis]
        padded = np.take(v, _source_index(np.arange(-r, n + r), n, "reflect"), axis=axis)
        acc = np.zeros_like(v)
        for j in range(w.size):
            part = np.take(padded, np.arange(j, j + n), axis=axis)
            acc = acc + w[j] * part  # float32 multiply, then float32 add: no fused multiply-add
        v = acc
    return v


backends.register("smooth", "cpu", smooth_block_cpu)
backends.register("smooth", "cuda", "emarray.cuda.smooth:smooth_block_cuda", SMOOTH_DTYPES)


def _smooth(ctx: Any, block: np.ndarray, *, sigma: tuple[float, ...], truncate: float) -> np.ndarray:
    return ctx.state(block, sigma=sigma, truncate=truncate)


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


def smooth(src: Volume | str | os.PathLike, dst: str | os.PathLike, sigma: Any, *,
           unit: str = "voxel", truncate: float = 4.0, chunks: Any = None, shards: Any = None,
           compression: str = "zstd", options: RunOptions | None = None, **run: Any) -> Volume:
    """Gaussian-smooth ``src`` into ``dst`` (float32; float64 stays float64).

    Equals ``scipy.ndimage.gaussian_filter(src, sigma, mode="reflect", truncate=truncate)``
    on the whole volume, for any chunking.

    Parameters
    ----------
    src : Volume or path
        A z,y,x (or c,z,y,x: channels are not mixed) volume of any numeric dtype.
    dst : path
        Output OME-Zarr image (voxel size copied from ``src``).
    sigma : float or z,y,x
        Standard deviation per axis, in voxels or (``unit="physical"``) in the volume's unit.
    truncate : float
        The filter is cut at ``truncate`` standard deviations (SciPy's default 4).
    chunks, shards, compression :
        Output storage layout (default: the input's).
    options : RunOptions, optional
        How the job runs; its fields may also be given as keywords.

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
    src = as_volume(src, opts.allow_incomplete)
    sig = voxel_sigma(src, sigma, unit)
    truncate = float(truncate)
    if not truncate > 0:
        raise InvalidArgumentError(f"truncate must be > 0, got {truncate!r}")
    halo = smooth_halo(sig, truncate)
    out_dtype = output_dtype(src.dtype)
    out_chunks, out_shards = output_layout(src, chunks, shards, compression)
    ident = job_identity("smooth", {"sigma": list(sig), "truncate": truncate,
                                    "dtype": out_dtype.str}, [src],
                         layout_of(out_chunks, out_shards, compression))

    def create(path: str) -> Volume:
        return create_volume(path, src.shape, out_dtype, out_chunks, shards=out_shards,
                             compression=compression, voxel_size=src.voxel_size, unit=src.unit,
                             axes=src.axes, attrs={"job": ident})

    with opts.runner("smooth") as runner:
        setup = backend_stage_setup("smooth", src.dtype, opts, runner)

        def stages(out: Volume) -> list[Stage]:
            return [Stage("smooth", partial(_smooth, sigma=sig, truncate=truncate),
                          BlockGrid(src.shape, src.block_shape),
                          [Read(src, halo=halo, boundary="reflect")], [Write(out)], **setup)]

        return run_job(dst, create, job=ident, stages=stages, options=opts, inputs=[src],
                       runner=runner)



