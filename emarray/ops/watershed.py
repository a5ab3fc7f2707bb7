"""Seeded watershed fragments (supervoxels) of a boundary map or of affinities, out of core,
the same for any chunking.

Three stages on the engine:

1. ``seeds``: each block marks its seed voxels, from the boundary map read with the context the
   rule needs, so that the mark of every voxel is what the whole volume gives it: the cores of
   the interior (voxels farther than ``core`` from the nearest voxel of ``boundary >=
   threshold``) and, where a process is too thin to have one, the local maxima of that
   distance (the default); or the connected components of ``boundary < threshold``; or the
   local maxima of the distance transform.
2. ``seeds-label`` ... ``seeds-relabel``: the marks are labelled by :mod:`emarray.ops.label`'s
   stages, so the seeds get ids 1..N in C order of their first voxel, whatever the chunking (a
   seed volume given by the user keeps one seed per id, numbered by rank of its id instead).
3. ``watershed``: each block is read with a halo and flooded whole with scikit-image's
   ``watershed`` from the global seeds in that grown block; its own region is written. A
   fragment is its seed's id, so pieces of one fragment in two blocks carry the same id and no
   face cuts a fragment. A voxel gets the fragment the whole-volume flood gives it whenever
   its flooding path from its seed stays inside the halo: for cores and components, the few
   voxels of a membrane.
"""
from __future__ import annotations

import math
import os
import uuid
from functools import partial
from typing import Any

import numpy as np

from .._normalize import id_dtype
from ..engine import BlockContext, BlockGrid, LaterStage, Read, RunOptions, Stage, Write
from ..engine.checkpoint import atomic_write, load_npy, progress_of
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..spec import ENGINE, INCOMPLETE, REPLACE, Operator, Param, Port, layout_params
from ..volume import Volume, create_volume, open_volume
from ._nan import count_nan, warn_nan
from .common import as_volume, backend_setup, retype, run_blockwise, work_layout
from .distance import parse_length
from .tables import SUM, merge

SEEDS = ("cores", "maxima", "components")
REDUCE = ("mean", "min")
#: the connectivity the seed marks of each method are labelled with (maxima: plateaus that
#: touch at a corner are one seed, as scikit-image's peak labelling has them)
SEED_CONNECTIVITY = {"cores": 6, "components": 6, "maxima": 26}
#: the default core distance, in voxels of the smallest voxel size
CORE_VOXELS = 1.0


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


def seed_mask(b: np.ndarray, method: str, threshold: float, sampling: tuple[float, ...],
              core: float = 0.0, distance: np.ndarray | None = None) -> np.ndarray:
    """The seed voxels (bool) of a boundary map ``b``: ``components``, the interior
    ``b < threshold``; ``maxima``, the local maxima (3x3x3) of its distance transform (or of
    ``distance``); ``cores``, the voxels farther than ``core`` from the boundary, and the
    maxima no farther (the seeds of processes too thin for a core).

    >>> b = np.ones((1, 3, 9), np.float32); b[0, 1, 1:8] = 0          # a thin bar
    >>> seed_mask(b, "cores", 0.5, (1.0, 1.0, 1.0), core=1.5)[0, 1].astype(int).tolist()
    [0, 1, 1, 1, 1, 1, 1, 1, 0]
    """
    inside = b < threshold
    if method == "components":
        return inside
    from scipy import ndimage
    if distance is None:
        import edt
        distance = edt.edt(inside, anisotropy=sampling, black_border=False, parallel=1)
    d = np.asarray(distance, np.float32)
    peak = (d == ndimage.maximum_filter(d, size=3, mode="nearest")) & inside & (d > 0)
    if method == "maxima":
        return peak
    return (d > core) | (peak & (d <= core))


def seed_halo(method: str, core: float, sampling: tuple[float, ...], halo: tuple[int, ...],
              with_distance: bool) -> tuple[int, ...]:
    """The context a block's seed marks need to be the whole volume's: none for components;
    one voxel for the maxima of a given distance volume; ``core`` and two voxels for cores
    (a voxel within ``core`` of the boundary finds it there, and so do its neighbours); the
    flood's ``halo`` for maxima of a distance computed in the block (not exact: see docs)."""
    if method == "components":
        return (0, 0, 0)
    if with_distance:
        return (1, 1, 1)
    if method == "cores":
        return tuple(math.ceil(core / v) + 2 for v in sampling)
    return halo


