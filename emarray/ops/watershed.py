"""Seeded watershed fragments (supervoxels) of a boundary map or of affinities, out of core.

Each block is read with a halo and flooded whole with scikit-image's ``watershed`` from seeds
found in the same grown block: local maxima of the distance transform of ``boundary < T`` (the
classic method), connected components of ``boundary < T``, or a seed volume. Only the block's
own region is written, so the fragments inside a block equal scikit-image's on that grown block;
fragments cut by a block face are expected (``emarray agglomerate`` merges them). Every voxel
gets a fragment. Ids are unique across the volume without a global pass: the block's flat index
in the high 32 bits of a uint64, the fragment's number in the block (in C order of its first
voxel) in the low ones; ``relabel`` numbers them 1..N instead, in a second pass.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any

import numpy as np

from ..engine import BlockContext, BlockGrid, Read, RunOptions, Stage, Write
from ..engine.checkpoint import load_npy, progress_of
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..spec import ENGINE, INCOMPLETE, REPLACE, Operator, Param, Port, layout_params
from ..volume import Volume, create_volume, open_volume
from ._nan import count_nan, warn_nan
from .common import as_volume, retype, run_blockwise, work_layout

SEEDS = ("maxima", "components")
REDUCE = ("mean", "min")


def boundary_of(block: np.ndarray, affinities: bool, reduce: str) -> np.ndarray:
    """The boundary map a block floods: the map itself, or ``1 - mean`` (``min``) of the
    affinity channels. NaN (a NaN affinity in any channel too) is the highest boundary, +inf:
    never a seed (never below a threshold), flooded after every finite value."""
    b = block.astype(np.float32, copy=False)
    if affinities:
        b = 1.0 - (b.mean(axis=0) if reduce == "mean" else b.min(axis=0))
    nan = np.isnan(b)
    if nan.any():
        b = np.where(nan, np.float32(np.inf), b)
    return b.astype(np.float32, copy=False)


def seeds_of(b: np.ndarray, method: str, threshold: float, sampling: tuple[float, ...],
             distance: np.ndarray | None = None, seeds: np.ndarray | None = None) -> np.ndarray:
    """Markers (uint32, 0 = none) for one grown block."""
    import cc3d
    if seeds is not None:
        import fastremap
        return fastremap.renumber(np.array(seeds, order="C"), preserve_zero=True)[0].astype(
            np.uint32)
    inside = b < threshold
    if method == "components":
        return cc3d.connected_components(inside.view(np.uint8), connectivity=6,
                                         out_dtype=np.uint32)
    from scipy import ndimage
    if distance is None:
        import edt
        distance = edt.edt(inside, anisotropy=sampling, black_border=False, parallel=1)
    peak = (distance == ndimage.maximum_filter(distance, size=3, mode="nearest")) & inside & (
        distance > 0)
    return cc3d.connected_components(peak.view(np.uint8), connectivity=26, out_dtype=np.uint32)


def flood(b: np.ndarray, markers: np.ndarray, min_size: int) -> np.ndarray:
    """scikit-image's watershed of ``b`` from ``markers`` (every voxel labelled: a block
    without a seed is one fragment); fragments under ``min_size`` voxels give up their seeds
    and are flooded by their neighbours."""
    from skimage.segmentation import watershed
    if not markers.any():
        return np.ones(b.shape, np.uint32)
    labels = watershed(b, markers).astype(np.uint32, copy=False)
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = np.flatnonzero(sizes < min_size)
        small = small[small > 0]
        if small.size and small.size < np.count_nonzero(sizes[1:]):
            keep = markers.copy()
            keep[np.isin(markers, small)] = 0
            labels = watershed(b, keep).astype(np.uint32, copy=False)
    return labels


def _own(ctx: BlockContext, array: np.ndarray, channel_axis: bool = False) -> np.ndarray:
    read = ctx.reads[0][-3:]
    sl = tuple(slice(w.start - r.start, w.stop - r.start) for w, r in zip(ctx.region, read))
    return array[(slice(None),) + sl] if channel_axis else array[sl]


def _fragments(ctx: BlockContext, block: np.ndarray, *rest: np.ndarray, p: dict[str, Any]) -> Any:
    import fastremap
    read = ctx.reads[0][-3:]
    nan = count_nan(block, tuple(slice(w.start - r.start, w.stop - r.start)
                                 for w, r in zip(ctx.region, read)), p["affinities"])
    b = boundary_of(block, p["affinities"], p["reduce"])
    extra = list(rest)
    distance = extra.pop(0) if p["with_distance"] else None
    seeds = extra.pop(0) if p["with_seeds"] else None
    markers = seeds_of(b, p["seeds"], p["threshold"], p["sampling"], distance, seeds)
    labels = flood(b, markers, p["min_size"])
    own = np.ascontiguousarray(_own(ctx, labels))
    local, _ = fastremap.renumber(own, preserve_zero=True, in_place=True)  # 1..k, C order
    local = local.astype(np.uint32, copy=False)
    count = int(local.max()) if local.size else 0
    flat = int(np.ravel_multi_index(ctx.index, p["counts"]))
    if p["relabel"]:
        return local, np.array([[flat, count, nan]], np.int64)
    out = local.astype(np.uint64)
    out[out > 0] |= np.uint64(flat) << np.uint64(32)
    return out, np.array([[flat, count, nan]], np.int64)


def _concat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([a, b])


def _offsets(acc: Any, *, nblocks: int, scratch: Any) -> dict[str, Any]:
    counts = np.zeros(nblocks, np.int64)
    if acc is not None and len(acc):
        counts[acc[:, 0]] = acc[:, 1]
    offsets = np.cumsum(counts) - counts
    from ..engine.checkpoint import atomic_write
    import io
    buf = io.BytesIO()
    np.save(buf, offsets)
    scratch.mkdir(parents=True, exist_ok=True)
    atomic_write(scratch / "offsets.npy", buf.getvalue())
    total = int(counts.sum())
    nan = int(acc[:, 2].sum()) if acc is not None and len(acc) else 0
    return {"fragments": total, "dtype": "uint32" if total < 2**32 else "uint64",
            "nan_voxels": nan}


def _number(ctx: BlockContext, local: np.ndarray, *, scratch: Any, counts: tuple[int, ...],
            dtype: str) -> np.ndarray:
    offsets = load_npy(scratch / "offsets.npy")
    flat = int(np.ravel_multi_index(ctx.index, counts))
    out = local.astype(dtype)
    out[out > 0] += np.asarray(offsets[flat]).astype(dtype)
    return out


def _report(v: Volume, args: dict[str, Any]) -> list[str]:
    n = v.attrs.get("emarray", {}).get("fragments")
    return [f"wrote {v.url}: {v.shape} {v.dtype}, {n:,} fragments" if n is not None else
            f"wrote {v.url}: {v.shape} {v.dtype}"]


SPEC = Operator(
    "watershed", "seeded watershed fragments (supervoxels) of a boundary map or of affinities, "
                 "ids unique across the volume",
    inputs=(Port("boundary", "volume", "boundary map (high = boundary), float; or affinities "
                                       "c,z,y,x with affinities; NaN is the highest boundary"),
            Port("distance", "volume", "a distance transform whose local maxima are the seeds "
                                       "(emarray distance); default: computed in each block",
                 optional=True),
            Port("seeds", "volume", "a seed volume of integer labels (0 = none, each other id "
                                    "one seed) instead of computed seeds",
                 optional=True, labels=True)),
    output=Port("dst", "volume", "the fragments: uint64 (block in the high 32 bits), or 1..N "
                                 "with relabel", labels=True),
    params=(Param("threshold", "float", "voxels with boundary below this seed the flood (the "
                                        "distance transform of boundary < threshold, or its "
                                        "components)"),
            Param("seed_method", "choice", "maxima: local maxima of the distance transform of "
                                           "boundary < threshold; components: its connected "
                                           "components", choices=SEEDS),
            Param("affinities", "flag", "boundary is c,z,y,x nearest-neighbour affinities "
                                        "(1 = connected); the flood runs on 1 - their mean or min"),
            Param("reduce", "choice", "how affinity channels make a boundary map", choices=REDUCE),
            Param("min_size", "int", "fragments under this many voxels (in a block) are flooded "
                                     "by their neighbours", minimum=0, unit="voxels"),
            Param("halo", "zyx", "voxels of context read around each block", positive=False,
                  unit="voxels"),
            Param("relabel", "flag", "number the fragments 1..N (a second pass) instead of "
                                     "block-tagged uint64 ids"),
            *layout_params()),
    run=ENGINE + REPLACE + INCOMPLETE, report=_report,
    examples=("emarray watershed boundary.zarr fragments.zarr --threshold 0.3",
              "emarray watershed affs.zarr fragments.zarr --affinities --threshold 0.5"))


@SPEC.function
def watershed(boundary: Volume | str | os.PathLike, dst: str | os.PathLike, *,
              distance: Volume | str | os.PathLike | None = None,
              seeds: Volume | str | os.PathLike | None = None, threshold: float = 0.5,
              seed_method: str = "maxima", affinities: bool = False, reduce: str = "mean",
              min_size: int = 0, halo: Any = (4, 16, 16), relabel: bool = False,
              chunks: Any = None, shards: Any = None, compression: str = "zstd",
              options: RunOptions | None = None, **run: Any) -> Volume:
    """Watershed fragments of ``boundary`` into ``dst``: every voxel gets a fragment.

    Per block grown by ``halo``, scikit-image's ``watershed`` floods the boundary map from
    seeds found in that grown block, and the block's own region is written: inside a block the
    fragments equal scikit-image's on the grown block. Blocks are whole output chunks (shards),
    grown past tiny ones to at least twice the halo along each axis and 1024 voxels (the block
    is recorded in the output's job): chunks of 1 voxel give what chunks of the block give.

    NaN (a NaN affinity in any channel too) is the highest boundary: never a seed, flooded
    after every finite value, as scikit-image floods a value above the map's maximum; a job
    whose map holds NaN warns once, with their count. Seeds are integer labels, their ids
    exact whatever their dtype (a float volume is refused).

    Returns
    -------
    Volume
        The fragment volume; ``attrs["emarray"]["fragments"]`` counts them.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> b = np.zeros((1, 8, 16), np.float32); b[:, :, 8] = 1.0     # one wall: two cells
    >>> v = emarray.create_volume(os.path.join(d, "b.zarr"), b.shape, "float32", (1, 8, 8))
    >>> v.write((slice(0, 1), slice(0, 8), slice(0, 16)), b)
    >>> f = emarray.watershed(v, os.path.join(d, "f.zarr"), threshold=0.5, relabel=True)
    >>> int(f.read().min()) > 0, len(np.unique(f.read()))
    (True, 2)
    """
    opts = RunOptions.make(options, **run)
    bv = as_volume(boundary, opts.allow_incomplete)
    if bv.dtype.kind != "f":
        raise InvalidArgumentError(
            f"{bv.url} holds {bv.dtype}: watershed floods a float boundary map (or float "
            "affinities); rescale or predict one first")
    spatial = bv.shape[1:] if affinities else bv.shape
    if affinities and (bv.ndim != 4 or bv.shape[0] != 3):
        raise InvalidArgumentError(
            f"affinities must be c,z,y,x with 3 channels (z, y, x neighbours); {bv.url} has "
            f"shape {bv.shape}")
    if not affinities and bv.ndim != 3:
        raise InvalidArgumentError(f"{bv.url} has shape {bv.shape}: a boundary map is z,y,x "
                                   "(pass affinities for c,z,y,x affinities)")
    if not 0 < threshold <= 1:
        raise InvalidArgumentError(f"threshold must be in (0, 1] (boundary maps hold "
                                   f"probabilities), got {threshold!r}")
    extra = []
    for name, given in (("distance", distance), ("seeds", seeds)):
        if given is None:
            continue
        ev = as_volume(given, opts.allow_incomplete)
        if ev.shape != spatial:
            raise ShapeMismatchError(f"{name} has shape {ev.shape}; the boundary is {spatial}")
        if name == "seeds" and ev.dtype.kind not in "ui":
            raise InvalidArgumentError(
                f"seeds {ev.url} holds {ev.dtype}: seeds are integer labels (0 = none, each "
                "other id one seed); label a mask first (emarray label), or give it as "
                "--distance")
        extra.append(ev)
    h = tuple(int(x) for x in halo)
    like = open_volume(bv.url) if not affinities else _spatial_like(bv)
    # blocks of whole output chunks, at least twice the halo: a block reads at most 8 times
    # its own voxels, however small the chunks
    block = work_layout(like, chunks, shards, compression, tuple(2 * x for x in h), spatial)
    grid = BlockGrid(spatial, block)
    p = {"affinities": affinities, "reduce": reduce, "seeds": seed_method,
         "threshold": float(threshold), "sampling": tuple(float(s) for s in bv.voxel_size),
         "min_size": int(min_size), "with_distance": distance is not None,
         "with_seeds": seeds is not None, "relabel": relabel, "counts": grid.counts}
    reads = [Read(bv, halo=h, boundary="none", channels="all" if affinities else "same")]
    reads += [Read(ev, halo=h, boundary="none") for ev in extra]

    def stages(out: Volume, setup: dict[str, Any]) -> list:
        scratch = progress_of(out) / "watershed"
        fn = partial(_fragments, p=p)
        fin = partial(_offsets, nblocks=len(grid), scratch=scratch)
        if not relabel:
            return [Stage("watershed", fn, grid, reads, [Write(out)], combine=_concat,
                          finalize=_record_count(out, fin))]
        local = _scratch_volume(scratch, spatial, grid.block)
        first = Stage("watershed", fn, grid, reads, [Write(local)], combine=_concat,
                      finalize=_record_count(out, fin))
        from ..engine import LaterStage

        def build(given: dict[str, Any]) -> Stage:
            target = retype(out, given["dtype"])
            return Stage("number", partial(_number, scratch=scratch, counts=grid.counts,
                                           dtype=given["dtype"]), grid, [Read(local)],
                         [Write(target)])
        return [first, LaterStage("number", build)]

    job = {k: v for k, v in p.items() if k not in ("counts",)}
    job.update(halo=list(h), block=list(block))
    result = run_blockwise("watershed", like, dst, np.uint32 if relabel else np.uint64, job,
                           opts, stages, chunks=chunks, shards=shards, compression=compression,
                           attrs={"labels": True}, inputs=[bv, *extra], grid_block=block)
    warn_nan(bv, int(result.attrs.get("emarray", {}).get("nan_voxels", 0)), "watershed")
    return result


def _spatial_like(bv: Volume) -> Volume:
    """A z,y,x view of an affinity volume's grid, for the output to be made like."""
    from dataclasses import replace
    return replace(bv, shape=bv.shape[1:], chunks=bv.chunks[1:],
                   shards=bv.shards[1:] if bv.shards else None, axes=bv.axes[1:],
                   dtype=np.dtype(np.float32))


def _scratch_volume(root: Any, shape: tuple[int, ...], block: tuple[int, ...]) -> Volume:
    path = root / "local.zarr"
    try:
        return open_volume(path)
    except Exception:
        root.mkdir(parents=True, exist_ok=True)
        return create_volume(path, shape, np.uint32, block, compression="zstd")


def _record_count(out: Volume, fin: Any) -> Any:
    def finalize(acc: Any) -> dict[str, Any]:
        given = fin(acc)
        g = out.open_group()
        g.attrs["emarray"] = {**dict(g.attrs.get("emarray") or {}),
                              "fragments": given["fragments"],
                              "nan_voxels": given["nan_voxels"]}
        return given
    return finalize
