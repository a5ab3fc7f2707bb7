from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import emarray

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real EM crops beside the project; absent only off CI (where the tests skip)."""
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"../shared/data is missing at {SHARED}; CI must have it")
        pytest.skip("../shared/data is not beside the project")
    return SHARED


def make_volume(path, array: np.ndarray, chunks, shards=None, voxel_size=(1.0, 1.0, 1.0)):
    """Write ``array`` as an OME-Zarr volume (an independent numpy source of truth for tests)."""
    v = emarray.create_volume(path, array.shape, array.dtype, chunks, shards=shards,
                              voxel_size=voxel_size)
    v.write(tuple(slice(0, s) for s in array.shape), array)
    return emarray.open_volume(path)


def tree_digest(path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes: to show that nothing was touched."""
    out = {}
    for dirpath, _d, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, path)] = Path(p).read_bytes()
    return out
