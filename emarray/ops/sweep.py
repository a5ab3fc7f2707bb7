"""One-pass threshold sweep: confusion counts and metrics at any number of thresholds.

Every block of the probability map is read once and added to a joint histogram of
(probability bucket x truth class); the histograms of all blocks are summed in a tree. The
buckets are cut exactly at the requested thresholds (float maps) or are the map's levels
(uint8/uint16 maps), so "predicted = prob > t" is counted exactly at every threshold.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .. import backends
from .._normalize import finite_number, micrometres, real_number, rounded_once, written
from ..figures import prewarm
from ..engine import BlockContext, BlockGrid, Checkpoint, Read, RunOptions, Stage, run_stages
from ..spec import BACKEND, ENGINE, INCOMPLETE, REPLACE, Operator, Param, Port
from ..speaking import given
from ..engine.output import reading
from ..errors import EmarrayWarning, InvalidArgumentError, ShapeMismatchError
from ..volume import Volume
from .common import as_volume, backend_stage_setup
from .tables import table_output, write_frame

#: the files a sweep writes into its folder
FILES = ("sweep.csv", "sweep.json", "sweep.png")

#: truth classes per voxel: 0 negative, 1 positive, 2 not counted (mask / ignore value)
NEG, POS, SKIP = 0, 1, 2
LEVEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def sweep_thresholds(thresholds: Any = None, values: Any = None,
                     dtype: Any = np.float64) -> np.ndarray:
    """The sorted, unique thresholds: ``values`` when given, else ``n`` over the map's range.

    Float maps sweep ``k / n`` for ``k < n`` (default n = 100). Integer maps sweep ``n`` evenly
    over their dtype's range, ``lo + k * (hi - lo) / n``; 8-bit maps default to every level
    (n = 255: ``x > 0`` ... ``x > 254``), others to n = 100.

    >>> sweep_thresholds(4)
    array([0.  , 0.25, 0.5 , 0.75])
    >>> sweep_thresholds(dtype="uint8")[:3], sweep_thresholds(dtype="uint8").size
    (array([0., 1., 2.]), 255)
    """
    if values is not None:
        if isinstance(values, str):
            values = [v for v in values.split(",") if v.strip()]
        ts = np.array([finite_number(v, "threshold") for v in values], np.float64)
        if ts.size == 0:
            raise InvalidArgumentError(f"values must list at least one threshold, got {values!r}")
        return np.unique(ts)
    dt = np.dtype(dtype)
    if thresholds is None:
        thresholds = 255 if dt.kind in "ui" and dt.itemsize == 1 else 100
    try:
        n = int(thresholds)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"thresholds must be a whole number, got {thresholds!r}") from None
    if n < 1 or n != thresholds and not isinstance(thresholds, str):
        raise InvalidArgumentError(f"thresholds must be a whole number >= 1, got {thresholds!r}")
    if dt.kind in "ui":
        lo, hi = float(np.iinfo(dt).min), float(np.iinfo(dt).max)
        return np.unique(lo + np.arange(n, dtype=np.float64) * (hi - lo) / n)
    return np.arange(n, dtype=np.float64) / n


def exact_thresholds(dtype: np.dtype, ts: np.ndarray) -> np.ndarray:
    """Thresholds in the map's own type such that ``x > f_k`` iff ``x > t_k`` as real numbers."""
    from .threshold import normalize_threshold
    if dtype.kind == "f":
        return np.array([normalize_threshold(dtype, t, "gt")[1] for t in ts], dtype)
    return np.floor(ts)  # integer x > t  iff  x > floor(t); float64 holds these exactly


def truth_classes(truth: np.ndarray, *, truth_value: Any, ignore_value: Any,
                  mask: np.ndarray | None) -> np.ndarray:
    """Per-voxel class: 1 where truth is positive, 0 negative, 2 where not counted.

    One pass for the common case; a truth or ignore value the truth's dtype cannot hold
    matches no voxel.
    """
    cls = np.empty(truth.shape, np.uint8)
    if truth_value is None:
        np.not_equal(truth, 0, out=cls.view(np.bool_))
    else:
        np.equal(truth, _typed(truth_value, truth.dtype), out=cls.view(np.bool_))
    if ignore_value is not None:
        cls[truth == _typed(ignore_value, truth.dtype)] = SKIP
    if mask is not None:
        cls[mask == 0] = SKIP
    return cls


