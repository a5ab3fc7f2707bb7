"""Agglomerate watershed fragments into segments by mean boundary, out of core.

1. ``graph``: every block adds the contacts of touching fragments along each axis — between each
   voxel of its own region and its neighbour one voxel lower, which lies in the block below at
   the block's low faces — to a table of edges ``u, v, size, sum, min, max`` of the boundary
   value on the contact (the mean of the two voxels' boundary, or ``1 -`` the affinity between
   them); the tables are merged in a tree, so the driver holds one row per edge, never a voxel.
2. On the driver, hierarchical agglomeration (:func:`agglomerate_graph`): the edge of lowest
   mean boundary is merged first, and the merged segment's edges to a common neighbour are
   combined by contact-weighted mean, until the lowest mean reaches the threshold; several
   thresholds are cut in one pass. Arrays and numba, not a Python object per fragment.
3. ``relabel``: each block maps its fragments to segments through the lookup table.

The graph (``graph.npz``) and the fragment -> segment table (``lookup.npz``, ``lookup.csv``) are
kept in the output, so a segmentation at another threshold is cut from them (``graph=``)
without reading the fragments twice.
"""
from __future__ import annotations

import heapq
import io
import os
import uuid
from functools import partial
from typing import Any

import numpy as np

from .._normalize import id_dtype
from ..engine import BlockContext, BlockGrid, LaterStage, Read, RunOptions, Stage, Write
from ..engine.checkpoint import as_folder, atomic_write, folder_of, load_npz
from ..engine.remote_output import current_version
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..spec import ENGINE, INCOMPLETE, REPLACE, Operator, Param, Port, layout_params
from ..volume import Volume, create_volume, open_volume
from .common import as_volume, retype, run_blockwise, work_layout
from ._nan import count_nan, warn_nan
from .tables import MAX, MIN, SUM, merge

EDGE_HOW = {"size": SUM, "sum": SUM, "min": MIN, "max": MAX}


# -- 1. the region adjacency graph, block by block ----------------------------------------------
def block_edges(frag: np.ndarray, bnd: np.ndarray, origin_in_read: tuple[int, ...],
                own_shape: tuple[int, ...], affinities: bool) -> dict[str, np.ndarray]:
    """The contacts of one block: for each voxel of its own region (at ``origin_in_read`` in the
    read arrays) and its lower neighbour along each axis, where both are fragments and differ.

    Ids stay exact (``u``, ``v`` in :func:`~emarray._normalize.id_dtype` of the fragments);
    a contact that touches a NaN boundary voxel (or a NaN affinity) has the value +inf, the
    highest boundary: an edge holding one is never merged (:data:`~emarray.ops._nan.NAN_RULE`)."""
    us, vs, vals = [], [], []
    o = origin_in_read
    own = tuple(slice(a, a + n) for a, n in zip(o, own_shape))
    for axis in range(3):
        if o[axis] == 0:  # the block's low face is the volume's: no neighbour below
            sl = list(own)
            sl[axis] = slice(o[axis] + 1, o[axis] + own_shape[axis])
            here = tuple(sl)
        else:
            here = own
        below = list(here)
        below[axis] = slice(here[axis].start - 1, here[axis].stop - 1)
        a, b = frag[here], frag[tuple(below)]
        touch = (a != b) & (a != 0) & (b != 0)
        if not touch.any():
            continue
        if affinities:
            val = 1.0 - bnd[(axis,) + here][touch].astype(np.float64)
        else:
            val = (bnd[here][touch].astype(np.float64) + bnd[tuple(below)][touch]) / 2
        val[np.isnan(val)] = np.inf
        ua, ub = a[touch], b[touch]
        us.append(np.minimum(ua, ub))
        vs.append(np.maximum(ua, ub))
        vals.append(val)
    dtype = id_dtype(frag.dtype)
    if not us:
        return _empty_edges(dtype)
    u = np.concatenate(us).astype(dtype)
    v = np.concatenate(vs).astype(dtype)
    x = np.concatenate(vals)
    order = np.lexsort((v, u))
    u, v, x = u[order], v[order], x[order]
    starts = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])])
    return {"u": u[starts], "v": v[starts],
            "size": np.diff(np.r_[starts, u.size]).astype(np.int64),
            "sum": np.add.reduceat(x, starts), "min": np.minimum.reduceat(x, starts),
            "max": np.maximum.reduceat(x, starts)}