def flood(b: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """scikit-image's watershed of ``b`` from ``markers`` (any integer ids, 0 = none), in the
    markers' ids; every voxel labelled (a block without a seed is one fragment, 1)."""
    import fastremap
    from skimage.segmentation import watershed
    local, remap = fastremap.renumber(np.ascontiguousarray(markers), preserve_zero=True)
    ids = np.zeros(int(max(remap.values(), default=0)) + 1, markers.dtype)
    ids[np.fromiter(remap.values(), np.int64, len(remap))] = np.fromiter(
        remap.keys(), markers.dtype, len(remap))
    if ids.size == 1:
        return np.ones(b.shape, ids.dtype)
    return ids[watershed(b, local)]


def _own(ctx: BlockContext, array: np.ndarray, read: int = 0) -> np.ndarray:
    box = ctx.reads[read][-3:]
    return array[tuple(slice(w.start - r.start, w.stop - r.start)
                       for w, r in zip(ctx.region, box))]


# -- 1. seed marks --------------------------------------------------------------------------
def _marks(ctx: BlockContext, block: np.ndarray, *rest: np.ndarray,
           p: dict[str, Any]) -> np.ndarray:
    b = boundary_of(block, p["affinities"], p["reduce"])
    distance = rest[0] if rest else None
    mask = seed_mask(b, p["seeds"], p["threshold"], p["sampling"], p["core"], distance)
    return np.ascontiguousarray(_own(ctx, mask)).view(np.uint8)


# -- 1'. a seed volume given: its ids, ranked -------------------------------------------------
def _seed_ids(ctx: BlockContext, seeds: np.ndarray) -> dict[str, np.ndarray]:
    ids, n = np.unique(seeds, return_counts=True)
    keep = ids != 0
    return {"id": ids[keep].astype(id_dtype(seeds.dtype)), "n": n[keep].astype(np.int64)}


def _merge_ids(a: dict, b: dict) -> dict:
    return merge(a, b, ["id"], {"n": SUM})


def _save_ids(acc: Any, *, scratch: Any, min_size: int, dtype: np.dtype) -> dict[str, Any]:
    import io
    ids = acc["id"][acc["n"] >= max(min_size, 1)] if acc else np.empty(0, dtype)
    buf = io.BytesIO()
    np.save(buf, ids)
    scratch.mkdir(parents=True, exist_ok=True)
    atomic_write(scratch / "seed-ids.npy", buf.getvalue())
    return {"seeds": int(ids.size)}


def rank_seeds(seeds: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each seed voxel's rank (1..N) among the sorted seed ``ids``; 0 for no seed (or an id
    not kept). Exact for every integer dtype (compared in the ids' own dtype).

    >>> rank_seeds(np.array([0, 7, -1, 7, 9]), np.array([-1, 7])).tolist()
    [0, 2, 1, 2, 0]
    """
    if ids.size == 0:
        return np.zeros(seeds.shape, np.int64)
    s = seeds.astype(ids.dtype)
    where = np.minimum(np.searchsorted(ids, s), ids.size - 1)
    found = (ids[where] == s) & (seeds != 0)
    return np.where(found, where + 1, 0)


# -- 3. the flood -----------------------------------------------------------------------------
def _flood_block(ctx: BlockContext, block: np.ndarray, seeds: np.ndarray, *, p: dict[str, Any],
                 reads: tuple[Read, Read]) -> tuple[np.ndarray, int]:
    nan = count_nan(block, tuple(slice(w.start - r.start, w.stop - r.start)
                                 for w, r in zip(ctx.region, ctx.reads[0][-3:])),
                    p["affinities"])
    dtype = p["dtype"]
    if p["n"] == 0:  # no seed anywhere: the volume is one fragment
        return np.ones(tuple(s.stop - s.start for s in ctx.region), dtype), nan
    markers = _global(seeds, p)
    box = ctx.reads[0][-3:]
    halo = [s for s in p["halo"]]
    while not markers.any():  # no seed within the halo: read farther, until one is
        halo = [2 * h + 1 for h in halo]
        block, box = Read(reads[0].volume, halo=tuple(halo), channels=reads[0].channels).read(
            ctx.region)
        box = box[-3:]
        markers = _global(Read(reads[1].volume, halo=tuple(halo)).read(ctx.region)[0], p)
    b = boundary_of(block, p["affinities"], p["reduce"])
    labels = flood(b, markers)
    own = tuple(slice(w.start - r.start, w.stop - r.start) for w, r in zip(ctx.region, box))
    return labels[own].astype(dtype), nan


_IDS: dict[tuple[str, str], np.ndarray] = {}


def _global(seeds: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """The global seed ids of a block: labelled marks as they are, a given seed volume's ids
    by rank (their table loaded once per process; ``token`` is new each time it is made, so
    a later job at the same path never takes an older table)."""
    if p["ids"] is None:
        return seeds
    key = (p["ids"], p["token"])
    ids = _IDS.get(key)
    if ids is None:
        _IDS.clear()
        ids = _IDS[key] = np.array(load_npy(p["ids"]))
    return rank_seeds(seeds, ids)


def _add(a: int, b: int) -> int:
    return a + b


def _says(v: Volume, args: dict[str, Any]) -> list[str]:
    n = v.attrs.get("emarray", {}).get("fragments")
    return [f"wrote {v.url}: {v.shape} {v.dtype}, {n:,} fragments" if n is not None else
            f"wrote {v.url}: {v.shape} {v.dtype}"]


def _core(value: Any, name: str) -> Any:
    return parse_length(value, name)


SPEC = Operator(
    "watershed", "seeded watershed fragments (supervoxels) of a boundary map or of affinities, "
                 "ids 1..N the same for any chunking",
    needs=("skimage", "edt"),
    inputs=(Port("boundary", "volume", "boundary map (high = boundary), float; or affinities "
                                       "c,z,y,x with affinities; NaN is the highest boundary"),
            Port("distance", "volume", "a distance transform of boundary < threshold (emarray "
                                       "distance) for the cores and maxima seeds; default: "
                                       "computed in each block",
                 optional=True),
            Port("seeds", "volume", "a seed volume of integer labels (0 = none, each other id "
                                    "one seed) instead of computed seeds",
                 optional=True, labels=True)),
    output=Port("dst", "volume", "the fragments: ids 1..N, one per seed, numbered in C order of "
                                 "each seed's first voxel (uint32; uint64 past 2**32 - 1)",
                labels=True),
    params=(Param("threshold", "float", "boundary below this is interior: the seeds are found "
                                        "in it (its cores, its components, or the maxima of its "
                                        "distance transform)"),
            Param("seed_method", "choice", "cores: voxels of the interior farther than core from "
                                           "the boundary, plus the distance maxima of processes "
                                           "too thin for a core; components: the connected "
                                           "components of the interior; maxima: the local maxima "
                                           "of its distance transform", choices=SEEDS),
            Param("core", "text", "with cores: the distance from the boundary beyond which the "
                                  "interior is a seed: a length (12nm) or a number in the "
                                  "volume's unit; default 1 voxel of the smallest voxel size",
                  parse=_core, metavar="LENGTH"),
            Param("affinities", "flag", "boundary is c,z,y,x nearest-neighbour affinities "
                                        "(1 = connected); the flood runs on 1 - their mean or min"),
            Param("reduce", "choice", "how affinity channels make a boundary map", choices=REDUCE),
            Param("min_size", "int", "seeds (connected seed voxels, or a given seed's voxels) "
                                     "under this many voxels are dropped before the flood; their "
                                     "voxels are flooded by their neighbours", minimum=0,
                  unit="voxels"),
            Param("halo", "zyx", "voxels of context each block floods around itself",
                  positive=False, unit="voxels"),
            Param("relabel", "flag", "kept for old scripts: the fragments are numbered 1..N "
                                     "whether it is given or not"),
            *layout_params()),
    run=ENGINE + REPLACE + INCOMPLETE, says=_says,
    examples=("emarray watershed boundary.zarr fragments.zarr --threshold 0.5",
              "emarray watershed affs.zarr fragments.zarr --affinities --threshold 0.5"))


@SPEC.function
def watershed(boundary: Volume | str | os.PathLike, dst: str | os.PathLike, *,
              distance: Volume | str | os.PathLike | None = None,
              seeds: Volume | str | os.PathLike | None = None, threshold: float = 0.5,
              seed_method: str = "cores", core: Any = None, affinities: bool = False,
              reduce: str = "mean", min_size: int = 0, halo: Any = (4, 16, 16),
              relabel: bool = False, chunks: Any = None, shards: Any = None,
              compression: str = "zstd", options: RunOptions | None = None,
              **run: Any) -> Volume:
    """Watershed fragments of ``boundary`` into ``dst``: every voxel gets a fragment, one
    fragment per seed, the same for any chunking.

    The seeds are found with the context their rule needs, so every block marks what the
    whole volume marks, and are numbered 1..N in C order of each seed's first voxel across
    the volume (as :func:`emarray.label` numbers components). Per block grown by ``halo``,
    scikit-image's ``watershed`` floods the boundary map from the seeds in that grown block
    and the block's own region is written: a voxel gets the fragment of the whole-volume
    flood whenever its flooding path from its seed stays inside the halo — for ``cores`` and
    ``components`` seeds, the few voxels of a membrane. A block with no seed within its halo
    reads farther until it finds one. Blocks are whole output chunks (shards), grown past
    tiny ones to at least twice the halo along each axis and 1024 voxels.

    NaN (a NaN affinity in any channel too) is the highest boundary: never a seed, flooded
    after every finite value, as scikit-image floods a value above the map's maximum; a job
    whose map holds NaN warns once, with their count. A given seed volume holds integer
    labels, one seed per id whatever its dtype (a float volume is refused); its fragments are
    numbered by the rank of their seed's id.

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
    >>> f = emarray.watershed(v, os.path.join(d, "f.zarr"), threshold=0.5)
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
    sampling = tuple(float(s) for s in bv.voxel_size)
    core_at = _core_length(core, sampling, bv.unit) if seed_method == "cores" else 0.0
    extra: dict[str, Volume] = {}
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
        extra[name] = ev
    if "distance" in extra and "seeds" not in extra:
        _check_distance(extra["distance"], seed_method, core_at)
    h = tuple(int(x) for x in halo)
    like = open_volume(bv.url) if not affinities else _spatial_like(bv)
    # blocks of whole output chunks, at least twice the halo: a block reads at most 8 times
    # its own voxels, however small the chunks
    block = work_layout(like, chunks, shards, compression, tuple(2 * x for x in h), spatial)
    grid = BlockGrid(spatial, block)
    method = "given" if "seeds" in extra else seed_method
    p = {"affinities": affinities, "reduce": reduce, "seeds": method,
         "threshold": float(threshold), "sampling": sampling, "core": core_at,
         "min_size": int(min_size), "halo": h}
    channels = "all" if affinities else "same"

    def stages(out: Volume, setup: dict[str, Any]) -> list:
        scratch = progress_of(out) / "watershed"
        first: list[Any]
        if "seeds" in extra:
            sv = extra["seeds"]
            first = [Stage("seed-ids", _seed_ids, grid, [Read(sv)], combine=_merge_ids,
                           finalize=partial(_save_ids, scratch=scratch, min_size=int(min_size),
                                            dtype=id_dtype(sv.dtype)))]
            ids: str | None = os.fspath(scratch / "seed-ids.npy")
        else:
            sv = _scratch_volume(scratch / "seeds.zarr", spatial, block, np.uint32)
            first = _seed_stages(bv, extra.get("distance"), sv, scratch, grid, p, opts,
                                 channels, tokens)
            ids = None

        def build(given: Any) -> Stage:
            n = int(given["seeds"]) if isinstance(given, dict) and "seeds" in given else int(
                open_volume(sv.url).attrs.get("emarray", {}).get("components", 0))
            dtype = "uint32" if max(n, 1) < 2**32 else "uint64"
            target = retype(out, dtype)
            q = {**p, "n": n, "dtype": np.dtype(dtype), "ids": ids, "token": uuid.uuid4().hex}
            reads = (Read(bv, halo=h, boundary="none", channels=channels),
                     Read(open_volume(sv.url), halo=h, boundary="none"))
            return Stage("watershed", partial(_flood_block, p=q, reads=reads), grid,
                         list(reads), [Write(target)], combine=_add,
                         finalize=partial(_record, out=target, fragments=max(n, 1)))
        return [*first, LaterStage("watershed", build)]

    job = {k: v for k, v in p.items() if k != "halo"}
    job.update(halo=list(h), block=list(block), sampling=list(sampling))
    inputs = [bv, *extra.values()]
    tokens: list[str] = []  # the seed labelling's blocks kept in this process
    try:
        result = run_blockwise("watershed", like, dst, np.uint32, job, opts, stages,
                               chunks=chunks, shards=shards, compression=compression,
                               attrs={"labels": True}, inputs=inputs, grid_block=block)
    finally:
        from . import local_labels
        for token in tokens:
            local_labels.forget(token)
    warn_nan(bv, int(result.attrs.get("emarray", {}).get("nan_voxels", 0)), "watershed")
    return result


def _core_length(core: Any, sampling: tuple[float, ...], unit: str) -> float:
    """The core distance in the volume's unit (default: one voxel of the smallest voxel size)."""
    from .._normalize import micrometres
    if core is None:
        return CORE_VOXELS * min(sampling)
    number, given_unit = core
    return number * (micrometres(given_unit) / micrometres(unit) if given_unit else 1.0)


def _check_distance(dv: Volume, method: str, core: float) -> None:
    """A distance volume serves the cores and maxima seeds only, and cores only when it is
    exact beyond the core distance."""
    if method == "components":
        raise InvalidArgumentError("a distance volume serves the cores and maxima seeds; "
                                   "components seeds need none (leave distance out)")
    cap = dv.attrs.get("emarray", {}).get("distance", {}).get("max_distance")
    if method == "cores" and cap is not None and not float(cap) > core:
        raise InvalidArgumentError(
            f"{dv.url} is clipped at {float(cap):g}, not beyond the core distance {core:g}: its "
            "cores would be empty; make it with a larger max-distance, or leave it out")


def _seed_stages(bv: Volume, dv: Volume | None, sv: Volume, scratch: Any, grid: BlockGrid,
                 p: dict[str, Any], opts: RunOptions, channels: str,
                 tokens: list[str]) -> list:
    """The marks of the seeds into a scratch mask, then labelled into ``sv``."""
    from .label import label_plan, label_stages
    marks = _scratch_volume(scratch / "marks.zarr", grid.shape, grid.block, np.uint8)
    hs = seed_halo(p["seeds"], p["core"], p["sampling"], p["halo"], dv is not None)
    reads = [Read(bv, halo=hs, boundary="none", channels=channels)]
    if dv is not None:
        reads.append(Read(dv, halo=hs, boundary="none"))
    prm = {"connectivity": SEED_CONNECTIVITY[p["seeds"]], "binary": True, "background": 0,
           "min_size": p["min_size"]}
    plan = label_plan(marks, prm, opts)
    tokens.append(plan["job"])
    setup = {"setup": partial(backend_setup, "label", "cpu", "|u1", None, 1),
             "setup_key": "label:cpu:|u1"}
    return [Stage("seeds", partial(_marks, p=p), grid, reads, [Write(marks)]),
            *label_stages(marks, sv, plan, setup, scratch / "label", prefix="seeds-")]


def _spatial_like(bv: Volume) -> Volume:
    """A z,y,x view of an affinity volume's grid, for the output to be made like."""
    from dataclasses import replace
    return replace(bv, shape=bv.shape[1:], chunks=bv.chunks[1:],
                   shards=bv.shards[1:] if bv.shards else None, axes=bv.axes[1:],
                   dtype=np.dtype(np.float32))


def _scratch_volume(path: Any, shape: tuple[int, ...], block: tuple[int, ...],
                    dtype: Any) -> Volume:
    try:
        return open_volume(path)
    except Exception:
        path.parent.mkdir(parents=True, exist_ok=True)
        return create_volume(path, shape, dtype, block, compression="zstd")


def _record(nan: Any, *, out: Volume, fragments: int) -> dict[str, Any]:
    """Driver: the fragments and the NaN voxels counted, in the output's metadata."""
    g = out.open_group()
    g.attrs["emarray"] = {**dict(g.attrs.get("emarray") or {}), "fragments": fragments,
                          "nan_voxels": int(nan or 0)}
    return {"fragments": fragments, "nan_voxels": int(nan or 0)}
