"""asv: skeletons of random-walk neurites (emarray skeleton, out of core) and kimimaro on the
same array in RAM, on a small volume (time and peak memory).

The side-by-side figures at 0.25 GVx live in ``benchmarks/skeleton_compare.py``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

import emarray

from .skeleton_compare import VOXEL, write_neurites

SHAPE = (64, 384, 384)


class Skeleton:
    timeout = 900

    def setup(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        self.labels = emarray.open_volume(write_neurites(self.tmp / "l.zarr", SHAPE))

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_skeleton(self):
        emarray.skeleton(self.labels, self.tmp / "s", overwrite=True, workers=1,
                         progress=False)

    def peakmem_skeleton(self):
        emarray.skeleton(self.labels, self.tmp / "s", overwrite=True, workers=1,
                         progress=False)

    def time_kimimaro_in_ram(self):
        import kimimaro
        kimimaro.skeletonize(np.asfortranarray(self.labels.read().T), anisotropy=VOXEL[::-1],
                             fix_borders=False, progress=False, parallel=1)

    def peakmem_kimimaro_in_ram(self):
        self.time_kimimaro_in_ram()
