"""Side-by-side, in one run: training patches from compressed zarr vs from NumPy in RAM, and
the model's training step rate.

    python benchmarks/train_compare.py                       # 64x1024x1024 uint8, zstd
    python benchmarks/train_compare.py --shape 32,512,512 --batches 100

zarr:     PatchSampler over zarr volumes (raw uint8 + labels uint8, zstd, chunks 32,256,256),
          through its decoded-chunk cache; "cold" is the first pass (every chunk decoded once),
          "warm" the next, and "small cache" a cache of an eighth of the volume (chunks evicted
          and decoded again, as with a volume larger than RAM), then the same with 32 patches
          drawn from each region of 2x the patch before moving on (what train does by default
          once the volumes outgrow the cache).
ram:      the same sampler, seed and patches over the arrays in RAM (no decoding at all).
step:     one training step (forward, loss, backward, Adam) of the zoo's U-Net on a batch.
Target of issue 11: zarr patches/s >= 0.5x ram, and above the step rate (the GPU stays fed).
Each figure is patches per second of wall time on this machine, one sampler thread.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np


def _volumes(work: Path, shape: tuple[int, ...]) -> tuple:
    import emarray
    from scipy import ndimage
    raw_p, lab_p = work / "raw.zarr", work / "labels.zarr"
    if not raw_p.exists():
        rng = np.random.default_rng(0)
        raw = emarray.create_volume(raw_p, shape, "uint8", (32, 256, 256), voxel_size=(50, 4, 4))
        lab = emarray.create_volume(lab_p, shape, "uint8", (32, 256, 256), voxel_size=(50, 4, 4))
        for z in range(0, shape[0], 32):
            sl = (slice(z, min(z + 32, shape[0])), slice(None), slice(None))
            n = sl[0].stop - z
            a = ndimage.gaussian_filter(rng.random((n, *shape[1:]), np.float32), (0, 3, 3))
            a = (a - a.min()) / (a.max() - a.min())
            raw.write(sl, (a * 255).astype(np.uint8))
            lab.write(sl, (a > 0.6).astype(np.uint8))
    return emarray.open_volume(raw_p), emarray.open_volume(lab_p)


def _rate(sampler, batches: int, batch: int, first: int = 0) -> float:
    t = time.perf_counter()
    for i in range(first, first + batches):
        sampler.batch(i, batch)
    return batches * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="64,1024,1024")
    ap.add_argument("--patch", default="8,128,128")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--work", default="bench-data/train")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--filters", type=int, default=16)
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    patch = tuple(int(s) for s in args.patch.split(","))
    work = Path(args.work) / "x".join(map(str, shape))
    work.mkdir(parents=True, exist_ok=True)
    from emarray.training.augment import AugmentConfig
    from emarray.training.sampler import ArraySource, Pair, PatchSampler, Target
    raw, lab = _volumes(work, shape)
    ram = [ArraySource(raw.read()), ArraySource(lab.read())]
    nbytes = raw.nbytes + lab.nbytes
    print(f"# {platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print(f"# volume {shape} uint8 raw + labels, zstd chunks 32,256,256 "
          f"({sum(f.stat().st_size for f in work.rglob('*') if f.is_file()) / 2**20:.0f} MiB on disk, "
          f"{nbytes / 2**20:.0f} MiB decoded); patch {patch}, batch {args.batch}, "
          f"{args.batches} batches per figure")
    print("| augmentation | zarr cold | zarr warm | zarr, cache 1/8 | same, 32 patches per region "
          "| RAM | warm / RAM | cache 1/8 / RAM | 32 per region / RAM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, aug in (("none", AugmentConfig.off()), ("flips, transposes, intensity",
                                                       AugmentConfig(elastic=0.0, anisotropic=True)),
                      ("all, elastic 0.5", AugmentConfig(anisotropic=True))):
        kw = dict(target=Target(), augment=aug, mode="foreground", seed=0, threads=2)
        z = PatchSampler([Pair(raw, lab)], patch, patch, cache_bytes=2 * nbytes, **kw)
        small = PatchSampler([Pair(raw, lab)], patch, patch, cache_bytes=nbytes // 8, **kw)
        region = PatchSampler([Pair(raw, lab)], patch, patch, cache_bytes=nbytes // 8,
                              patches_per_region=32, **kw)
        r = PatchSampler([Pair(*ram)], patch, patch, **kw)
        cold = _rate(z, args.batches, args.batch)
        warm = _rate(z, args.batches, args.batch, first=args.batches)
        sm = _rate(small, args.batches, args.batch, first=args.batches)
        rg = _rate(region, args.batches, args.batch, first=args.batches)
        inram = _rate(r, args.batches, args.batch, first=args.batches)
        print(f"| {name} | {cold:.1f} | {warm:.1f} | {sm:.1f} | {rg:.1f} | {inram:.1f} | "
              f"{warm / inram:.2f}x | {sm / inram:.2f}x | {rg / inram:.2f}x |")
    import torch
    from emarray.models import anisotropic_pool, build_model
    from emarray.models.geometry import UNetConfig
    from emarray.training.losses import LossConfig, loss
    torch.set_num_threads(os.cpu_count() or 1)
    net = build_model(UNetConfig(depth=args.depth, filters=args.filters,
                                 pool=anisotropic_pool(args.depth)), 0)
    net = net.to(memory_format=torch.channels_last_3d).train()
    opt = torch.optim.Adam(net.parameters())
    x = torch.randn(args.batch, 1, *patch).contiguous(memory_format=torch.channels_last_3d)
    y = (torch.rand(args.batch, *patch) > 0.9).long()
    times = []
    for _ in range(6):
        t = time.perf_counter()
        value = loss(net.logits(x), y, LossConfig(), False, 2)
        opt.zero_grad()
        value.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    step = min(times[1:])
    print(f"\ntraining step (U-Net depth {args.depth}, {args.filters} filters, batch {args.batch}, "
          f"CPU, {torch.get_num_threads()} threads): {step:.3f} s = {args.batch / step:.1f} patches/s")


if __name__ == "__main__":
    main()
