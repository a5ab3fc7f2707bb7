"""Instance matching against ground truth from one out-of-core pass.

Each block gives the overlaps (truth id, predicted id, voxels) it holds; the overlaps of all
blocks are summed into one sparse contingency table on the driver (one row per overlapping
pair, never per voxel). Everything is derived from that table:

- one-to-one matches by IoU at thresholds 0.1 ... 0.9 (the most matches at or above the
  threshold, then the highest total IoU, stardist's cost), solved by the Hungarian method on
  each connected group of candidate pairs only. For volumes at thresholds of 0.5 and above an
  object has at most one candidate (two objects cannot both overlap it by more than half), and
  the matches are stardist's ``matching``'s; below 0.5 the number of matches is the same, the
  total IoU can differ slightly (stardist also weighs pairs under the threshold that link a
  group to objects outside it);
- variation of information (split, merge) and adapted Rand error, as scikit-image's
  ``variation_of_information`` and ``adapted_rand_error`` (truth 0 ignored for the latter);
- a per-object table and the relative volume difference of matched objects.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import BlockContext, BlockGrid, Read, RunOptions
from ..spec import ENGINE, INCOMPLETE, REPLACE, Operator, Param, Port
from ..speaking import given
from ..errors import EmarrayWarning, InvalidArgumentError, ShapeMismatchError
from ..volume import Volume
from .common import as_volume
from .._normalize import finite_number
from ._runs import pair_table, warm_pairs
from ..figures import prewarm
from .tables import SUM, fold_table, merge, table_output, write_frame, write_json

THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))
OUTPUTS = ("match.json", "matching.csv", "objects.csv", "match.png")
#: the label volumes ``--label`` writes into the output folder
LABELS = ("pred-labels.zarr", "truth-labels.zarr")


# -- the pass ---------------------------------------------------------------------------------
def block_overlaps(truth: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """(truth id, pred id, voxels) for every pair that overlaps in the block, 0s included:
    one pass over the runs where both are constant (:func:`emarray.ops._runs.pair_table`)."""
    return pair_table(truth, pred)


def _block(ctx: BlockContext, truth: np.ndarray, pred: np.ndarray) -> dict:
    return block_overlaps(truth, pred)


def merge_overlaps(a: dict, b: dict) -> dict:
    """Two (truth id, pred id, voxels) tables merged into one."""
    return merge(a, b, ["t", "p"], {"n": SUM})


def overlaps(name: str, truth: Volume, pred: Volume, *, opts: RunOptions, target: Any,
             job: dict[str, Any]) -> dict[str, np.ndarray]:
    """The (truth id, pred id, voxels) table of two label volumes from one pass over
    ``pred``'s blocks (stage ``name``; resumable in ``target``)."""
    table = fold_table(name, _block, [Read(truth), Read(pred)],
                       BlockGrid(pred.shape, pred.block_shape), merge_overlaps, opts=opts,
                       target=target, job=job)
    if table is None:
        table = {"t": np.empty(0, np.uint64), "p": np.empty(0, np.uint64),
                 "n": np.empty(0, np.int64)}
    return table


