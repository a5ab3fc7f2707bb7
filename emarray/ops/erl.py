"""Expected run length (ERL) of a segmentation against ground-truth skeletons, out of core.

Each skeleton edge whose two nodes lie in the same (non-background) segment belongs to that
segment's run; the skeleton is cut wherever the segment changes (or a node lies in the
background). A run's length is the total length of its edges, and the ERL is the expected
length of the run that holds a point drawn uniformly along all skeletons:
``sum(run length ** 2) / total skeleton length``. The merge-penalising variant (as in the
flood-filling network paper, Januszewski et al. 2018) counts every run of a segment that
holds nodes of two or more skeletons as length 0: a merge is an error however long its runs.

Only the segmentation's voxels at skeleton nodes are read, one storage chunk at a time.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import RunOptions
from ..errors import InvalidArgumentError
from ..spec import INCOMPLETE, REPLACE, Operator, Port
from ..volume import Volume
from .common import as_volume


@dataclass
class RunLengths:
    """The result of :func:`expected_run_length`: ``erl`` and ``erl_merge`` (merge-penalised),
    ``total`` skeleton length, ``merged`` (the segments holding nodes of two or more
    skeletons) and per skeleton its ``length``, ``runs`` (each run's length and segment) and
    the share of its length in runs (``kept``)."""

    erl: float
    erl_merge: float
    total: float
    merged: list[int] = field(default_factory=list)
    skeletons: list[dict[str, Any]] = field(default_factory=list)


def expected_run_length(skeletons: Sequence[tuple[np.ndarray, np.ndarray]],
                        segments: Sequence[np.ndarray]) -> RunLengths:
    """The expected run length of a segmentation along ``skeletons``.

    Parameters
    ----------
    skeletons : sequence of (vertices, edges)
        Each ground-truth skeleton: its vertices (n, 3), in any one length unit, and its
        edges (m, 2) as pairs of vertex rows.
    segments : sequence of arrays
        For each skeleton, the segment id at each vertex (0: background).

    Returns
    -------
    RunLengths
        ERL and merge-penalised ERL in the vertices' unit, and the runs they come from.

    Examples
    --------
    A straight skeleton of 10 nodes one unit apart, split in the middle of its 5th edge: two
    runs of 4 and the cut edge, ERL (16 + 16) / 9.

    >>> v = np.c_[np.arange(10.0), np.zeros(10), np.zeros(10)]
    >>> e = np.c_[np.arange(9), np.arange(1, 10)]
    >>> r = expected_run_length([(v, e)], [np.array([1] * 5 + [2] * 5)])
    >>> round(r.erl, 6), r.erl == r.erl_merge
    (3.555556, True)
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    if len(skeletons) != len(segments):
        raise InvalidArgumentError(f"{len(skeletons)} skeletons but {len(segments)} segment "
                                   "arrays")
    owners: dict[int, set[int]] = {}
    for k, seg in enumerate(segments):
        for s in np.unique(np.asarray(seg)).tolist():
            if s != 0:
                owners.setdefault(int(s), set()).add(k)
    merged = sorted(s for s, o in owners.items() if len(o) > 1)
    merged_set = set(merged)
    total = square = square_merge = 0.0
    per = []
    for k, ((v, e), seg) in enumerate(zip(skeletons, segments)):
        v = np.asarray(v, np.float64).reshape(-1, 3)
        e = np.asarray(e, np.int64).reshape(-1, 2)
        seg = np.asarray(seg)
        if len(seg) != len(v):
            raise InvalidArgumentError(f"skeleton {k}: {len(v)} vertices but {len(seg)} "
                                       "segment ids")
        length = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1)
        same = (seg[e[:, 0]] == seg[e[:, 1]]) & (seg[e[:, 0]] != 0)
        n = len(v)
        es = e[same]
        _, comp = connected_components(
            coo_matrix((np.ones(len(es)), (es[:, 0], es[:, 1])), shape=(n, n)), directed=False)
        run_of_edge = comp[es[:, 0]]
        lengths = np.bincount(run_of_edge, weights=length[same], minlength=n)
        runs = np.flatnonzero(np.bincount(run_of_edge, minlength=n))
        run_seg = np.zeros(n, seg.dtype)
        run_seg[run_of_edge] = seg[es[:, 0]]
        rows = [(float(lengths[r]), int(run_seg[r])) for r in runs]
        total += float(length.sum())
        square += sum(L * L for L, _ in rows)
        square_merge += sum(L * L for L, s in rows if s not in merged_set)
        per.append({"length": float(length.sum()), "runs": rows,
                    "kept": float(sum(L for L, _ in rows) / length.sum()) if length.sum() else 0.0})
    if total <= 0:
        return RunLengths(0.0, 0.0, 0.0, merged, per)
    return RunLengths(square / total, square_merge / total, total, merged, per)


