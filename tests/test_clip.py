"""clip equals numpy.clip on the whole volume, for every chunking and dtype."""
from __future__ import annotations

import numpy as np
import pytest

import emarray
from emarray.errors import InvalidArgumentError

from .conftest import make_volume
from .helpers import cli, one_error_line


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint64", "float32", "float64"])
@pytest.mark.parametrize("chunks", [(1, 3, 5), (4, 7, 6), (5, 9, 11)])
def test_clip_equals_numpy(tmp_path, dtype, chunks):
    rng = np.random.default_rng(3)
    a = (rng.random((5, 9, 11)) * 250).astype(dtype)
    if a.dtype.kind == "f":
        a[0, 0, :3] = [np.nan, np.inf, -np.inf]
    v = make_volume(tmp_path / "a.zarr", a, chunks)
    got = emarray.clip(v, tmp_path / "c.zarr", 20.5, 200).read()
    lo = 21 if a.dtype.kind in "ui" else 20.5  # integer data: the least integer >= 20.5
    want = np.clip(a, a.dtype.type(lo), a.dtype.type(200))
    assert got.dtype == a.dtype
    np.testing.assert_array_equal(got, want)


def test_clip_bounds_beyond_the_dtype_and_bad_bounds(tmp_path):
    a = np.array([[[0, 1, 2**64 - 1]]], np.uint64)
    make_volume(tmp_path / "a.zarr", a, 1)
    r = cli("-q", "clip", tmp_path / "a.zarr", tmp_path / "c.zarr", "--lo", "-5", "--hi",
            str(2**64 - 2))
    assert r.returncode == 0, r.stderr
    assert emarray.open_volume(tmp_path / "c.zarr").read().ravel().tolist() == [0, 1, 2**64 - 2]
    assert "hi must be finite" in one_error_line(cli("clip", tmp_path / "a.zarr",
                                                     tmp_path / "d.zarr", "--lo", "0", "--hi",
                                                     "nan"))
    with pytest.raises(InvalidArgumentError, match="lo <= hi"):
        emarray.clip(tmp_path / "a.zarr", tmp_path / "d.zarr", 5, 1)
    assert not (tmp_path / "d.zarr").exists()
