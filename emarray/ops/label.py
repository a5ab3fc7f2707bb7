"""Connected components out of core, with global ids 1..N that do not depend on the chunking.

Components are numbered in C order of their first voxel, as cc3d and ``scipy.ndimage.label``
number a whole array, so any chunking gives the same ids. Four stages on the engine:

1. ``label``: label each block (cc3d, or the CUDA kernel); keep its six face planes of local
   labels and, per row, how many components that lie wholly inside it (and are kept) start
   there; report the pieces that touch a block face (their first voxel, size, value).
2. ``offsets``: per row of blocks, prefix sums of those counts: for each block row segment,
   how many interior components start before it in the whole volume.
3. ``faces``: pairs of pieces that touch across each block's low faces (edges and corners
   for 18 and 26); the driver joins them (union-find on face pieces only), drops components
   under ``min_size``, and numbers the joined ones among all the others.
4. ``relabel``: map each block's local labels to global ids: the labels kept in this
   process since stage 1 (:mod:`emarray.ops.local_labels`), or the block labelled again
   (deterministic: the same labels).

The driver holds only the face-touching pieces; what scales with the volume (face planes, row
counts and offsets) lives in scratch arrays in the output's progress folder.
"""
from __future__ import annotations

import os
import uuid
from fractions import Fraction
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from .. import backends
from ..engine import BlockContext, BlockGrid, LaterStage, Read, RunOptions, Stage, Write, read_padded
from ..spec import ELEMENTWISE, Operator, Param, Port, layout_params
from ..engine.checkpoint import atomic_write, load_npy, progress_of, as_folder, remove_tree
from .._normalize import real_number, whole_number
from ..errors import InvalidArgumentError
from ..volume import Volume, create_volume, open_volume
from ..engine.schedulers import check_scheduler
from . import local_labels
from .common import as_volume, retype, run_blockwise
from .components import (CONNECTIVITY_ORDER, PIECE, apply_lut, block_components, face_pairs,
                         label_block_cpu, node_ids)

MODES = ("auto", "binary", "multilabel")
#: ids up to this fit the default uint32 output; more components switch it to uint64
UINT32_MAX_IDS = 2**32 - 1
AXES = "zyx"

backends.register("label", "cpu", label_block_cpu)
backends.register("label", "cuda", "emarray.cuda.label:label_block_cuda",
                  ("bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32",
                   "int64"))


