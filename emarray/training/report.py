"""What a training run shows: the progress bar, TensorBoard, ``metrics.csv``/``.json`` and the
plot of loss and validation F1/IoU."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any


def say(line: str, progress: bool) -> None:
    """A line for the user: printed beside the progress bar, else logged (silent under -q)."""
    if progress:
        print(line, file=sys.stderr)
    else:
        logging.getLogger("emarray").warning(line)


def why_stopped(state: dict[str, Any]) -> str:
    """The early-stopping line, or the step the run reached."""
    return state["stopped"] or f"the run reached step {state['step']}"


def progress_bar(progress: bool, first: int, steps: int) -> Any:
    """The engine's progress display (a bar on a terminal, a line per 10 % in a log)."""
    if not progress:
        return None
    from ..engine.progress import Progress
    return Progress(steps, "train", True, unit="step", initial=first).__enter__()


def tensorboard(run: Path) -> Any:
    """A TensorBoard writer in ``run/tensorboard`` when the tensorboard package is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.fspath(run / "tensorboard"))


def write_logs(run: Path, state: dict[str, Any], cfg: dict[str, Any]) -> None:
    """``metrics.csv`` (a row per logged step, validation columns where evaluated),
    ``metrics.json`` and ``training.png``."""
    import pandas as pd
    hist = pd.DataFrame(state["history"], columns=["step", "loss", "lr", "elapsed_s"])
    ev = pd.DataFrame(state["evaluations"],
                      columns=["step", "f1", "threshold_f1", "iou", "threshold_iou"])
    table = hist.merge(ev.rename(columns={c: f"val_{c}" for c in ev.columns if c != "step"}),
                       on="step", how="left")
    tmp = run / ".metrics.csv.tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, run / "metrics.csv")
    summary = {"steps": state["step"], "of": cfg["steps"], "stopped": why_stopped(state),
               "best": state["best"], "elapsed_s": round(state["elapsed"], 3),
               "history": state["history"], "evaluations": state["evaluations"]}
    (run / "metrics.json").write_text(json.dumps(summary, indent=2))
    plot(state, run / "training.png", cfg["validation"]["metric"])


def plot(state: dict[str, Any], path: Path, metric: str) -> None:
    """Loss per logged step, and validation F1/IoU per evaluation (best marked)."""
    from ..figures import subplots
    fig, (a, b) = subplots(2, figsize=(11, 4.2))
    h = state["history"]
    # a marker per point while there are few: one logged step is a point, not an empty panel
    a.plot([r["step"] for r in h], [r["loss"] for r in h], lw=1,
           marker="o" if len(h) <= 30 else None, ms=3)
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    ev = state["evaluations"]
    for m in ("f1", "iou"):
        b.plot([e["step"] for e in ev], [e[m] for e in ev], ".-", label=f"validation {m}")
    if state["best"] is not None:
        best = state["best"]
        b.axvline(best["step"], color="k", ls="--", lw=0.8)
        t = best["threshold_" + metric]
        b.annotate(f"best {metric} {best[metric]:.3f}\nstep {best['step']}, t={t:.2f}",
                   (best["step"], best[metric]), textcoords="offset points", xytext=(-6, -30),
                   ha="right", fontsize=8, bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})
    b.set_xlabel("step")
    b.set_ylabel("best over thresholds")
    b.set_ylim(0, 1.02)
    b.legend(fontsize=8, loc="lower right")
    fig.suptitle(why_stopped(state)[:120], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
