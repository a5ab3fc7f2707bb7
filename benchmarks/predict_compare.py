"""Side-by-side, in one run: `emarray predict` vs the network's pure forward and MONAI.

    python benchmarks/predict_compare.py                      # 32x256x256 and 64x512x512
    python benchmarks/predict_compare.py --sizes 64,512,512 --filters 16 --depth 3

Every variant runs in its own process; wall time and peak RSS are reported.

forward: the network alone on batches of random patches in RAM (no I/O, no blending): the
    patches/s ceiling on this device.
emarray: `emarray predict` zarr -> zarr (uint8 raw, float32 output), default blocks (and
    --block for bigger ones). It reports the patches it ran (a block runs every tile touching
    it, so tiles at block borders run twice or more) and the patches of one whole-volume
    window.
monai: monai.inferers.sliding_window_inference on the whole volume in RAM (read from the same
    zarr, result kept in RAM), same network, patch, overlap, gaussian weights and batch.

Figures: pipeline efficiency = emarray's patches/s over forward's; end-to-end = one window's
patches over emarray's wall time, over forward's patches/s; time and memory against MONAI.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def make_inputs(work: Path, size: tuple[int, ...], args: argparse.Namespace) -> tuple[Path, Path]:
    import emarray
    model = work / f"unet-d{args.depth}-f{args.filters}.pt"
    if not model.exists():
        emarray.models.new_model(model, depth=args.depth, filters=args.filters, seed=0,
                                 patch=args.patch)
    raw_dir = work / "x".join(map(str, size))
    raw = raw_dir / "raw.zarr"
    if not (raw / "zarr.json").exists():
        emarray.datasets.synthetic(raw_dir, size, chunks=(32, 128, 128), kinds=("raw",),
                                   voxel_size=(8, 8, 8))
    return model, raw


def child_forward(args: argparse.Namespace) -> dict:
    import torch

    import emarray
    torch.set_num_threads(os.cpu_count() or 1)
    mf = emarray.models.load_model(args.model)
    mf.module.to(memory_format=torch.channels_last_3d)  # as predict runs it
    x = torch.rand((args.batch, 1, *mf.patch)).contiguous(memory_format=torch.channels_last_3d)
    rates = []
    with torch.inference_mode():
        mf.module(x)  # warm-up
        for _ in range(3):  # the best of three rounds: the ceiling on a shared machine
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds / 3:
                mf.module(x)
                n += args.batch
            rates.append(n / (time.perf_counter() - t0))
    return {"patches_per_s": max(rates), "rounds": rates}


def child_emarray(args: argparse.Namespace) -> dict:
    import shutil

    import torch  # noqa: F401 - imported untimed, as the forward and MONAI rows import it

    import emarray
    from emarray.engine import BlockGrid
    from emarray.ops.predict import Tiling, default_block
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    v = emarray.predict(args.raw, args.model, out, batch=args.batch, block=args.block,
                        workers=args.workers, threads=args.threads)
    dt = time.perf_counter() - t0
    mf = emarray.models.load_model(args.model)
    o = mf.config.output_size(mf.patch)
    tiling = Tiling(v.shape, o, (0, 0, 0), tuple(x - x // 4 for x in o))
    blk = tuple(args.block) if args.block else default_block(v.shape, v.chunks, o)
    grid = BlockGrid(v.shape, blk)
    ran = sum(tiling.count(grid.region(i)) for i in grid.indices())
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": dt, "patches_run": ran, "patches_window": tiling.total, "block": list(blk),
            "patches_per_s": ran / dt}


def child_monai(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    import emarray
    torch.set_num_threads(os.cpu_count() or 1)
    mf = emarray.models.load_model(args.model)
    mf.module.to(memory_format=torch.channels_last_3d)  # the same fast kernels as predict
    t0 = time.perf_counter()
    raw = emarray.open_volume(args.raw).read()
    x = torch.from_numpy(raw.astype(np.float32) / 255)[None, None]
    with torch.inference_mode():
        y = sliding_window_inference(x, mf.patch, args.batch, mf.module, overlap=0.25,
                                     mode="gaussian")
    dt = time.perf_counter() - t0
    return {"seconds": dt, "mean": float(y.mean())}


def run_child(mode: str, args: argparse.Namespace, **extra: object) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--model", str(extra["model"]),
           "--raw", str(extra.get("raw", "")), "--out", str(extra.get("out", "")),
           "--batch", str(args.batch), "--seconds", str(args.seconds)]
    for name in ("workers", "threads"):
        if getattr(args, name):
            cmd += [f"--{name}", str(getattr(args, name))]
    if extra.get("block"):
        cmd += ["--block", ",".join(map(str, extra["block"]))]  # type: ignore[arg-type]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{mode} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["32,256,256", "64,512,512"])
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--patch", default="32,64,64")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--block", default=None, help="also run emarray with this block z,y,x")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long forward runs")
    ap.add_argument("--work", default=os.environ.get("EMARRAY_BENCH_DIR", "/tmp/emarray-predict-bench"))
    ap.add_argument("--skip", nargs="*", default=[], help="variants to leave out (monai, ...)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--raw", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.block:
            args.block = tuple(int(b) for b in args.block.split(","))
        res = {"forward": child_forward, "emarray": child_emarray, "monai": child_monai}[args.child](args)
        res["peak_rss_gib"] = _peak_rss_gib()
        print(json.dumps(res))
        return
    args.patch = tuple(int(p) for p in args.patch.split(","))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print(f"# 3D U-Net depth {args.depth}, {args.filters} filters, patch {args.patch}, overlap 1/4, "
          f"gaussian, batch {args.batch}")
    rows = []
    for s in args.sizes:
        size = tuple(int(v) for v in s.split(","))
        model, raw = make_inputs(work, size, args)
        # this VM's speed drifts over minutes: the forward ceiling is measured before and after
        # every variant, and the best of those is the figure each variant is held against
        fwds = [run_child("forward", args, model=model)]
        em = run_child("emarray", args, model=model, raw=raw, out=work / "pred.zarr")
        fwds.append(run_child("forward", args, model=model))
        variants = [("emarray", em)]
        if args.block:
            variants.append((f"emarray block {args.block}",
                             run_child("emarray", args, model=model, raw=raw, out=work / "pred.zarr",
                                       block=tuple(int(b) for b in args.block.split(",")))))
            fwds.append(run_child("forward", args, model=model))
        mo = None if "monai" in args.skip else run_child("monai", args, model=model, raw=raw)
        fwd = max(fwds, key=lambda f: f["patches_per_s"])
        print(f"\n## {size} ({size[0] * size[1] * size[2] / 1e6:.0f} Mvox)")
        print(f"forward: {fwd['patches_per_s']:.2f} patches/s ({fwd['peak_rss_gib']:.2f} GiB); "
              "measured " + ", ".join(f"{f['patches_per_s']:.1f}" for f in fwds))
        for name, r in variants:
            eff = r["patches_per_s"] / fwd["patches_per_s"]
            e2e = r["patches_window"] / r["seconds"] / fwd["patches_per_s"]
            line = (f"{name}: {r['seconds']:.1f} s, {r['peak_rss_gib']:.2f} GiB, blocks {r['block']}, "
                    f"{r['patches_run']} patches run for a window of {r['patches_window']} "
                    f"(x{r['patches_run'] / r['patches_window']:.2f}); pipeline efficiency "
                    f"{100 * eff:.0f}% of forward, end-to-end {100 * e2e:.0f}%")
            if mo:
                line += f"; {mo['seconds'] / r['seconds']:.2f}x MONAI's speed"
            print(line)
        if mo:
            print(f"monai sliding_window_inference: {mo['seconds']:.1f} s, {mo['peak_rss_gib']:.2f} GiB")
        rows.append({"size": size, "forward": fwd, "emarray": em, "monai": mo})
    (work / "predict_compare.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