# -- what the table gives ---------------------------------------------------------------------
def sizes(table: dict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Voxels per truth id and per pred id (0 = background included)."""
    out = []
    for col in ("t", "p"):
        ids, inv = np.unique(table[col], return_inverse=True)
        out.append({"id": ids, "n": np.bincount(inv, weights=table["n"]).astype(np.int64)})
    return out[0], out[1]


def _lookup(ids: np.ndarray, table: dict[str, np.ndarray]) -> np.ndarray:
    return table["n"][np.searchsorted(table["id"], ids)]


def pair_iou(table: dict) -> dict[str, np.ndarray]:
    """IoU of every overlapping (truth > 0, pred > 0) pair."""
    ts, ps = sizes(table)
    fg = (table["t"] > 0) & (table["p"] > 0)
    t, p, n = table["t"][fg], table["p"][fg], table["n"][fg]
    union = _lookup(t, ts) + _lookup(p, ps) - n
    return {"t": t, "p": p, "n": n, "iou": n / union}


def assign(t: np.ndarray, p: np.ndarray, iou: np.ndarray, thr: float,
           n_scale: int) -> np.ndarray:
    """The pairs (indices into t/p/iou) matched one-to-one at ``thr``: the most pairs with
    IoU >= thr, then the highest total IoU (stardist's cost), per connected group of
    candidates."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    cand = np.flatnonzero(iou >= thr)
    if cand.size == 0:
        return cand
    tu, ti = np.unique(t[cand], return_inverse=True)
    pu, pj = np.unique(p[cand], return_inverse=True)
    nt = tu.size
    g = coo_matrix((np.ones(cand.size), (ti, nt + pj)), shape=(nt + pu.size,) * 2)
    _, comp = connected_components(g, directed=False)
    # every overlapping pair between nodes of the same group takes part (as in stardist)
    in_t = np.isin(t, tu)
    in_p = np.isin(p, pu)
    allp = np.flatnonzero(in_t & in_p)
    at = np.searchsorted(tu, t[allp])
    ap = np.searchsorted(pu, p[allp])
    keep = comp[at] == comp[nt + ap]
    allp, at, ap = allp[keep], at[keep], ap[keep]
    gcomp = comp[at]
    # groups of one truth or one pred object (nearly all of them): the best candidate, found
    # for all such groups at once; the rest by linear assignment, group by group
    ncomp = int(comp.max()) + 1
    rows_n = np.bincount(comp[:nt], minlength=ncomp)
    cols_n = np.bincount(comp[nt:], minlength=ncomp)
    star = (rows_n[gcomp] == 1) | (cols_n[gcomp] == 1)
    pos = np.flatnonzero(star)
    sc = iou[allp[pos]]
    masked = np.where(sc >= thr, sc, -1.0)
    first = np.lexsort((pos, -masked, gcomp[pos]))  # per group: best score, then first pair
    g_sorted = gcomp[pos][first]
    head = first[np.r_[True, g_sorted[1:] != g_sorted[:-1]]] if first.size else first
    head = head[sc[head] >= thr]
    keys = [gcomp[pos][head]]
    found = [allp[pos][head]]
    rest = np.flatnonzero(~star)
    order = rest[np.argsort(gcomp[rest], kind="stable")]
    bounds = np.flatnonzero(np.r_[True, gcomp[order][1:] != gcomp[order][:-1], True]) \
        if order.size else np.zeros(1, np.int64)
    for a, b in zip(bounds[:-1], bounds[1:]):
        sel = order[a:b]
        rows, ri = np.unique(at[sel], return_inverse=True)
        cols, ci = np.unique(ap[sel], return_inverse=True)
        score = np.zeros((rows.size, cols.size))
        score[ri, ci] = iou[allp[sel]]
        cost = -(score >= thr).astype(float) - score / (2 * n_scale)
        r, c = linear_sum_assignment(cost)
        ok = score[r, c] >= thr
        lookup = {(i, j): k for k, i, j in zip(allp[sel], ri, ci)}
        got = np.array([lookup[(i, j)] for i, j in zip(r[ok], c[ok])], np.int64)
        keys.append(np.full(got.size, gcomp[sel[0]]))
        found.append(got)
    # in group order, each group's pairs in the order they were found
    k = np.concatenate(keys)
    return np.concatenate(found)[np.argsort(k, kind="stable")].astype(np.int64)


def matching_table(pairs: dict, n_true: int, n_pred: int, thresholds=THRESHOLDS):
    """Per IoU threshold: tp, fp, fn, precision, recall, accuracy, f1, mean scores, PQ; and
    the matched pairs at each threshold."""
    import pandas as pd
    rows = []
    matches = {}
    n_scale = max(min(n_true, n_pred), 1)
    for thr in thresholds:
        m = matches[thr] = assign(pairs["t"], pairs["p"], pairs["iou"], thr, n_scale)
        tp = int(m.size)
        fp, fn = n_pred - tp, n_true - tp
        s = float(pairs["iou"][m].sum())

        def div(a: float, b: float) -> float:
            return a / b if b else 0.0
        rows.append({"threshold": thr, "tp": tp, "fp": fp, "fn": fn,
                     "precision": div(tp, tp + fp), "recall": div(tp, tp + fn),
                     "accuracy": div(tp, tp + fp + fn), "f1": div(2 * tp, 2 * tp + fp + fn),
                     "n_true": n_true, "n_pred": n_pred,
                     "mean_true_score": div(s, n_true), "mean_matched_score": div(s, tp),
                     "panoptic_quality": div(s, tp + fp / 2 + fn / 2)})
    return pd.DataFrame(rows), matches


def variation_of_information(table: dict) -> tuple[float, float]:
    """(split, merge) = (H(pred | truth), H(truth | pred)) in bits, every voxel counted."""
    ts, ps = sizes(table)
    total = float(table["n"].sum())
    if total == 0:
        return 0.0, 0.0
    pxy = table["n"] / total
    px = _lookup(table["t"], ts) / total
    py = _lookup(table["p"], ps) / total
    split = float(-(pxy * np.log2(pxy / px)).sum())
    merge_ = float(-(pxy * np.log2(pxy / py)).sum())
    return split + 0.0, merge_ + 0.0


def adapted_rand(table: dict) -> tuple[float, float, float]:
    """(error, precision, recall) as scikit-image's ``adapted_rand_error`` (truth 0 ignored)."""
    keep = table["t"] > 0
    n = table["n"][keep].astype(np.float64)
    t, p = table["t"][keep], table["p"][keep]
    a = np.bincount(np.unique(t, return_inverse=True)[1], weights=n)
    b = np.bincount(np.unique(p, return_inverse=True)[1], weights=n)
    sum_p2 = n @ n - n.sum()
    sum_a2 = a @ a - a.sum()
    sum_b2 = b @ b - b.sum()
    precision = sum_p2 / sum_a2 if sum_a2 else 0.0
    recall = sum_p2 / sum_b2 if sum_b2 else 0.0
    denom = 0.5 * sum_a2 + 0.5 * sum_b2
    return (1.0 - sum_p2 / denom if denom else 0.0), float(precision), float(recall)


def object_rows(table: dict, pairs: dict, matched: np.ndarray):
    """Each truth object with its best pred, IoU, match, split/merge flags and relative
    volume difference; each prediction matched to no truth as a false positive."""
    import pandas as pd
    ts, ps = sizes(table)
    tid, tn = ts["id"][ts["id"] > 0], ts["n"][ts["id"] > 0]
    pid, pn = ps["id"][ps["id"] > 0], ps["n"][ps["id"] > 0]
    t, p, n, iou = pairs["t"], pairs["p"], pairs["n"], pairs["iou"]
    # best pred per truth (highest IoU), and the truth holding most of each pred (and back)
    by_iou = np.lexsort((-iou, t))
    first_t = by_iou[np.r_[True, t[by_iou][1:] != t[by_iou][:-1]]] if t.size else by_iou
    by_n_p = np.lexsort((-n, p))
    major_of_p = by_n_p[np.r_[True, p[by_n_p][1:] != p[by_n_p][:-1]]] if p.size else by_n_p
    by_n_t = np.lexsort((-n, t))
    major_of_t = by_n_t[np.r_[True, t[by_n_t][1:] != t[by_n_t][:-1]]] if t.size else by_n_t
    # a truth is split when two or more preds have their majority in it; a pred merges when
    # two or more truths have their majority in it
    preds_into = np.unique(t[major_of_p], return_counts=True)
    truths_into = np.unique(p[major_of_t], return_counts=True)
    split_ids = set(preds_into[0][preds_into[1] >= 2].tolist())
    merge_preds = set(truths_into[0][truths_into[1] >= 2].tolist())
    best = {int(t[k]): k for k in first_t}
    match_of = {int(t[k]): k for k in matched}
    rows = []
    for i, size in zip(tid.tolist(), tn.tolist()):
        k = best.get(i)
        m = match_of.get(i)
        bp = int(p[k]) if k is not None else 0
        rows.append({"kind": "truth", "truth_id": i, "truth_voxels": size,
                     "best_pred_id": bp, "best_iou": float(iou[k]) if k is not None else 0.0,
                     "matched_pred_id": int(p[m]) if m is not None else 0,
                     "matched_iou": float(iou[m]) if m is not None else 0.0,
                     "split": i in split_ids, "merged": bp in merge_preds,
                     "pred_voxels": int(_lookup(np.array([p[m]]), ps)[0]) if m is not None else 0})
    matched_p = set(p[matched].tolist())
    for j, size in zip(pid.tolist(), pn.tolist()):
        if j not in matched_p:
            rows.append({"kind": "false_positive", "truth_id": 0, "truth_voxels": 0,
                         "best_pred_id": j, "best_iou": 0.0, "matched_pred_id": j,
                         "matched_iou": 0.0, "split": False, "merged": j in merge_preds,
                         "pred_voxels": size})
    df = pd.DataFrame(rows, columns=["kind", "truth_id", "truth_voxels", "best_pred_id",
                                     "best_iou", "matched_pred_id", "matched_iou", "split",
                                     "merged", "pred_voxels"])
    m = (df["kind"] == "truth") & (df["matched_pred_id"] > 0)
    df["relative_volume_difference"] = np.where(
        m, (df["pred_voxels"] - df["truth_voxels"]) / df["truth_voxels"].clip(lower=1), np.nan)
    return df


# -- the operator -----------------------------------------------------------------------------
def _says(r: dict[str, Any], args: dict[str, Any]) -> list[str]:
    thr = float(args.get("match_threshold", 0.5))
    row = r["matching"].set_index("threshold").loc[thr]  # the match threshold is always a row
    return [f"{r['n_true']} truth objects, {r['n_pred']} predicted",
            f"at IoU {thr:g}: precision {row['precision']:.4f}, recall {row['recall']:.4f}, "
            f"F1 {row['f1']:.4f}",
            f"VOI split {r['voi_split']:.4f}, merge {r['voi_merge']:.4f}; adapted Rand error "
            f"{r['adapted_rand_error']:.4f}",
            f"wrote {os.path.join(args['out'], 'match.json')}, matching.csv, objects.csv and "
            "match.png"]


def _iou(value: Any, name: str) -> float:
    thr = finite_number(value, name)
    if not 0 < thr <= 1:
        raise InvalidArgumentError(f"{name} must be in (0, 1], got {value!r}")
    return thr


SPEC = Operator(
    "match", "instance matching against ground truth in one pass: F1 at IoU 0.1..0.9, "
             "variation of information, adapted Rand error, a per-object table",
    needs=("pandas", "matplotlib"),
    inputs=(Port("pred", "volume", "predicted label volume (0 = background)", labels=True),
            Port("truth", "volume", "ground-truth label volume of the same shape", labels=True)),
    output=Port("out", "folder", "folder for match.json, matching.csv, objects.csv and "
                                 "match.png", option=True),
    params=(Param("label_first", "flag", "pred and truth are masks: label them first (into out)",
                  aliases=("--label",)),
            Param("connectivity", "choice", "with label_first: 6, 18 or 26",
                  choices=(6, 18, 26)),
            Param("match_threshold", "float", "the IoU at which the per-object table counts a "
                                              "match", parse=_iou)),
    run=ENGINE + REPLACE + INCOMPLETE, says=_says,
    examples=("emarray match cells.zarr truth.zarr --out match/",))


@SPEC.function
def match(pred: Volume | str | os.PathLike, truth: Volume | str | os.PathLike, *,
          out: str | os.PathLike | None = None, label_first: bool = False,
          connectivity: int = 26, match_threshold: float = 0.5,
          options: RunOptions | None = None, **run: Any) -> dict[str, Any]:
    """Match predicted instances against ground-truth instances in one pass.

    Each block adds to a sparse contingency table of (truth id, predicted id) overlaps; the
    tables are merged in a tree, and the scores are computed from the whole table.

    Returns
    -------
    dict
        ``matching`` (DataFrame per IoU threshold, as stardist's ``matching``), ``objects``
        (DataFrame per object), ``voi_split``, ``voi_merge``, ``adapted_rand_error`` (with
        precision and recall), ``mean_abs_relative_volume_difference``.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> t = np.zeros((1, 4, 8), np.uint32); t[0, :, :4] = 1; t[0, :, 4:] = 2
    >>> p = t.copy(); p[0, :, 3] = 2                     # one column of 1 taken by 2
    >>> tv = emarray.create_volume(os.path.join(d, "t.zarr"), t.shape, "uint32", 4)
    >>> tv.write((slice(0, 1), slice(0, 4), slice(0, 8)), t)
    >>> pv = emarray.create_volume(os.path.join(d, "p.zarr"), p.shape, "uint32", 4)
    >>> pv.write((slice(0, 1), slice(0, 4), slice(0, 8)), p)
    >>> r = emarray.match(pv, tv)  # the adapted Rand error is scikit-image's
    >>> r["matching"].set_index("threshold").loc[0.5, "f1"], round(r["adapted_rand_error"], 3)
    (np.float64(1.0), np.float64(0.226))
    """
    opts = RunOptions.make(options, **run)
    thr = _iou(match_threshold, "match_threshold")
    pv, tv = as_volume(pred, opts.allow_incomplete), as_volume(truth, opts.allow_incomplete)
    if pv.shape != tv.shape:
        raise ShapeMismatchError(f"prediction has shape {pv.shape} but truth has {tv.shape}")
    if label_first and out is None:
        raise InvalidArgumentError("--label needs --out (the labels are written there)")
    labels = LABELS if label_first else ()
    job = {"operator": "match", "inputs": [pv.fingerprint(), tv.fingerprint()],
           "label_first": bool(label_first), "connectivity": int(connectivity)}
    with table_output(out, job=job, inputs=[pv, tv], opts=opts,
                      names=OUTPUTS + labels) as target:
        shown = {"pred": pv.url, "truth": tv.url}
        if target is not None and label_first:
            from .label import label
            # each labelling is a job of its own inside the staged output (resumed with it)
            pv = label(pv, target.path(LABELS[0]), connectivity=connectivity, mode="binary",
                       options=opts)
            tv = label(tv, target.path(LABELS[1]), connectivity=connectivity, mode="binary",
                       options=opts)
            shown = {"pred": os.fspath(target.final / LABELS[0]),
                     "truth": os.fspath(target.final / LABELS[1])}
        for name, v in (("prediction", pv), ("truth", tv)):
            if v.dtype.kind not in "ui":
                raise InvalidArgumentError(
                    f"the {name} {v.url} holds {v.dtype}, not instance ids; give "
                    f"{given('label_first')} to label a mask first")
        warm_pairs(tv.dtype, pv.dtype)  # the kernel and the plot's import load beside the blocks
        prewarm()
        table = overlaps("match", tv, pv, opts=opts, target=target, job=job)
        result = evaluate(table, thr)
        for name, n in (("truth", result["n_true"]), ("prediction", result["n_pred"])):
            if n == 1:
                warnings.warn(f"the {name} holds a single object id: if it is a mask, give "
                              f"{given('label_first')} to match its connected components",
                              EmarrayWarning, stacklevel=2)
        if target is not None:
            write_outputs(result, target.staging, shown["pred"], shown["truth"])
            target.commit()
    return result


def evaluate(table: dict, match_threshold: float = 0.5) -> dict[str, Any]:
    """Every figure :func:`match` reports, from a contingency table."""
    pairs = pair_iou(table)
    ts, ps = sizes(table)
    n_true, n_pred = int((ts["id"] > 0).sum()), int((ps["id"] > 0).sum())
    # the match threshold is one of the rows (an extra one when it is off the 0.1 grid)
    thresholds = sorted(set(THRESHOLDS) | {match_threshold})
    matching, matches = matching_table(pairs, n_true, n_pred, thresholds)
    objs = object_rows(table, pairs, matches[match_threshold])
    split, merge_ = variation_of_information(table)
    are, prec, rec = adapted_rand(table)
    rvd = objs["relative_volume_difference"].dropna()
    return {"matching": matching, "objects": objs, "voi_split": split, "voi_merge": merge_,
            "voi": split + merge_, "adapted_rand_error": are, "adapted_rand_precision": prec,
            "adapted_rand_recall": rec, "n_true": n_true, "n_pred": n_pred,
            "match_threshold": match_threshold,
            "mean_abs_relative_volume_difference": float(rvd.abs().mean()) if len(rvd) else None,
            "mean_relative_volume_difference": float(rvd.mean()) if len(rvd) else None}


def write_outputs(result: dict, out: Path, pred: str, truth: str) -> None:
    """match.json, matching.csv, objects.csv and match.png into ``out`` (``pred``, ``truth``:
    where the volumes matched are, as the summary names them)."""
    out.mkdir(parents=True, exist_ok=True)
    write_frame(result["matching"], out / "matching.csv")
    write_frame(result["objects"], out / "objects.csv")
    summary = {k: v for k, v in result.items() if k not in ("matching", "objects")}
    summary.update(prediction=pred, truth=truth,
                   matching=result["matching"].to_dict(orient="records"))
    write_json(summary, out / "match.json")
    plot(result, out / "match.png", f"{Path(pred).name} against {Path(truth).name}")


def plot(result: dict, path: Path, title: str) -> None:
    """Precision, recall and F1 against the IoU threshold; the IoU of each truth object."""
    from ..figures import save, subplots
    m = result["matching"]
    fig, (a, b) = subplots(2, figsize=(11, 4.5))
    for col in ("precision", "recall", "f1", "panoptic_quality"):
        a.plot(m["threshold"], m[col], ".-", label=col)
    a.set_xlabel("IoU threshold")
    a.set_ylabel("score")
    a.set_ylim(0, 1.02)
    a.legend(fontsize=8)
    a.set_title(f"VOI split {result['voi_split']:.3f}, merge {result['voi_merge']:.3f}; "
                f"ARand error {result['adapted_rand_error']:.3f}", fontsize=9)
    objs = result["objects"]
    b.hist(objs.loc[objs["kind"] == "truth", "best_iou"], bins=np.linspace(0, 1, 21),
           color="#4477aa")
    b.set_xlabel("best IoU per truth object")
    b.set_ylabel("objects")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save(fig, path)
