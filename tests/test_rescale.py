"""rescale to uint8 is exact (against Python fractions and float64) over every integer dtype's
extremes and the whole float32 range, from the API and the command line."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import emarray
from emarray.errors import InvalidArgumentError

from .conftest import make_volume
from .helpers import cli


def test_rescale_over_the_whole_float32_range(tmp_path):
    a = np.array([-3.4e38, -1e38, 0.0, 1e38, 3.4e38, 1.0], np.float32).reshape(1, 2, 3)
    src = make_volume(tmp_path / "p.zarr", a, 2)
    got = emarray.rescale(src, tmp_path / "u8.zarr", (-3.4e38, 3.4e38)).read()
    ref = np.rint((a.astype(np.float64) + 3.4e38) * 255 / 6.8e38).clip(0, 255)
    np.testing.assert_array_equal(got, ref.astype(np.uint8))
    assert got.ravel().tolist() == [0, 90, 128, 165, 255, 128]
    for lo, hi in ((-1e39, 1.0), (0.0, 1e39), (1.0, 1.0 + 1e-9)):
        with pytest.raises(InvalidArgumentError, match="float32"):
            emarray.rescale(src, tmp_path / "x.zarr", (lo, hi))
    assert not (tmp_path / "x.zarr").exists()


def _exact_rescale(x: int, lo, hi) -> int:
    v = (Fraction(int(x)) - Fraction(lo)) * 255 / (Fraction(hi) - Fraction(lo))
    f = v.numerator // v.denominator
    if v - f > Fraction(1, 2) or (v - f == Fraction(1, 2) and f % 2 == 1):
        f += 1
    return min(max(f, 0), 255)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "uint32", "int32",
                                   "uint64", "int64"])
def test_rescale_is_exact_for_every_integer_dtype_at_its_extremes(tmp_path, dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    ranges = [(int(info.min), int(info.max)), (int(info.max) - 1000, int(info.max)),
              (int(info.min), int(info.min) + 37), (-3.7, 1000.2)]
    for k, (lo, hi) in enumerate(ranges):
        span = int(hi - lo)
        vals = [info.min, info.max, info.min + 1, info.max - 1] + [
            min(max(int(lo) + int(d), int(info.min)), int(info.max))
            for d in rng.integers(-5, min(span, 2**62) + 5, 244)]
        x = np.array(vals, dtype).reshape(2, 4, 31)
        v = make_volume(tmp_path / f"x{k}.zarr", x, (1, 4, 8))
        got = emarray.rescale(v, tmp_path / f"y{k}.zarr", (lo, hi)).read()
        want = np.array([_exact_rescale(i, lo, hi) for i in x.ravel()], np.uint8).reshape(x.shape)
        np.testing.assert_array_equal(got, want, err_msg=f"{dtype} [{lo}, {hi}]")


def test_rescale_range_on_the_command_line_is_exact(tmp_path):
    x = np.array([[[2**64 - 1, 2**64 - 2, 2**64 - 1000, 2**60]]], np.uint64)
    make_volume(tmp_path / "x.zarr", x, 1)
    r = cli("-q", "rescale", tmp_path / "x.zarr", tmp_path / "y.zarr", "--range",
            f"{2**64 - 1000},{2**64 - 1}")
    assert r.returncode == 0, r.stderr
    assert emarray.open_volume(tmp_path / "y.zarr").read().ravel().tolist() == [255, 255, 0, 0]