def _typed(value: Any, dtype: np.dtype) -> Any:
    """``value`` for comparing with ``dtype`` data without wrap-around (as a float if need be)."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        v = real_number(value, "value")  # 2**53 + 1 stays itself
        if isinstance(v, int) and info.min <= v <= info.max:
            return dtype.type(v)
        return float(v) + 0.5 if isinstance(v, int) else v  # equal to no value of the dtype
    return dtype.type(value)


def histogram_block_cpu(prob: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *,
                        truth_value: Any = None, ignore_value: Any = None, edges: np.ndarray,
                        table: Any) -> tuple[np.ndarray, np.ndarray]:
    """Joint histogram of one channel's block: ``(buckets x 3)`` and NaN counts per class."""
    from ._histogram_cpu import bucket_histogram, level_histogram
    x = np.ascontiguousarray(prob).reshape(-1)
    cls = truth_classes(truth, truth_value=truth_value, ignore_value=ignore_value,
                        mask=mask).reshape(-1)
    nan = np.zeros(3, np.int64)
    if prob.dtype in LEVEL_DTYPES:
        out = np.zeros((np.iinfo(prob.dtype).max + 1, 3), np.int64)
        level_histogram(x, cls, out)
    else:
        out = np.zeros((edges.size + 1, 3), np.int64)
        tab, t0, inv = table
        bucket_histogram(x, cls, edges, tab, t0, inv, out, nan)
    return out, nan


backends.register("histogram", "cpu", histogram_block_cpu)
backends.register("histogram", "cuda", "emarray.cuda.histogram:histogram_block_cuda")


def _sweep_block(ctx: BlockContext, prob: np.ndarray, truth: np.ndarray, *rest: np.ndarray,
                 channels: tuple[int, ...], channel_axis: bool,
                 truth_per_channel: bool, truth_value: Any, ignore_value: Any, edges: np.ndarray,
                 table: Any, nbuckets: int) -> np.ndarray:
    mask = rest[0] if rest else None
    region, hist_fn = ctx.region, ctx.state
    c0 = region[0].start if channel_axis else 0
    out = np.zeros((len(channels), nbuckets + 1, 3), np.int64)  # last row: NaN counts
    for j, ch in enumerate(channels):
        if channel_axis and not (region[0].start <= ch < region[0].stop):
            continue
        p = prob[ch - c0] if channel_axis else prob
        t = truth[ch - c0] if truth_per_channel else truth
        h, nan = hist_fn(p, t, mask, truth_value=truth_value, ignore_value=ignore_value,
                         edges=edges, table=table)
        out[j, :nbuckets] += h
        out[j, nbuckets] += nan
    return out


def _says(df: Any, args: dict[str, Any]) -> list[str]:
    lines = []
    for ch, best in best_rows(df).items():
        tag = f"channel {ch}: " if df["channel"].nunique() > 1 else ""
        lines.append(f"{tag}best F1 {best['f1']['f1']:.4f} at t={best['f1']['threshold']:g}; "
                     f"best IoU {best['iou']['iou']:.4f} at t={best['iou']['threshold']:g}")
    nan = sum(df.attrs["nan_voxels"].values())
    if nan:
        lines.append(f"{nan:,} NaN voxels in the map were not counted")
    lines.append(f"wrote {os.path.join(args['out'], 'sweep.csv')}, sweep.json and sweep.png")
    return lines


SPEC = Operator(
    "sweep", "a threshold sweep against ground truth in one pass: counts, F1, IoU and volumes "
             "at every threshold, a table and a plot",
    needs=("pandas", "matplotlib"),
    inputs=(Port("prob", "volume", "probability map, z,y,x or c,z,y,x (uint8/uint16 maps: one "
                                   "bucket per level)"),
            Port("truth", "volume", "ground truth, z,y,x (or c,z,y,x, one per channel)",
                 labels=True),
            Port("mask", "volume", "region of interest: voxels where it is 0 are not counted",
                 optional=True)),
    output=Port("out", "folder", "folder for sweep.csv, sweep.json and sweep.png", option=True),
    params=(Param("thresholds", "int", "sweep this many thresholds evenly over the map's range "
                                       "(k/N for float maps; default 100, or every level of an "
                                       "8-bit map)", minimum=1),
            Param("values", "numbers", "explicit thresholds, e.g. 0.1,0.25,0.5"),
            Param("truth_value", "number", "truth is positive where it equals this (default: "
                                           "where it is nonzero)"),
            Param("ignore_value", "number", "voxels whose truth equals this are not counted"),
            Param("channel", "int", "sweep one channel of a c,z,y,x map", minimum=0)),
    run=ENGINE + REPLACE + INCOMPLETE + BACKEND, says=_says, blocks="histogram",
    examples=("emarray sweep prob.zarr truth.zarr --out sweep/",
              "emarray sweep prob.zarr truth.zarr --out sweep/ --values 0.3,0.5,0.7"))


