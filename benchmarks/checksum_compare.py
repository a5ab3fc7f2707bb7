"""What the crc32c checksum of every chunk costs: whole chunks written, then read, by two
threads through emarray's Volume, with and without it, in one run. Rounds alternate between
the variants; each reports the best wall time of its rounds (as MB/s) and the median CPU time
of the process (both threads and zarr's, as CPU seconds per GB): on a shared machine the CPU
time is the steadier measure of what the checksum adds.

    python benchmarks/checksum_compare.py [--shape 128,512,512] [--rounds 5] [--dir /tmp/x]

Inputs: a uint8 EM-like image (smoothed noise plus grain, zstd ratio about 1.1) and uint32
labels (blocky ids, zstd ratio in the hundreds); unsharded 32x128x128 chunks (emarray's chunk_io
path) and 64x256x256 shards of 16x64x64 chunks (zarr's path). Reads hit the page cache (the
chunks were just written): the checksum's share is the largest there, as no disk time hides it.
Throughput is of uncompressed bytes.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import emarray


def inputs(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    from scipy import ndimage
    rng = np.random.default_rng(0)
    small = ndimage.zoom(rng.random(tuple(s // 8 for s in shape)), 8, order=1)
    raw = (small * 200 + rng.normal(0, 8, shape)).clip(0, 255).astype(np.uint8)
    ids = rng.integers(1, 2**31, tuple(s // 16 for s in shape)).astype(np.uint32)
    labels = np.kron(ids, np.ones((16, 16, 16), np.uint32))
    return {"uint8 image": raw, "uint32 labels": labels}


def blocks(shape, block):
    return [tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, block))
            for idx in np.ndindex(*(s // c for s, c in zip(shape, block)))]


def timed(fn, regions) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn`` over ``regions`` on two threads."""
    c0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(fn, regions))
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="128,512,512")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    root = Path(tempfile.mkdtemp(prefix="emarray-crc-", dir=args.dir))
    layouts = {"chunks 32x128x128 (chunk_io)": ((32, 128, 128), None),
               "shards 64x256x256 (zarr)": ((16, 64, 64), (64, 256, 256))}
    rows = []
    try:
        for dname, a in inputs(shape).items():
            for lname, (chunks, shards) in layouts.items():
                best: dict[tuple[bool, str], list[tuple[float, float]]] = {}
                for _ in range(args.rounds):
                    for checksum in (False, True):
                        path = root / f"v-{checksum}.zarr"
                        shutil.rmtree(path, ignore_errors=True)
                        v = emarray.create_volume(path, shape, a.dtype, chunks, shards=shards,
                                                  checksum=checksum)
                        regions = blocks(shape, v.block_shape)
                        w = timed(lambda r, v=v, a=a: v.write(r, a[r]), regions)
                        v = emarray.open_volume(path)
                        r_ = timed(v.read, regions)
                        assert np.array_equal(v.read(), a)
                        best.setdefault((checksum, "write"), []).append(w)
                        best.setdefault((checksum, "read"), []).append(r_)
                        stored = v.stored_bytes()
                for op in ("write", "read"):
                    wall = [min(w for w, _ in best[(c, op)]) for c in (False, True)]
                    cpu = [float(np.median([c_ for _, c_ in best[(c, op)]])) for c in (False, True)]
                    rows.append({"input": dname, "layout": lname, "op": op,
                                 "MB/s without": a.nbytes / wall[0] / 1e6,
                                 "MB/s with": a.nbytes / wall[1] / 1e6,
                                 "CPU s/GB without": cpu[0] / a.nbytes * 1e9,
                                 "CPU s/GB with": cpu[1] / a.nbytes * 1e9,
                                 "rounds without": best[(False, op)],
                                 "rounds with": best[(True, op)],
                                 "compression ratio": a.nbytes / (stored or 1)})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"machine": platform.processor() or platform.machine(),
                      "shape": shape, "rows": rows}, indent=1))
    print("| input | layout | op | MB/s without | MB/s with crc32c | CPU s/GB without | "
          "CPU s/GB with | CPU with / without |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input']} | {r['layout']} | {r['op']} | {r['MB/s without']:.0f} | "
              f"{r['MB/s with']:.0f} | {r['CPU s/GB without']:.2f} | {r['CPU s/GB with']:.2f} | "
              f"{r['CPU s/GB with'] / r['CPU s/GB without']:.2f} |")


if __name__ == "__main__":
    main()
