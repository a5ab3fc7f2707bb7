"""Boundary map to segmentation at scale: emarray out of core against whole-array tools in RAM.

The FlyEM crop's boundary map (50x100x200) is tiled, mirrored at every seam so that it stays
continuous, to the size asked for, and segmented three ways, each in its own process (its
peak RSS its own):

* ``emarray``: ``distance`` (its own figure; the watershed does not need it), ``watershed``
  (default seeds) and ``agglomerate`` (threshold 0.94, min_size 50), zarr in and out, the
  threads scheduler on every core;
* ``skimage``: the same seeds (cores of boundary < 0.5, plus the distance maxima of thin
  processes), scikit-image's ``watershed`` and mean-boundary RAG merging
  (``graph.rag_boundary`` + ``merge_hierarchical``), the whole array in RAM, one core;
* ``waterz``: waterz's default recipe on the affinities ``1 - mean boundary`` of each pair of
  neighbours (its own watershed, then mean-affinity agglomeration at 0.94), in RAM, one core.

    python benchmarks/segment_scale.py --gvox 0.008,0.125,1 --tools emarray
    python benchmarks/segment_scale.py --gvox 0.001,0.008 --tools skimage,waterz
    python benchmarks/segment_scale.py quality      # VOI of each tool on the crop itself

Prints one JSON line per run: seconds per stage, ns per voxel, peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gala-flyem"
WORK = Path(os.environ.get("EMARRAY_BENCH", "/tmp/emarray-segment-scale"))
CROP = (50, 100, 200)
THRESHOLD, MIN_SIZE = 0.94, 50


def shape_of(gvox: float) -> tuple[int, int, int]:
    """Whole tiles of the crop, about ``gvox`` 10^9 voxels, the same tile count per axis."""
    k = max(1, round((gvox * 1e9 / np.prod(CROP)) ** (1 / 3)))
    return tuple(n * k for n in CROP)  # type: ignore[return-value]


def crop() -> np.ndarray:
    import h5py
    with h5py.File(DATA / "train-p1.lzf.h5") as f:
        return f["stack"][()]


def tiled(b: np.ndarray, region: tuple[slice, ...]) -> np.ndarray:
    """The mirrored tiling of ``b`` over ``region``."""
    idx = []
    for s, n in zip(region, b.shape):
        i = np.arange(s.start, s.stop) % (2 * n)
        idx.append(np.where(i < n, i, 2 * n - 1 - i))
    return b[np.ix_(*idx)]


def boundary_volume(gvox: float):
    import emarray
    shape = shape_of(gvox)
    path = WORK / f"boundary-{'x'.join(map(str, shape))}.zarr"
    if (path / "zarr.json").is_file():
        return emarray.open_volume(path)
    b = crop()
    chunks = (64, 256, 256)
    v = emarray.create_volume(path, shape, "float32", chunks, voxel_size=(1, 1, 1))
    for z in range(0, shape[0], chunks[0]):
        for y in range(0, shape[1], chunks[1] * 4):
            region = (slice(z, min(z + chunks[0], shape[0])),
                      slice(y, min(y + chunks[1] * 4, shape[1])), slice(0, shape[2]))
            v.write(region, tiled(b, region))
    return emarray.open_volume(path)


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_emarray(gvox: float) -> dict:
    import emarray
    bv = boundary_volume(gvox)
    out = WORK / "emarray"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    times = {}
    t0 = time.perf_counter()
    emarray.distance(bv, out / "d.zarr", threshold=0.5, below=True, max_distance=8,
                     progress=False)
    times["distance"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    f = emarray.watershed(bv, out / "f.zarr", threshold=0.5, progress=False)
    times["watershed"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = emarray.agglomerate(f, bv, out / "s.zarr", threshold=THRESHOLD, min_size=MIN_SIZE,
                            progress=False)
    times["agglomerate"] = time.perf_counter() - t0
    em = s.attrs["emarray"]["agglomeration"]
    return {"fragments": em["fragments"], "edges": em["edges"],
            "segments": em["segments"][str(THRESHOLD)], **_times(times, bv.shape),
            "cores": os.cpu_count()}


def cores_seeds(b: np.ndarray) -> np.ndarray:
    """watershed's default seeds on a whole array (cc3d, edt, SciPy)."""
    import cc3d
    import edt
    from scipy import ndimage
    inside = b < 0.5
    d = edt.edt(inside, black_border=False)
    peak = (d == ndimage.maximum_filter(d, size=3, mode="nearest")) & inside & (d > 0)
    return cc3d.connected_components(((d > 1) | (peak & (d <= 1))).view(np.uint8),
                                     connectivity=6)