@SPEC.function
def sweep(prob: Volume | str | os.PathLike, truth: Volume | str | os.PathLike, *,
          thresholds: Any = None, values: Any = None, truth_value: Any = None,
          ignore_value: Any = None, mask: Volume | str | os.PathLike | None = None,
          channel: int | None = None, out: str | os.PathLike | None = None,
          options: RunOptions | None = None, **run: Any):
    """Sweep thresholds of ``prob`` against ``truth`` in one pass; return a pandas DataFrame.

    Every block is read once and added to a joint histogram of (probability bucket x truth
    class), cut exactly at the thresholds, so "predicted = prob > t" is counted exactly at
    every threshold. With ``out``, the sweep's progress is kept there and a killed sweep
    continues with ``resume=True``.

    Returns
    -------
    pandas.DataFrame
        One row per (channel, threshold): tp, fp, fn, tn, precision, recall, f1 (Dice), iou
        (Jaccard), accuracy, predicted/true volume in voxels and cubic micrometres, and the
        percent volume difference. NaN voxels of the map are not counted; their number is in
        ``df.attrs["nan_voxels"]``. Undefined ratios (0/0) are 0.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> p = emarray.create_volume(os.path.join(d, "p.zarr"), (1, 1, 4), "float32", 2)
    >>> p.write((slice(0, 1), slice(0, 1), slice(0, 4)), np.array([[[.1, .4, .6, .9]]], "f4"))
    >>> t = emarray.create_volume(os.path.join(d, "t.zarr"), (1, 1, 4), "uint8", 2)
    >>> t.write((slice(0, 1), slice(0, 1), slice(0, 4)), np.array([[[0, 1, 1, 1]]], "u1"))
    >>> df = emarray.sweep(p, t, values=[0.5])
    >>> df[["threshold", "tp", "fp", "fn", "tn"]].values.tolist()
    [[0.5, 2.0, 0.0, 1.0, 1.0]]
    """
    opts = RunOptions.make(options, **run)
    allow_incomplete = opts.allow_incomplete
    pv, tv = as_volume(prob, allow_incomplete), as_volume(truth, allow_incomplete)
    mv = as_volume(mask, allow_incomplete) if mask is not None else None
    from .._normalize import numeric_dtype
    numeric_dtype(pv.dtype, "the probability map")
    numeric_dtype(tv.dtype, "the truth")
    ts = sweep_thresholds(thresholds, values, pv.dtype)
    channel_axis = pv.ndim == 4
    spatial = pv.shape[1:] if channel_axis else pv.shape
    if tv.shape not in (spatial, pv.shape):
        raise ShapeMismatchError(f"probability map has shape {pv.shape} but truth has shape "
                                 f"{tv.shape}; they must match (truth may omit the channel axis)")
    if mv is not None and mv.shape != spatial:
        raise ShapeMismatchError(f"mask has shape {mv.shape}; it must be {spatial}")
    truth_per_channel = channel_axis and tv.shape == pv.shape
    if channel is not None:
        if not channel_axis or not 0 <= int(channel) < pv.shape[0]:
            raise InvalidArgumentError(
                f"channel {channel!r} does not exist in a map of shape {pv.shape}")
        channels: tuple[int, ...] = (int(channel),)
    else:
        channels = tuple(range(pv.shape[0])) if channel_axis else (0,)
    truth_value = real_number(truth_value, "truth_value") if truth_value is not None else None
    ignore_value = real_number(ignore_value, "ignore_value") if ignore_value is not None else None
    edges = exact_thresholds(pv.dtype, ts)
    from ._histogram_cpu import lookup_table
    table = lookup_table(edges) if pv.dtype not in LEVEL_DTYPES else None
    nbuckets = (np.iinfo(pv.dtype).max + 1) if pv.dtype in LEVEL_DTYPES else ts.size + 1
    fn = partial(_sweep_block, channels=channels, channel_axis=channel_axis,
                 truth_per_channel=truth_per_channel, truth_value=truth_value,
                 ignore_value=ignore_value, edges=edges, table=table, nbuckets=nbuckets)
    drop = "drop" if channel_axis else "same"
    reads = [Read(pv), Read(tv, channels="same" if truth_per_channel else drop)]
    if mv is not None:
        reads.append(Read(mv, channels=drop))
    job = {"operator": "sweep", "thresholds": ts.tolist(), "truth_value": truth_value,
           "ignore_value": ignore_value, "channels": list(channels),
           "inputs": [v.fingerprint() for v in (pv, tv, mv) if v is not None]}
    with table_output(out, job=job, inputs=[pv, tv, mv], opts=opts, names=FILES) as target, \
            opts.runner("sweep") as runner, reading([pv, tv, mv]):
        checkpoint = Checkpoint(target.progress if target is not None else None)
        runner.check_volumes([pv, tv] + ([mv] if mv is not None else []))
        stage = Stage("sweep", fn, BlockGrid(pv.shape, pv.block_shape), reads, combine=np.add,
                      **backend_stage_setup("histogram", pv.dtype, opts, runner))
        checkpoint.start(job, inputs=[v for v in (pv, tv, mv) if v is not None])
        prewarm("pandas")  # the table's and the plot's imports run beside the blocks
        if target is not None:
            prewarm()
        hist = run_stages([stage], runner, checkpoint, retries=opts.retries)
        df = metrics_table(hist, ts, pv, channels)
        df.attrs["warnings"] = sweep_warnings(df)
        for w in df.attrs["warnings"]:
            warnings.warn(w, EmarrayWarning, stacklevel=2)
        if target is not None:
            write_outputs(df, target.staging, pv, tv)
            target.commit(FILES)
    return df


