"""An agglomeration scored against ground truth at every threshold, from one pass.

The segmentation at any threshold is the fragments relabelled through the agglomeration's
graph, so one pass over the fragments and the truth is enough: each block adds the overlaps
(truth id, fragment id, voxels) it holds to one sparse table (:mod:`emarray.ops.match`'s
pass), and on the driver the graph is cut at every threshold and the table's rows are summed
per (truth id, segment): variation of information (split, merge) and adapted Rand error at
each, as :func:`emarray.match` scores one segmentation. Nothing scales with the volume: the
table has a row per overlapping (truth, fragment) pair, the cuts a column per fragment.

A per-threshold column of another measure plugs in through :func:`score_cuts`'s ``columns``
(the expected run length against ground-truth skeletons is meant to be one: it needs each
skeleton node's fragment once, then every cut is a lookup).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import RunOptions
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..figures import prewarm
from ..spec import ENGINE, INCOMPLETE, REPLACE, Operator, Param, Port
from ..volume import Volume, open_volume
from ._runs import warm_pairs
from .agglomerate import EDGE_COLUMNS, cut_segments
from .common import as_volume
from .match import adapted_rand, overlaps, variation_of_information
from .tables import table_output, write_frame, write_json

FILES = ("evaluate.csv", "evaluate.json", "evaluate.png")
#: thresholds cut when none are given: 0, 0.01, ..., 1
DEFAULT_THRESHOLDS = tuple(round(0.01 * k, 2) for k in range(101))
#: cuts held at once (each a column per fragment)
BATCH = 16


@dataclass
class Cuts:
    """What a per-threshold column is computed from: the ``thresholds``, the sorted fragment
    ids, each fragment's segment at each threshold (``segments[k]``, 1..K, for
    ``thresholds[k]``) and the fragments volume they label."""

    thresholds: np.ndarray
    fragments: np.ndarray
    segments: np.ndarray
    volume: Volume


#: a column: ``fn(cuts) -> {name: one value per threshold}``
Column = Callable[[Cuts], dict[str, Sequence[float]]]


def score_table(table: dict[str, np.ndarray]) -> dict[str, float]:
    """VOI split and merge (every voxel counted) and adapted Rand error (truth 0 ignored),
    with precision and recall, of one contingency table (``t``, ``p``, ``n``; pairs unique)."""
    split, merge_ = variation_of_information(table)
    are, prec, rec = adapted_rand(table)
    return {"voi_split": split, "voi_merge": merge_, "voi": split + merge_,
            "adapted_rand_error": are, "adapted_rand_precision": prec,
            "adapted_rand_recall": rec}


def relabelled(table: dict[str, np.ndarray], segment: np.ndarray) -> dict[str, np.ndarray]:
    """The table's (truth, fragment) rows summed per (truth, segment); ``segment`` gives each
    row's segment (0 for fragment 0)."""
    t = table["t"]
    order = np.lexsort((segment, t))
    t, s, n = t[order], segment[order], table["n"][order]
    if t.size == 0:
        return {"t": t, "p": s, "n": n}
    starts = np.flatnonzero(np.r_[True, (t[1:] != t[:-1]) | (s[1:] != s[:-1])])
    return {"t": t[starts], "p": s[starts], "n": np.add.reduceat(n, starts)}


def score_cuts(table: dict[str, np.ndarray], graph: dict[str, np.ndarray], thresholds: Any,
               min_size: int, volume: Volume, columns: Sequence[Column] = ()) -> Any:
    """One row per threshold: segments, VOI split/merge, adapted Rand error (and precision,
    recall), and each of ``columns``, of the agglomeration in ``graph`` (``fragments``, the
    edge columns and ``voxels`` of an agglomerate output's graph.npz) against the truth of
    ``table`` (truth id, fragment id, voxels)."""
    import pandas as pd
    fragments = graph["fragments"]
    ts = np.sort(np.asarray(thresholds, np.float64))
    u = np.searchsorted(fragments, graph["u"].astype(fragments.dtype))
    v = np.searchsorted(fragments, graph["v"].astype(fragments.dtype))
    p = table["p"].astype(fragments.dtype) if fragments.size else table["p"]
    where = np.minimum(np.searchsorted(fragments, p), max(fragments.size - 1, 0))
    known = (table["p"] != 0) & (fragments[where] == p if fragments.size else False)
    rows: list[dict[str, Any]] = []
    extra: dict[str, list[float]] = {}
    for lo in range(0, ts.size, BATCH):
        batch = ts[lo:lo + BATCH]
        segments = cut_segments(fragments.size, u, v, graph["sum"], graph["size"],
                                graph["voxels"], batch, min_size)
        for k, t in enumerate(batch):
            seg = np.where(known, segments[k][where] if fragments.size else 0, 0)
            rows.append({"threshold": float(t), "segments": int(segments[k].max(initial=0)),
                         **score_table(relabelled(table, seg))})
        cuts = Cuts(batch, fragments, segments, volume)
        for fn in columns:
            for name, values in fn(cuts).items():
                extra.setdefault(name, []).extend(float(x) for x in values)
    df = pd.DataFrame(rows)
    for name, values in extra.items():
        df[name] = values
    return df


