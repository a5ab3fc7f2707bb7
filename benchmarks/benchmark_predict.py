"""asv: 3D U-Net inference into zarr, and the network's own forward rate beside it.

The side-by-side comparison with MONAI's sliding window and the pure forward lives in
``benchmarks/predict_compare.py``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

import emarray

SHAPE, CHUNKS, PATCH = (32, 256, 256), (32, 128, 128), (32, 64, 64)


def _inputs(tmp: Path) -> tuple[emarray.Volume, str]:
    from scipy import ndimage
    a = ndimage.gaussian_filter(np.random.default_rng(0).random(SHAPE).astype(np.float32), 2)
    a = ((a - a.min()) / (a.max() - a.min()) * 255).astype(np.uint8)
    v = emarray.create_volume(tmp / "raw.zarr", SHAPE, "uint8", CHUNKS, voxel_size=(8, 8, 8))
    v.write(tuple(slice(0, s) for s in SHAPE), a)
    m = emarray.models.new_model(tmp / "unet.pt", depth=3, filters=8, patch=PATCH, seed=0)
    return v, m


class Predict:
    params = (["gaussian", "constant"], ["float32", "uint8"])
    param_names = ["blend", "dtype"]
    timeout = 600

    def setup(self, blend, dtype):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        self.raw, self.model = _inputs(self.tmp)

    def teardown(self, blend, dtype):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_predict(self, blend, dtype):
        emarray.predict(self.raw, self.model, self.tmp / "p.zarr", blend=blend, dtype=dtype,
                        overwrite=True)

    def peakmem_predict(self, blend, dtype):
        emarray.predict(self.raw, self.model, self.tmp / "p.zarr", blend=blend, dtype=dtype,
                        overwrite=True)


class Forward:
    """The ceiling: the network alone on a batch of patches in RAM, as predict runs it."""
    timeout = 300

    def setup(self):
        import torch
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        _, model = _inputs(self.tmp)
        self.net = emarray.models.load_model(model).module.to(memory_format=torch.channels_last_3d)
        self.x = torch.rand((4, 1, *PATCH)).contiguous(memory_format=torch.channels_last_3d)

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_forward_4_patches(self):
        import torch
        with torch.inference_mode():
            self.net(self.x)
