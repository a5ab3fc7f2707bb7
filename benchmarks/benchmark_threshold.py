"""asv: threshold, ingest and synthetic generation on small seeded volumes.

The 1-gigavoxel side-by-side comparison lives in ``benchmarks/compare.py``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

import emarray


class Threshold:
    params = (["float32", "uint8"], ["threads", "processes"])
    param_names = ["dtype", "scheduler"]
    timeout = 300

    def setup(self, dtype, scheduler):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        rng = np.random.default_rng(0)
        shape = (128, 256, 256)
        a = rng.random(shape, np.float32)
        if dtype == "uint8":
            a = (a * 255).astype(np.uint8)
        self.src = emarray.create_volume(self.tmp / "p.zarr", shape, dtype, (64, 128, 128))
        self.src.write(tuple(slice(0, s) for s in shape), a)
        self.value = 0.5 if dtype == "float32" else 127

    def teardown(self, dtype, scheduler):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_threshold(self, dtype, scheduler):
        emarray.threshold(self.src, self.tmp / "m.zarr", self.value, overwrite=True,
                          scheduler=scheduler)

    def peakmem_threshold(self, dtype, scheduler):
        emarray.threshold(self.src, self.tmp / "m.zarr", self.value, overwrite=True,
                          scheduler=scheduler)


class ThresholdBlockCPU:
    """The per-block CPU kernel alone (no I/O)."""
    params = (["uint8", "uint16", "float32", "float64"],)
    param_names = ["dtype"]

    def setup(self, dtype):
        from emarray.ops.threshold import normalize_threshold
        rng = np.random.default_rng(0)
        self.block = (rng.random((64, 256, 256)) * 200).astype(dtype)
        self.op, self.value = normalize_threshold(dtype, 100.5)

    def time_block(self, dtype):
        from emarray.ops.threshold import threshold_block_cpu
        threshold_block_cpu(self.block, op=self.op, value=self.value)


class Ingest:
    timeout = 300

    def setup(self):
        import tifffile
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        (self.tmp / "slices").mkdir()
        rng = np.random.default_rng(0)
        for i in range(64):
            tifffile.imwrite(self.tmp / "slices" / f"{i}.tif",
                             rng.integers(0, 255, (512, 512), dtype=np.uint8))

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_ingest_tiff_slices(self):
        emarray.ingest(self.tmp / "slices", self.tmp / "v.zarr", overwrite=True)

    def peakmem_ingest_tiff_slices(self):
        emarray.ingest(self.tmp / "slices", self.tmp / "v.zarr", overwrite=True)


class Synthetic:
    timeout = 300

    def setup(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_synthetic_prob(self):
        emarray.datasets.synthetic(self.tmp, (64, 256, 256), kinds=("prob",), overwrite=True)
