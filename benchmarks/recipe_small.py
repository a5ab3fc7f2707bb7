"""A 10-step recipe on a small volume: does each step cost its compute, or start-up?

    python benchmarks/recipe_small.py                  # 32x128x128 (0.5 Mvox), 3 runs
    python benchmarks/recipe_small.py --shape 64,256,256

Rows, in one run on this machine:
  recipe     ``emarray run`` of the 10 steps below in a fresh process (wall, from the shell);
  steps      the steps' own times as the recipe reports them (sum, and the slowest);
  in RAM     the same computations on whole NumPy arrays after every import (SciPy, cc3d,
             tinybrain, NumPy): what the steps compute, without files, plots or start-up;
  start-up   ``emarray --version`` (Python and the CLI's imports).
The steps: synthetic volume, smooth, threshold, distance, label, objects (table + plot), label
of the truth, match (tables + plot), sweep of 100 thresholds (table + plot), pyramid; then the
run's HTML report. Target (issue 26): the whole recipe within 6 s on a 0.5 Mvox volume and no
step over 1.5 s: a step on a small volume costs its compute, its outputs and each library's
import once per process, not seconds of start-up per step.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """
about: benchmark - ten small steps
workdir: {work}
vars:
  shape: {shape}
  chunks: {chunks}
steps:
  synthetic: {{op: synthetic, shape: "${{shape}}", chunks: "${{chunks}}", seed: 0}}
  smoothed: {{op: smooth, src: synthetic.raw, sigma: 1}}
  mask: {{op: threshold, src: synthetic.prob, value: 0.5}}
  dist: {{op: distance, src: mask}}
  cells: {{op: label, src: mask, connectivity: 26, min_size: 200}}
  objects: {{op: objects, labels: cells, raw: synthetic.raw}}
  truth_cells: {{op: label, src: synthetic.truth, connectivity: 26}}
  match: {{op: match, pred: cells, truth: truth_cells}}
  sweep: {{op: sweep, prob: synthetic.prob, truth: synthetic.truth, thresholds: 100}}
  pyramid: {{op: pyramid, src: cells, levels: 2}}
"""


def in_ram(work: Path) -> float:
    """The steps' computations on whole arrays, timed after their imports."""
    import cc3d
    import numpy as np
    import scipy.ndimage as ndi
    import tinybrain

    import emarray
    raw = emarray.open_volume(work / "synthetic" / "raw.zarr").read()
    prob = emarray.open_volume(work / "synthetic" / "prob.zarr").read()
    truth = emarray.open_volume(work / "synthetic" / "truth.zarr").read()
    t0 = time.perf_counter()
    ndi.gaussian_filter(raw.astype(np.float32), 1)
    mask = (prob > 0.5).astype(np.uint8)
    ndi.distance_transform_edt(mask)
    cells = cc3d.dust(cc3d.connected_components(mask, connectivity=26), 200)
    ndi.sum_labels(raw, cells, np.unique(cells))
    tc = cc3d.connected_components(truth > 0, connectivity=26)
    np.unique(np.stack([tc.ravel(), cells.ravel()]), axis=1, return_counts=True)
    np.histogram2d(prob.ravel(), truth.ravel() > 0, bins=(np.linspace(0, 1, 101), 2))
    tinybrain.downsample_segmentation(cells.T, (2, 2, 2), num_mips=2)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", default="32,128,128")
    ap.add_argument("--chunks", default="32,64,64")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    exe = [sys.executable, "-m", "emarray"]
    rows = []
    for _ in range(a.runs):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) / "work"
            recipe = Path(tmp) / "ten.yaml"
            recipe.write_text(RECIPE.format(work=work, shape=a.shape, chunks=a.chunks))
            t0 = time.perf_counter()
            r = subprocess.run([*exe, "run", str(recipe)], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode:
                raise SystemExit(r.stderr)
            steps = {m[0]: float(m[1]) for m in
                     re.findall(r"\] (\S+) \(\w+\): done in ([0-9.]+) s", r.stdout + r.stderr)}
            assert len(steps) == 10, r.stderr
            ram = in_ram(work)
        t0 = time.perf_counter()
        subprocess.run([*exe, "--version"], capture_output=True, check=True)
        start = time.perf_counter() - t0
        rows.append({"recipe": wall, "steps": sum(steps.values()), "slowest": max(
            steps.items(), key=lambda kv: kv[1]), "in_ram": ram, "startup": start,
            "each": steps})
    print(f"\n10-step recipe on {a.shape} (chunks {a.chunks}); {platform.node()}, "
          f"{os.cpu_count()} cores\n")
    print("| run | recipe s | steps s | slowest step | in RAM s | start-up s |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        print(f"| {i + 1} | {r['recipe']:.2f} | {r['steps']:.2f} | {r['slowest'][0]} "
              f"{r['slowest'][1]:.1f} | {r['in_ram']:.3f} | {r['startup']:.2f} |")
    print("\nsteps of the last run: " + ", ".join(f"{k} {v:.1f}" for k, v in rows[-1]["each"].items()))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
