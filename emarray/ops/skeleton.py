"""One skeleton per object of a label volume (TEASAR, with kimimaro), out of core, joined
across block faces.

1. ``skeleton``: each block is read with a halo on every side (``halo``, by default twice the
   TEASAR ``const``, the least of what one traced path invalidates around itself) and
   skeletonized whole
   with kimimaro. Of each skeleton the block keeps the edges whose midpoint lies inside the
   block (each edge of the volume belongs to exactly one block) and, for every kept vertex on
   a face the block shares with a neighbour, the cross-section of its object there (the 2D
   connected component of the face plane, named by its first voxel). The halo gives each
   block the context the whole array would: its distance-to-boundary field is exact near the
   faces, and tips and branches inside the block are traced as on the whole array, not cut
   by an early path to a face.
2. ``stitch``: objects in groups; one object's pieces are read (only its rows of each block's
   piece file), vertices the pieces share merged, and pieces that end on the same
   cross-section of a face joined there (the two blocks traced the same centre line from both
   sides). Components whose object holds no more than ``dust`` voxels are dropped (as
   kimimaro's ``dust_threshold``), cycles are opened (a spanning tree, shortest edges kept),
   and the skeleton is written as a neuroglancer precomputed source (``emarray view`` shows
   it with the segmentation) or one ``ID.swc`` file per object. A task holds one object's
   skeleton pieces at a time: memory follows the largest skeleton, not the volume.

Vertices are voxel centres: x, y, z of ``(index + 0.5) * voxel + translation``, in nanometres
in a precomputed source (neuroglancer's unit) and in the volume's own unit in SWC files (its
``# unit:`` line says which); the radius of each vertex is its distance to the object's
boundary, in the same unit.
"""
from __future__ import annotations

import io
import json
import math
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .._normalize import id_dtype, micrometres
from ..engine import (BlockContext, BlockGrid, Checkpoint, LaterStage, Read, RunOptions, Stage,
                      run_stages, work_block)
from ..engine.checkpoint import atomic_write, load_npz
from ..engine.files import open_files
from ..engine.output import reading
from ..errors import InvalidArgumentError
from ..spec import ENGINE, INCOMPLETE, REPLACE, Operator, Param, Port
from ..volume import Volume
from ._pieces import add, concat_pairs, planned, save_plan, task_objects
from .common import as_volume
from .distance import parse_length
from .mesh import check_ids, parse_ids
from .skeleton_files import encode_precomputed, info_document, to_swc

FORMATS = ("precomputed", "swc")
UNSIGNED_ONLY = ("a precomputed skeleton source names segments by unsigned ids: use --format "
                 "swc")
#: kimimaro's TEASAR parameters besides scale and const (its defaults, in nanometres)
TEASAR = {"pdrf_scale": 100000, "pdrf_exponent": 4, "soma_acceptance_threshold": 3500,
          "soma_detection_threshold": 750, "soma_invalidation_const": 300,
          "soma_invalidation_scale": 2}


def require_kimimaro() -> Any:
    from ..extras import require
    return require("kimimaro", "emarray skeleton")


def teasar_params(scale: float, const_nm: float) -> dict[str, Any]:
    """The TEASAR parameters kimimaro is given (lengths in nanometres)."""
    return {"scale": float(scale), "const": float(const_nm), **TEASAR}


def skeletonize_block(labels: np.ndarray, voxel_nm: np.ndarray, params: dict[str, Any]
                      ) -> dict[int, Any]:
    """kimimaro's skeletons of every object in ``labels`` (z, y, x; ``voxel_nm`` z, y, x):
    ``{id: osteoid.Skeleton}`` with x, y, z vertices in nanometres from the array's first
    voxel. Every connected piece is traced (no dust threshold: the stitch applies it to whole
    objects), and the array's faces are not treated as the objects' ends (``fix_borders``
    off: paths forced to a block's faces would invalidate the tips near them)."""
    kimimaro = require_kimimaro()
    return kimimaro.skeletonize(np.asfortranarray(labels.T), teasar_params=params,
                                anisotropy=tuple(float(v) for v in voxel_nm[::-1]),
                                dust_threshold=0, progress=False, parallel=1,
                                fix_borders=False)


