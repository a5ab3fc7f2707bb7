"""The demo job: synthetic EM volume -> threshold -> score -> one-pass threshold sweep."""
from __future__ import annotations

from .engine.contract import BlockContext

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import datasets
from .engine import RunOptions, reduce_blocks
from .errors import InvalidArgumentError
from .info import info
from .ops.threshold import threshold

_STAMP = ".emarray-demo"


def _confusion(ctx: BlockContext, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    p = pred.astype(bool).ravel()
    t = truth.ravel() > 0
    tp = np.count_nonzero(p & t)
    fp = np.count_nonzero(p) - tp
    fn = np.count_nonzero(t) - tp
    return np.array([tp, fp, fn, p.size - tp - fp - fn], np.int64)


def run_demo(out_dir: str | os.PathLike = "emarray-demo", size: Any = (128, 512, 512), *,
             value: float = 0.5, options: RunOptions | None = None, echo=print,
             **run: Any) -> dict[str, Any]:
    """Make a synthetic volume, threshold its probability map, score it against the truth."""
    out = Path(out_dir)
    again = out.exists()
    if again and not (out / _STAMP).exists():
        raise InvalidArgumentError(
            f"{os.fspath(out)!r} exists and was not made by the demo; choose another --out")
    # a rerun replaces only the demo's own outputs, each safely; anything else stays
    out.mkdir(parents=True, exist_ok=True)
    (out / _STAMP).write_text("made by `emarray demo`: it replaces only its own outputs here\n")
    opts = RunOptions.make(options, **{"progress": True, **run}, overwrite=again)
    vols = datasets.synthetic(out, size, chunks=(64, 128, 128), options=opts)
    echo(f"synthetic volume: {vols['prob'].shape} voxels in {out}/{{raw,truth,prob}}.zarr")
    mask = threshold(vols["prob"], out / "mask.zarr", value, options=opts)
    tp, fp, fn, tn = (int(x) for x in reduce_blocks(
        _confusion, [mask, vols["truth"]], np.add, options=opts, desc="score"))
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    iou = tp / max(tp + fp + fn, 1)
    i = info(mask)
    echo(f"threshold > {value}: mask at {mask.url}")
    echo(f"  precision {tp / max(tp + fp, 1):.4f}  recall {tp / max(tp + fn, 1):.4f}  "
         f"F1 {f1:.4f}  IoU {iou:.4f}")
    echo(f"  mask stored in {i['stored_bytes']:,} bytes (compression x{i['compression_ratio']:.1f})")
    from .ops.sweep import best_rows, sweep
    df = sweep(vols["prob"], vols["truth"], thresholds=100, out=out / "sweep", options=opts)
    best = best_rows(df)[0]
    echo(f"sweep of 100 thresholds in one pass: best F1 {best['f1']['f1']:.4f} at "
         f"t={best['f1']['threshold']:g}, best IoU {best['iou']['iou']:.4f} at "
         f"t={best['iou']['threshold']:g}")
    echo(f"  plot: {out / 'sweep' / 'sweep.png'}  table: {out / 'sweep' / 'sweep.csv'}")
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "f1": f1, "iou": iou, "mask": mask.url,
            "sweep": df}
