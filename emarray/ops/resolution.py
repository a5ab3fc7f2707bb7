"""How far can labels be downsampled and still be recovered? A study, out of core.

The labels are copied into the study's folder, pooled by mode into the levels of a pyramid
(:func:`emarray.pyramid`), each level upsampled back onto the original grid
(:func:`emarray.upsample`, nearest), and every level matched against the original in one
pass (:mod:`emarray.ops.match`'s overlaps, one table per level): per factor, the fraction of
objects recovered (one-to-one matches at IoU >= ``iou``), the variation of information, and
the sizes of the objects lost. The question comes from the lab notebook behind this project:
"how much can we downscale the image and still get correct cell segmentations after
upscaling?"
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import BlockContext, BlockGrid, Read, RunOptions, Stage, Write
from ..errors import InvalidArgumentError
from ..figures import prewarm
from ..spec import ENGINE, INCOMPLETE, REPLACE, Operator, Param, Port
from ..volume import Volume, open_volume
from ._runs import pair_table, warm_pairs
from .common import as_volume, run_blockwise
from .match import evaluate as scores, merge_overlaps
from .tables import fold_table, table_output, write_frame, write_json

FILES = ("resolution.csv", "resolution.json", "resolution.png")
LEVELS = "levels.zarr"


def _copy(ctx: BlockContext, block: np.ndarray) -> np.ndarray:
    return block


def _overlaps(ctx: BlockContext, truth: np.ndarray, *levels: np.ndarray) -> tuple:
    return tuple(pair_table(truth, lv) for lv in levels)


def _merge_all(a: tuple, b: tuple) -> tuple:
    return tuple(merge_overlaps(x, y) for x, y in zip(a, b))


def level_row(table: dict[str, np.ndarray], iou: float) -> dict[str, Any]:
    """One level's figures from its (truth, level) overlaps: objects, recovered (matched at
    ``iou``), VOI, and the sizes of the objects lost."""
    r = scores(table, iou)
    objs = r["objects"]
    truth = objs[objs["kind"] == "truth"]
    lost = truth.loc[truth["matched_iou"] < iou, "truth_voxels"]
    n = int(len(truth))
    total = int(truth["truth_voxels"].sum())
    return {"objects": n, "recovered": n - int(len(lost)),
            "fraction_recovered": (n - len(lost)) / n if n else 1.0,
            "volume_recovered": (total - int(lost.sum())) / total if total else 1.0,
            "voi_split": r["voi_split"], "voi_merge": r["voi_merge"], "voi": r["voi"],
            "adapted_rand_error": r["adapted_rand_error"], "lost": int(len(lost)),
            "smallest_lost": int(lost.min()) if len(lost) else 0,
            "largest_lost": int(lost.max()) if len(lost) else 0,
            "smallest_kept": int(truth.loc[truth["matched_iou"] >= iou, "truth_voxels"].min())
            if n > len(lost) else 0}


def _says(df: Any, args: dict[str, Any]) -> list[str]:
    lines = []
    for r in df.itertuples():
        if r.level == 0:
            continue
        lost = (f"{r.lost} lost, {r.smallest_lost:,} to {r.largest_lost:,} voxels"
                if r.lost else "none lost")
        lines.append(f"factor {r.factor}: {r.fraction_recovered:.1%} of {r.objects} objects "
                     f"recovered at IoU {args.get('iou', 0.5):g} ({lost}); VOI {r.voi:.4f}")
    lines.append(f"wrote {os.path.join(args['out'], 'resolution.csv')}, resolution.json, "
                 "resolution.png and the levels")
    return lines


SPEC = Operator(
    "resolution", "how far labels can be downsampled: pooled (mode) to each pyramid level, "
                  "upsampled back and matched against the original; per factor the objects "
                  "recovered, VOI and the smallest object lost, a table and a plot",
    needs=("pandas", "matplotlib"),
    inputs=(Port("labels", "volume", "instance labels, z,y,x (ground truth, say)",
                 labels=True),),
    output=Port("out", "folder", "folder for resolution.csv, resolution.json, resolution.png, "
                                 "the pyramid (levels.zarr) and each level upsampled "
                                 "(up1.zarr ...)", option=True),
    params=(Param("levels", "int", "pyramid levels studied", minimum=1),
            Param("factors", "text", "each level's factor over the one above: auto (y,x only "
                                     "while z is coarser) or z,y,x of 1 or 2"),
            Param("iou", "float", "an object is recovered when matched one-to-one at this IoU",
                  minimum=0.01, maximum=1.0)),
    run=ENGINE + REPLACE + INCOMPLETE, says=_says,
    examples=("emarray resolution truth.zarr --out study/ --levels 4",))


@SPEC.function
def resolution(labels: Volume | str | os.PathLike, *, out: str | os.PathLike, levels: int = 4,
               factors: str = "auto", iou: float = 0.5, options: RunOptions | None = None,
               **run: Any) -> Any:
    """Pool ``labels`` by mode to each of ``levels`` pyramid levels, upsample each back onto
    the original grid, and match it against the original: how much is lost per factor.

    Every step is an engine job inside ``out`` (the pyramid ``levels.zarr``, the upsampled
    ``upK.zarr``), and all levels are matched in one pass over the original.

    Returns
    -------
    pandas.DataFrame
        One row per level (0: the original itself): ``factor`` (z,y,x, over the original),
        ``voxel_size``, ``objects``, ``recovered``, ``fraction_recovered``,
        ``volume_recovered`` (the fraction of the objects' voxels in those recovered),
        ``voi_split``,
        ``voi_merge``, ``voi``, ``adapted_rand_error``, ``lost``, ``smallest_lost``,
        ``largest_lost`` (voxels of the original; 0 when none), ``smallest_kept``.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> a = np.zeros((8, 16, 16), np.uint32); a[:, :8] = 1; a[:, 8:] = 2; a[2:4, 2:4, 2:4] = 3
    >>> v = emarray.create_volume(os.path.join(d, "l.zarr"), a.shape, "uint32", 8,
    ...                           attrs={"labels": True})
    >>> v.write((slice(0, 8), slice(0, 16), slice(0, 16)), a)
    >>> df = emarray.resolution(v, out=os.path.join(d, "study"), levels=2, factors="2,2,2")
    >>> df[["factor", "objects", "recovered", "smallest_lost"]].values.tolist()
    [['1,1,1', 3, 3, 0], ['2,2,2', 3, 3, 0], ['4,4,4', 3, 2, 8]]
    """
    opts = RunOptions.make(options, **run)
    lv = as_volume(labels, opts.allow_incomplete)
    if lv.ndim != 3 or lv.dtype.kind not in "ui":
        raise InvalidArgumentError(f"resolution studies z,y,x integer labels; {lv.url} is "
                                   f"{lv.shape} {lv.dtype} (label a mask first)")
    from .pyramid import plan_levels
    plan = plan_levels(lv.shape, lv.voxel_size, levels=levels, until_size=None,
                       factors=factors)
    names = FILES + (LEVELS,) + tuple(f"up{k}.zarr" for k in range(1, len(plan) + 1))
    job = {"operator": "resolution", "input": lv.fingerprint(), "levels": int(levels),
           "factors": str(factors), "iou": float(iou)}
    with table_output(out, job=job, inputs=[lv], opts=opts, names=names) as target:
        if target is None:
            raise InvalidArgumentError("resolution needs out: the folder its levels and "
                                       "tables are written to")
        ups = _levels(lv, target.staging, plan, factors, opts)
        warm_pairs(lv.dtype, lv.dtype)
        prewarm("pandas")
        prewarm()
        tables = fold_table("resolution", _overlaps, [Read(lv)] + [Read(u) for u in ups],
                            BlockGrid(lv.shape, lv.block_shape), _merge_all, opts=opts,
                            target=target, job=job)
        df = study_table(lv, tables, plan, iou)
        write_outputs(df, target.staging, lv.url, iou)
        target.commit()
    return df


def _levels(lv: Volume, staging: Path, plan: list[tuple[int, ...]], factors: str,
            opts: RunOptions) -> list[Volume]:
    """The labels copied into the study, their pyramid, and each level upsampled back."""
    from .pyramid import pyramid
    from .upsample import upsample

    def stages(out: Volume, setup: dict[str, Any]) -> list[Stage]:
        return [Stage("copy", _copy, BlockGrid(lv.shape, lv.block_shape), [Read(lv)],
                      [Write(out)])]

    copy = run_blockwise("resolution", lv, staging / LEVELS, lv.dtype, {"copy": True}, opts,
                         stages, attrs={"labels": True})
    if len(open_volume(copy.url).levels) < len(plan) + 1:  # (a resumed study has them)
        pyramid(copy, levels=len(plan), factors=factors, mode="mode", labels=True,
                options=opts)
    return [upsample(open_volume(copy.url, level=k), staging / f"up{k}.zarr", like=lv,
                     mode="nearest", options=opts) for k in range(1, len(plan) + 1)]


def study_table(lv: Volume, tables: Any, plan: list[tuple[int, ...]], iou: float) -> Any:
    """One row per level (0: the original against itself)."""
    import pandas as pd
    rows = []
    factor: tuple[int, ...] = (1, 1, 1)
    base = _identity(tables[0])  # (there is at least one level)
    for k in range(len(plan) + 1):
        if k:
            factor = tuple(a * b for a, b in zip(factor, plan[k - 1]))
        table = base if k == 0 else tables[k - 1]
        rows.append({"level": k, "factor": ",".join(map(str, factor)),
                     "voxel_size": ",".join(f"{v * f:g}" for v, f in zip(lv.voxel_size, factor)),
                     **level_row(table, iou)})
    return pd.DataFrame(rows)


def _identity(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The original against itself, from any level's table (its truth sizes)."""
    t = table["t"]
    ids, inv = np.unique(t, return_inverse=True)
    n = np.bincount(inv, weights=table["n"]).astype(np.int64)
    return {"t": ids, "p": ids.copy(), "n": n}


def write_outputs(df: Any, out: Path, labels: str, iou: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_frame(df, out / "resolution.csv")
    write_json({"labels": labels, "iou": iou, "levels": df.to_dict(orient="records")},
               out / "resolution.json")
    plot(df, out / "resolution.png", f"{Path(labels).name}: downsampled, upsampled back", iou)


def plot(df: Any, path: Path, title: str, iou: float) -> None:
    """Objects recovered and VOI against the factor; the sizes of the objects lost."""
    from ..figures import subplots
    fig, (a, b) = subplots(2, figsize=(11, 4.5))
    x = np.arange(len(df))
    a.plot(x, df["fraction_recovered"], "o-", color="#4477aa",
           label=f"objects recovered (IoU ≥ {iou:g})")
    a.plot(x, df["volume_recovered"], "^:", color="#228833", label="their share of the volume")
    a.set_ylim(0, 1.02)
    a.set_ylabel("fraction recovered")
    a.set_xticks(x, df["factor"], fontsize=8)
    a.set_xlabel("factor (z,y,x)")
    a2 = a.twinx()
    a2.plot(x, df["voi"], "s--", color="#aa3377", label="VOI")
    a2.set_ylabel("VOI (bits)")
    handles = a.get_legend_handles_labels()
    more = a2.get_legend_handles_labels()
    a.legend(handles[0] + more[0], handles[1] + more[1], loc="center left", fontsize=8)
    for k, r in enumerate(df.itertuples()):
        if r.lost:
            b.plot([k, k], [max(r.smallest_lost, 1), max(r.largest_lost, 1)], "-",
                   color="#aa3377", lw=3, alpha=0.6)
        if r.smallest_kept:
            b.plot(k, r.smallest_kept, "o", color="#4477aa")
    b.set_yscale("log")
    b.set_xticks(x, df["factor"], fontsize=8)
    b.set_xlabel("factor (z,y,x)")
    b.set_ylabel("object size (voxels)")
    b.set_title("bars: sizes of the objects lost; dots: the smallest object kept", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