def best_row(df: Any) -> dict[str, Any]:
    """The threshold of the lowest VOI (split + merge; ties: the lowest threshold)."""
    return {k: (float(v) if k != "segments" else int(v))
            for k, v in df.loc[df["voi"].idxmin()].items()}


def load_graph(segments: Volume | str | os.PathLike) -> tuple[Path, dict[str, np.ndarray],
                                                                dict[str, Any]]:
    """The graph of an agglomerate output (its folder, the graph's arrays, and what it
    records: the fragments it was built from, its min_size), or one line saying why not."""
    root = Path(segments.url if isinstance(segments, Volume) else os.fspath(segments))
    path = root / "graph.npz"
    if not path.is_file():
        raise InvalidArgumentError(
            f"{root} holds no graph.npz: give the output of emarray agglomerate (the folder "
            "that holds its graph, not one of its cuts)")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("fragments", "voxels", "source", *EDGE_COLUMNS)
                   if k not in z.files]
        if missing:
            raise InvalidArgumentError(
                f"the graph in {root} has no {', '.join(missing)} (an earlier emarray made "
                "it): run emarray agglomerate again to keep one that has")
        graph = {k: z[k] for k in ("fragments", "voxels", *EDGE_COLUMNS)}
        source = json.loads(str(z["source"]))
    lookup = root / "lookup.npz"
    min_size = 0
    if lookup.is_file():
        with np.load(lookup, allow_pickle=False) as z:
            min_size = int(z["min_size"]) if "min_size" in z.files else 0
    return root, graph, {**source, "min_size": min_size}


def fragments_of(root: Path, source: dict[str, Any], allow_incomplete: bool) -> Volume:
    """The fragments the graph was built from, unchanged since (refused in one line if not)."""
    was = source.get("fragments") or {}
    url = was.get("url")
    try:
        fv = as_volume(url, allow_incomplete) if url else None
    except Exception:  # noqa: BLE001 - said below, in one line
        fv = None
    if fv is None:
        raise InvalidArgumentError(f"the graph in {root} was built from fragments {url}, which "
                                   "cannot be opened; run emarray agglomerate again")
    now = fv.fingerprint(listing=True)
    if now != was:
        differ = [k for k in now if was.get(k) != now[k]]
        raise InvalidArgumentError(
            f"the graph in {root} was built from fragments {url} as they were then; their "
            f"{', '.join('chunks stored' if k == 'stored' else k for k in differ)} changed "
            "since: run emarray agglomerate again")
    return fv


def _thresholds(value: Any, name: str) -> tuple[float, ...]:
    from .._normalize import finite_number
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise InvalidArgumentError(f"{name} must list thresholds (0.5,0.7,0.9), got {value!r}")
    out = tuple(sorted({finite_number(v, name) for v in items if str(v).strip()}))
    if not out or not all(0 <= t <= 1 for t in out):
        raise InvalidArgumentError(f"{name} must lie within [0, 1], got {value!r}")
    return out


def _says(df: Any, args: dict[str, Any]) -> list[str]:
    best = best_row(df)
    out = args.get("out")
    return [f"best VOI {best['voi']:.4f} (split {best['voi_split']:.4f}, merge "
            f"{best['voi_merge']:.4f}) at threshold {best['threshold']:g}: {best['segments']:,} "
            f"segments, adapted Rand error {best['adapted_rand_error']:.4f}"] + (
        [f"best ERL {df['erl'].max():,.6g} at threshold "
         f"{df['threshold'][df['erl'].idxmax()]:g} (merge-penalised: "
         f"{df['erl_merge'].max():,.6g} at {df['threshold'][df['erl_merge'].idxmax()]:g})"]
        if "erl" in df else []) + (
        [f"wrote {os.path.join(out, 'evaluate.csv')}, evaluate.json and evaluate.png"]
        if out else [])


