"""Smoothing equals scipy.ndimage.gaussian_filter on the whole volume, for every chunking."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from scipy import ndimage

import emarray
from emarray.errors import InvalidArgumentError
from emarray.ops.smooth import axis_weights, smooth_block_twin

from .conftest import make_volume
from .helpers import PY, cli, one_error_line
from .test_engine import emarray_cli


@pytest.mark.parametrize("chunks", [(2, 3, 2), (4, 5, 6), (13, 17, 19), (1, 17, 4)])
@pytest.mark.parametrize("sigma", [2.0, (0.5, 3.0, 1.2), (0, 1.5, 1.5)])
def test_smooth_equals_scipy_on_the_whole_volume(tmp_path, chunks, sigma):
    """Blocks smaller than the halo included (sigma 3 -> radius 12 > every block here)."""
    a = np.random.default_rng(0).random((13, 17, 19)).astype(np.float32)
    v = make_volume(tmp_path / "a.zarr", a, chunks)
    got = emarray.smooth(v, tmp_path / "s.zarr", sigma).read()
    np.testing.assert_allclose(got, ndimage.gaussian_filter(a, sigma, mode="reflect"),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float64"])
def test_smooth_dtypes(tmp_path, dtype):
    rng = np.random.default_rng(1)
    a = (rng.random((9, 10, 11)) * 200).astype(dtype)
    v = make_volume(tmp_path / "a.zarr", a, (4, 3, 5))
    s = emarray.smooth(v, tmp_path / "s.zarr", 1.0, truncate=3.0, scheduler="processes", workers=2)
    want_dtype = np.float64 if dtype == "float64" else np.float32
    assert s.dtype == want_dtype
    ref = ndimage.gaussian_filter(a.astype(want_dtype), 1.0, truncate=3.0)
    np.testing.assert_allclose(s.read(), ref, rtol=1e-6, atol=1e-4)


def test_physical_sigma_uses_the_voxel_size(tmp_path):
    a = np.random.default_rng(2).random((8, 16, 16)).astype(np.float32)
    v = make_volume(tmp_path / "a.zarr", a, 4, voxel_size=(40, 4, 4))
    s = emarray.smooth(v, tmp_path / "s.zarr", "40,8,8", unit="physical")
    np.testing.assert_allclose(s.read(), ndimage.gaussian_filter(a, (1, 2, 2)), atol=1e-6)
    assert s.voxel_size == (40.0, 4.0, 4.0)


def test_the_numpy_twin_of_the_kernel_matches_scipy():
    a = np.random.default_rng(3).random((7, 9, 12)).astype(np.float32) * 100
    for sigma in [(1.0, 1.0, 1.0), (0.0, 2.5, 0.7)]:
        np.testing.assert_allclose(smooth_block_twin(a, weights=axis_weights(sigma, 4.0, a.shape)),
                                   ndimage.gaussian_filter(a, sigma), rtol=2e-6, atol=1e-4)


def test_bad_sigma_fails_before_anything_is_written(tmp_path):
    v = make_volume(tmp_path / "a.zarr", np.ones((4, 4, 4), np.float32), 2)
    for sigma, msg in [("-1", "sigma must be >= 0"), ("0", "at least one axis"), ("1,2", "3 values")]:
        with pytest.raises(InvalidArgumentError, match=msg):
            emarray.smooth(v, tmp_path / "s.zarr", sigma)
    r = emarray_cli("smooth", tmp_path / "a.zarr", tmp_path / "s.zarr", "--sigma", "nan")
    assert r.returncode == 2 and "sigma must be finite" in r.stderr
    assert not (tmp_path / "s.zarr").exists()
    r = emarray_cli("smooth", tmp_path / "a.zarr", tmp_path / "s.zarr", "--sigma", "1")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(emarray.open_volume(tmp_path / "s.zarr").read(), 1.0, atol=1e-6)


@pytest.mark.gpu
def test_cuda_smoothing_equals_its_twin():
    pytest.importorskip("cupy")
    from emarray.cuda.smooth import smooth_block_cuda
    rng = np.random.default_rng(4)
    for dtype in ["uint8", "int16", "float32"]:
        a = (rng.random((11, 13, 17)) * 100).astype(dtype)
        for sigma in [(1.0, 2.0, 0.5), (0.0, 1.0, 1.0)]:
            w = axis_weights(sigma, 4.0, a.shape)
            np.testing.assert_allclose(smooth_block_cuda(a, weights=w),
                                       smooth_block_twin(a, weights=w), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("sigma", [(2.0, 1.0, 0.7), (0.0, 1.5, 3.0)])
def test_cutting_each_axis_to_its_core_changes_no_bit(sigma):
    """The CPU path cuts each axis to the block's core once filtered: the same values, bit for
    bit, as filtering the whole grown block and cutting at the end."""
    from emarray.ops.smooth import axis_weights, smooth_block_cpu, smooth_halo
    rng = np.random.default_rng(7)
    w = axis_weights(sigma, 4.0, (100, 100, 100))
    halo = smooth_halo(w)
    grown = rng.random(tuple(n + 2 * h for n, h in zip((9, 14, 11), halo))).astype(np.float32)
    core = tuple(slice(h, h + n) for h, n in zip(halo, (9, 14, 11)))
    cut = smooth_block_cpu(grown, weights=w, core=core)
    assert cut.shape == (9, 14, 11)
    np.testing.assert_array_equal(cut, smooth_block_cpu(grown, weights=w)[core])


def test_a_filter_wider_than_the_volume_is_folded_onto_it(tmp_path):
    from scipy import ndimage
    a = np.random.default_rng(2).random((6, 10, 12)).astype(np.float32)
    make_volume(tmp_path / "a.zarr", a, (3, 4, 5))
    # VmHWM: this process's own peak (ru_maxrss would carry pytest's over the exec)
    code = ("import emarray; emarray.smooth({!r}, {!r}, 1.0, truncate=1e9); "
            "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])")
    r = subprocess.run([PY, "-c", code.format(str(tmp_path / "a.zarr"), str(tmp_path / "s.zarr"))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) < 1_500_000  # KiB: bounded by the volume, not the halo
    # the weights past 38.7 sigma are exactly 0, so truncate 50 is the same filter for SciPy
    want = ndimage.gaussian_filter(a.astype(np.float64), 1.0, truncate=50)
    np.testing.assert_allclose(emarray.open_volume(tmp_path / "s.zarr").read(), want, atol=1e-6)
    s = emarray.smooth(tmp_path / "a.zarr", tmp_path / "t.zarr", 1e6)  # nearly the mean
    np.testing.assert_allclose(s.read(), a.mean(), atol=1e-4)
    want = ndimage.gaussian_filter(a.astype(np.float64), (3, 7, 9), mode="reflect")
    got = emarray.smooth(tmp_path / "a.zarr", tmp_path / "u.zarr", (3, 7, 9)).read()
    np.testing.assert_allclose(got, want, atol=1e-6)  # radius 12..36 on axes of 6..12


def test_a_block_too_large_for_memory_is_refused_before_any_work(tmp_path):
    emarray.create_volume(tmp_path / "big.zarr", (1, 65536, 65536), "uint8", (1, 4096, 4096))
    line = one_error_line(cli("smooth", tmp_path / "big.zarr", tmp_path / "s.zarr", "--sigma",
                              "0,10000,10000"))
    assert "GiB" in line and "smaller sigma" in line
    assert not (tmp_path / "s.zarr").exists()
    line = one_error_line(cli("smooth", tmp_path / "big.zarr", tmp_path / "s.zarr", "--sigma",
                              "1e9"))
    assert "too large" in line