# -- scratch: what scales with the volume, kept beside the job's progress -----------------------
class Scratch:
    """The label job's working arrays (face planes, row counts and offsets) and tables."""

    def __init__(self, root: Any, shape: tuple[int, ...], block: tuple[int, ...]):
        self.root = as_folder(root)
        self.shape, self.block = tuple(shape), tuple(block)
        self.counts = BlockGrid(self.shape, self.block).counts

    def plane_layout(self, axis: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shape and chunks of the array holding one plane per block layer along ``axis``."""
        shape, chunks = list(self.shape), list(self.block)
        shape[axis], chunks[axis] = self.counts[axis], 1
        return tuple(shape), tuple(chunks)

    def volumes(self) -> dict[str, Volume]:
        """Open (or create) the scratch arrays."""
        Z, Y, _ = self.shape
        zb, yb, _ = self.block
        nbx = self.counts[2]
        specs: dict[str, tuple[tuple[int, ...], Any, tuple[int, ...]]] = {}
        for axis, a in enumerate(AXES):
            shape, chunks = self.plane_layout(axis)
            specs[f"lo_{a}"] = (shape, np.uint32, chunks)
            specs[f"hi_{a}"] = (shape, np.uint32, chunks)
        specs["rowcounts"] = ((Z, Y, nbx), np.uint32, (zb, yb, 1))
        specs["rowoffsets"] = ((Z, Y, nbx), np.uint64, (zb, yb, 1))
        out = {}
        for name, (shape, dtype, chunks) in specs.items():
            path = self.root / f"{name}.zarr"
            try:
                out[name] = open_volume(path)
            except Exception:
                remove_tree(path)
                self.root.mkdir(parents=True, exist_ok=True)
                out[name] = create_volume(path, shape, dtype, chunks, compression="zstd")
        return out

    def save(self, name: str, arr: np.ndarray) -> None:
        import io
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr))
        atomic_write(self.root / f"{name}.npy", buf.getvalue())

    def load(self, name: str) -> np.ndarray:
        return load_npy(self.root / f"{name}.npy")


# -- stage 1: label blocks ------------------------------------------------------------------------
def _concat(a: Any, b: Any) -> Any:
    """The stages' combine: summaries (arrays, lists, or tuples of them) put end to end."""
    if isinstance(a, tuple):
        return tuple(_concat(x, y) for x, y in zip(a, b))
    return a + b if isinstance(a, list) else np.concatenate([a, b])


def _labelled(ctx: BlockContext, block: np.ndarray, p: dict[str, Any]) -> Any:
    """Label a block, the same way in every stage: its local labels and their facts."""
    labels = ctx.state(block, connectivity=p["connectivity"], binary=p["binary"],
                       background=p["background"])
    return block_components(labels, ctx.region, p["shape"])


def _kept(comp: Any, p: dict[str, Any]) -> tuple:
    """A block's kept interior components: their local labels, first voxels and rows."""
    kept = comp.interior_kept(p["min_size"])
    kf = comp.first[kept]
    return kept, kf, *comp.rows(kf)


def _label_block(ctx: BlockContext, block: np.ndarray, *, p: dict[str, Any]) -> tuple:
    comp = _labelled(ctx, block, p)
    kept, kf, lz, ly = _kept(comp, p)
    labels = comp.labels
    flat = int(np.ravel_multi_index(ctx.index, p["counts"]))
    local_labels.keep(p["job"], flat, comp, p["keep"])
    zb, yb, _ = labels.shape
    rowcounts = np.bincount(lz * yb + ly, minlength=zb * yb).astype(np.uint32)
    planes = np.bincount(lz, minlength=zb).astype(np.int64)
    face = np.flatnonzero(comp.face)
    pf = comp.first[face]
    pieces = np.empty(face.size, PIECE)
    pieces["node"] = node_ids(flat, face)
    pieces["key"] = comp.keys(pf)
    pieces["size"] = comp.size[face]
    pieces["before"] = comp.before_in_row(kf, pf)
    pieces["value"] = block.reshape(-1)[pf].astype(np.int64) if not p["binary"] else 1
    return (labels[:1], labels[-1:], labels[:, :1], labels[:, -1:], labels[:, :, :1],
            labels[:, :, -1:], rowcounts.reshape(zb, yb, 1),
            ([(ctx.index, planes)], pieces))


def _plan(acc: Any, *, scratch: Scratch) -> dict[str, Any]:
    """Driver: interior components per (plane, block row) -> how many start before each;
    the face pieces, sorted, into the scratch folder."""
    Z = scratch.shape[0]
    zb = scratch.block[0]
    nby = scratch.counts[1]
    plane_rows = np.zeros((Z, nby), np.int64)
    blocks, pieces = acc if acc is not None else ([], np.empty(0, PIECE))
    for index, planes in blocks:
        z0 = index[0] * zb
        plane_rows[z0:z0 + planes.size, index[1]] += planes
    flat = plane_rows.ravel()
    before = (np.cumsum(flat) - flat).reshape(Z, nby)
    pieces = np.sort(pieces, order="node")
    scratch.save("before_plane_row", before)
    scratch.save("pieces", pieces)
    scratch.save("nodes", pieces["node"])
    scratch.save("interior", np.array([flat.sum()], np.int64))
    return {"interior": int(flat.sum()), "pieces": int(pieces.size)}


# -- stage 2: row offsets -------------------------------------------------------------------------
def _row_offsets(ctx: BlockContext, counts: np.ndarray, *, scratch: Scratch) -> tuple:
    z0, z1 = ctx.region[0].start, ctx.region[0].stop
    y0 = ctx.region[1].start
    zb, yb, _ = scratch.block
    by = y0 // yb
    before = np.asarray(scratch.load("before_plane_row")[z0:z1, by])
    c = counts.astype(np.int64)
    row_total = c.sum(axis=2)
    above = np.cumsum(row_total, axis=1) - row_total
    left = np.cumsum(c, axis=2) - c
    off = before[:, None, None] + above[:, :, None] + left
    # where each face piece of this row of blocks would be numbered among the interior ones
    nodes = scratch.load("nodes")
    nbx = scratch.counts[2]
    first = int(np.ravel_multi_index((z0 // zb, by, 0), scratch.counts))
    lo, hi = np.searchsorted(nodes, [first << 32, (first + nbx) << 32])
    pieces = np.asarray(scratch.load("pieces")[lo:hi])
    _, Y, X = scratch.shape
    pz = pieces["key"] // (Y * X) - z0
    py = pieces["key"] // X % Y - y0
    pbx = (pieces["node"] >> 32) % nbx
    rank = off[pz, py, pbx] + pieces["before"]
    return off.astype(np.uint64), (pieces["node"], rank)


def _save_ranks(acc: Any, *, scratch: Scratch) -> dict[str, Any]:
    nodes, rank = acc if acc is not None else (np.empty(0, np.int64), np.empty(0, np.int64))
    order = np.argsort(nodes, kind="stable")
    if not np.array_equal(nodes[order], scratch.load("nodes")):
        raise RuntimeError("label: the offsets stage did not see every face piece once")
    scratch.save("ranks", rank[order])
    return {}


# -- stage 3: face pairs, then union-find -------------------------------------------------------
def _face_block(ctx: BlockContext, *, vols: dict[str, Volume], p: dict[str, Any]) -> np.ndarray:
    index = ctx.index
    origin = tuple(s.start for s in ctx.region)
    flat = int(np.ravel_multi_index(index, p["counts"]))
    grow = 1 if p["connectivity"] > 6 else 0
    out = [np.empty((0, 2), np.int64)]
    for axis, a in enumerate(AXES):
        if index[axis] == 0:
            continue
        own_region = list(ctx.region)
        own_region[axis] = slice(index[axis], index[axis] + 1)
        own = vols[f"lo_{a}"].read(tuple(own_region))
        # the plane opposite, grown by a voxel in-plane for edge and corner neighbours (the
        # margin stays 0 for 6-connectivity, which needs none: no neighbour chunk is read)
        nb_region = [slice(s.start - grow, s.stop + grow) for s in ctx.region]
        nb_region[axis] = slice(index[axis] - 1, index[axis])
        nb = read_padded(vols[f"hi_{a}"], tuple(nb_region), "constant", 0)
        own2 = np.squeeze(own, axis=axis)
        nb2 = np.squeeze(nb, axis=axis)
        if not grow:
            nb2 = np.pad(nb2, 1)
        out.append(face_pairs(own2, nb2, own_block=flat, axis=axis, own_index=index,
                              origin=origin, block=p["block"], counts=p["counts"],
                              connectivity=p["connectivity"]))
    pairs = np.concatenate(out)
    return np.unique(pairs, axis=0) if pairs.size else pairs


def _join(acc: Any, *, scratch: Scratch, p: dict[str, Any]) -> dict[str, Any]:
    """Driver: union-find over the face pieces; drop small components; number the rest."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    pieces = np.asarray(scratch.load("pieces"))
    nodes = pieces["node"]
    rank = np.asarray(scratch.load("ranks"))
    pairs = acc if acc is not None and acc.size else np.empty((0, 2), np.int64)
    ia = np.searchsorted(nodes, pairs[:, 0])
    ib = np.searchsorted(nodes, pairs[:, 1])
    if not p["binary"]:  # pieces of different values touch but do not join
        same = pieces["value"][ia] == pieces["value"][ib]
        ia, ib = ia[same], ib[same]
    k = nodes.size
    if k:
        graph = coo_matrix((np.ones(ia.size, np.int8), (ia, ib)), shape=(k, k))
        ncomp, comp = connected_components(graph, directed=False)
    else:
        ncomp, comp = 0, np.empty(0, np.int64)
    size = np.zeros(ncomp, np.int64)
    np.add.at(size, comp, pieces["size"])
    order = np.lexsort((pieces["key"], comp))
    head = order[np.r_[True, comp[order][1:] != comp[order][:-1]]] if k else order
    min_key, min_rank = pieces["key"][head], rank[head]  # per component, in comp order
    kept = size >= max(p["min_size"], 1)
    kept_keys = np.sort(min_key[kept])
    ids = np.zeros(ncomp, np.int64)
    ids[kept] = min_rank[kept] + np.searchsorted(kept_keys, min_key[kept]) + 1
    scratch.save("piece_ids", ids[comp] if k else np.empty(0, np.int64))
    scratch.save("kept_keys", kept_keys)
    total = int(scratch.load("interior")[0]) + int(kept.sum())
    return {"components": total, "dtype": "uint32" if total <= UINT32_MAX_IDS else "uint64"}


# -- stage 4: relabel -----------------------------------------------------------------------------
def _relabel_block(ctx: BlockContext, rowoff: np.ndarray, read_src: Callable[[], np.ndarray],
                   *, scratch: Scratch, p: dict[str, Any], dtype: str) -> np.ndarray:
    flat = int(np.ravel_multi_index(ctx.index, p["counts"]))
    comp = local_labels.take(p["job"], flat, tuple(s.start for s in ctx.region), p["shape"])
    if comp is None:  # not kept here: label the block again (the same labels)
        comp = _labelled(ctx, read_src(), p)
    kept, kf, lz, ly = _kept(comp, p)
    lut = np.zeros(comp.n + 1, dtype)
    if kept.size:
        kept_keys = scratch.load("kept_keys")
        ids = (rowoff[lz, ly, 0].astype(np.int64) + comp.before_in_row(kf, kf)
               + np.searchsorted(kept_keys, comp.keys(kf)) + 1)
        lut[kept] = ids
    face = np.flatnonzero(comp.face)
    if face.size:
        nodes = scratch.load("nodes")
        where = np.searchsorted(nodes, node_ids(flat, face))
        lut[face] = np.asarray(scratch.load("piece_ids"))[where]
    return apply_lut(lut, comp.labels)


def _record(out: Volume, components: int) -> None:
    group = out.open_group()
    old: Any = group.attrs.get("emarray") or {}
    group.attrs["emarray"] = {**old, "components": components}


# -- the stages, for label and for operators that label on the way (watershed's seeds) -------
def label_plan(src: Volume, prm: dict[str, Any], opts: RunOptions) -> dict[str, Any]:
    """The labelling's block parameters: ``prm`` (:func:`check_params`) with the grid of
    ``src``'s blocks and a job token for the local labels kept between stages (forget them
    with :func:`emarray.ops.local_labels.forget` once the job ends)."""
    grid = BlockGrid(src.shape, src.block_shape)
    # each block's local labels are kept for the last stage where it runs in this process
    same_process = check_scheduler(opts.scheduler) in ("threads", "synchronous")
    return {**prm, "shape": src.shape, "block": src.block_shape, "counts": grid.counts,
            "job": uuid.uuid4().hex, "keep": local_labels.budget() if same_process else 0}


def label_stages(src: Volume, out: Volume, p: dict[str, Any], setup: dict[str, Any],
                 root: Any, prefix: str = "") -> list:
    """The four stages that label ``src`` into ``out`` (ids 1..N in C order of first voxel,
    for any chunking), their scratch arrays under ``root``; ``prefix`` names the stages
    within a job that runs others too. The last stage gives ``out`` the dtype its count
    needs and records the count."""
    grid = BlockGrid(src.shape, src.block_shape)
    scratch = Scratch(root, src.shape, src.block_shape)
    vols = scratch.volumes()
    plane_scale = [tuple(Fraction(1, b) if a == axis else Fraction(1) for a in range(3))
                   for axis, b in enumerate(src.block_shape)]
    writes = []
    for axis, a in enumerate(AXES):
        writes += [Write(vols[f"lo_{a}"], plane_scale[axis]),
                   Write(vols[f"hi_{a}"], plane_scale[axis])]
    writes.append(Write(vols["rowcounts"], plane_scale[2]))
    first = Stage(prefix + "label", partial(_label_block, p=p), grid, [Read(src)], writes,
                  combine=_concat, finalize=partial(_plan, scratch=scratch), **setup)
    zb, yb, _ = src.block_shape
    rows = vols["rowcounts"]
    offsets = Stage(prefix + "offsets", partial(_row_offsets, scratch=scratch),
                    BlockGrid(rows.shape, (zb, yb, rows.shape[2])), [Read(rows)],
                    [Write(vols["rowoffsets"])], combine=_concat,
                    finalize=partial(_save_ranks, scratch=scratch))
    faces = Stage(prefix + "faces", partial(_face_block, vols=vols, p=p), grid, combine=_concat,
                  finalize=partial(_join, scratch=scratch, p=p))

    def build_relabel(given: dict[str, Any]) -> Stage:
        target = retype(out, given["dtype"])
        _record(target, given["components"])
        return Stage(prefix + "relabel", partial(_relabel_block, scratch=scratch, p=p,
                                                 dtype=given["dtype"]), grid,
                     [Read(vols["rowoffsets"], scale=plane_scale[2]), Read(src, lazy=True)],
                     [Write(target)], **setup)
    return [first, offsets, faces, LaterStage(prefix + "relabel", build_relabel)]


# -- the operator ---------------------------------------------------------------------------------
def check_params(src: Volume, connectivity: Any, mode: str, background: Any,
                 min_size: Any) -> dict[str, Any]:
    """Validate the labelling parameters against ``src``; return them normalised."""
    from ..volume import is_labels
    if src.ndim != 3:
        raise InvalidArgumentError(
            f"label needs a z,y,x volume; {src.url} has shape {src.shape} (axes {src.axes})")
    try:
        conn = whole_number(connectivity, "connectivity")
    except InvalidArgumentError:
        conn = -1
    if conn not in CONNECTIVITY_ORDER:
        raise InvalidArgumentError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    binary = mode == "binary" or (mode == "auto" and not is_labels(src))
    if not binary and src.dtype.kind not in "uib":
        raise InvalidArgumentError(
            f"multilabel needs integer labels; {src.url} holds {src.dtype} (use binary)")
    bg = real_number(background, "background")  # 2**64 - 1 stays exact
    if src.dtype.kind in "uib":
        info = np.iinfo(src.dtype) if src.dtype.kind != "b" else None
        if not isinstance(bg, int) or (info is not None and not info.min <= bg <= info.max) or (
                info is None and bg not in (0, 1)):
            raise InvalidArgumentError(
                f"background {bg} is not a value of {src.dtype} data")
        bgv: Any = int(bg) if src.dtype.kind != "b" else bool(bg)
    else:
        bgv = src.dtype.type(bg)
    ms = whole_number(min_size, "min-size")
    return {"connectivity": conn, "binary": binary, "background": bgv, "min_size": ms}


def warn_float_map(src: Volume, background: Any) -> None:
    """One warning line, before any work, for a float volume labelled without ``mode``: every
    nonzero voxel is foreground, so a probability map (nonzero almost everywhere) is one
    component. A float 0/1 mask is labelled right; ``mode binary`` says that is meant."""
    import warnings

    from ..errors import EmarrayWarning
    warnings.warn(f"{src.url} holds {src.dtype}: label takes every voxel that is not "
                  f"{background:g} as foreground, so a probability map comes out as (nearly) one component; "
                  f"threshold it first (emarray threshold {src.url} mask.zarr --value 0.5), or "
                  "pass --mode binary if it is a 0/1 mask", EmarrayWarning, stacklevel=3)


def _says(v: Volume, args: dict[str, Any]) -> list[str]:
    n = v.attrs.get("emarray", {}).get("components")
    return [f"wrote {v.url}: {v.shape} {v.dtype}, {n} components"]


SPEC = Operator(
    "label", "connected components with global ids 1..N in C order of first voxel, the same "
             "for any chunking (uint32, uint64 past 2**32 - 1)",
    inputs=(Port("src", "volume", "a z,y,x mask or label volume"),),
    output=Port("dst", "volume", "the label volume (voxel size of src)", labels=True),
    params=(Param("connectivity", "choice", "neighbours that join: faces (6), + edges (18), "
                                            "+ corners (26)", choices=tuple(CONNECTIVITY_ORDER)),
            Param("mode", "choice", "binary: every voxel but the background is foreground; "
                                    "multilabel: each distinct value its own components; auto: "
                                    "multilabel for label volumes (32/64-bit integers or marked "
                                    "as labels), binary otherwise", choices=MODES),
            Param("background", "number", "the background value (exact at any size)"),
            Param("min_size", "int", "remove components of fewer voxels than this, before "
                                     "numbering (cc3d's dust)", minimum=0, unit="voxels"),
            *layout_params()),
    run=ELEMENTWISE, says=_says, blocks="label",
    examples=("emarray label mask.zarr cells.zarr --connectivity 6 --min-size 50",))


@SPEC.function
def label(src: Volume | str | os.PathLike, dst: str | os.PathLike, *, connectivity: int = 26,
          mode: str = "auto", background: Any = 0, min_size: int = 0, chunks: Any = None,
          shards: Any = None, compression: str = "zstd", options: RunOptions | None = None,
          **run: Any) -> Volume:
    """Label the connected components of ``src`` into ``dst``: ids 1..N, 0 = background.

    Ids are numbered in C order of each component's first voxel, as cc3d and
    ``scipy.ndimage.label`` number a whole array, so any chunking gives the same ids. The
    output is uint32, or uint64 when there are more than 2**32 - 1 components. A float volume
    in ``auto`` mode is labelled as a mask (every voxel not the background is foreground) with
    a one-line warning before any work: a probability map comes out as about one component;
    threshold it first, or pass ``mode="binary"`` for a 0/1 float mask.

    Returns
    -------
    Volume
        The label volume; its ``attrs["emarray"]["components"]`` is N.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> a = np.zeros((1, 4, 6), np.uint8); a[0, 1:3, 0:2] = 1; a[0, 0, 4:] = 1; a[0, 3, 5] = 1
    >>> v = emarray.create_volume(os.path.join(d, "m.zarr"), a.shape, "uint8", (1, 2, 3))
    >>> v.write((slice(0, 1), slice(0, 4), slice(0, 6)), a)
    >>> emarray.label(v, os.path.join(d, "l.zarr"), connectivity=6).read()[0].tolist()
    [[0, 0, 0, 0, 1, 1], [2, 2, 0, 0, 0, 0], [2, 2, 0, 0, 0, 0], [0, 0, 0, 0, 0, 3]]
    """
    opts = RunOptions.make(options, **run)
    src = as_volume(src, opts.allow_incomplete)
    prm = check_params(src, connectivity, mode, background, min_size)
    if src.dtype.kind == "f" and mode == "auto":
        warn_float_map(src, prm["background"])
    grid = BlockGrid(src.shape, src.block_shape)
    if int(np.prod(src.block_shape)) >= 2**32:
        raise InvalidArgumentError(
            f"blocks of {src.block_shape} voxels are too large to label (at most 2**32 - 1 "
            "voxels each); store the input in smaller chunks or shards")
    if len(grid) >= 2**31:
        raise InvalidArgumentError(f"{len(grid)} blocks are too many; store larger chunks")
    job = {**{k: (v if k != "background" else (int(v) if src.dtype.kind in "uib" else float(v)))
              for k, v in prm.items()}}
    p = label_plan(src, prm, opts)

    def stages(out: Volume, setup: dict[str, Any]) -> list:
        return label_stages(src, out, p, setup, progress_of(out) / "label")

    try:
        return run_blockwise("label", src, dst, np.uint32, job, opts, stages, chunks=chunks,
                             shards=shards, compression=compression, backend="label",
                             attrs={"labels": True})
    finally:
        local_labels.forget(p["job"])
