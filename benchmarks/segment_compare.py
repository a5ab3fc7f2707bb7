"""Neurons from the FlyEM crop's boundary map, three ways, scored against its ground truth:

* threshold + connected components (boundary < t, 6-connected), at every t of 0.05..0.95;
* a whole-array, in-RAM reference built with scikit-image: watershed seeded at the local maxima
  of the distance transform of boundary < 0.5, then hierarchical merging by mean boundary on the
  region adjacency graph (``skimage.graph.rag_boundary`` + ``merge_hierarchical``);
* emarray, out of core: ``pipelines/neurons.yaml`` (watershed -> agglomerate --min-size 50) with
  two chunkings, every threshold cut in one agglomeration.

Scores are scikit-image's: variation of information (split + merge, every voxel counted) and the
adapted Rand error (truth 0, the boundary, ignored). The two chunkings are also scored against
each other (VOI between them).

    python benchmarks/segment_compare.py [--work /tmp/emarray-segment-compare]
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gala-flyem"
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.94)


def score(truth: np.ndarray, seg: np.ndarray) -> tuple[float, float, float]:
    from skimage.metrics import adapted_rand_error, variation_of_information
    split, merge = variation_of_information(truth, seg)
    return split, merge, adapted_rand_error(truth, seg)[0]


def baseline(b: np.ndarray, truth: np.ndarray) -> list[tuple]:
    import cc3d
    rows = []
    for t in np.round(np.arange(0.05, 0.96, 0.05), 2):
        seg = cc3d.connected_components((b < t).astype(np.uint8), connectivity=6)
        rows.append((float(t), int(seg.max()), *score(truth, seg)))
    return rows


def in_ram(b: np.ndarray, truth: np.ndarray) -> list[tuple]:
    import cc3d
    import edt
    from scipy import ndimage
    from skimage import graph
    from skimage.segmentation import watershed

    def weight(g, src, dst, n):
        d = {"weight": 0.0, "count": 0}
        cs, cd = g[src].get(n, d)["count"], g[dst].get(n, d)["count"]
        ws, wd = g[src].get(n, d)["weight"], g[dst].get(n, d)["weight"]
        return {"count": cs + cd, "weight": (cs * ws + cd * wd) / (cs + cd)}

    inside = b < 0.5
    dist = edt.edt(inside)
    peak = (dist == ndimage.maximum_filter(dist, size=3, mode="nearest")) & inside & (dist > 0)
    fragments = watershed(b, cc3d.connected_components(peak.astype(np.uint8), connectivity=26))
    rows = []
    for t in THRESHOLDS:
        rag = graph.rag_boundary(fragments, b.astype(np.float64))
        seg = graph.merge_hierarchical(fragments.copy(), rag, thresh=t, rag_copy=False,
                                       in_place_merge=True, merge_func=lambda g, s, d: None,
                                       weight_func=weight)
        rows.append((t, len(np.unique(seg)), *score(truth, seg)))
    return rows


def blockwise(work: Path, chunks: str) -> tuple[list[tuple], dict[float, np.ndarray], float]:
    import emarray
    wd = work / chunks.replace(",", "x")
    t0 = time.perf_counter()
    sets = (f"boundary.chunks={chunks}", f"truth.chunks={chunks}", "threshold=0.6",
            "segments.thresholds=" + ",".join(str(t) for t in THRESHOLDS if t != 0.6))
    emarray.run_pipeline(ROOT / "pipelines" / "neurons.yaml", sets, workdir=wd)
    seconds = time.perf_counter() - t0
    truth = emarray.open_volume(wd / "truth.zarr").read()
    segs, rows = {}, []
    for t in THRESHOLDS:
        path = wd / "segments.zarr" / ("" if t == 0.6 else f"t{t:g}")
        seg = emarray.open_volume(path).read()
        segs[t] = seg
        rows.append((t, len(np.unique(seg)), *score(truth, seg)))
    return rows, segs, seconds


def table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}\n| threshold | segments | VOI split | VOI merge | VOI | adapted Rand |")
    print("|---|---|---|---|---|---|")
    for t, n, s, m, a in rows:
        print(f"| {t:g} | {n} | {s:.3f} | {m:.3f} | {s + m:.3f} | {a:.3f} |")
    best = min(rows, key=lambda r: r[2] + r[3])
    print(f"best VOI {best[2] + best[3]:.3f} at {best[0]:g} (adapted Rand {best[4]:.3f})")


def main() -> None:
    import h5py
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/emarray-segment-compare")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with h5py.File(DATA / "train-p1.lzf.h5") as f:
        b = f["stack"][()]
    with h5py.File(DATA / "train-gt.lzf.h5") as f:
        truth = f["stack"][()]
    table("threshold + connected components (in RAM)", baseline(b, truth))
    t0 = time.perf_counter()
    rows = in_ram(b, truth)
    print(f"\nin-RAM reference: {time.perf_counter() - t0:.1f} s")
    table("watershed + mean-boundary RAG merging, scikit-image, whole array in RAM", rows)
    runs = {}
    for chunks in ("25,50,100", "10,32,32"):
        rows, segs, seconds = blockwise(work, chunks)
        runs[chunks] = segs
        table(f"emarray watershed -> agglomerate (min_size 50), chunks {chunks} ({seconds:.1f} s)",
              rows)
    from skimage.metrics import variation_of_information
    print("\n| threshold | VOI between the two chunkings |\n|---|---|")
    a, b2 = runs.values()
    for t in THRESHOLDS:
        print(f"| {t:g} | {sum(variation_of_information(a[t], b2[t])):.3f} |")


if __name__ == "__main__":
    main()
