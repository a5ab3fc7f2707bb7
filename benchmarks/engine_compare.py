"""Side-by-side, in one run: pyramids and smoothing against the tools a user would pick.

    python benchmarks/engine_compare.py --gvox 1 --what pyramid
    python benchmarks/engine_compare.py --gvox 0.25 --what smooth
    python benchmarks/engine_compare.py --gvox 1 --what label
    python benchmarks/engine_compare.py --gvox 4 --what label --only emarray-label

Each variant runs in its own process; wall time and peak RSS are reported.
pyramid: emarray pyramid (one level, 2x2x2 mean for the uint8 image, mode for uint32 labels)
vs a plain dask copy of the same bytes (the I/O floor) vs tinybrain on the whole array in RAM.
smooth: emarray smooth sigma=2 vs dask_image.ndfilters.gaussian_filter (map_overlap) written
to zarr, same input, same chunks, same threads.
label: emarray label (26-connected, of the synthetic cells' mask, uint8) vs
dask_image.ndmeasure.label on the same zarr written to zarr vs cc3d on the whole array in RAM;
emarray objects and emarray match (of those labels against the synthetic truth) vs a plain
read of their inputs. A 4 GVx mask is the 1 GVx one tiled four times along z (chunk files
copied), for the peak-memory comparison.
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

CHUNKS = (64, 256, 256)


def make_input(path: Path, gvox: float, kind: str) -> Path:
    import emarray
    nz = max(64, int(round(gvox * 1024 / 64)) * 64)
    shape = (nz, 1024, 1024)
    out = path / f"{kind}.zarr"
    if (out / "zarr.json").exists() and emarray.open_volume(out).shape == shape:
        return out
    shutil.rmtree(out, ignore_errors=True)
    print(f"making {shape} {kind} in {out} ...", file=sys.stderr)
    emarray.datasets.synthetic(path, shape, chunks=CHUNKS, kinds=(kind,), voxel_size=(8, 8, 8))
    return out


def make_mask(path: Path, gvox: float) -> Path:
    """The synthetic cells' mask (uint8); above 1 GVx, the 1 GVx mask tiled along z."""
    import emarray
    out = path / "mask.zarr"
    if (out / "zarr.json").exists():
        return out
    if gvox > 1:
        base = make_mask(path.parent / "1.0", 1.0)
        reps = int(round(gvox))
        vol = emarray.open_volume(base)
        nzc = -(-vol.shape[0] // CHUNKS[0])
        tmp = path / ".mask-tiling.zarr"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("c"))
        meta = json.loads((tmp / "0" / "zarr.json").read_text())
        meta["shape"][0] = vol.shape[0] * reps
        (tmp / "0" / "zarr.json").write_text(json.dumps(meta))
        for r in range(reps):
            for zdir in (base / "0" / "c").iterdir():
                shutil.copytree(zdir, tmp / "0" / "c" / str(int(zdir.name) + r * nzc))
        os.rename(tmp, out)
        return out
    truth = make_input(path, gvox, "truth")
    emarray.threshold(truth, out, 0.5, backend="cpu")
    return out


