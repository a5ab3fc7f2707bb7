"""Side-by-side threshold comparison on one float32, zstd-compressed zarr, in one run.

    python benchmarks/compare.py --gvox 1            # the README's table
    python benchmarks/compare.py --gvox 4 --only emarray   # memory must not grow with size

Each variant runs in its own process; wall time and that process's peak RSS are reported.
Rows: emarray threshold; the plain dask code a user would write; NumPy on the whole array; a
plain copy of the input through the same scheduler (the I/O floor named by the issue); and,
for context, a read-only pass over the input (a tighter floor: the input must be decoded).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

VALUE = 0.5
CHUNKS = (64, 256, 256)


def make_input(path: Path, gvox: float) -> None:
    import emarray
    nz = max(64, int(round(gvox * 1024 / 64)) * 64)
    shape = (nz, 1024, 1024)
    marker = path / "prob.zarr" / "zarr.json"
    if marker.exists() and emarray.open_volume(path / "prob.zarr").shape == shape:
        return
    shutil.rmtree(path, ignore_errors=True)
    print(f"making {shape} float32 probability map in {path} ...", file=sys.stderr)
    emarray.datasets.synthetic(path, shape, chunks=CHUNKS, kinds=("prob",), progress=True)


def variant(name: str, src: Path, dst: Path) -> None:
    """Run one variant in this process (called in a child)."""
    import dask
    import dask.array as da
    import numpy as np
    import zarr
    arr = str(src / "prob.zarr" / "0")
    if name == "emarray":
        import emarray
        emarray.threshold(src / "prob.zarr", dst, VALUE, backend="cpu")
    elif name == "dask":
        (da.from_zarr(arr) > VALUE).astype("uint8").to_zarr(str(dst))
    elif name == "numpy":
        a = zarr.open_array(arr, mode="r")[...]
        m = (a > VALUE).astype(np.uint8)
        del a
        zarr.create_array(str(dst), data=m, chunks=CHUNKS)
    elif name == "copy":
        da.from_zarr(arr).to_zarr(str(dst))
    elif name == "read":
        dask.compute(da.from_zarr(arr).map_blocks(lambda b: b[:1, :1, :1],
                                                  chunks=(1, 1, 1)).sum())
    else:
        raise SystemExit(f"unknown variant {name}")


def run_child(name: str, src: Path, work: Path) -> dict:
    dst = work / f"out-{name}.zarr"
    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", name, "--data", str(src),
                             "--out", str(dst)])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"variant {name} failed with status {status}")
    shutil.rmtree(dst, ignore_errors=True)
    return {"variant": name, "seconds": wall, "peak_rss_gib": usage.ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gvox", type=float, default=1.0, help="input size in gigavoxels")
    ap.add_argument("--data", default="bench-data", help="folder for the input and outputs")
    ap.add_argument("--only", default="emarray,dask,numpy,copy,read",
                    help="comma-separated variants")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        variant(args.child, Path(args.data), Path(args.out))
        return
    data = Path(args.data) / f"{args.gvox:g}gvox"
    make_input(data, args.gvox)
    rows = [run_child(v, data, Path(args.data)) for v in args.only.split(",")]
    by = {r["variant"]: r for r in rows}
    import emarray
    vol = emarray.open_volume(data / "prob.zarr")
    print(f"\nthreshold > {VALUE} of a {vol.shape} float32 zstd zarr "
          f"({vol.nbytes / 2**30:.1f} GiB, chunks {vol.chunks}); "
          f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}\n")
    print(f"| {'variant':<40} | {'seconds':>8} | {'vs copy':>7} | {'peak RSS GiB':>12} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 9}|{'-' * 14}|")
    labels = {"emarray": "emarray threshold",
              "dask": "dask: (from_zarr > t).astype(u8).to_zarr",
              "numpy": "NumPy whole array (read, >, write)",
              "copy": "copy: from_zarr(p).to_zarr(q) (I/O floor)",
              "read": "read-only pass (decode floor)"}
    for r in rows:
        ratio = r["seconds"] / by["copy"]["seconds"] if "copy" in by else float("nan")
        print(f"| {labels[r['variant']]:<40} | {r['seconds']:8.1f} | {ratio:7.2f} | "
              f"{r['peak_rss_gib']:12.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": vol.shape, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
