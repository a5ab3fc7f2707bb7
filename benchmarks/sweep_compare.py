"""Sweep benchmark: a 100-threshold sweep vs one threshold pass vs the per-threshold loop.

    python benchmarks/sweep_compare.py --gvox 1

Input: the synthetic float32 probability map (zstd, chunks 64,256,256) and a uint8 truth, both
in --data. Rows, each timed in one process, one after the other:
  emarray sweep (100 thresholds, one pass);
  one threshold pass over the same inputs, as a user writes it with dask (tp, fp, fn, tn at t);
  the per-threshold loop: --loop-passes of those passes, timed, and scaled to 100 thresholds.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

CHUNKS = (64, 256, 256)


def make_inputs(root: Path, gvox: float) -> tuple[Path, Path]:
    import emarray
    nz = max(64, int(round(gvox * 1024 / 64)) * 64)
    shape = (nz, 1024, 1024)
    prob, truth = root / "prob.zarr", root / "truth-u8.zarr"
    if not (prob.exists() and emarray.open_volume(prob).shape == shape):
        shutil.rmtree(root, ignore_errors=True)
        emarray.datasets.synthetic(root, shape, chunks=CHUNKS, kinds=("prob",), progress=True)
    if not truth.exists():
        ids = emarray.datasets.synthetic(root / "ids", shape, chunks=CHUNKS, kinds=("truth",),
                                         progress=True)["truth"]
        emarray.threshold(ids, truth, 0, progress=True)  # object ids -> uint8 0/1
        shutil.rmtree(root / "ids")
    return prob, truth


def one_pass(prob: Path, truth: Path, t: float) -> list[int]:
    import dask
    import dask.array as da
    p = da.from_zarr(str(prob / "0")) > t
    g = da.from_zarr(str(truth / "0")) > 0
    tp = (p & g).sum()
    fp = (p & ~g).sum()
    fn = (~p & g).sum()
    n = p.size
    tp, fp, fn = dask.compute(tp, fp, fn)
    return [int(tp), int(fp), int(fn), int(n - tp - fp - fn)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gvox", type=float, default=1.0)
    ap.add_argument("--data", default="bench-data")
    ap.add_argument("--loop-passes", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import dask.array  # noqa: F401 - imports both rows need are made before either is timed
    import zarr  # noqa: F401

    import emarray
    prob, truth = make_inputs(Path(args.data) / f"sweep-{args.gvox:g}gvox", args.gvox)
    rows = {}
    t0 = time.perf_counter()
    df = emarray.sweep(prob, truth, thresholds=100)
    rows["sweep"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    counts = one_pass(prob, truth, 0.5)
    rows["one_pass"] = time.perf_counter() - t0
    # the sweep's counts at 0.5 are the one pass's counts
    r = df[df.threshold == 0.5].iloc[0]
    assert [r.tp, r.fp, r.fn, r.tn] == counts, (counts, r)
    t0 = time.perf_counter()
    for k in range(args.loop_passes):
        one_pass(prob, truth, k / 100)
    loop = time.perf_counter() - t0
    rows["loop_100_scaled"] = loop * 100 / args.loop_passes
    vol = emarray.open_volume(prob)
    print(f"\n{vol.shape} float32 map + uint8 truth; 2-core VM\n")
    print("| what | seconds | ratio |")
    print("|---|---|---|")
    print(f"| emarray sweep, 100 thresholds, one pass | {rows['sweep']:.1f} | "
          f"{rows['sweep'] / rows['one_pass']:.2f}x one pass |")
    print(f"| one threshold pass (dask, tp/fp/fn/tn) | {rows['one_pass']:.1f} | 1.00 |")
    print(f"| per-threshold loop, 100 thresholds ({args.loop_passes} passes timed: "
          f"{loop:.1f} s, scaled x{100 // args.loop_passes}) | {rows['loop_100_scaled']:.1f} | "
          f"{rows['loop_100_scaled'] / rows['sweep']:.1f}x the sweep |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.exit(main())