def sweep_warnings(df) -> list[str]:
    """What makes a sweep's answer doubtful: no positive truth, or a best F1 at the edge."""
    out = []
    for ch, g in df.groupby("channel"):
        tag = f"channel {ch}: " if df["channel"].nunique() > 1 else ""
        if g["true_voxels"].iloc[0] == 0:
            out.append(f"{tag}the truth has no positive voxel: F1, IoU and recall are 0 at "
                       "every threshold")
            continue
        ts = g["threshold"].to_numpy()
        best = float(g.loc[g["f1"].idxmax(), "threshold"])
        if ts.size > 2 and best in (ts[0], ts[-1]):
            out.append(f"{tag}the best F1 is at t={best:g}, the edge of the thresholds swept "
                       f"({ts[0]:g} to {ts[-1]:g}); the optimum may lie beyond: sweep "
                       f"{given('values', 'LO,...,HI')} over a wider range")
    return out


def predicted_counts(hist: np.ndarray, pv: Volume, ts: np.ndarray) -> np.ndarray:
    """Per threshold: (predicted-positive counts per class), from one channel's histogram."""
    counts = hist[:-1]  # drop the NaN row
    # above[b] = voxels in buckets >= b, per class
    above = np.cumsum(counts[::-1], axis=0)[::-1]
    if pv.dtype in LEVEL_DTYPES:
        first = np.array([math.floor(t) + 1 for t in ts])  # x > t  iff  x >= floor(t) + 1
        first = np.clip(first, 0, counts.shape[0])
    else:
        first = np.arange(1, ts.size + 1)  # bucket b > k  iff  x > t_k
    padded = np.vstack([above, np.zeros((1, 3), np.int64)])
    return padded[first]


def metrics_table(hist: np.ndarray, ts: np.ndarray, pv: Volume, channels: tuple[int, ...]):
    """The DataFrame of counts and metrics, one row per (channel, threshold)."""
    import pandas as pd
    # volumes rounded once from the voxel size as written (no 0.6696150000000001)
    voxel = math.prod((written(v) for v in pv.voxel_size), start=Fraction(1))
    um3 = written(micrometres(pv.unit)) ** 3
    frames = []
    nan_voxels = {}
    for j, ch in enumerate(channels):
        h = hist[j]
        pred = predicted_counts(h, pv, ts)
        total = h[:-1].sum(axis=0)
        tp, fp = pred[:, POS], pred[:, NEG]
        fn, tn = total[POS] - tp, total[NEG] - fp
        nan_voxels[ch] = int(h[-1, NEG] + h[-1, POS])

        def ratio(a, b):
            return np.divide(a, b, out=np.zeros(len(a)), where=b > 0)

        pred_vol, true_vol = tp + fp, tp + fn
        frames.append(pd.DataFrame({
            "channel": ch, "threshold": ts, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn),
            "accuracy": ratio(tp + tn, tp + fp + fn + tn),
            "predicted_voxels": pred_vol, "true_voxels": true_vol,
            "predicted_um3": rounded_once([(pred_vol, voxel)], factor=um3),
            "true_um3": rounded_once([(true_vol, voxel)], factor=um3),
            "volume_diff_percent": (100.0 * (pred_vol - true_vol) / true_vol if true_vol[0] > 0
                                    else np.full(len(ts), np.nan)),
        }))
    df = pd.concat(frames, ignore_index=True)
    df.attrs["nan_voxels"] = nan_voxels
    df.attrs["excluded_voxels"] = {ch: int(hist[j][:-1, 2].sum()) for j, ch in enumerate(channels)}
    return df