def _empty_edges(dtype: Any = np.uint64) -> dict[str, np.ndarray]:
    return {"u": np.empty(0, dtype), "v": np.empty(0, dtype),
            "size": np.empty(0, np.int64), "sum": np.empty(0), "min": np.empty(0),
            "max": np.empty(0)}


def _graph_block(ctx: BlockContext, frag: np.ndarray, bnd: np.ndarray, *,
                 affinities: bool) -> tuple:
    read = ctx.reads[0]
    origin = tuple(w.start - r.start for w, r in zip(ctx.region, read))
    own_shape = tuple(w.stop - w.start for w in ctx.region)
    edges = block_edges(frag, bnd, origin, own_shape, affinities)
    own = tuple(slice(a, a + n) for a, n in zip(origin, own_shape))
    ids, voxels = np.unique(frag[own], return_counts=True)
    keep = ids != 0
    return (edges, {"id": ids[keep].astype(id_dtype(frag.dtype)),
                    "n": voxels[keep].astype(np.int64)},
            count_nan(bnd, own, affinities))


def _fold(a: tuple, b: tuple) -> tuple:
    return (merge(a[0], b[0], ["u", "v"], EDGE_HOW), merge(a[1], b[1], ["id"], {"n": SUM}),
            a[2] + b[2])


# -- 2. the agglomeration -----------------------------------------------------------------------
def agglomerate_graph(n: int, u: np.ndarray, v: np.ndarray, total: np.ndarray, size: np.ndarray,
                      thresholds: Any) -> np.ndarray:
    """Mean-boundary agglomeration of a graph of ``n`` nodes (edges ``u``-``v`` with the sum
    ``total`` and the count ``size`` of their contact's boundary values); per threshold, the
    root of each node's segment once every edge of mean below the threshold is merged.

    >>> agglomerate_graph(3, np.array([0, 1]), np.array([1, 2]), np.array([0.2, 1.8]),
    ...                   np.array([1, 2]), [0.5, 1.0]).tolist()
    [[1, 1, 2], [1, 1, 1]]
    """
    from ._agglomerate_kernels import run
    t = np.sort(np.asarray(thresholds, np.float64))
    if n == 0:
        return np.empty((t.size, 0), np.int64)
    return run(int(n), np.asarray(u, np.int64).copy(), np.asarray(v, np.int64).copy(),
               np.asarray(total, np.float64).copy(), np.asarray(size, np.float64).copy(), t)


def merge_small_segments(roots: np.ndarray, u: np.ndarray, v: np.ndarray, total: np.ndarray,
                         size: np.ndarray, voxels: np.ndarray, min_size: int) -> np.ndarray:
    """The segments of a cut (``roots``: each node's segment) with every segment under
    ``min_size`` voxels merged into its neighbour of lowest mean boundary, the smallest
    first (ties: the segment of the lowest root), the merged segments' contacts combined,
    until none under ``min_size`` has a neighbour; a contact of mean +inf (NaN) is never
    merged across. ``u``, ``v``, ``total``, ``size``: the nodes' edges as for
    :func:`agglomerate_graph`; ``voxels``: each node's voxels. Segments are ranked by their
    smallest node, whatever node ``roots`` names. Returns each node's new segment (a
    partition: its representative's rank).

    >>> merge_small_segments(np.array([0, 1, 2]), np.array([0, 1]), np.array([1, 2]),
    ...                      np.array([0.8, 0.6]), np.array([1.0, 2.0]),
    ...                      np.array([10, 3, 10]), 5).tolist()
    [0, 2, 2]
    >>> merge_small_segments(np.array([4, 4, 2, 2, 2]), np.array([1]), np.array([2]),
    ...                      np.array([0.5]), np.array([1.0]), np.array([1, 1, 5, 5, 5]),
    ...                      5).tolist()
    [1, 1, 1, 1, 1]
    """
    if min_size <= 1 or roots.size == 0:
        return roots
    from ._agglomerate_kernels import merge_small
    inv = sequential(roots) - 1  # segments in the order of their smallest node
    k = int(inv.max()) + 1
    su, sv = inv[np.asarray(u, np.int64)], inv[np.asarray(v, np.int64)]
    apart = su != sv
    a, b = np.minimum(su[apart], sv[apart]), np.maximum(su[apart], sv[apart])
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    tot = np.asarray(total, np.float64)[apart][order]
    cnt = np.asarray(size, np.float64)[apart][order]
    if a.size:
        starts = np.flatnonzero(np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])])
        a, b = a[starts], b[starts]
        tot, cnt = np.add.reduceat(tot, starts), np.add.reduceat(cnt, starts)
    vox = np.bincount(inv, weights=np.asarray(voxels, np.float64), minlength=k).astype(np.int64)
    parent = merge_small(k, a.astype(np.int64), b.astype(np.int64), tot, cnt, vox, int(min_size))
    return parent[inv]


