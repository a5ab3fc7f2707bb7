"""asv: connected components, the object table and instance matching on small seeded volumes.

The side-by-side comparison with dask-image, cc3d and a plain read lives in
``benchmarks/engine_compare.py --what label``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

import emarray

SHAPE, CHUNKS = (64, 256, 256), (32, 128, 128)


def _mask(tmp: Path) -> emarray.Volume:
    rng = np.random.default_rng(0)
    a = (ndimage.gaussian_filter(rng.random(SHAPE).astype(np.float32), 2) > 0.52).astype(np.uint8)
    v = emarray.create_volume(tmp / "mask.zarr", SHAPE, "uint8", CHUNKS, voxel_size=(8, 8, 8))
    v.write(tuple(slice(0, s) for s in SHAPE), a)
    return v


class Label:
    params = ([6, 26],)
    param_names = ["connectivity"]
    timeout = 300

    def setup(self, connectivity):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        self.src = _mask(self.tmp)

    def teardown(self, connectivity):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_label(self, connectivity):
        emarray.label(self.src, self.tmp / "l.zarr", connectivity=connectivity, overwrite=True)

    def peakmem_label(self, connectivity):
        emarray.label(self.src, self.tmp / "l.zarr", connectivity=connectivity, overwrite=True)


class Measure:
    timeout = 300

    def setup(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        src = _mask(self.tmp)
        self.labels = emarray.label(src, self.tmp / "l.zarr", connectivity=26)
        self.other = emarray.label(src, self.tmp / "l6.zarr", connectivity=6)

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_objects(self):
        emarray.objects(self.labels)

    def time_match(self):
        emarray.match(self.other, self.labels)

    def time_read_both(self):
        self.labels.read()
        self.other.read()
