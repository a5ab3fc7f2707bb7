"""asv: the segmentation operators (distance, watershed, agglomerate) and what shows results
(mesh, precomputed export, the report's previews) on a small seeded volume.

The side-by-side figures against edt, scikit-image and zmesh on whole arrays in RAM live in
``benchmarks/segment_speed.py``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

import emarray

SHAPE, CHUNKS = (48, 192, 192), (24, 96, 96)


def _boundary(tmp: Path) -> emarray.Volume:
    """A smooth random field whose ridges play cell boundaries (high = boundary)."""
    rng = np.random.default_rng(0)
    f = ndimage.gaussian_filter(rng.random(SHAPE).astype(np.float32), 3)
    b = np.abs(f - f.mean()) < 0.004
    edges = ndimage.gaussian_filter(b.astype(np.float32), 1)
    edges /= edges.max()
    v = emarray.create_volume(tmp / "boundary.zarr", SHAPE, "float32", CHUNKS,
                              voxel_size=(8, 8, 8))
    v.write(tuple(slice(0, s) for s in SHAPE), edges)
    return v


class Segment:
    timeout = 600

    def setup(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        self.boundary = _boundary(self.tmp)
        self.fragments = emarray.watershed(self.boundary, self.tmp / "frag.zarr", threshold=0.3,
                                           progress=False)

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_distance(self):
        emarray.distance(self.boundary, self.tmp / "d.zarr", threshold=0.3, below=True,
                         max_distance=40, overwrite=True, progress=False)

    def time_watershed(self):
        emarray.watershed(self.boundary, self.tmp / "w.zarr", threshold=0.3, overwrite=True,
                          progress=False)

    def time_agglomerate(self):
        emarray.agglomerate(self.fragments, self.boundary, self.tmp / "seg.zarr",
                            threshold=0.5, overwrite=True, progress=False)

    def time_agglomerate_min_size(self):
        emarray.agglomerate(self.fragments, self.boundary, self.tmp / "seg.zarr",
                            threshold=0.5, min_size=50, overwrite=True, progress=False)

    def peakmem_watershed(self):
        emarray.watershed(self.boundary, self.tmp / "w.zarr", threshold=0.3, overwrite=True,
                          progress=False)


class Evaluate:
    """Every threshold of an agglomeration scored against a truth (here the components of the
    map's interiors) in one pass."""
    timeout = 600

    def setup(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        boundary = _boundary(self.tmp)
        fragments = emarray.watershed(boundary, self.tmp / "frag.zarr", threshold=0.3,
                                      progress=False)
        self.segments = emarray.agglomerate(fragments, boundary, self.tmp / "seg.zarr",
                                            threshold=0.5, progress=False)
        mask = emarray.threshold(boundary, self.tmp / "m.zarr", 0.3, compare="lt",
                                 progress=False)
        self.truth = emarray.label(mask, self.tmp / "truth.zarr", connectivity=6,
                                   progress=False)

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_evaluate(self):
        emarray.evaluate(self.segments, self.truth, progress=False)

    def time_resolution(self):
        emarray.resolution(self.truth, out=self.tmp / "study", levels=3, overwrite=True,
                           progress=False)


class Look:
    timeout = 600

    def setup(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="emarray-asv-"))
        rng = np.random.default_rng(1)
        a = ndimage.gaussian_filter(rng.random(SHAPE).astype(np.float32), 2) > 0.52
        mask = emarray.create_volume(self.tmp / "m.zarr", SHAPE, "uint8", CHUNKS)
        mask.write(tuple(slice(0, s) for s in SHAPE), a.astype(np.uint8))
        self.labels = emarray.label(mask, self.tmp / "l.zarr", progress=False)

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_mesh(self):
        emarray.mesh(self.labels, self.tmp / "meshes", overwrite=True, progress=False)

    def peakmem_mesh(self):
        emarray.mesh(self.labels, self.tmp / "meshes", overwrite=True, progress=False)

    def time_export_precomputed(self):
        emarray.export(self.labels, self.tmp / "ng", format="precomputed", overwrite=True,
                       progress=False)

    def time_report_previews(self):
        from emarray.preview import pictures
        pictures(self.labels, None, side=256, width=320)