def run_skimage(gvox: float, b: np.ndarray | None = None, cuts=(THRESHOLD,)) -> dict:
    from skimage import graph
    from skimage.segmentation import watershed
    b = tiled(crop(), tuple(slice(0, n) for n in shape_of(gvox))) if b is None else b
    times = {}
    t0 = time.perf_counter()
    fragments = watershed(b, cores_seeds(b))
    times["watershed"] = time.perf_counter() - t0

    def weight(g, src, dst, n):
        d = {"weight": 0.0, "count": 0}
        cs, cd = g[src].get(n, d)["count"], g[dst].get(n, d)["count"]
        ws, wd = g[src].get(n, d)["weight"], g[dst].get(n, d)["weight"]
        return {"count": cs + cd, "weight": (cs * ws + cd * wd) / (cs + cd)}

    t0 = time.perf_counter()
    segs = {}
    for t in cuts:
        rag = graph.rag_boundary(fragments, b.astype(np.float64))
        segs[t] = graph.merge_hierarchical(fragments.copy(), rag, thresh=t, rag_copy=False,
                                           in_place_merge=True,
                                           merge_func=lambda g, s, d: None, weight_func=weight)
    times["agglomerate"] = time.perf_counter() - t0
    return {"fragments": int(fragments.max()), "segments": int(len(np.unique(segs[cuts[0]]))),
            **_times(times, b.shape), "cores": 1, "_segs": segs}


def affinities(b: np.ndarray) -> np.ndarray:
    """waterz's input: per axis, 1 - the mean boundary of a voxel and its lower neighbour."""
    a = np.zeros((3,) + b.shape, np.float32)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(1, None), slice(None, -1)
        a[(axis,) + tuple(lo)] = 1 - (b[tuple(lo)] + b[tuple(hi)]) / 2
    return a


def run_waterz(gvox: float, b: np.ndarray | None = None, cuts=(THRESHOLD,)) -> dict:
    import waterz
    b = tiled(crop(), tuple(slice(0, n) for n in shape_of(gvox))) if b is None else b
    affs = affinities(b)
    t0 = time.perf_counter()
    segs = {t: s.copy() for t, s in zip(sorted(cuts), waterz.agglomerate(affs, sorted(cuts)))}
    times = {"watershed+agglomerate": time.perf_counter() - t0}
    return {"segments": int(len(np.unique(segs[cuts[0]]))), **_times(times, b.shape),
            "cores": 1, "_segs": segs}


def _times(times: dict, shape: tuple[int, ...]) -> dict:
    vox = float(np.prod(shape))
    return {"shape": list(shape), "gvox": round(vox / 1e9, 4),
            "seconds": {k: round(v, 1) for k, v in times.items()},
            "ns_per_voxel": {k: round(v / vox * 1e9, 1) for k, v in times.items()},
            "total_ns_per_voxel": round(sum(times.values()) / vox * 1e9, 1),
            "peak_rss_gib": round(rss_gib(), 2)}


def quality() -> None:
    """VOI of each tool on the crop itself, at thresholds around its best."""
    import h5py
    from skimage.metrics import adapted_rand_error, variation_of_information
    with h5py.File(DATA / "train-gt.lzf.h5") as f:
        truth = f["stack"][()]
    b = crop()
    cuts = (0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96)
    for name, fn in (("skimage", run_skimage), ("waterz", run_waterz)):
        segs = fn(0.001, b, cuts)["_segs"]
        rows = []
        for t in cuts:
            split, merge = variation_of_information(truth, segs[t])
            rows.append((split + merge, t, split, merge, adapted_rand_error(truth, segs[t])[0]))
        voi, t, split, merge, are = min(rows)
        print(json.dumps({"tool": name, "best_threshold": t, "voi": round(voi, 4),
                          "voi_split": round(split, 4), "voi_merge": round(merge, 4),
                          "adapted_rand": round(are, 4),
                          "per_threshold": {r[1]: round(r[0], 4) for r in rows}}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", default="scale", choices=["scale", "quality", "one"])
    ap.add_argument("--gvox", default="0.008,0.125,1")
    ap.add_argument("--tools", default="emarray,skimage,waterz")
    ap.add_argument("--tool", default=None)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.what == "quality":
        quality()
        return
    if args.what == "one":
        fn = {"emarray": run_emarray, "skimage": run_skimage, "waterz": run_waterz}[args.tool]
        r = fn(float(args.gvox))
        r.pop("_segs", None)
        print(json.dumps({"tool": args.tool, **r}), flush=True)
        return
    for g in args.gvox.split(","):
        for tool in args.tools.split(","):
            r = subprocess.run([sys.executable, __file__, "one", "--tool", tool, "--gvox", g],
                               capture_output=True, text=True)
            print(r.stdout.strip() or f"{tool} {g}: " + r.stderr[-1500:], flush=True)


if __name__ == "__main__":
    main()