def best_rows(df) -> dict[int, Any]:
    """Per channel, the threshold with the highest F1 and the one with the highest IoU."""
    best: dict[int, Any] = {}
    for ch, g in df.groupby("channel"):
        best[int(ch)] = {m: {"threshold": float(g.loc[g[m].idxmax(), "threshold"]),
                             m: float(g[m].max())} for m in ("f1", "iou")}
    return best


def write_outputs(df, out: Path, pv: Volume, tv: Volume) -> None:
    """Write ``sweep.csv``, ``sweep.json`` and ``sweep.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_frame(df, out / "sweep.csv")
    records = json.loads(df.to_json(orient="records"))
    meta = {"probability_map": pv.url, "truth": tv.url, "voxel_size": list(pv.voxel_size),
            "unit": pv.unit, "best": best_rows(df), "warnings": df.attrs.get("warnings", []),
            "nan_voxels": {str(k): v for k, v in df.attrs["nan_voxels"].items()},
            "excluded_voxels": {str(k): v for k, v in df.attrs["excluded_voxels"].items()},
            "rows": records}
    (out / "sweep.json").write_text(json.dumps(meta, indent=2))
    plot(df, out / "sweep.png", title=f"sweep of {Path(pv.url).name} against {Path(tv.url).name}")


def plot(df, path: Path, title: str = "") -> None:
    """Metric curves against the threshold (best F1 marked) and the precision-recall curve."""
    from ..figures import save, subplots
    fig, (a, b) = subplots(2, figsize=(12, 5.2))
    a2 = a.twinx()
    multi = df["channel"].nunique() > 1
    lo, hi = float(df["threshold"].min()), float(df["threshold"].max())
    for ch, g in df.groupby("channel"):
        tag = f" c{ch}" if multi else ""
        for m in ("precision", "recall", "f1", "iou", "accuracy"):
            a.plot(g["threshold"], g[m], label=m + tag)
        a2.plot(g["threshold"], g["volume_diff_percent"], color="grey", ls=":", lw=1.2,
                label="volume difference %" + tag)
        i = g["f1"].idxmax()
        t, f = float(g.loc[i, "threshold"]), float(g.loc[i, "f1"])
        a.axvline(t, color="k", ls="--", lw=0.8)
        right = hi > lo and (t - lo) / (hi - lo) > 0.6  # near the right edge: label to the left
        a.annotate(f"best F1 {f:.3f}\nat t={t:.3g}", (t, f), textcoords="offset points",
                   xytext=(-8 if right else 8, -30), ha="right" if right else "left", fontsize=8,
                   bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})
        b.plot(g["recall"], g["precision"], ".-", ms=3, label="PR" + tag)
        b.plot([g.loc[i, "recall"]], [g.loc[i, "precision"]], "k*", ms=10,
               label="best F1" + tag)
    a.set_xlabel("threshold")
    a.set_ylabel("score")
    a.set_ylim(0, 1.02)
    a2.set_ylabel("volume difference % (dotted)")
    handles = a.get_legend_handles_labels()[0] + a2.get_legend_handles_labels()[0]
    a.legend(handles, [h.get_label() for h in handles], fontsize=7, ncol=3, loc="upper center",
             bbox_to_anchor=(0.5, -0.13), frameon=False)
    b.set_xlabel("recall")
    b.set_ylabel("precision")
    b.set_xlim(0, 1.02)
    b.set_ylim(0, 1.02)
    b.set_title("precision-recall")
    b.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save(fig, path)