def variant(name: str, src: Path, dst: Path) -> None:
    import dask.array as da
    import numpy as np
    import zarr
    arr = str(src / "0")
    if name.startswith("emarray"):
        import emarray  # noqa: F401 - a package import, untimed like dask's and zarr's above
    t0 = time.perf_counter()  # every variant is timed after its imports, not its process start
    if name == "emarray-pyramid":
        import emarray
        work = dst / src.name
        shutil.copytree(src, work)  # a private copy to add levels to (not timed)
        t0 = time.perf_counter()
        emarray.pyramid(work, levels=1, backend="cpu")
    elif name == "copy":
        da.from_zarr(arr).to_zarr(str(dst / "copy.zarr"))
    elif name == "tinybrain":
        import tinybrain
        a = zarr.open_array(arr, mode="r")[...]
        t = a.T
        if a.dtype == np.uint8:
            out = tinybrain.downsample_with_averaging(t, (2, 2, 2))[0]
        else:
            out = tinybrain.downsample_segmentation(t, (2, 2, 2))[0]
        zarr.create_array(str(dst / "tb.zarr"), data=np.ascontiguousarray(out.T), chunks=CHUNKS)
    elif name == "emarray-smooth":
        import emarray
        emarray.smooth(src, dst / "s.zarr", 2.0, backend="cpu")
    elif name == "dask-image":
        from dask_image.ndfilters import gaussian_filter
        x = da.from_zarr(arr).astype(np.float32)
        gaussian_filter(x, 2.0, mode="reflect", truncate=4.0).to_zarr(str(dst / "d.zarr"))
    elif name == "emarray-label":
        import emarray
        emarray.label(src, dst / "l.zarr", connectivity=26, backend="cpu")
    elif name == "dask-image-label":
        from dask_image.ndmeasure import label
        lab, n = label(da.from_zarr(arr), structure=np.ones((3, 3, 3), bool))
        lab.to_zarr(str(dst / "d.zarr"))
    elif name == "cc3d":
        import cc3d
        a = zarr.open_array(arr, mode="r")[...]
        t0 = time.perf_counter()  # cc3d's own throughput: labelling in RAM only
        out = cc3d.connected_components(a, connectivity=26, out_dtype=np.uint32)
        print(json.dumps({"inner_seconds": time.perf_counter() - t0}))
        zarr.create_array(str(dst / "c.zarr"), data=out, chunks=CHUNKS)
        return
    elif name == "read-mask":  # the label floor's read half: the mask decoded
        da.from_zarr(arr).sum().compute()
    elif name == "copy-labels":  # the label floor's write half (less read-labels): ids encoded
        src_l = src.parent / "labels.zarr" / "0"
        x = da.from_zarr(str(src_l))
        out_arr = zarr.create_array(str(dst / "c.zarr"), shape=x.shape, dtype=x.dtype,
                                    chunks=CHUNKS, compressors=zarr.codecs.ZstdCodec(level=3))
        da.store(x, out_arr, lock=False)
    elif name in ("emarray-objects", "read-labels"):
        import emarray
        labels = src.parent / "labels.zarr"
        if name == "read-labels":
            da.from_zarr(str(labels / "0")).sum().compute()
        else:
            emarray.objects(labels, out=dst / "objects.csv")
    elif name in ("emarray-match", "read-both"):
        import emarray
        labels, truth = src.parent / "labels.zarr", src.parent / "truth.zarr"
        if name == "read-both":
            (da.from_zarr(str(labels / "0")).sum() + da.from_zarr(str(truth / "0")).sum()).compute()
        else:
            emarray.match(labels, truth, out=dst / "m")
    else:
        raise SystemExit(f"unknown variant {name}")
    print(json.dumps({"inner_seconds": time.perf_counter() - t0}))


def run_child(name: str, src: Path, work: Path) -> dict:
    dst = work / f"out-{name}"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", name, "--data", str(src),
                             "--out", str(dst)], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    if status != 0:
        raise SystemExit(f"variant {name} failed with status {status}")
    shutil.rmtree(dst, ignore_errors=True)
    row = {"variant": name, "input": src.name, "wall_seconds": round(wall, 2),
           "seconds": round(json.loads(out.strip().splitlines()[0])["inner_seconds"], 2),
           "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gvox", type=float, default=1.0)
    ap.add_argument("--what", choices=["pyramid", "smooth", "label"], default="pyramid")
    ap.add_argument("--kinds", default="raw,truth")
    ap.add_argument("--work", default="/tmp/emarray-engine-compare")
    ap.add_argument("--only", default=None)
    ap.add_argument("--child", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.child:
        variant(a.child, Path(a.data), Path(a.out))
        return
    work = Path(a.work)
    rows = []
    if a.what == "pyramid":
        for kind in a.kinds.split(","):
            src = make_input(work / f"{a.gvox}", a.gvox, kind)
            for name in (a.only or "emarray-pyramid,copy,tinybrain").split(","):
                rows.append(run_child(name, src, work))
                print(rows[-1], file=sys.stderr)
    elif a.what == "label":
        src = make_mask(work / f"{a.gvox}", a.gvox)
        names = (a.only or "emarray-label,read-mask,copy-labels,dask-image-label,cc3d,"
                 "emarray-objects,read-labels,emarray-match,read-both").split(",")
        for name in names:
            if name in ("emarray-objects", "emarray-match", "copy-labels") and not (
                    src.parent / "labels.zarr").exists():
                import emarray
                emarray.label(src, src.parent / "labels.zarr", connectivity=26)
            rows.append(run_child(name, src, work))
            print(rows[-1], file=sys.stderr)
    else:
        src = make_input(work / f"{a.gvox}", a.gvox, "raw")
        for name in (a.only or "emarray-smooth,dask-image").split(","):
            rows.append(run_child(name, src, work))
            print(rows[-1], file=sys.stderr)
    print(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} cores",
                      "gvox": a.gvox, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
