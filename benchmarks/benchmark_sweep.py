"""asv: the one-pass threshold sweep, and its per-block CPU histogram kernel."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

import emarray


class Sweep:
    params = ([1, 100], ["float32", "uint8"])
    param_names = ["thresholds", "dtype"]
    timeout = 300

    def setup(self, thresholds, dtype):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        rng = np.random.default_rng(0)
        shape = (128, 256, 256)
        p = rng.random(shape, np.float32)
        if dtype == "uint8":
            p = (p * 255).astype(np.uint8)
        t = (rng.random(shape) < 0.2).astype(np.uint8)
        self.p = emarray.create_volume(self.tmp / "p.zarr", shape, dtype, (64, 128, 128))
        self.p.write(tuple(slice(0, s) for s in shape), p)
        self.t = emarray.create_volume(self.tmp / "t.zarr", shape, "uint8", (64, 128, 128))
        self.t.write(tuple(slice(0, s) for s in shape), t)
        emarray.sweep(self.p, self.t, thresholds=2)  # numba compiles (or loads its cache) here

    def teardown(self, thresholds, dtype):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_sweep(self, thresholds, dtype):
        emarray.sweep(self.p, self.t, thresholds=thresholds)

    def peakmem_sweep(self, thresholds, dtype):
        emarray.sweep(self.p, self.t, thresholds=thresholds)


class HistogramBlockCPU:
    params = ([1, 100, 1000],)
    param_names = ["thresholds"]

    def setup(self, thresholds):
        from emarray.ops._histogram_cpu import lookup_table
        from emarray.ops.sweep import exact_thresholds, sweep_thresholds
        rng = np.random.default_rng(0)
        self.x = rng.random(64 * 256 * 256, np.float32)
        self.truth = (rng.random(self.x.size) < 0.2).astype(np.uint8)
        self.edges = exact_thresholds(np.dtype(np.float32), sweep_thresholds(thresholds))
        self.table = lookup_table(self.edges)
        self.time_block(thresholds)

    def time_block(self, thresholds):
        from emarray.ops.sweep import histogram_block_cpu
        histogram_block_cpu(self.x, self.truth, edges=self.edges, table=self.table)
