"""The demo job: synthetic EM volume -> threshold -> score -> one-pass threshold sweep, its
report page and the commands to look further."""
from __future__ import annotations

from .engine.contract import BlockContext

import os
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import datasets
from .engine import RunOptions, reduce_blocks
from .errors import InvalidArgumentError
from .info import info
from .engine.checkpoint import atomic_write
from .ops.threshold import threshold
from .report import REPORT_FILE, StepRecord, render

_STAMP = ".emarray-demo"


def _confusion(ctx: BlockContext, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    p = pred.astype(bool).ravel()
    t = truth.ravel() > 0
    tp = np.count_nonzero(p & t)
    fp = np.count_nonzero(p) - tp
    fn = np.count_nonzero(t) - tp
    return np.array([tp, fp, fn, p.size - tp - fp - fn], np.int64)


def next_steps(page: Path, view: str) -> list[str]:
    """What to look at after the demo, with the paths it wrote (and the recipe's, from a
    checkout)."""
    lines = ["next:", f"  open {page} in a browser: slices of each volume, the sweep, the scores",
             f"  {view:<42} # the volumes in neuroglancer (pip install -e '.[view]')"]
    recipe = Path("pipelines") / "demo.yaml"
    if recipe.is_file():  # the repository's recipe, where the demo runs from a checkout
        from .pipeline import load_recipe
        work = os.path.relpath(load_recipe(recipe).workdir)
        lines.append(f"  {'emarray run ' + os.fspath(recipe):<42} # the demo as a recipe, with "
                     f"labels, objects, matching: {os.path.join(work, REPORT_FILE)}")
    return lines


def run_demo(out_dir: str | os.PathLike = "emarray-demo", size: Any = (128, 512, 512), *,
             value: float = 0.5, options: RunOptions | None = None, echo=print,
             **run: Any) -> dict[str, Any]:
    """Make a synthetic volume, threshold its probability map, score it against the truth."""
    if run.get("estimate") or getattr(options, "estimate", False):
        raise InvalidArgumentError("the demo's small volume takes seconds; --estimate is for "
                                   "operators (emarray OP ... --estimate) and recipes "
                                   "(emarray run RECIPE --estimate)")
    from .extras import require_all
    require_all(("pandas", "matplotlib"), "emarray demo (its sweep)")
    out = Path(out_dir)
    again = out.exists()
    if again and not (out / _STAMP).exists():
        raise InvalidArgumentError(
            f"{os.fspath(out)!r} exists and was not made by the demo; choose another --out")
    # a rerun replaces only the demo's own outputs, each safely; anything else stays
    out.mkdir(parents=True, exist_ok=True)
    (out / _STAMP).write_text("made by `emarray demo`: it replaces only its own outputs here\n")
    opts = RunOptions.make(options, **{"progress": True, **run}, overwrite=again)
    t0 = time.monotonic()
    vols = datasets.synthetic(out, size, chunks=(64, 128, 128), options=opts)
    made = f"{vols['prob'].shape} voxels in {out}/{{raw,truth,prob}}.zarr"
    echo(f"synthetic volume: {made}")
    t1 = time.monotonic()
    mask = threshold(vols["prob"], out / "mask.zarr", value, options=opts)
    tp, fp, fn, tn = (int(x) for x in reduce_blocks(
        _confusion, [mask, vols["truth"]], np.add, options=opts, desc="score"))
    t2 = time.monotonic()
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
    scores = f"F1 {f1:.4f}, IoU {iou:.4f} against the truth"
    steps = [StepRecord("synthetic", "synthetic", "done", os.fspath(out), made, t1 - t0),
             StepRecord("mask", "threshold", "done", mask.url, f"> {value:g}: {scores}", t2 - t1,
                        {"src": vols["prob"].url}),
             StepRecord("sweep", "sweep", "done", os.fspath(out / "sweep"),
                        f"best F1 {best['f1']['f1']:.4f} at t={best['f1']['threshold']:g}",
                        time.monotonic() - t2, {"prob": vols["prob"].url,
                                                "truth": vols["truth"].url})]
    page = out / REPORT_FILE
    view = f"emarray view {shlex.quote(os.fspath(out))}"
    atomic_write(page, render("emarray demo", steps, view=view).encode())
    for line in next_steps(page, view):
        echo(line)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "f1": f1, "iou": iou, "mask": mask.url,
            "sweep": df}
