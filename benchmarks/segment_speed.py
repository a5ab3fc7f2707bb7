"""Speed and memory of the segmentation operators, each variant in its own process:

* ``distance``: emarray's blockwise EDT (zarr in and out) against seung-lab's ``edt`` on the
  whole array in RAM, per core, at two sizes (peak RSS should not grow with the volume);
* ``segment``: watershed + agglomerate on a synthetic map at the given size: time per stage and
  peak RSS, fragments and edges;
* ``graph``: the agglomeration alone on a random graph of N fragments (10^6 by default).

    python benchmarks/segment_speed.py distance --gvox 0.5,1
    python benchmarks/segment_speed.py segment --gvox 1
    python benchmarks/segment_speed.py graph --fragments 1000000
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

WORK = Path(os.environ.get("EMARRAY_BENCH", "/tmp/emarray-segment-speed"))


def _shape(gvox: float) -> tuple[int, int, int]:
    z = max(1, int(round(gvox * 1024 ** 3 / (1024 * 1024))))
    return (z, 1024, 1024)


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _mask(gvox: float) -> Path:
    """A uint8 mask (the synthetic objects), made once per size."""
    import emarray
    path = WORK / f"mask-{gvox:g}.zarr"
    if not path.exists():
        vols = emarray.datasets.synthetic(WORK / f"synth-{gvox:g}", _shape(gvox), chunks=(64, 256, 256),
                                          kinds=("truth",))
        emarray.threshold(vols["truth"], path, 0)
    return path


def variant(name: str, gvox: float) -> dict:
    import emarray
    t0 = time.perf_counter()
    if name == "emarray-distance":
        src = _mask(gvox)
        t0 = time.perf_counter()
        emarray.distance(src, WORK / "dist.zarr", max_distance="80nm", overwrite=True,
                         compression="zstd")
        cores = os.cpu_count() or 1
    elif name == "edt-in-ram":
        import edt
        mask = emarray.open_volume(_mask(gvox)).read()
        t0 = time.perf_counter()
        edt.edt(mask, anisotropy=(40, 8, 8), black_border=False, parallel=1)
        cores = 1
    elif name == "segment":
        import emarray
        vols = emarray.datasets.synthetic(WORK / f"seg-{gvox:g}", _shape(gvox),
                                          chunks=(64, 256, 256), kinds=("prob",)) \
            if not (WORK / f"seg-{gvox:g}" / "prob.zarr").exists() else \
            {"prob": emarray.open_volume(WORK / f"seg-{gvox:g}" / "prob.zarr")}
        t0 = time.perf_counter()
        f = emarray.watershed(vols["prob"], WORK / "fragments.zarr", threshold=0.5,
                              overwrite=True)
        t1 = time.perf_counter()
        s = emarray.agglomerate(f, vols["prob"], WORK / "segments.zarr", threshold=0.5,
                                overwrite=True)
        t2 = time.perf_counter()
        em = s.attrs["emarray"]["agglomeration"]
        return {"variant": name, "gvox": gvox, "watershed_s": round(t1 - t0, 1),
                "agglomerate_s": round(t2 - t1, 1), "fragments": em["fragments"],
                "edges": em["edges"], "peak_rss_gib": round(_rss_gib(), 2)}
    else:
        raise SystemExit(f"unknown variant {name}")
    seconds = time.perf_counter() - t0
    vox = float(np.prod(_shape(gvox)))
    return {"variant": name, "gvox": gvox, "seconds": round(seconds, 1),
            "mvox_per_s_per_core": round(vox / seconds / 1e6 / cores, 1),
            "peak_rss_gib": round(_rss_gib(), 2)}


def graph(n: int) -> dict:
    from emarray.ops.agglomerate import agglomerate_graph
    rng = np.random.default_rng(0)
    # a mesh-like graph: each fragment touches about 6 others nearby in id order (as fragments
    # of a block touch their neighbours), with random mean boundaries
    u = np.repeat(np.arange(n), 6)
    v = np.minimum(u + rng.integers(1, 200, u.size), n - 1)
    keep = u != v
    pairs = np.unique(np.stack([u[keep], v[keep]], 1), axis=0)
    size = rng.integers(1, 400, len(pairs)).astype(np.float64)
    total = rng.random(len(pairs)) * size
    agglomerate_graph(10, np.array([0]), np.array([1]), np.array([0.1]), np.array([1.0]), [0.5])
    t0 = time.perf_counter()
    roots = agglomerate_graph(n, pairs[:, 0], pairs[:, 1], total, size, [0.3, 0.5, 0.7])
    seconds = time.perf_counter() - t0
    return {"variant": "graph", "fragments": n, "edges": int(len(pairs)),
            "seconds": round(seconds, 1), "segments": [int(len(np.unique(r))) for r in roots],
            "peak_rss_gib": round(_rss_gib(), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["distance", "segment", "graph", "one"])
    ap.add_argument("--gvox", default="0.5,1")
    ap.add_argument("--fragments", type=int, default=1_000_000)
    ap.add_argument("--variant", default=None)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.what == "one":
        print(json.dumps(variant(args.variant, float(args.gvox))))
        return
    if args.what == "graph":
        print(json.dumps(graph(args.fragments)))
        return
    names = ["emarray-distance", "edt-in-ram"] if args.what == "distance" else ["segment"]
    for g in (float(x) for x in args.gvox.split(",")):
        for name in names:
            r = subprocess.run([sys.executable, __file__, "one", "--variant", name, "--gvox",
                                str(g)], capture_output=True, text=True)
            print(r.stdout.strip() or r.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()