def sequential(roots: np.ndarray) -> np.ndarray:
    """Segment ids 1..K from roots, numbered in the order of each segment's first node.

    >>> sequential(np.array([4, 4, 2, 4, 2])).tolist()
    [1, 1, 2, 1, 2]
    """
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, first.size + 1)
    return rank[inverse]


def reference_agglomeration(edges: list[tuple[int, int, float, int]], n: int,
                            threshold: float) -> list[int]:
    """A plain Python heap of mean-boundary merges (the tests' reference): ``edges`` are
    ``(u, v, sum, size)``; returns each node's root... as a partition (the smallest node of its
    segment)."""
    adj: dict[int, dict[int, list[float]]] = {i: {} for i in range(n)}
    for u, v, s, c in edges:
        adj[u][v] = adj[v][u] = [s, c]
    parent = list(range(n))
    heap = [(s / c, min(u, v), max(u, v)) for u, v, s, c in edges]
    heapq.heapify(heap)

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    while heap:
        mean, u, v = heapq.heappop(heap)
        if mean >= threshold:
            break
        if parent[u] != u or parent[v] != v or v not in adj[u]:
            continue
        total, count = adj[u][v]
        if abs(total / count - mean) > 1e-12:
            continue  # stale
        del adj[u][v], adj[v][u]
        for w, (s2, c2) in list(adj[v].items()):
            del adj[w][v]
            if w in adj[u]:
                adj[u][w][0] += s2
                adj[u][w][1] += c2
                adj[w][u] = adj[u][w]
            else:
                adj[u][w] = adj[w][u] = [s2, c2]
            a, b = min(u, w), max(u, w)
            heapq.heappush(heap, (adj[u][w][0] / adj[u][w][1], a, b))
        adj[v] = {}
        parent[v] = u
    roots = [root(i) for i in range(n)]
    first: dict[int, int] = {}
    for i, r in enumerate(roots):
        first.setdefault(r, i)
    return [first[r] for r in roots]


