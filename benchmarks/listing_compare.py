"""What identifying an input by its stored chunks costs: ``Volume.fingerprint()`` (every chunk
file's key, size and mtime, hashed) on arrays of 10^4 to 10^6 chunks, against a bare
``os.walk`` + ``stat`` of the same files (the floor any listing pays) and against the old
identity (the metadata file alone).

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
from pathlib import Path

import emarray


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
    print(f"{'chunks':>9} {'fingerprint s':>14} {'os.walk+stat s':>15} {'ratio':>6} "
          f"{'metadata only s':>16}")
    try:
        for n in (int(c) for c in args.chunks.split(",")):
            path = make(root, n)
            v = emarray.open_volume(path)
            t_fp = best(v.fingerprint)
            t_floor = best(lambda: floor(path))
            t_meta = best(lambda: v.fingerprint(listing=False))
            print(f"{v.listing()['count']:>9,} {t_fp:>14.3f} {t_floor:>15.3f} "
                  f"{t_fp / t_floor:>6.2f} {t_meta:>16.5f}", flush=True)
            shutil.rmtree(path)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