SPEC = Operator(
    "evaluate", "an agglomeration scored against ground truth at every threshold in one pass: "
                "VOI split and merge, adapted Rand error, the best threshold, a table and a plot",
    needs=("pandas", "matplotlib"),
    inputs=(Port("segments", "volume", "an agglomerate output (it holds the graph and "
                                       "names the fragments it was built from)", labels=True),
            Port("truth", "volume", "ground-truth labels of the same shape (0 counts as an "
                                    "object for VOI, is ignored by adapted Rand)",
                 labels=True),
            Port("skeletons", "folder", "ground-truth skeletons (emarray skeleton's folder or "
                                        ".swc files): adds the expected run length (erl, "
                                        "erl_merge) at each threshold", optional=True,
                 option=True)),
    output=Port("out", "folder", "folder for evaluate.csv, evaluate.json and evaluate.png",
                option=True),
    params=(Param("thresholds", "numbers", "the thresholds cut (default: 0, 0.01, ..., 1)",
                  parse=_thresholds),
            Param("min_size", "int", "merge segments under this many voxels into their best "
                                     "neighbour at each threshold (default: as the "
                                     "agglomeration did)", minimum=0, unit="voxels")),
    run=ENGINE + REPLACE + INCOMPLETE, says=_says,
    examples=("emarray evaluate cells.zarr truth.zarr --out eval/",))


@SPEC.function
def evaluate(segments: Volume | str | os.PathLike, truth: Volume | str | os.PathLike, *,
             skeletons: str | os.PathLike | None = None,
             out: str | os.PathLike | None = None, thresholds: Any = None,
             min_size: int | None = None, options: RunOptions | None = None,
             **run: Any) -> Any:
    """Score the agglomeration ``segments`` (an :func:`emarray.agglomerate` output) against
    ``truth`` at every threshold, reading its fragments and the truth once.

    Each block adds its (truth, fragment) overlaps to one table; the agglomeration's graph is
    cut at each threshold (with its ``min_size`` merging, or the one given) and the table
    summed per (truth, segment): the scores equal :func:`emarray.match`'s on the segmentation
    agglomerate writes at that threshold. The graph records the fragments it was built from;
    fragments changed since are refused before any work.

    With ``skeletons`` (ground-truth skeletons), each row also has the expected run length
    (``erl``) and its merge-penalising variant (``erl_merge``) of that cut, in the volume's
    unit (:func:`emarray.erl`; the fragments are read at the skeletons' vertices once).

    Returns
    -------
    pandas.DataFrame
        One row per threshold: ``segments``, ``voi_split``, ``voi_merge``, ``voi``,
        ``adapted_rand_error`` (with precision and recall), and ``erl``/``erl_merge`` with
        skeletons; ``df.attrs["best"]`` is the row of the lowest VOI.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> f = np.array([[[1, 1, 2, 2, 3, 3]]], np.uint32)          # three fragments in a row
    >>> b = np.array([[[0, .1, .1, .9, .9, 0]]], np.float32)     # a weak wall, a strong one
    >>> t = np.array([[[5, 5, 5, 5, 6, 6]]], np.uint32)          # two cells
    >>> vols = [emarray.create_volume(os.path.join(d, n), f.shape, a.dtype, (1, 1, 2))
    ...         for n, a in (("f.zarr", f), ("b.zarr", b), ("t.zarr", t))]
    >>> for v, a in zip(vols, (f, b, t)):
    ...     v.write((slice(0, 1), slice(0, 1), slice(0, 6)), a)
    >>> s = emarray.agglomerate(vols[0], vols[1], os.path.join(d, "s.zarr"))
    >>> df = emarray.evaluate(s, vols[2], thresholds=[0.05, 0.5, 0.95])
    >>> df[["threshold", "segments", "voi"]].round(3).values.tolist()
    [[0.05, 3.0, 0.667], [0.5, 2.0, 0.0], [0.95, 1.0, 0.918]]
    """
    opts = RunOptions.make(options, **run)
    root, graph, source = load_graph(segments)
    fv = fragments_of(root, source, opts.allow_incomplete)
    tv = as_volume(truth, opts.allow_incomplete)
    if tv.shape != fv.shape:
        raise ShapeMismatchError(f"the truth has shape {tv.shape}; the fragments of {root} "
                                 f"have {fv.shape}")
    if tv.dtype.kind not in "ui":
        raise InvalidArgumentError(f"the truth {tv.url} holds {tv.dtype}, not instance ids; "
                                   "label a mask first (emarray label)")
    ts = np.array(thresholds if thresholds is not None else DEFAULT_THRESHOLDS, np.float64)
    size = int(source["min_size"] if min_size is None else min_size)
    sv = open_volume(root)
    columns = []
    if skeletons is not None:
        from .erl import erl_columns
        from .skeleton_files import read_skeletons
        found = list(read_skeletons(skeletons, fv.unit))
        if not found:
            raise InvalidArgumentError(f"{os.fspath(skeletons)!r} holds no skeletons")
        columns.append(erl_columns(found, fv))
    job = {"operator": "evaluate", "inputs": [sv.fingerprint(), fv.fingerprint(),
                                               tv.fingerprint()],
           "thresholds": ts.tolist(), "min_size": size,
           "skeletons": os.path.realpath(skeletons) if skeletons is not None else None}
    with table_output(out, job=job, inputs=[sv, fv, tv], opts=opts, names=FILES) as target:
        warm_pairs(tv.dtype, fv.dtype)
        prewarm("pandas")
        if target is not None:
            prewarm()
        table = overlaps("evaluate", tv, fv, opts=opts, target=target, job=job)
        df = score_cuts(table, graph, ts, size, fv, columns)
        df.attrs["best"] = best_row(df)
        if target is not None:
            write_outputs(df, target.staging, sv.url, tv.url, size)
            target.commit(FILES)
    return df


