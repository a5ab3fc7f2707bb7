"""asv: what ``emarray gui`` does on every Data page and Jobs poll: the walk over the folders.

A thousand small OME-Zarr volumes, ten to a folder, the Data page's listing must take under
two seconds (issue 35); a copy of one volume's metadata stands for each, so the setup is quick
and the walk reads the same files it would read for real volumes.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

import emarray
from emarray.gui.catalog import scan
from emarray.gui.places import Folders


class Catalog:
    params = [100, 1000]
    param_names = ["volumes"]
    timeout = 300

    def setup(self, n):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-gui-"))
        one = self.tmp / "one.zarr"
        v = emarray.create_volume(one, (16, 64, 64), "uint8", (16, 32, 32), voxel_size=(8, 4, 4))
        v.write((slice(0, 16), slice(0, 64), slice(0, 64)), np.ones((16, 64, 64), np.uint8))
        for k in range(n):
            shutil.copytree(one, self.tmp / f"set{k // 10:03d}" / f"v{k:04d}.zarr")
        shutil.rmtree(one)

    def teardown(self, n):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_scan(self, n):
        cat = scan(Folders([self.tmp]))
        assert len(cat.volumes) == n
