"""Skeletons of a synthetic label volume of neurites: emarray out of core against kimimaro on
the whole array in RAM, each in its own process, one core each; time (wall, and CPU: the
machine may be shared), peak RSS and how far the skeletons differ (cable length per object).

The volume: random-walk tubes (each a few branches, radius 2.5-6 voxels across, voxels
16 x 8 x 8 nm) written slab by slab into a zarr volume (made once per size, outside the
timings). kimimaro reads it whole into RAM first (not timed; its memory is counted).

    python benchmarks/skeleton_compare.py --gvox 0.25 [--work /tmp/emarray-skeleton]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VOXEL = (16.0, 8.0, 8.0)
WORK = Path(os.environ.get("EMARRAY_BENCH", "/tmp/emarray-skeleton-compare"))


def shape_of(gvox: float) -> tuple[int, int, int]:
    z = 128
    side = int(round((gvox * 1e9 / z) ** 0.5))
    return (z, side, side)


def neurites(shape: tuple[int, int, int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray,
                                                                         float]]:
    """Random-walk neurites filling about a tenth of ``shape``: per segment its two ends
    (z, y, x voxels), radius (nm) and object id, as arrays."""
    rng = np.random.default_rng(seed)
    lo, hi = np.zeros(3), np.array(shape, float) - 1
    n = max(4, int(np.prod(shape) / 160_000))
    segs = []
    for obj in range(1, n + 1):
        radius = float(rng.uniform(20, 48))
        p = rng.uniform(lo, hi)
        heads = [p]
        for _ in range(int(rng.integers(8, 16))):
            start = heads[int(rng.integers(len(heads)))] if rng.random() < 0.2 else heads[-1]
            step = rng.normal(size=3) * np.array([0.5, 1, 1])
            step *= rng.uniform(15, 35) / np.linalg.norm(step)
            end = np.clip(start + step, lo, hi)
            segs.append((start, end, radius, obj))
            heads.append(end)
    return segs


def make_volume(gvox: float) -> Path:
    """The labels at ``gvox`` (made once)."""
    path = WORK / f"neurites-{gvox:g}.zarr"
    if not (path / "zarr.json").exists():
        write_neurites(path, shape_of(gvox))
    return path


def write_neurites(path: Path, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """Random-walk neurites written into a new volume at ``path``, slab by slab (memory of a
    slab)."""
    import emarray
    segs = neurites(shape, seed)
    vol = emarray.create_volume(path, shape, "uint32", (32, 256, 256), voxel_size=VOXEL)
    s = np.asarray(VOXEL)
    for z0 in range(0, shape[0], 32):
        z1 = min(z0 + 32, shape[0])
        slab = np.zeros((z1 - z0,) + shape[1:], np.uint32)
        for a, b, r, obj in segs:
            pad = r / s
            box_lo = np.floor(np.minimum(a, b) - pad).astype(int)
            box_hi = np.ceil(np.maximum(a, b) + pad).astype(int) + 1
            box_lo = np.maximum(box_lo, [z0, 0, 0])
            box_hi = np.minimum(box_hi, [z1, shape[1], shape[2]])
            if (box_hi <= box_lo).any():
                continue
            g = np.stack(np.meshgrid(*[np.arange(p, q) for p, q in zip(box_lo, box_hi)],
                                     indexing="ij"), -1).reshape(-1, 3).astype(float)
            ab = (b - a) * s
            t = np.clip(((g - a) * s) @ ab / max(float(ab @ ab), 1e-9), 0, 1)
            d = np.linalg.norm((g - a) * s - t[:, None] * ab, axis=1).reshape(box_hi - box_lo)
            local = slab[box_lo[0] - z0:box_hi[0] - z0, box_lo[1]:box_hi[1],
                         box_lo[2]:box_hi[2]]
            local[(d <= r) & (local == 0)] = obj
        vol.write((slice(z0, z1), slice(0, shape[1]), slice(0, shape[2])), slab)
    return path


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cable(v: np.ndarray, e: np.ndarray) -> float:
    return float(np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1).sum())


def variant(name: str, gvox: float) -> dict:
    import emarray
    path = make_volume(gvox)
    vol = emarray.open_volume(path)
    cables = {}
    if name == "kimimaro-in-ram":
        import kimimaro
        labels = vol.read()
        t0, c0 = time.perf_counter(), _cpu_s()
        sk = kimimaro.skeletonize(np.asfortranarray(labels.T), anisotropy=VOXEL[::-1],
                                  dust_threshold=1000, fix_borders=False, progress=False,
                                  parallel=1)
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
        cables = {str(i): cable(np.asarray(s.vertices, float), s.edges) for i, s in sk.items()}
    elif name == "emarray":
        from emarray.ops.skeleton_files import decode_precomputed
        out = WORK / f"skeletons-{gvox:g}"
        t0, c0 = time.perf_counter(), _cpu_s()
        emarray.skeleton(vol, out, overwrite=out.exists(), workers=1, progress=False)
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
        for f in out.iterdir():
            if f.name.isdigit():
                v, e, _ = decode_precomputed(f.read_bytes())
                cables[f.name] = cable(v, e)
    else:
        raise SystemExit(f"unknown variant {name}")
    (WORK / f"cables-{name}-{gvox:g}.json").write_text(json.dumps(cables))
    return {"variant": name, "gvox": round(float(np.prod(vol.shape)) / 1e9, 3),
            "shape": list(vol.shape), "seconds": round(seconds, 1), "cpu_s": round(cpu, 1),
            "mvox_per_s": round(float(np.prod(vol.shape)) / seconds / 1e6, 2),
            "skeletons": len(cables), "peak_rss_gib": round(_rss_gib(), 2)}


def agreement(gvox: float) -> dict:
    a = json.loads((WORK / f"cables-kimimaro-in-ram-{gvox:g}.json").read_text())
    b = json.loads((WORK / f"cables-emarray-{gvox:g}.json").read_text())
    both = sorted(set(a) & set(b))
    rel = np.array([abs(b[k] - a[k]) / a[k] for k in both if a[k] > 0])
    return {"objects": [len(a), len(b), len(both)],
            "cable_rel_diff_median": round(float(np.median(rel)), 4),
            "p99": round(float(np.percentile(rel, 99)), 4), "max": round(float(rel.max()), 4),
            "within_2pct": round(float((rel <= 0.02).mean()), 4),
            "total_cable_ratio": round(sum(b[k] for k in both) / sum(a[k] for k in both), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", default="compare", choices=["compare", "one"])
    ap.add_argument("--gvox", default="0.25")
    ap.add_argument("--variant", default=None)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.what == "one":
        print(json.dumps(variant(args.variant, float(args.gvox))))
        return
    for g in (float(x) for x in args.gvox.split(",")):
        make_volume(g)
        for name in ("kimimaro-in-ram", "emarray"):
            r = subprocess.run([sys.executable, __file__, "one", "--variant", name, "--gvox",
                                str(g)], capture_output=True, text=True)
            print(r.stdout.strip() or r.stderr[-2000:], flush=True)
        print(json.dumps(agreement(g)), flush=True)


if __name__ == "__main__":
    main()