# -- 3. the lookup table and the relabel --------------------------------------------------------
def _save(path: Any, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    entries: dict[str, Any] = dict(arrays)
    np.savez(buf, **entries)
    atomic_write(path, buf.getvalue())


_LUTS: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def _lookup(path: Any, token: str) -> tuple[np.ndarray, np.ndarray]:
    """The (fragments, segments per threshold) table, loaded once per worker process.

    ``token`` is new each time a table is cut: a worker that lives on across jobs (or a job
    resumed in the same process after its input changed) never takes an older table that was
    at the same path."""
    got = _LUTS.get((os.fspath(path), token))
    if got is None:
        z = load_npz(path)
        got = (z["fragments"], z["segments"])
        _LUTS.clear()
        _LUTS[(os.fspath(path), token)] = got
    return got


def relabel_block(frag: np.ndarray, fragments: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Each fragment id of the block replaced by its segment (0 stays 0). ``fragments`` are
    sorted, in the fragments' :func:`~emarray._normalize.id_dtype`: the block's ids are cast to
    it (exact), never compared through a float."""
    ids, inverse = np.unique(frag, return_inverse=True)
    ids = ids.astype(fragments.dtype if fragments.size else id_dtype(frag.dtype))
    where = np.searchsorted(fragments, ids)
    where = np.minimum(where, max(fragments.size - 1, 0))
    found = (fragments.size > 0) & (fragments[where] == ids) if fragments.size else np.zeros(
        ids.size, bool)
    seg = np.where(found, segments[where] if segments.size else 0, 0)
    return seg[inverse].reshape(frag.shape)


def _relabel(ctx: BlockContext, frag: np.ndarray, *, lut: Any, token: str, rows: list[int],
             dtypes: list[str]) -> tuple:
    """Each output's segments: ``rows`` are their thresholds' rows in the lookup table."""
    fragments, segments = _lookup(lut, token)
    return tuple(relabel_block(frag, fragments, segments[k]).astype(dt)
                 for k, dt in zip(rows, dtypes))


def cut_name(t: float) -> str:
    """The name of a threshold's output and CSV column: ``t`` and the shortest decimal that
    reads back as exactly that float, so distinct thresholds never share a name.

    >>> cut_name(0.3), cut_name(0.3000001), cut_name(1), cut_name(1e-7)
    ('t0.3', 't0.3000001', 't1', 't1e-07')
    """
    text = repr(float(t) + 0.0)  # + 0.0: -0.0 is 0
    return "t" + (text[:-2] if text.endswith(".0") else text)


def _says(v: Volume, args: dict[str, Any]) -> list[str]:
    em = v.attrs.get("emarray", {}).get("agglomeration", {})
    lines = [f"wrote {v.url}: {v.shape} {v.dtype}: {em.get('fragments', 0):,} fragments, "
             f"{em.get('edges', 0):,} edges"]
    for t, n in em.get("segments", {}).items():
        where = "" if float(t) == em.get("threshold") else f" (in {v.url}/{cut_name(float(t))})"
        lines.append(f"  threshold {t}: {n:,} segments{where}")
    return lines


SPEC = Operator(
    "agglomerate", "watershed fragments merged into segments by mean boundary across the whole "
                   "volume; the graph and the fragment-to-segment table kept",
    inputs=(Port("fragments", "volume", "fragment ids (emarray watershed), 0 = background",
                 labels=True),
            Port("boundary", "volume", "the boundary map the fragments came from (or c,z,y,x "
                                       "affinities with affinities)")),
    output=Port("dst", "volume", "the segmentation at threshold; other thresholds as images "
                                 "inside it (DST/t0.3); graph.npz, lookup.npz and lookup.csv "
                                 "beside its array", labels=True),
    params=(Param("threshold", "float", "merge while the lowest mean boundary between two "
                                        "segments is below this"),
            Param("thresholds", "numbers", "more thresholds cut from the same agglomeration, "
                                           "each written as DST/tT, T the shortest decimal of "
                                           "exactly that threshold (0.3000001: DST/t0.3000001)"),
            Param("affinities", "flag", "boundary is c,z,y,x affinities: a contact's value is 1 - "
                                        "the affinity between its two voxels"),
            Param("min_size", "int", "segments under this many voxels are merged into their "
                                     "neighbour of lowest mean boundary, the smallest first, at "
                                     "every threshold (never across NaN); exact for any "
                                     "chunking", minimum=0, unit="voxels"),
            Param("graph", "text", "reuse the graph of an earlier agglomerate output (a path) "
                                   "instead of reading the fragments again; it must have been "
                                   "built from these fragments and boundary, unchanged since "
                                   "(checked before any work)"),
            *layout_params()),
    run=ENGINE + REPLACE + INCOMPLETE, says=_says,
    examples=("emarray agglomerate fragments.zarr boundary.zarr cells.zarr --threshold 0.3 "
              "--thresholds 0.2,0.4,0.5",))


@SPEC.function
def agglomerate(fragments: Volume | str | os.PathLike, boundary: Volume | str | os.PathLike,
                dst: str | os.PathLike, *, threshold: float = 0.5, thresholds: Any = None,
                affinities: bool = False, min_size: int = 0,
                graph: str | os.PathLike | None = None, chunks: Any = None,
                shards: Any = None, compression: str = "zstd",
                options: RunOptions | None = None, **run: Any) -> Volume:
    """Merge ``fragments`` into segments by the mean of ``boundary`` on their contacts.

    Fragment ids of every integer dtype are exact (int64 below 0 and uint64 up to 2**64 - 1
    included) in the graph, the lookup table and the segmentation. A contact that touches a NaN
    boundary voxel counts as +inf, the highest boundary: the segments it joins never merge, at
    any threshold; a job whose map holds NaN warns once, with their count. Each threshold's
    output and CSV column is named by the shortest decimal that reads back as exactly that
    threshold. A reused ``graph`` records the fragments and boundary it was built from (their
    location, grid, metadata and stored chunks); other or changed ones are refused before any
    work. With ``min_size``, each threshold's segments under that many voxels are then merged
    into their neighbour of lowest mean boundary, the smallest first (as waterz-based
    pipelines filter by size), from the graph and each fragment's voxel count: the same for
    any chunking.

    Returns
    -------
    Volume
        The segmentation at ``threshold`` (ids 1..N in the order of each segment's smallest
        fragment); ``attrs["emarray"]["agglomeration"]`` counts fragments, edges and segments.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> f = np.array([[[1, 1, 2, 2, 3, 3]]], np.uint64)          # three fragments in a row
    >>> b = np.array([[[0, .1, .1, .9, .9, 0]]], np.float32)     # a weak wall, then a strong one
    >>> fv = emarray.create_volume(os.path.join(d, "f.zarr"), f.shape, "uint64", (1, 1, 2))
    >>> fv.write((slice(0, 1), slice(0, 1), slice(0, 6)), f)
    >>> bv = emarray.create_volume(os.path.join(d, "b.zarr"), b.shape, "float32", (1, 1, 2))
    >>> bv.write((slice(0, 1), slice(0, 1), slice(0, 6)), b)
    >>> s = emarray.agglomerate(fv, bv, os.path.join(d, "s.zarr"), threshold=0.5)
    >>> s.read().ravel().tolist()
    [1, 1, 1, 1, 2, 2]
    """
    opts = RunOptions.make(options, **run)
    fv = as_volume(fragments, opts.allow_incomplete)
    bv = as_volume(boundary, opts.allow_incomplete)
    if fv.ndim != 3 or fv.dtype.kind not in "ui":
        raise InvalidArgumentError(f"fragments must be z,y,x integer ids; {fv.url} is "
                                   f"{fv.shape} {fv.dtype}")
    if bv.dtype.kind != "f":
        raise InvalidArgumentError(f"{bv.url} holds {bv.dtype}: the boundary must be a float "
                                   "map (or float affinities)")
    spatial = bv.shape[1:] if affinities else bv.shape
    if affinities and (bv.ndim != 4 or bv.shape[0] != 3):
        raise InvalidArgumentError(f"affinities must be c,z,y,x with 3 channels; {bv.url} has "
                                   f"shape {bv.shape}")
    if spatial != fv.shape:
        raise ShapeMismatchError(f"fragments have shape {fv.shape}, the boundary {bv.shape}")
    cuts = sorted({float(threshold)} | {float(t) for t in (thresholds or ())})
    for t in cuts:
        if not 0 <= t <= 1:
            raise InvalidArgumentError(f"thresholds must be within the boundary map's range "
                                       f"[0, 1], got {t!r}")
    names = [cut_name(t) for t in cuts]
    if len(set(names)) != len(names):  # cannot happen (repr round-trips); never overwrite one
        raise InvalidArgumentError(f"thresholds {cuts} would share an output name")
    sources = {"fragments": fv.fingerprint(listing=True),
               "boundary": bv.fingerprint(listing=True), "affinities": affinities}
    reuse = None
    if graph is not None:
        reuse = as_folder(current_version(os.fspath(graph)))
        if not (reuse / "graph.npz").is_file():
            raise InvalidArgumentError(f"graph {os.fspath(graph)!r} holds no graph.npz: give an "
                                       "earlier agglomerate output")
        check_graph_source(reuse / "graph.npz", sources)
        if min_size > 1:
            if "voxels" not in load_npz(reuse / "graph.npz"):
                raise InvalidArgumentError(
                    f"graph {os.fspath(graph)!r} records no fragment sizes (an earlier "
                    "emarray made it): min_size needs them; run without --graph once")
    # blocks of whole output chunks, grown past tiny ones (each reads a halo of 1)
    block = work_layout(fv, chunks, shards, compression, 2)
    grid = BlockGrid(fv.shape, block)
    extra = [t for t in cuts if t != float(threshold)]
    job = {"threshold": float(threshold), "thresholds": extra, "affinities": affinities,
           "min_size": int(min_size),
           "boundary": bv.fingerprint(), "graph": os.fspath(reuse) if reuse else None}
    nan_seen = [0]

    def stages(out: Volume, setup: dict[str, Any]) -> list:
        root = folder_of(out)

        def finalize(acc: Any) -> dict[str, Any]:
            if reuse is not None:
                z = load_npz(reuse / "graph.npz")
                edges = {k: z[k] for k in EDGE_COLUMNS}
                ids = z["fragments"]
                nan = int(z["nan_voxels"])
                voxels = z["voxels"] if "voxels" in z else np.zeros(ids.size, np.int64)
            else:
                edges, ids_t, nan = acc if acc is not None else (
                    _empty_edges(id_dtype(fv.dtype)), {"id": np.empty(0, id_dtype(fv.dtype)),
                                                       "n": np.empty(0, np.int64)}, 0)
                ids, voxels = ids_t["id"], ids_t["n"]
            nan_seen[0] = nan
            return _cut(root, out, edges, ids.astype(id_dtype(fv.dtype)), voxels, cuts,
                        float(threshold), sources, nan, int(min_size))

        reads = [Read(fv, halo=1, boundary="none"),
                 Read(bv, halo=1, boundary="none", channels="all" if affinities else "same")]
        first: Any
        if reuse is None:
            first = Stage("graph", partial(_graph_block, affinities=affinities), grid, reads,
                          combine=_fold, finalize=finalize)
        else:
            first = Stage("graph", lambda ctx: 0, BlockGrid((1, 1, 1), (1, 1, 1)),
                          combine=lambda a, b: a, finalize=finalize)

        def build(given: dict[str, Any]) -> Stage:
            dtypes = given["dtypes"]
            target = retype(out, dtypes[str(float(threshold))])
            vols = [target]
            for t in extra:
                vols.append(_nested(out, cut_name(t), dtypes[str(t)], job))
            order = [float(threshold)] + extra
            return Stage("relabel", partial(_relabel, lut=root / "lookup.npz",
                                            token=given["token"],
                                            rows=[cuts.index(t) for t in order],
                                            dtypes=[dtypes[str(t)] for t in order]),
                         grid, [Read(fv)], [Write(v) for v in vols])
        return [first, LaterStage("relabel", build)]

    result = run_blockwise("agglomerate", fv, dst, np.uint32, job, opts, stages, chunks=chunks,
                           shards=shards, compression=compression, inputs=[fv, bv],
                           grid_block=block,
                           attrs={"labels": True, "files": ["graph.npz", "lookup.npz",
                                                            "lookup.csv"]})
    if not nan_seen[0]:  # a resumed job that had cut its graph before: the count it kept
        nan_seen[0] = int(result.attrs.get("emarray", {}).get("agglomeration", {})
                          .get("nan_voxels", 0))
    warn_nan(bv, nan_seen[0], "agglomerate")
    return result


#: the edge columns of ``graph.npz`` (beside ``fragments``, ``nan_voxels`` and ``source``)
EDGE_COLUMNS = ("u", "v", "size", "sum", "min", "max")


def check_graph_source(path: Any, sources: dict[str, Any]) -> None:
    """Refuse, in one line and before any work, a kept graph that was built from other
    fragments or another boundary map than those given (or from these before they changed):
    its edges and ids would not be these volumes', and the relabel would map most fragments
    to 0. Compared: each volume's location, grid, dtype, metadata and stored chunks (key,
    size, modification time), as recorded when the graph was built."""
    import json
    z = load_npz(path)
    recorded = json.loads(str(z["source"])) if "source" in z else None
    if recorded is None:
        raise InvalidArgumentError(
            f"graph {path.parent} records no fragments volume (an earlier emarray made it): it "
            "cannot be checked against these fragments; run without --graph once to keep one "
            "that can")
    if recorded.get("affinities") != sources["affinities"]:
        raise InvalidArgumentError(
            f"graph {path.parent} was built {'with' if recorded.get('affinities') else 'without'}"
            " --affinities; give the same, or run without --graph")
    for what in ("fragments", "boundary"):
        was, now = recorded.get(what) or {}, sources[what]
        if was == now:
            continue
        if was.get("url") != now["url"]:
            why = f"from {what} {was.get('url')}, not {now['url']}"
        else:
            differ = [k for k in now if was.get(k) != now[k]]
            why = (f"from {what} {now['url']} as it was then; its "
                   f"{', '.join('chunks stored' if k == 'stored' else k for k in differ)} "
                   "changed since")
        raise InvalidArgumentError(f"graph {path.parent} was built {why}: its edges are not "
                                   f"these {what}'; run without --graph to build them again")


def _cut(root: Any, out: Volume, edges: dict[str, np.ndarray], ids: np.ndarray,
         voxels: np.ndarray, cuts: list[float], primary: float, sources: dict[str, Any],
         nan: int, min_size: int) -> dict[str, Any]:
    """Driver: agglomerate (and merge small segments), number the segments, keep the graph
    (with the volumes it was built from and each fragment's voxels) and the lookup table in
    ``root``, the output ``out``'s folder."""
    import json
    dtype = ids.dtype
    eu, ev = edges["u"].astype(dtype), edges["v"].astype(dtype)
    fragments = np.union1d(ids, np.union1d(eu, ev))
    u = np.searchsorted(fragments, eu)
    v = np.searchsorted(fragments, ev)
    vox = np.zeros(fragments.size, np.int64)
    vox[np.searchsorted(fragments, ids)] = voxels
    segments = cut_segments(fragments.size, u, v, edges["sum"], edges["size"], vox, cuts,
                            min_size)
    _save(root / "graph.npz", fragments=fragments, **{**edges, "u": eu, "v": ev}, voxels=vox,
          nan_voxels=np.array(nan, np.int64), source=np.array(json.dumps(sources)))
    _save(root / "lookup.npz", fragments=fragments, segments=segments,
          thresholds=np.array(cuts), min_size=np.array(min_size, np.int64))
    header = "fragment," + ",".join(f"segment_{cut_name(t)}" for t in cuts)
    columns = [fragments.astype(str)] + [s.astype(str) for s in segments]  # exact integers
    text = "\n".join([header] + [",".join(row) for row in zip(*columns)]) + "\n"
    atomic_write(root / "lookup.csv", text.encode())
    counts = {str(t): int(s.max()) if s.size else 0 for t, s in zip(cuts, segments)}
    dtypes = {t: ("uint32" if n < 2**32 else "uint64") for t, n in counts.items()}
    g = out.open_group()
    em: dict[str, Any] = dict(g.attrs.get("emarray") or {})
    em["agglomeration"] = {"fragments": int(fragments.size), "edges": int(u.size),
                           "threshold": primary, "segments": counts, "nan_voxels": nan,
                           "min_size": min_size}
    g.attrs["emarray"] = em
    return {"dtypes": dtypes, "token": uuid.uuid4().hex}


def cut_segments(n: int, u: np.ndarray, v: np.ndarray, total: np.ndarray, size: np.ndarray,
                 voxels: np.ndarray, cuts: Any, min_size: int = 0) -> np.ndarray:
    """Each node's segment (1..K in the order of each segment's first node) at each of the
    sorted ``cuts``: the agglomeration, then small segments merged (``min_size``)."""
    if n == 0:
        return np.zeros((len(cuts), 0), np.int64)
    roots = agglomerate_graph(n, u, v, total, size, cuts)
    return np.stack([sequential(merge_small_segments(r, u, v, total, size, voxels, min_size))
                     for r in roots])


def _nested(out: Volume, name: str, dtype: str, job: dict[str, Any]) -> Volume:
    path = folder_of(out) / name
    if (path / "zarr.json").is_file():
        return open_volume(path)
    return create_volume(path, out.shape, dtype, out.chunks, shards=out.shards,
                         voxel_size=out.voxel_size, unit=out.unit, translation=out.translation,
                         axes=out.axes, attrs={"job": {"operator": "agglomerate", "cut": name,
                                                       **{k: v for k, v in job.items()
                                                          if k != "boundary"}},
                                                "labels": True})
