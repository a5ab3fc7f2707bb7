"""What watching an input's stored chunks costs, on arrays of 10^4 to 10^6 chunks: the record a
job makes when it starts (every chunk file's key, size and mtime), the comparison a resumed job
makes with it (which chunks changed), and the digest a recipe keeps per step, each against a
bare ``os.walk`` + ``stat`` of the same files (the floor any listing pays) and against the
metadata-only identity.

    python benchmarks/listing_compare.py [--chunks 10000,100000,1000000] [--dir /tmp/x]

The chunk files are made directly (one small file per key) so that setting up a million of
them takes seconds, not the hours a million zarr writes would.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import emarray
from emarray.engine.checkpoint import changed_regions, chunk_record


def make(root: Path, n: int) -> Path:
    side = round(n ** (1 / 3))
    path = root / f"v{n}.zarr"
    emarray.create_volume(path, (side, side, side), "uint8", 1)
    arr = path / "0" / "c"
    for z in range(side):
        for y in range(side):
            d = arr / str(z) / str(y)
            d.mkdir(parents=True, exist_ok=True)
            for x in range(side):
                (d / str(x)).write_bytes(b"\0" * 16)
    return path


def floor(path: Path) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(path / "0"):
        for f in files:
            os.stat(os.path.join(dirpath, f))
            n += 1
    return n


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", default="10000,100000,1000000")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="listing-"))
    print(f"{'chunks':>9} {'record s':>9} {'compare s':>10} {'digest s':>9} "
          f"{'os.walk+stat s':>15} {'compare/floor':>14} {'metadata s':>11}")
    try:
        for n in (int(c) for c in args.chunks.split(",")):
            path = make(root, n)
            v = emarray.open_volume(path)
            rec = chunk_record(v)
            t_rec = best(partial(chunk_record, v))
            t_cmp = best(partial(changed_regions, v, rec))
            t_dig = best(v.listing)
            t_floor = best(partial(floor, path))
            t_meta = best(v.fingerprint)
            print(f"{v.listing()['count']:>9,} {t_rec:>9.3f} {t_cmp:>10.3f} {t_dig:>9.3f} "
                  f"{t_floor:>15.3f} {t_cmp / t_floor:>14.2f} {t_meta:>11.5f}", flush=True)
            shutil.rmtree(path)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