def _plane(labels: np.ndarray, at: np.ndarray, lo: np.ndarray, hi: np.ndarray,
           shape: tuple[int, ...], k: int, p: int
           ) -> tuple[np.ndarray, np.ndarray, list[int], tuple[int, ...]]:
    """The face plane ``p`` along axis ``k`` of the block ``[lo, hi)``, within the block's
    extent along the other axes (its far planes included): the 2D connected component of each
    of its voxels (raveled) and each component's key, which names the face and the component
    by its first voxel. Two blocks that share the face compute the same keys from the same
    plane."""
    import cc3d
    top = np.minimum(hi, np.array(shape) - 1)
    window = [slice(int(lo[j] - at[j]), int(top[j] + 1 - at[j])) for j in range(3)]
    window[k] = slice(int(p - at[k]), int(p - at[k] + 1))
    plane = np.ascontiguousarray(labels[tuple(window)].squeeze(axis=k))
    cc = cc3d.connected_components(plane, connectivity=8).ravel()
    first = np.full(int(cc.max()) + 1, cc.size, np.int64)
    np.minimum.at(first, cc, np.arange(cc.size))
    first[0] = 0  # the background's: never used
    other = [j for j in range(3) if j != k]
    fy, fx = np.unravel_index(first, plane.shape)
    g = np.empty((first.size, 3), np.int64)
    g[:, k] = p
    g[:, other[0]] = fy + lo[other[0]]
    g[:, other[1]] = fx + lo[other[1]]
    keys = np.asarray(np.ravel_multi_index(tuple(g.T), shape), np.int64) * 3 + k
    return cc, keys, other, tuple(plane.shape)