def segments_at(volume: Volume, points: np.ndarray) -> np.ndarray:
    """The ids of ``volume`` at ``points`` (z, y, x voxel indices, (n, 3) integers; points
    outside the volume get 0), reading one storage chunk at a time, only the chunks that hold
    points."""
    p = np.asarray(points, np.int64).reshape(-1, 3)
    out = np.zeros(len(p), volume.dtype)
    shape = np.array(volume.shape)
    inside = np.flatnonzero(((p >= 0) & (p < shape)).all(1))
    if inside.size == 0:
        return out
    unit = np.array(volume.block_shape)
    chunk = p[inside] // unit
    order = np.lexsort(chunk.T[::-1])
    inside, chunk = inside[order], chunk[order]
    starts = np.flatnonzero(np.r_[True, (np.diff(chunk, axis=0) != 0).any(1)])
    for a, b in zip(starts, np.r_[starts[1:], len(inside)]):
        lo = chunk[a] * unit
        hi = np.minimum(lo + unit, shape)
        block = volume.read(tuple(slice(int(x), int(y)) for x, y in zip(lo, hi)))
        rows = inside[a:b]
        out[rows] = block[tuple((p[rows] - lo).T)]
    return out


def ids_at_vertices(found: Sequence[tuple[str, np.ndarray, np.ndarray]],
                    volume: Volume) -> list[np.ndarray]:
    """For each skeleton ``(name, vertices x,y,z in the volume's unit, edges)``, the ids of
    ``volume`` at its vertices (placed by its voxel size and translation; read once, only the
    chunks that hold vertices)."""
    voxel = np.array(volume.voxel_size, np.float64)
    shift = np.array(volume.translation or (0.0, 0.0, 0.0), np.float64)
    index = [np.floor((v[:, ::-1] - shift) / voxel).astype(np.int64) for _, v, _ in found]
    ids = segments_at(volume, np.concatenate(index)) if index else np.empty(0, volume.dtype)
    return np.split(ids, np.cumsum([len(i) for i in index])[:-1]) if index else []


def erl_columns(found: Sequence[tuple[str, np.ndarray, np.ndarray]], fragments: Volume) -> Any:
    """A column for :func:`emarray.ops.evaluate.score_cuts`: ``erl`` and ``erl_merge`` of the
    agglomeration at each threshold along the skeletons ``found`` (the fragments are read at
    the skeletons' vertices once; each cut maps them to its segments)."""
    skel = [(v, e) for _, v, e in found]
    at = ids_at_vertices(found, fragments)

    def column(cuts: Any) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"erl": [], "erl_merge": []}
        frags = cuts.fragments
        for k in range(len(cuts.thresholds)):
            segs = []
            for ids in at:
                ids = ids.astype(frags.dtype, copy=False)
                where = np.minimum(np.searchsorted(frags, ids), max(frags.size - 1, 0))
                known = (ids != 0) & (frags[where] == ids) if frags.size else ids != ids
                segs.append(np.where(known, cuts.segments[k][where] if frags.size else 0, 0))
            r = expected_run_length(skel, segs)
            out["erl"].append(r.erl)
            out["erl_merge"].append(r.erl_merge)
        return out
    return column


def _says(r: RunLengths, args: dict[str, Any]) -> list[str]:
    lines = [f"{len(r.skeletons)} skeletons, {r.total:,.6g} long in all",
             f"ERL {r.erl:,.6g}; merge-penalised ERL {r.erl_merge:,.6g} "
             f"({len(r.merged)} segments merge skeletons)"]
    if args.get("out"):
        lines.append(f"wrote {os.path.join(args['out'], 'erl.json')} and runs.csv")
    return lines