def write_outputs(df: Any, out: Path, segments: str, truth: str, min_size: int) -> None:
    """evaluate.csv, evaluate.json (the best threshold, the rows) and evaluate.png."""
    out.mkdir(parents=True, exist_ok=True)
    write_frame(df, out / "evaluate.csv")
    write_json({"segments": segments, "truth": truth, "min_size": min_size,
                "best": df.attrs["best"], "thresholds": df.to_dict(orient="records")},
               out / "evaluate.json")
    plot(df, out / "evaluate.png", f"{Path(segments).name} against {Path(truth).name}")


def plot(df: Any, path: Path, title: str) -> None:
    """VOI split, merge and their sum against the threshold; the adapted Rand error."""
    from ..figures import subplots
    best = df.attrs["best"]
    skeletons = "erl" in df
    fig, axes = subplots(3 if skeletons else 2, figsize=(16 if skeletons else 11, 4.5))
    a, b = axes[0], axes[1]
    for col, style in (("voi_split", "--"), ("voi_merge", ":"), ("voi", "-")):
        a.plot(df["threshold"], df[col], style, label=col.replace("_", " "))
    a.axvline(best["threshold"], color="0.6", lw=0.8)
    a.set_xlabel("agglomeration threshold")
    a.set_ylabel("bits")
    a.set_ylim(0, min(float(df["voi"].max()), 2.5 * best["voi"] + 0.1) * 1.05)
    a.legend(fontsize=8)
    a.set_title(f"best VOI {best['voi']:.3f} at {best['threshold']:g} "
                f"({best['segments']:,} segments)", fontsize=9)
    b.plot(df["threshold"], df["adapted_rand_error"], "-", color="#aa3377")
    b.axvline(best["threshold"], color="0.6", lw=0.8)
    b.set_xlabel("agglomeration threshold")
    b.set_ylabel("adapted Rand error")
    b.set_ylim(0, max(1e-3, min(float(df["adapted_rand_error"].max()),
                                5 * best["adapted_rand_error"] + 0.02)) * 1.05)
    if skeletons:  # the expected run length along the skeletons, and its merge-penalised one
        c = axes[2]
        c.plot(df["threshold"], df["erl"], "-", label="ERL")
        c.plot(df["threshold"], df["erl_merge"], "--", label="ERL, merges count 0")
        top = int(df["erl_merge"].idxmax())
        c.axvline(df["threshold"][top], color="0.6", lw=0.8)
        c.set_xlabel("agglomeration threshold")
        c.set_ylabel("expected run length")
        c.legend(fontsize=8)
        c.set_title(f"best merge-penalised ERL {df['erl_merge'][top]:,.4g} at "
                    f"{df['threshold'][top]:g}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