def _faces(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """The faces ``(axis, plane)`` the block ``[lo, hi)`` shares with a neighbour."""
    return [(k, int(p)) for k in range(3) for p in sorted({int(lo[k]), int(hi[k])})
            if 0 < p < shape[k]]


def block_pieces(labels: np.ndarray, at: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 shape: tuple[int, ...], voxel_nm: np.ndarray, params: dict[str, Any],
                 block_id: int) -> dict[int, dict[str, np.ndarray]]:
    """What the block ``[lo, hi)`` (z, y, x voxels) knows of each object, from ``labels``
    read around it (its first voxel at ``at``):

    - the pieces of its skeleton that belong to the block: ``vertices`` (global voxel indices,
      z, y, x), ``radius`` (nm), ``edges`` (rows of vertices), and for each vertex the
      connected piece of the read array it lies in (``dust``: a key unique in the volume) and
      the face keys of the vertices on the block's shared faces (``key_vertex``, ``key``);
    - the object's connected pieces in the read array (``pieces``, keys as ``dust``), their
      voxels inside the block (``voxels``), and which face cross-sections each touches
      (``link_piece``, ``link_key``): joined over all blocks, the object's connected
      components and their voxel counts, exactly (for ``dust``).
    """
    import cc3d
    import fastremap
    skeletons = skeletonize_block(labels, voxel_nm, params)
    cc = cc3d.connected_components(labels, connectivity=26)
    ncc = int(cc.max()) + 1
    base = np.int64(block_id) << np.int64(32)
    core = tuple(slice(int(a - b), int(c - b)) for a, c, b in zip(lo, hi, at))
    inside = np.bincount(cc[core].ravel(), minlength=ncc)
    owner = np.zeros(ncc, labels.dtype)  # the object of each read piece
    owner[cc.ravel()] = labels.ravel()
    links_cc, links_key = [], []
    planes = {}
    for k, p in _faces(lo, hi, shape):
        pcc, keys, other, pshape = _plane(labels, at, lo, hi, shape, k, p)
        planes[(k, p)] = (pcc, keys, other, pshape)
        top = np.minimum(hi, np.array(shape) - 1)
        window = [slice(int(lo[j] - at[j]), int(top[j] + 1 - at[j])) for j in range(3)]
        window[k] = slice(int(p - at[k]), int(p - at[k] + 1))
        read_cc = cc[tuple(window)].ravel()
        pairs = np.unique(np.stack([read_cc[pcc > 0], pcc[pcc > 0]], 1), axis=0)
        links_cc.append(pairs[:, 0])
        links_key.append(keys[pairs[:, 1]])
    link_cc = np.concatenate(links_cc) if links_cc else np.empty(0, np.int64)
    link_key = np.concatenate(links_key) if links_key else np.empty(0, np.int64)
    present = np.flatnonzero((inside > 0) | np.isin(np.arange(ncc), link_cc))
    present = present[present > 0]
    objects = set(int(o) for o in fastremap.unique(owner[present])) | \
        set(int(o) for o in skeletons)
    empty = np.empty(0, np.int64)
    out = {}
    for obj in sorted(objects):
        mine = present[owner[present] == owner.dtype.type(obj)]
        linked = np.isin(link_cc, mine)
        rec = {"vertices": np.empty((0, 3), np.int64), "radius": np.empty(0),
               "dust": empty, "edges": np.empty((0, 2), np.int64), "key_vertex": empty,
               "key": empty, "pieces": base + mine.astype(np.int64),
               "voxels": inside[mine].astype(np.int64),
               "link_piece": base + link_cc[linked].astype(np.int64),
               "link_key": link_key[linked]}
        s = skeletons.get(obj)
        if s is not None:
            rec.update(_owned(s, cc, at, lo, hi, voxel_nm, base, planes))
        out[obj] = rec
    return out


def _owned(s: Any, cc: np.ndarray, at: np.ndarray, lo: np.ndarray, hi: np.ndarray,
           voxel_nm: np.ndarray, base: np.int64, planes: dict[tuple[int, int], Any]
           ) -> dict[str, np.ndarray]:
    """The part of one skeleton (kimimaro's, on the read array) that belongs to the block: the
    edges whose midpoint lies inside it (each edge of the volume belongs to one block), and a
    lone vertex inside it."""
    v = np.rint(np.asarray(s.vertices, np.float64) / voxel_nm[::-1]).astype(np.int64)
    v = v[:, ::-1] + at
    every = np.asarray(s.edges, np.int64).reshape(-1, 2)
    twice = v[every[:, 0]] + v[every[:, 1]]
    e = every[np.all((twice >= 2 * lo) & (twice < 2 * hi), axis=1)]
    alone = np.ones(len(v), bool)
    alone[every.ravel()] = False
    alone &= np.all((v >= lo) & (v < hi), axis=1)
    keep = np.union1d(np.unique(e), np.flatnonzero(alone))
    index = np.full(len(v), -1, np.int64)
    index[keep] = np.arange(keep.size)
    vk = v[keep]
    rows, keys = [], []
    for (k, p), (pcc, pkeys, other, pshape) in planes.items():
        on = np.flatnonzero(vk[:, k] == p)
        if on.size == 0:
            continue
        local = vk[on][:, other] - lo[other]
        rows.append(on)
        keys.append(pkeys[pcc[np.ravel_multi_index(local.T, pshape)]])
    return {"vertices": vk, "radius": np.asarray(s.radii, np.float64)[keep],
            "dust": base + cc[tuple((vk - at).T)].astype(np.int64), "edges": index[e],
            "key_vertex": np.concatenate(rows) if rows else np.empty(0, np.int64),
            "key": np.concatenate(keys) if keys else np.empty(0, np.int64)}


# -- piece files: per block, one int64 record per object, and an index ------------------------
#: the parts of one object's record: (name, which count, words per item); counts are
#: vertices, edges, vertex keys, read pieces and links
_PARTS = (("vertices", 0, 3), ("radius", 0, 1), ("dust", 0, 1), ("edges", 1, 2),
          ("key_vertex", 2, 1), ("key", 2, 1), ("pieces", 3, 1), ("voxels", 3, 1),
          ("link_piece", 4, 1), ("link_key", 4, 1))
_WORDS = np.array([sum(w for _, c, w in _PARTS if c == i) for i in range(5)], np.int64)


def _save_pieces(base: Path, pieces: dict[int, dict[str, np.ndarray]], dtype: np.dtype) -> None:
    ids = np.array(sorted(pieces), dtype)
    records, sizes = [], []
    for i in ids.tolist():
        p = pieces[i]
        parts = [np.asarray(p[name]).reshape(-1) for name, _, _ in _PARTS]
        records.append(np.concatenate([q.view(np.int64) if q.dtype == np.float64 else
                                       q.astype(np.int64, copy=False) for q in parts]))
        sizes.append((len(p["vertices"]), len(p["edges"]), len(p["key"]), len(p["pieces"]),
                      len(p["link_key"])))
    data = np.concatenate(records) if records else np.empty(0, np.int64)
    atomic_write(base.with_name(base.name + ".bin"), data.tobytes())
    counts = np.array(sizes, np.int64).reshape(-1, 5)
    words = counts @ _WORDS
    buf = io.BytesIO()
    np.savez(buf, ids=ids, counts=counts,
             start=np.concatenate([[0], np.cumsum(words)[:-1]]).astype(np.int64))
    atomic_write(base.with_name(base.name + ".npz"), buf.getvalue())  # last: the block is done


def _load_piece(base: Path, obj: int) -> dict[str, np.ndarray]:
    """One object's record of a block (only its record is read)."""
    z = load_npz(base.with_name(base.name + ".npz"))
    ids, counts, start = z["ids"], z["counts"], z["start"]
    k = int(np.searchsorted(ids, ids.dtype.type(obj)))
    n = counts[k]
    with base.with_name(base.name + ".bin").open("rb") as f:
        f.seek(int(start[k]) * 8)
        rec = np.frombuffer(f.read(int(n @ _WORDS) * 8), np.int64)
    out, at = {}, 0
    for name, c, w in _PARTS:
        size = int(n[c]) * w
        out[name] = rec[at:at + size]
        at += size
    out["vertices"] = out["vertices"].reshape(-1, 3)
    out["radius"] = out["radius"].view(np.float64)
    out["edges"] = out["edges"].reshape(-1, 2)
    return out


# -- the stitch ---------------------------------------------------------------------------------
def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = int(parent[x])
    return x


def component_voxels(pieces: list[dict[str, np.ndarray]]) -> Any:
    """From one object's records of every block: a function giving, for read-piece keys, the
    voxels of the connected component of the object each lies in (read pieces of neighbouring
    blocks that touch the same cross-section of their shared face are one component)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    keys = np.concatenate([p["pieces"] for p in pieces])
    voxels = np.concatenate([p["voxels"] for p in pieces])
    lp = np.concatenate([p["link_piece"] for p in pieces])
    lk = np.concatenate([p["link_key"] for p in pieces])
    nodes = np.unique(keys)
    faces = np.unique(lk)
    a = np.searchsorted(nodes, lp)
    b = nodes.size + np.searchsorted(faces, lk)
    m = nodes.size + faces.size
    _, cls = connected_components(coo_matrix((np.ones(a.size), (a, b)), shape=(m, m)),
                                  directed=False)
    per = np.bincount(cls[np.searchsorted(nodes, keys)], weights=voxels, minlength=m)

    def total(which: np.ndarray) -> np.ndarray:
        if nodes.size == 0:
            return np.zeros(which.size, np.int64)
        at = np.clip(np.searchsorted(nodes, which), 0, nodes.size - 1)
        return np.where(nodes[at] == which, per[cls[at]], 0).astype(np.int64)
    return total


def join_pieces(pieces: list[dict[str, np.ndarray]], dust: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One object's skeleton from its block pieces: ``(vertices, edges, radius)``, vertices
    as voxel indices z, y, x. Shared vertices are merged, pieces ending on the same face
    cross-section joined (nearest pairs first), components of no more than ``dust`` voxels
    dropped and cycles opened."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
    verts, edges, kv, keys, base = [], [], [], [], 0
    whole = [p for p in pieces if len(p["vertices"])]
    if not whole:
        return np.empty((0, 3), np.int64), np.empty((0, 2), np.int64), np.empty(0)
    for p in whole:
        verts.append(p["vertices"])
        edges.append(p["edges"] + base)
        kv.append(p["key_vertex"] + base)
        keys.append(p["key"])
        base += len(p["vertices"])
    allv = np.concatenate(verts)
    uv, inv = np.unique(allv, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    n = len(uv)
    radius = np.zeros(n)
    np.maximum.at(radius, inv, np.concatenate([p["radius"] for p in whole]))
    e = inv[np.concatenate(edges)]
    e = np.unique(np.sort(e[e[:, 0] != e[:, 1]], axis=1), axis=0)
    # pieces that end on the same cross-section of a face: join them, nearest pairs first
    parent = np.arange(n)
    for a, b in e:
        ra, rb = _find(parent, int(a)), _find(parent, int(b))
        if ra != rb:
            parent[ra] = rb
    kv_all, key_all = inv[np.concatenate(kv)], np.concatenate(keys)
    order = np.lexsort((kv_all, key_all))
    kv_all, key_all = kv_all[order], key_all[order]
    bounds = np.flatnonzero(np.diff(key_all)) + 1
    added = []
    for group in np.split(kv_all, bounds):
        group = np.unique(group)
        if group.size < 2:
            continue
        g = uv[group]
        d = ((g[:, None, :] - g[None, :, :]) ** 2).sum(-1)
        ii, jj = np.triu_indices(group.size, 1)
        for t in np.argsort(d[ii, jj], kind="stable"):
            a, b = int(group[ii[t]]), int(group[jj[t]])
            ra, rb = _find(parent, a), _find(parent, b)
            if ra != rb:
                parent[ra] = rb
                added.append((a, b))
    if added:
        e = np.concatenate([e, np.array(added, np.int64)])
    # dust: the object's connected components, from its read pieces joined through the face
    # cross-sections they touch, and their voxels
    ncomp, comp = connected_components(
        coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)), directed=False)
    total = component_voxels(pieces)
    vertex_voxels = total(np.concatenate([p["dust"] for p in whole]))
    most = np.zeros(ncomp, np.int64)
    np.maximum.at(most, comp[inv], vertex_voxels)
    keep = most[comp] > dust
    # cycles opened: a spanning forest, the shortest edges kept
    length = np.sqrt(((uv[e[:, 0]] - uv[e[:, 1]]) ** 2).sum(1)) if len(e) else np.empty(0)
    tree = minimum_spanning_tree(coo_matrix((length, (e[:, 0], e[:, 1])), shape=(n, n))).tocoo()
    e = np.stack([tree.row, tree.col], 1).astype(np.int64)
    new = np.full(n, -1, np.int64)
    new[keep] = np.arange(int(keep.sum()))
    e = new[e]
    e = e[(e >= 0).all(1)]
    return uv[keep], e, radius[keep]


def _write(obj: int, v: np.ndarray, e: np.ndarray, r: np.ndarray, *, out: Path, fmt: str,
           voxel: np.ndarray, shift: np.ndarray, to_nm: float, unit: str, labels: str) -> None:
    xyz = ((v + 0.5) * voxel + shift)[:, ::-1]
    if fmt == "precomputed":
        atomic_write(out / str(obj), encode_precomputed(xyz * to_nm, e, r))
    else:
        text = to_swc(xyz, e, r / to_nm, [f"emarray skeleton of object {obj} of {labels}",
                                          f"unit: {unit}"])
        atomic_write(out / f"{obj}.swc", text.encode())


def _stitch(ctx: BlockContext, *, scratch: Path, dust: int, write: Any) -> int:
    done = 0
    for obj, blocks in task_objects(ctx, scratch):
        pieces = [_load_piece(scratch / str(int(b)), obj) for b in blocks]
        v, e, r = join_pieces(pieces, dust)
        if len(v):
            write(obj, v, e, r)
            done += 1
        else:  # all dust: no file, and the plan says so
            atomic_write(scratch / "dust" / str(obj), b"")
    return done


def _block(ctx: BlockContext, labels: np.ndarray, *, voxel_nm: np.ndarray, params: dict[str, Any],
           scratch: Path, counts: tuple[int, ...], shape: tuple[int, ...],
           ids: frozenset[int] | None) -> tuple[np.ndarray, np.ndarray]:
    if ids is not None:
        import fastremap
        labels = fastremap.mask_except(labels, [int(i) for i in ids], in_place=False)
    at = np.array([r.start for r in ctx.reads[0]], np.int64)
    lo = np.array([r.start for r in ctx.region], np.int64)
    hi = np.array([r.stop for r in ctx.region], np.int64)
    flat = int(np.ravel_multi_index(ctx.index, counts))
    pieces = block_pieces(labels, at, lo, hi, shape, voxel_nm, params, flat)
    dtype = id_dtype(labels.dtype)
    _save_pieces(scratch / str(flat), pieces, dtype)
    objs = np.array(sorted(pieces), dtype)
    return objs, np.full(objs.size, flat, np.int64)


def _says(n: int, args: dict[str, Any]) -> list[str]:
    return [f"wrote {n:,} skeletons in {args['dst']}"]


def _length_nm(value: Any, unit: str, default_nm: float) -> float:
    if value is None:
        return default_nm
    number, given = value
    return number * micrometres(given or unit) * 1000.0


SPEC = Operator(
    "skeleton", "one skeleton per object of a label volume (TEASAR, with kimimaro), joined "
                "across blocks, as a neuroglancer precomputed source or SWC files",
    needs=("kimimaro",),
    inputs=(Port("labels", "volume", "a z,y,x volume of object ids (0 = background)",
                 labels=True),),
    output=Port("dst", "folder", "the skeletons: a precomputed skeleton source (info, ID) or "
                                 "one ID.swc per object"),
    params=(Param("format", "choice", "precomputed (for emarray view and neuroglancer) or swc",
                  choices=FORMATS),
            Param("ids", "text", "skeletonize only these ids, e.g. 3,17,42 (exact at any size, "
                                 "up to 2**64 - 1; negative ones for signed labels)",
                  parse=parse_ids),
            Param("scale", "float", "TEASAR: each traced path invalidates the object within "
                                    "scale x its boundary distance + const of it", minimum=0),
            Param("const", "text", "TEASAR's constant invalidation radius: a length with its "
                                   "unit (300nm) or a number in the volume's unit; branches "
                                   "shorter than about this are not traced (default 300nm)",
                  parse=parse_length, metavar="LENGTH"),
            Param("dust", "int", "objects (connected pieces) of no more voxels than this get "
                                 "no skeleton", unit="voxels", minimum=0),
            Param("halo", "text", "context read around each block: a length (default: twice "
                                  "const); smaller differs more from the whole-array skeleton "
                                  "near block faces", parse=parse_length,
                  metavar="LENGTH"),
            Param("per_task", "int", "objects stitched per task", minimum=1)),
    run=ENGINE + REPLACE + INCOMPLETE, says=_says,
    examples=("emarray skeleton cells.zarr cells.skeletons",
              "emarray skeleton cells.zarr swc/ --format swc --ids 3,17 --const 500nm"))


@SPEC.function
def skeleton(labels: Volume | str | os.PathLike, dst: str | os.PathLike, *,
             format: str = "precomputed", ids: Any = None, scale: float = 1.5,
             const: Any = None, dust: int = 1000, halo: Any = None, per_task: int = 64,
             options: RunOptions | None = None, **run: Any) -> int:
    """Skeletonize every object of ``labels`` (or only ``ids``) into the folder ``dst``;
    return how many skeletons were written.

    Each block is skeletonized with kimimaro (TEASAR) with ``halo`` of context on every side;
    the pieces are joined across block faces into one skeleton per object (a forest when the
    object has several connected pieces), which agrees with kimimaro's on the whole array
    (``fix_borders=False``) within a voxel or two near the faces.

    Returns
    -------
    int
        The number of skeletons written.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> a = np.zeros((8, 8, 40), np.uint32); a[2:6, 2:6, 2:38] = 7   # a rod along x
    >>> v = emarray.create_volume(os.path.join(d, "l.zarr"), a.shape, "uint32", (8, 8, 16))
    >>> v.write((slice(0, 8), slice(0, 8), slice(0, 40)), a)
    >>> emarray.skeleton(v, os.path.join(d, "s"), format="swc", dust=0)
    1
    """
    opts = RunOptions.make(options, **run)
    lv = as_volume(labels, opts.allow_incomplete)
    if lv.ndim != 3 or lv.dtype.kind not in "ui":
        raise InvalidArgumentError(f"skeleton needs a z,y,x volume of integer ids; {lv.url} is "
                                   f"{lv.shape} {lv.dtype}")
    require_kimimaro()
    voxel = np.array(lv.voxel_size, np.float64)
    to_nm = micrometres(lv.unit) * 1000.0
    voxel_nm = voxel * to_nm
    const_nm = _length_nm(const, lv.unit, 300.0)
    halo_nm = _length_nm(halo, lv.unit, 2 * const_nm)
    reach = tuple(max(1, min(math.ceil(halo_nm / v - 1e-9), n)) for v, n in zip(voxel_nm,
                                                                                lv.shape))
    shift = np.array(lv.translation or (0.0, 0.0, 0.0), np.float64)
    wanted = check_ids(ids, lv.dtype, lv.url)
    block = work_block(lv.shape, lv.block_shape, reach)
    grid = BlockGrid(lv.shape, block)
    params = teasar_params(scale, const_nm)
    job = {"operator": "skeleton", "input": lv.fingerprint(), "format": format,
           "ids": [int(i) for i in ids or ()], "scale": float(scale), "const_nm": const_nm,
           "dust": int(dust), "halo": list(reach), "block": list(block)}
    names = ("info",) if format == "precomputed" else ()
    shown = os.path.realpath(lv.url) if lv.local_path else lv.url
    with open_files(dst, job=job, inputs=[lv], overwrite=opts.overwrite, resume=opts.resume,
                    names=names) as target:
        if target.finished:
            return int(target.result or 0)
        scratch = target.progress / "pieces"
        checkpoint = Checkpoint(target.progress)
        with opts.runner("skeleton") as runner, reading([lv]):
            runner.check_volumes([lv])
            checkpoint.start(job, inputs=[lv])
            (scratch / "dust").mkdir(parents=True, exist_ok=True)
            first = Stage("skeleton", partial(_block, voxel_nm=voxel_nm, params=params,
                                              scratch=scratch, counts=grid.counts,
                                              shape=lv.shape, ids=wanted), grid,
                          [Read(lv, halo=reach, boundary="none")], combine=concat_pairs,
                          finalize=partial(save_plan, scratch=scratch, dtype=id_dtype(lv.dtype),
                                           url=lv.url, unsigned_only=UNSIGNED_ONLY
                                           if format == "precomputed" else ""))
            write = partial(_write, out=target.staging, fmt=format, voxel=voxel, shift=shift,
                            to_nm=to_nm, unit=lv.unit, labels=shown)

            def build(given: dict[str, Any]) -> Stage:
                # the objects are known: a user's file of one of their names stops the job
                # here, before any skeleton is joined
                target.check_free(skeleton_files(planned(scratch), format))
                n = max(1, given["objects"])
                return Stage("stitch", partial(_stitch, scratch=scratch, dust=int(dust),
                                               write=write),
                             BlockGrid((n,), (min(per_task, n),)), combine=add)
            total = run_stages([first, LaterStage("stitch", build)], runner, checkpoint,
                               retries=opts.retries)
        gone = {p.name for p in (scratch / "dust").iterdir()}
        files = [f for f in skeleton_files(planned(scratch), format)
                 if f.removesuffix(".swc") not in gone]
        atomic_write(target.path("info"),
                     json.dumps(info_document(shown, format, lv.unit)).encode())
        target.commit(files + ["info"], result=int(total or 0))
    return int(total or 0)


def skeleton_files(objects: np.ndarray, fmt: str) -> list[str]:
    """The files a skeleton folder holds for ``objects`` (besides its ``info``)."""
    if fmt == "precomputed":
        return [str(o) for o in objects.tolist()]
    return [f"{o}.swc" for o in objects.tolist()]