SPEC = Operator(
    "erl", "expected run length of a segmentation along ground-truth skeletons, and its "
           "merge-penalising variant",
    inputs=(Port("segmentation", "volume", "the label volume to score (0 = background)",
                 labels=True),
            Port("skeletons", "folder", "ground-truth skeletons: a folder made by emarray "
                                        "skeleton (precomputed or SWC), or of .swc files")),
    output=Port("out", "folder", "folder for erl.json and runs.csv (one row per run)",
                option=True, optional=True),
    run=REPLACE + INCOMPLETE, says=_says,
    examples=("emarray erl cells.zarr truth.skeletons --out erl/",))


@SPEC.function
def erl(segmentation: Volume | str | os.PathLike, skeletons: str | os.PathLike, *,
        out: str | os.PathLike | None = None, options: RunOptions | None = None,
        **run: Any) -> RunLengths:
    """Score ``segmentation`` by the expected run length along the ``skeletons`` (in the
    segmentation's length unit); write ``erl.json`` and ``runs.csv`` into ``out`` if given.

    A skeleton's vertices are placed in the segmentation by its voxel size and translation
    (SWC files in their ``# unit:``, else in the segmentation's unit; precomputed sources in
    nanometres); a vertex outside the volume counts as background.

    Returns
    -------
    RunLengths
        ``erl``, ``erl_merge``, ``total``, ``merged`` and per skeleton its runs.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> a = np.ones((4, 4, 12), np.uint32); a[..., 6:] = 2   # two segments along x
    >>> v = emarray.create_volume(os.path.join(d, "seg.zarr"), a.shape, "uint32", 4)
    >>> v.write((slice(0, 4), slice(0, 4), slice(0, 12)), a)
    >>> os.mkdir(os.path.join(d, "truth"))
    >>> rows = [f"{k + 1} 0 {k + 0.5} 1.5 1.5 1 {k or -1}" for k in range(12)]
    >>> _ = open(os.path.join(d, "truth", "t.swc"), "w").write("\\n".join(rows))
    >>> round(emarray.erl(v, os.path.join(d, "truth")).erl, 4)   # (5**2 + 5**2) / 11
    4.5455
    """
    import json

    from .skeleton_files import read_skeletons
    from .tables import table_output
    opts = RunOptions.make(options, **run)
    seg = as_volume(segmentation, opts.allow_incomplete)
    if seg.ndim != 3 or seg.dtype.kind not in "ui":
        raise InvalidArgumentError(f"erl needs a z,y,x volume of integer ids; {seg.url} is "
                                   f"{seg.shape} {seg.dtype}")
    found = list(read_skeletons(skeletons, seg.unit))
    if not found:
        raise InvalidArgumentError(f"{os.fspath(skeletons)!r} holds no skeletons")
    job = {"operator": "erl", "segmentation": seg.fingerprint(),
           "skeletons": os.path.realpath(skeletons)}
    with table_output(out, job=job, inputs=[seg], opts=opts,
                      names=("erl.json", "runs.csv")) as target:
        names = [name for name, _, _ in found]
        skel = [(v, e) for _, v, e in found]
        result = expected_run_length(skel, ids_at_vertices(found, seg))
        if target is not None:
            doc = {"erl": result.erl, "erl_merge": result.erl_merge, "total": result.total,
                   "unit": seg.unit, "merged": result.merged,
                   "skeletons": {n: {"length": s["length"], "kept": s["kept"]}
                                 for n, s in zip(names, result.skeletons)}}
            target.path("erl.json").write_text(json.dumps(doc, indent=1))
            rows = ["skeleton,segment,length,merged"] + [
                f"{n},{sid},{L!r},{sid in set(result.merged)}"
                for n, s in zip(names, result.skeletons) for L, sid in s["runs"]]
            target.path("runs.csv").write_text("\n".join(rows) + "\n")
            target.commit(["erl.json", "runs.csv"], result=result.erl)
    return result
