"""GPU figures beyond the threshold (benchmarks/gpu_compare.py), in one run on one device:

* the sweep histogram, pooling, smoothing and labelling kernels on device-resident data: bytes
  read + written per second against a device-to-device copy, and each equal to its CPU twin on
  a crop;
* predict with --backend cuda: patches/s against the model's pure forward on the same device;
* training on CUDA: optimizer steps per second.

    python benchmarks/gpu_more.py --out gpu-compare
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _best(f, reps: int = 5) -> float:
    import cupy
    f()
    ts = []
    for _ in range(reps):
        cupy.cuda.Device().synchronize()
        t0 = time.perf_counter()
        f()
        cupy.cuda.Device().synchronize()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def kernels() -> dict:
    import cupy

    from emarray.cuda.histogram import histogram_device
    from emarray.cuda.label import label_device
    from emarray.cuda.pool import pool_device
    from emarray.cuda.smooth import smooth_device
    from emarray.ops.components import label_block_cpu
    from emarray.ops.pool import pool_twin
    from emarray.ops.smooth import gaussian_weights, smooth_block_twin
    from emarray.ops.sweep import exact_thresholds, sweep_thresholds
    shape = (256, 1024, 1024)
    a = cupy.random.random(shape, dtype=cupy.float32)
    b = cupy.empty_like(a)
    copy = 2 * a.nbytes / _best(lambda: b.__setitem__(Ellipsis, a))
    out: dict = {"d2d_copy_GBps": copy / 1e9}
    b = None
    cls = (cupy.random.random(a.size, dtype=cupy.float32) < 0.3).astype(cupy.uint8)
    edges = exact_thresholds(np.dtype(np.float32), sweep_thresholds(100))
    flat = a.reshape(-1)
    out["histogram_GBps"] = (a.nbytes + cls.nbytes) / _best(
        lambda: histogram_device(flat, cls, edges)) / 1e9
    cls = None
    u8 = (a * 255).astype(cupy.uint8)
    out["pool_mean_2x2x2_uint8_GBps"] = (u8.nbytes * 9 / 8) / _best(
        lambda: pool_device(u8, (2, 2, 2), "mean")) / 1e9
    w = (gaussian_weights(2.0),) * 3
    out["smooth_sigma2_float32_GBps"] = (2 * a.nbytes) / _best(
        lambda: smooth_device(a, w), reps=3) / 1e9
    mask = (a > 0.6).astype(cupy.uint8)
    out["label_26_uint8_GBps"] = (mask.nbytes + 4 * mask.size) / _best(
        lambda: label_device(mask, 26), reps=3) / 1e9
    for k in [k for k in out if k.endswith("GBps") and k != "d2d_copy_GBps"]:
        out[k.replace("GBps", "vs_copy")] = out[k] * 1e9 / copy
    # each equal to its CPU twin on a crop
    crop = (slice(0, 64), slice(0, 256), slice(0, 256))
    hc, mc, ac = u8[crop].get(), mask[crop].get(), a[crop].get()
    out["pool_equals_twin"] = bool(np.array_equal(
        pool_device(cupy.asarray(hc), (2, 2, 2), "mean").get(), pool_twin(hc, (2, 2, 2), "mean")))
    out["smooth_equals_twin"] = bool(np.array_equal(
        smooth_device(cupy.asarray(ac), w).get(), smooth_block_twin(ac, weights=w)))
    out["label_equals_cc3d"] = bool(np.array_equal(
        label_device(cupy.asarray(mc), 26).get(),
        label_block_cpu(mc, connectivity=26, binary=True, background=0)))
    return out


def predict(work: Path) -> dict:
    import torch

    import emarray
    from emarray.engine import BlockGrid
    from emarray.ops.predict import Tiling, default_block
    model = work / "unet.pt"
    emarray.models.new_model(model, depth=4, filters=32, seed=0, patch="32,128,128")
    raw = emarray.datasets.synthetic(work / "vol", (128, 1024, 1024), chunks=(64, 256, 256),
                                     kinds=("raw",), voxel_size=(8, 8, 8))["raw"]
    mf = emarray.models.load_model(model)
    batch = 8
    net = mf.module.cuda().to(memory_format=torch.channels_last_3d)
    x = torch.rand((batch, 1, *mf.patch), device="cuda").contiguous(
        memory_format=torch.channels_last_3d)
    rates = []
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        for _ in range(3):
            net(x)
        torch.cuda.synchronize()
        for _ in range(3):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 3:
                net(x)
                n += batch
            torch.cuda.synchronize()
            rates.append(n / (time.perf_counter() - t0))
    forward = max(rates)
    net = x = None
    torch.cuda.empty_cache()
    t0 = time.perf_counter()
    v = emarray.predict(raw, model, work / "pred.zarr", batch=batch, backend="cuda")
    dt = time.perf_counter() - t0
    o = mf.config.output_size(mf.patch)
    tiling = Tiling(v.shape, o, (0, 0, 0), tuple(s - s // 4 for s in o))
    grid = BlockGrid(v.shape, default_block(v.shape, v.chunks, o))
    ran = sum(tiling.count(grid.region(i)) for i in grid.indices())
    return {"forward_patches_per_s": forward, "predict_seconds": dt, "predict_patches": ran,
            "predict_patches_per_s": ran / dt, "predict_vs_forward": ran / dt / forward}


def train(work: Path) -> dict:
    import emarray
    emarray.datasets.synthetic(work / "tr", (64, 512, 512), chunks=(32, 256, 256))
    steps = 300
    cfg = {"out": str(work / "run"), "steps": steps, "batch": 4, "patch": "32,128,128",
           "log_every": 100, "checkpoint_every": 1000, "device": "cuda",
           "data": {"raw": str(work / "tr" / "raw.zarr"), "labels": str(work / "tr" / "truth.zarr")},
           "model": {"depth": 4, "filters": 32},
           "validation": {"region": "48:64,:,:", "every": 1000}}
    t0 = time.perf_counter()
    emarray.train(cfg)
    dt = time.perf_counter() - t0
    return {"train_steps": steps, "train_seconds": dt, "train_steps_per_s": steps / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu-compare")
    ap.add_argument("--skip", nargs="*", default=[])
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import cupy
    result: dict = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()}
    work = Path(tempfile.mkdtemp(prefix="emarray-gpu-more-"))
    for name, fn in (("kernels", kernels), ("predict", lambda: predict(work)),
                     ("train", lambda: train(work))):
        if name in args.skip:
            continue
        try:
            result[name] = fn()
        except Exception as exc:  # one part failing still reports the others
            result[name] = {"failed": f"{type(exc).__name__}: {exc}"}
        cupy.get_default_memory_pool().free_all_blocks()
        (out / "more.json").write_text(json.dumps(result, indent=2))
        print(name, json.dumps(result[name]), flush=True)


if __name__ == "__main__":
    main()
