"""Deterministic synthetic EM-like volumes of any size, made chunk by chunk.

Space is cut into cubic cells; each cell holds at most one ellipsoidal object (mitochondria-like)
whose position, size and presence come from a random generator seeded by ``(seed, cell)``.
Voxel noise is a hash of the voxel's global index. Every voxel is therefore a pure function of
its coordinates: any block of the volume can be made alone, and the result does not depend on
the chunking. Three kinds:

``raw``    uint8 intensities: bright cytoplasm, darker objects with a dark membrane, noise.
``truth``  uint32 object ids (0 = background), an id per cell, consistent over the volume.
``prob``   float32 probability map a model might output: a noisy, blurred-edge version of truth.
"""
from __future__ import annotations

from .engine.contract import BlockContext

import math
import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from . import storage
from ._normalize import parse_tuple
from .errors import InvalidArgumentError
from .spec import COMPRESSIONS, ENGINE, REPLACE, Operator, Param, Port
from .volume import Volume

KINDS = ("raw", "truth", "prob")
DTYPES = {"raw": np.uint8, "truth": np.uint32, "prob": np.float32}
CELL = 32


def _cell_object(seed: int, cell: tuple[int, int, int], size: int):
    """The object in ``cell``: (center, radii) in global voxel coordinates, or None."""
    rng = np.random.default_rng([seed, *cell])
    if rng.random() < 0.4:
        return None
    radii = rng.uniform(0.18, 0.45, 3) * size
    radii[0] *= rng.uniform(0.6, 1.0)  # a little flatter along z, as in anisotropic EM
    lo = radii + 1
    center = lo + rng.random(3) * (size - 2 * lo)
    return np.asarray(cell) * size + center, radii


def _hash_uniform(region: tuple[slice, ...], shape: Sequence[int], seed: int) -> np.ndarray:
    """Uniform noise in [0, 1) from a splitmix64 hash of each voxel's global linear index."""
    z, y, x = (np.arange(s.start, s.stop, dtype=np.uint64) for s in region)
    idx: np.ndarray = (z[:, None, None] * np.uint64(shape[1] * shape[2])
                       + y[None, :, None] * np.uint64(shape[2]) + x[None, None, :])
    with np.errstate(over="ignore"):
        h: np.ndarray = idx + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)


