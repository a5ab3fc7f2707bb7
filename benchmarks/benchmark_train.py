"""asv: training patches from compressed zarr (through the decoded-chunk cache) and from NumPy
in RAM, and one training step. The side-by-side table is ``benchmarks/train_compare.py``."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

import emarray

SHAPE, CHUNKS, PATCH = (32, 512, 512), (32, 256, 256), (8, 128, 128)


def _volumes(tmp: Path) -> tuple[emarray.Volume, emarray.Volume]:
    from scipy import ndimage
    a = ndimage.gaussian_filter(np.random.default_rng(0).random(SHAPE, np.float32), (0, 3, 3))
    a = (a - a.min()) / (a.max() - a.min())
    raw = emarray.create_volume(tmp / "raw.zarr", SHAPE, "uint8", CHUNKS, voxel_size=(50, 4, 4))
    lab = emarray.create_volume(tmp / "lab.zarr", SHAPE, "uint8", CHUNKS, voxel_size=(50, 4, 4))
    whole = tuple(slice(0, s) for s in SHAPE)
    raw.write(whole, (a * 255).astype(np.uint8))
    lab.write(whole, (a > 0.6).astype(np.uint8))
    return raw, lab


class Sampler:
    params = (["zarr", "ram"], ["none", "all"])
    param_names = ["source", "augment"]
    timeout = 300

    def setup(self, source, augment):
        from emarray.training.augment import AugmentConfig
        from emarray.training.sampler import ArraySource, Pair, PatchSampler, Target
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        raw, lab = _volumes(self.tmp)
        pair = Pair(raw, lab) if source == "zarr" else Pair(ArraySource(raw.read()),
                                                             ArraySource(lab.read()))
        aug = AugmentConfig.off() if augment == "none" else AugmentConfig(anisotropic=True)
        self.s = PatchSampler([pair], PATCH, PATCH, target=Target(), augment=aug,
                              mode="foreground", seed=0)
        for i in range(20):  # decode every chunk once: the steady state
            self.s.batch(i, 2)

    def teardown(self, source, augment):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_20_batches_of_2(self, source, augment):
        for i in range(100, 120):
            self.s.batch(i, 2)


class TrainStep:
    timeout = 300

    def setup(self):
        import torch
        from emarray.models import anisotropic_pool, build_model
        from emarray.models.geometry import UNetConfig
        self.net = build_model(UNetConfig(depth=3, filters=8, pool=anisotropic_pool(3)), 0)
        self.net = self.net.to(memory_format=torch.channels_last_3d).train()
        self.opt = torch.optim.Adam(self.net.parameters())
        self.x = torch.randn(2, 1, *PATCH).contiguous(memory_format=torch.channels_last_3d)
        self.y = (torch.rand(2, *PATCH) > 0.9).long()

    def time_step(self):
        from emarray.training.losses import LossConfig, loss
        value = loss(self.net.logits(self.x), self.y, LossConfig(), False, 2)
        self.opt.zero_grad()
        value.backward()
        self.opt.step()
