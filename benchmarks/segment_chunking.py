"""Does the segmentation depend on the chunking? The FlyEM crop's boundary map through
``watershed`` (its default seeds) and ``agglomerate`` at several chunkings, compared:

* the VOI between the segmentations at each chunking and the one-block segmentation, per
  threshold (0 when the chunking changes nothing);
* small segments (under 50 voxels) and how many touch a block face of the chunking they were
  made with, against how many of the one-block run's small segments touch the same faces;
* voxel pairs inside one truth object split by the segmentation, on face planes and elsewhere;
* fragments, and VOI / adapted Rand against the truth.

    python benchmarks/segment_chunking.py [--work /tmp/emarray-chunking] [--seed-method M]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gala-flyem"
CHUNKINGS = ((50, 100, 200), (25, 50, 100), (16, 64, 48), (10, 32, 32))
THRESHOLDS = (0.5, 0.7, 0.9)
SMALL = 50


def on_faces(shape: tuple[int, ...], chunks: tuple[int, ...]) -> np.ndarray:
    """Voxels on a block face inside the volume (the first or last plane of a block along an
    axis, where a neighbouring block lies beyond)."""
    out = np.zeros(shape, bool)
    for axis, (n, c) in enumerate(zip(shape, chunks)):
        i = np.arange(n)
        plane = ((i % c == 0) & (i > 0)) | ((i % c == c - 1) & (i < n - 1))
        out |= plane.reshape([-1 if a == axis else 1 for a in range(3)])
    return out


def small_on_faces(seg: np.ndarray, faces: np.ndarray) -> tuple[int, int]:
    """(segments under SMALL voxels, how many of them touch ``faces``)."""
    ids, counts = np.unique(seg, return_counts=True)
    small = ids[(counts < SMALL) & (ids != 0)]
    touching = np.unique(seg[faces & np.isin(seg, small)])
    return int(small.size), int(touching.size)


def split_pairs(seg: np.ndarray, truth: np.ndarray, chunks: tuple[int, ...]) -> tuple[float, float]:
    """The fraction of neighbouring voxel pairs inside one truth object that the segmentation
    splits, across a block face and elsewhere."""
    cut = [0, 0]
    total = [0, 0]
    for axis, c in enumerate(chunks):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        same = (truth[tuple(a)] == truth[tuple(b)]) & (truth[tuple(a)] > 0)
        split = same & (seg[tuple(a)] != seg[tuple(b)])
        face = (np.arange(1, truth.shape[axis]) % c == 0).reshape(
            [-1 if k == axis else 1 for k in range(3)])
        for k, where in enumerate((face, ~face)):
            w = np.broadcast_to(where, same.shape)
            cut[k] += int((split & w).sum())
            total[k] += int((same & w).sum())
    return cut[0] / max(total[0], 1), cut[1] / max(total[1], 1)


def run(work: Path, b: np.ndarray, chunks: tuple[int, ...], seed_method: str | None):
    import emarray
    wd = work / "x".join(map(str, chunks))
    wd.mkdir(parents=True)
    bv = emarray.create_volume(wd / "b.zarr", b.shape, "float32", chunks)
    bv.write(tuple(slice(0, n) for n in b.shape), b)
    kw = {"seed_method": seed_method} if seed_method else {}
    t0 = time.perf_counter()
    f = emarray.watershed(bv, wd / "f.zarr", threshold=0.5, progress=False, **kw)
    s = emarray.agglomerate(f, bv, wd / "s.zarr", threshold=THRESHOLDS[0],
                            thresholds=THRESHOLDS[1:], progress=False)
    seconds = time.perf_counter() - t0
    segs = {THRESHOLDS[0]: s.read()}
    for t in THRESHOLDS[1:]:
        segs[t] = emarray.open_volume(wd / "s.zarr" / f"t{t:g}").read()
    return len(np.unique(f.read())), segs, seconds


def main() -> None:
    import h5py
    from skimage.metrics import adapted_rand_error, variation_of_information
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/emarray-chunking")
    ap.add_argument("--seed-method", default=None)
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    with h5py.File(DATA / "train-p1.lzf.h5") as f:
        b = f["stack"][()]
    with h5py.File(DATA / "train-gt.lzf.h5") as f:
        truth = f["stack"][()]
    runs = {c: run(work, b, c, args.seed_method) for c in CHUNKINGS}
    one = runs[CHUNKINGS[0]][1]
    rows = []
    for c, (nfrag, segs, seconds) in runs.items():
        grid = c if c != CHUNKINGS[0] else CHUNKINGS[1]  # one block: the faces of the next
        faces = on_faces(b.shape, grid)
        for t in THRESHOLDS:
            s, m = variation_of_information(truth, segs[t])
            n_small, n_face = small_on_faces(segs[t], faces)
            base_small, base_face = small_on_faces(one[t], faces)
            at_face, elsewhere = split_pairs(segs[t], truth, c)
            rows.append({"chunks": ",".join(map(str, c)), "threshold": t, "fragments": nfrag,
                         "segments": int(len(np.unique(segs[t]))),
                         "voi_vs_one_block": round(sum(variation_of_information(one[t], segs[t])), 4),
                         "voi_vs_truth": round(s + m, 4),
                         "adapted_rand": round(adapted_rand_error(truth, segs[t])[0], 4),
                         "small": n_small, "small_on_faces": n_face,
                         "one_block_small_on_these_faces": f"{base_face}/{base_small}",
                         "split_pairs_at_faces": round(at_face, 4),
                         "split_pairs_elsewhere": round(elsewhere, 4),
                         "seconds": round(seconds, 1)})
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    (work / "chunking.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