def _radius_field(region: tuple[slice, ...], seed: int, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ellipsoid radius (<1 inside an object; 9 far outside) and the cell id per voxel."""
    shape = tuple(s.stop - s.start for s in region)
    r = np.full(shape, 9.0, np.float32)
    ids = np.zeros(shape, np.int64)
    ranges = [range(s.start // cell, -(-s.stop // cell)) for s in region]
    for cz in ranges[0]:
        for cy in ranges[1]:
            for cx in ranges[2]:
                obj = _cell_object(seed, (cz, cy, cx), cell)
                if obj is None:
                    continue
                center, radii = obj
                lo = [max(c * cell, s.start) for c, s in zip((cz, cy, cx), region)]
                hi = [min((c + 1) * cell, s.stop) for c, s in zip((cz, cy, cx), region)]
                axes = [((np.arange(a, b, dtype=np.float32) - c) / rd) ** 2
                        for a, b, c, rd in zip(lo, hi, center, radii)]
                rr = np.sqrt(axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])
                sl = tuple(slice(a - s.start, b - s.start) for a, b, s in zip(lo, hi, region))
                r[sl] = rr
                ids[sl] = 1 + cz * 1_000_003 * 1_000_003 + cy * 1_000_003 + cx
    return r, ids


def synthetic_block(kind: str, region: tuple[slice, ...], shape: Sequence[int], *, seed: int = 0,
                    cell: int = CELL) -> np.ndarray:
    """Make the block ``region`` of the synthetic volume ``kind`` of size ``shape``.

    >>> b = synthetic_block("truth", (slice(0, 8), slice(0, 8), slice(0, 8)), (64, 64, 64))
    >>> b.dtype, b.shape
    (dtype('uint32'), (8, 8, 8))
    """
    if kind not in KINDS:
        raise InvalidArgumentError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    r, ids = _radius_field(region, seed, cell)
    inside = r <= 1.0
    if kind == "truth":
        # sequential ids: rank of the cell's raw id among cells of the volume (dense numbering)
        ncell = [-(-s // cell) for s in shape]
        cz, rem = np.divmod(ids - 1, 1_000_003 * 1_000_003)
        cy, cx = np.divmod(rem, 1_000_003)
        lin = (cz * ncell[1] + cy) * ncell[2] + cx + 1
        return np.where(inside, lin, 0).astype(np.uint32)
    u = _hash_uniform(region, shape, seed)
    noise = (u - 0.5) * 3.4  # roughly unit variance
    if kind == "raw":
        z = np.arange(region[0].start, region[0].stop, dtype=np.float32)[:, None, None]
        y = np.arange(region[1].start, region[1].stop, dtype=np.float32)[None, :, None]
        texture = 10 * np.sin(y / 7.0 + z / 11.0) * np.cos(
            np.arange(region[2].start, region[2].stop, dtype=np.float32)[None, None, :] / 9.0)
        val = 175 + texture + 14 * noise
        val = np.where(inside, 105 + 10 * noise, val)
        val = np.where((r > 0.85) & (r <= 1.05), 55 + 10 * noise, val)
        return np.clip(val, 0, 255).astype(np.uint8)
    logits = 7.0 * (1.0 - np.minimum(r, 3.0)) + 1.5 * noise
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def _make_block(ctx: BlockContext, *, kind: str, shape: tuple[int, ...], seed: int,
                cell: int) -> np.ndarray:
    return synthetic_block(kind, ctx.region, shape, seed=seed, cell=cell)


#: The largest synthetic volume (voxels): 1 PiB of uint8 is more than any test needs.
MAX_VOXELS = 2**50


def _kinds(value: Any, name: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    for k in items:
        if k not in KINDS:
            raise InvalidArgumentError(f"{name} must be among {', '.join(KINDS)}, got {k!r}")
    return tuple(items)


def _says(vols: dict[str, Volume], args: dict[str, Any]) -> list[str]:
    return [f"wrote {v.url}: {v.shape} {v.dtype}" for v in vols.values()]


SPEC = Operator(
    "synthetic", "deterministic synthetic EM-like raw, truth and prob volumes of any size, "
                 "made chunk by chunk",
    inputs=(),
    output=Port("dst", "folder", "folder for raw.zarr, truth.zarr and prob.zarr",
                parts=KINDS),
    params=(Param("shape", "zyx", "volume shape z,y,x (or one number)", aliases=("--size",),
                  unit="voxels"),
            Param("chunks", "zyx", "chunk shape z,y,x", unit="voxels"),
            Param("shards", "zyx", "shard shape z,y,x (multiples of chunks)", unit="voxels"),
            Param("seed", "int", "random seed", minimum=0),
            Param("kinds", "text", "which volumes to make: raw, truth, prob", parse=_kinds),
            Param("voxel_size", "zyx-float", "voxel size z,y,x", unit="nanometer"),
            Param("compression", "choice", "compression", choices=COMPRESSIONS)),
    run=ENGINE + REPLACE, says=_says,
    examples=("emarray synthetic synth/ --shape 128,512,512",))


@SPEC.function
def synthetic(dst: str | os.PathLike, shape: Any = (128, 256, 256), *, chunks: Any = 64,
              shards: Any = None, seed: int = 0, kinds: Sequence[str] = KINDS,
              voxel_size: Any = (40.0, 8.0, 8.0), compression: str = "zstd",
              options: Any = None, **run: Any) -> dict[str, Volume]:
    """Write synthetic ``raw``, ``truth`` and ``prob`` volumes as ``dst/<kind>.zarr``.

    Space is cut into cubic cells, each holding at most one ellipsoidal object whose position
    and size come from a generator seeded by ``(seed, cell)``; every voxel is a pure function
    of its coordinates, so any block can be made alone and the result does not depend on the
    chunking. Memory does not grow with ``shape``.

    Returns
    -------
    dict
        ``{kind: Volume}``.

    Examples
    --------
    >>> import emarray, tempfile
    >>> vols = emarray.datasets.synthetic(tempfile.mkdtemp(), (32, 64, 64), chunks=32)
    >>> sorted(vols), str(vols["prob"].dtype)
    (['prob', 'raw', 'truth'], 'float32')
    """
    from .engine import RunOptions
    from .codecs import compressor_codecs
    opts = RunOptions.make(options, **run)
    shape = parse_tuple(shape, "shape", 3)
    for k in kinds:
        if k not in KINDS:
            raise InvalidArgumentError(f"kind must be one of {', '.join(KINDS)}, got {k!r}")
    if math.prod(shape) > MAX_VOXELS:
        raise InvalidArgumentError(
            f"size {','.join(map(str, shape))} is {math.prod(shape):.3g} voxels; synthetic "
            f"volumes are limited to {MAX_VOXELS:.3g}")
    chunk_t = tuple(min(c, s) for c, s in zip(parse_tuple(chunks, "chunks", 3), shape))
    shard_t = parse_tuple(shards, "shards", 3) if shards is not None else None
    voxel = parse_tuple(voxel_size, "voxel size", 3, kind=float)
    compressor_codecs(compression)
    out: dict[str, Volume] = {}
    with opts.runner("synthetic") as runner:
        if not storage.is_remote(dst):  # a bucket's prefix exists once an object is in it
            os.makedirs(dst, exist_ok=True)
        for kind in kinds:
            out[kind] = _synthetic_one(dst, kind, shape, chunk_t, shard_t, seed, voxel,
                                       compression, opts, runner)
    return out


def _synthetic_one(out_dir: Any, kind: str, shape: tuple[int, ...], chunks: tuple[int, ...],
                   shards: Any, seed: int, voxel_size: Any, compression: str, opts: Any,
                   runner: Any) -> Volume:
    """Write one kind of the synthetic volume through the engine."""
    from .engine import BlockGrid, Stage, Write, run_job
    from .volume import create_volume
    job = {"operator": "synthetic", "kind": kind, "seed": seed, "shape": list(shape),
           "voxel_size": list(voxel_size),
           "layout": {"chunks": list(chunks), "shards": list(shards) if shards else None,
                      "compression": compression}}
    create = partial(create_volume, shape=shape, dtype=DTYPES[kind], chunks=chunks, shards=shards,
                     compression=compression, voxel_size=voxel_size, name=kind, attrs={"job": job})
    fn = partial(_make_block, kind=kind, shape=shape, seed=seed, cell=CELL)

    def stages(out: Volume) -> list[Stage]:
        return [Stage(f"synthetic {kind}", fn, BlockGrid(out.shape, out.block_shape),
                      writes=[Write(out)])]

    return run_job(os.path.join(out_dir, f"{kind}.zarr"), create, job=job, stages=stages,
                   options=opts, runner=runner)
