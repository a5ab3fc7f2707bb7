"""Pyramids and upsampling against independent references; OME-Zarr readers and schemas."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emarray
from emarray.errors import InvalidArgumentError, OutputExistsError
from emarray.ops.pool import pool_block_cpu, pool_twin

from .conftest import make_volume
from .helpers import cli, one_error_line
from .test_engine import emarray_cli


def reference_pool(a: np.ndarray, f: tuple[int, ...], mode: str) -> np.ndarray:
    """Window by window: NumPy means (floored for integers) and np.unique modes."""
    shape = tuple(-(-s // k) for s, k in zip(a.shape, f))
    out = np.zeros(shape, a.dtype)
    for idx in itertools.product(*map(range, shape)):
        w = a[tuple(slice(i * k, (i + 1) * k) for i, k in zip(idx, f))].ravel()
        if mode == "mode":
            vals, first, cnt = np.unique(w, return_index=True, return_counts=True)
            out[idx] = w[min(first[cnt == cnt.max()])]  # ties: the first met in z,y,x order
        elif mode == "mean":
            out[idx] = (w.astype(np.float64).mean() if a.dtype.kind == "f"
                        else w.astype(np.int64).sum() // w.size)
        else:
            out[idx] = w.max() if mode == "max" else w.min() if mode == "min" else w[0]
    return out


def reshape_mean(a: np.ndarray, f: tuple[int, ...]) -> np.ndarray:
    """Mean by reshape, for shapes divisible by ``f``."""
    z, y, x = (s // k for s, k in zip(a.shape, f))
    return a.reshape(z, f[0], y, f[1], x, f[2]).astype(np.float64).mean(axis=(1, 3, 5))


@pytest.mark.parametrize("f", [(2, 2, 2), (1, 2, 2)])
@pytest.mark.parametrize("shape", [(8, 8, 8), (7, 9, 5), (3, 2, 5), (1, 1, 3)])
@pytest.mark.parametrize("dtype", ["uint8", "uint32", "int16", "float32"])
@pytest.mark.parametrize("mode", ["mean", "mode", "max", "min", "nearest"])
def test_pooling_equals_the_reference(f, shape, dtype, mode):
    rng = np.random.default_rng(0)
    a = (rng.random(shape) if dtype == "float32" else rng.integers(0, 4, shape) - 2 * (
        dtype == "int16")).astype(dtype)
    want = reference_pool(a, f, mode)
    for got in (pool_twin(a, f, mode), pool_block_cpu(a, factors=f, mode=mode)):
        assert got.shape == want.shape and got.dtype == want.dtype
        if dtype == "float32":
            np.testing.assert_allclose(got, want, rtol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)
    if all(s % k == 0 for s, k in zip(shape, f)) and mode == "mean":
        ref = reshape_mean(a, f)
        np.testing.assert_allclose(pool_twin(a, f, mode), ref if dtype == "float32"
                                   else np.floor(ref).astype(dtype), rtol=1e-6)


def _level_reference(a, plan, mode):
    out, cur = [], a
    for f in plan:
        cur = reference_pool(cur, f, mode) if min(cur.shape) < 12 else pool_twin(cur, f, mode)
        out.append(cur)
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(st.integers(3, 20), st.integers(3, 40), st.integers(3, 40)),
       chunk=st.tuples(st.integers(1, 8), st.integers(2, 16), st.integers(2, 16)),
       labels=st.booleans())
def test_pyramid_levels_equal_level_by_level_pooling(tmp_path_factory, shape, chunk, labels):
    """Whatever the chunking (and however many levels a pass makes), each level equals the
    stored level above it pooled whole: mean for images, mode for labels."""
    d = tmp_path_factory.mktemp("p")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5 if labels else 255, shape).astype("uint32" if labels else "uint8")
    make_volume(d / "v.zarr", a, chunk, voxel_size=(40, 8, 8))
    v = emarray.pyramid(d / "v.zarr", levels=3, scheduler="synchronous")
    n = len(v.levels) - 1  # fewer than 3 once every axis that may shrink is 1 voxel
    assert n == 3 or 1 <= n and max(emarray.open_volume(v.url, level=n).shape[1:]) == 1
    lv = [emarray.open_volume(v.url, level=k) for k in range(n + 1)]
    plan = [tuple(int(round(b / c)) for b, c in zip(lv[k + 1].voxel_size, lv[k].voxel_size))
            for k in range(n)]
    assert plan[0] == emarray.ops.pyramid.auto_factors((40, 8, 8)) or min(shape) < 2
    want = _level_reference(a, plan, "mode" if labels else "mean")
    for k in range(1, n + 1):
        np.testing.assert_array_equal(emarray.open_volume(v.url, level=k).read(), want[k - 1])


def test_pyramid_metadata_opens_in_ome_zarr_and_validates(tmp_path):
    a = np.random.default_rng(2).integers(0, 255, (12, 40, 36)).astype(np.uint8)
    make_volume(tmp_path / "v.zarr", a, (4, 16, 16), voxel_size=(50, 4, 4))
    emarray.pyramid(tmp_path / "v.zarr", until_size=10)
    meta = json.loads((tmp_path / "v.zarr" / "zarr.json").read_text())["attributes"]
    datasets = meta["ome"]["multiscales"][0]["datasets"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in datasets]
    # y,x only while z is the coarser axis, then all three
    assert scales == [[50, 4, 4], [50, 8, 8], [50, 16, 16], [50, 32, 32], [50, 64, 64],
                      [100, 128, 128]]
    shift = datasets[1]["coordinateTransformations"][1]["translation"]
    assert shift == [0.0, 2.0, 2.0]  # half a level-0 voxel per factor 2 (mean pooling)
    # ome-zarr-py (napari's reader) sees every level
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    nodes = list(Reader(parse_url(str(tmp_path / "v.zarr")))())
    data = nodes[0].data
    assert len(data) == len(datasets) and tuple(data[1].shape) == (12, 20, 18)
    np.testing.assert_array_equal(np.asarray(data[0]), a)
    # the OME-Zarr 0.5 models (the NGFF schemas as pydantic models) accept it
    from ome_zarr_models.v05.image import ImageAttrs
    ImageAttrs.model_validate(meta["ome"])
    # emarray info lists the levels
    r = emarray_cli("info", tmp_path / "v.zarr")
    assert r.returncode == 0 and "1: (12, 20, 18)" in r.stdout


def test_labels_are_never_averaged(tmp_path):
    lab = np.zeros((4, 8, 8), np.uint8)
    lab[:, :4], lab[:, 4:] = 10, 30  # a mean at the border would invent id 20
    make_volume(tmp_path / "l.zarr", lab, 4)
    with pytest.raises(InvalidArgumentError, match="must not be averaged"):
        emarray.pyramid(tmp_path / "l.zarr", levels=1, labels=True, mode="mean")
    v = emarray.pyramid(tmp_path / "l.zarr", levels=2, labels=True)
    for k in (1, 2):
        assert set(np.unique(emarray.open_volume(v.url, level=k).read())) <= {10, 30}
    r = emarray_cli("pyramid", tmp_path / "l.zarr", "--levels", "1")
    assert r.returncode == 2 and "already has levels" in r.stderr


def test_pyramid_overwrite_and_resume(tmp_path):
    a = np.random.default_rng(3).integers(0, 255, (8, 32, 32)).astype(np.uint8)
    make_volume(tmp_path / "v.zarr", a, (4, 8, 8), voxel_size=(8, 8, 8))
    emarray.pyramid(tmp_path / "v.zarr", levels=1)
    with pytest.raises(OutputExistsError):
        emarray.pyramid(tmp_path / "v.zarr", levels=2)
    v = emarray.pyramid(tmp_path / "v.zarr", levels=2, mode="max", overwrite=True)
    assert len(v.levels) == 3
    np.testing.assert_array_equal(emarray.open_volume(v.url, level=1).read(),
                                  reference_pool(a, (2, 2, 2), "max"))
    np.testing.assert_array_equal(emarray.open_volume(v.url, level=0).read(), a)  # untouched


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_back_to_the_fine_grid(tmp_path, mode):
    from scipy import ndimage
    rng = np.random.default_rng(4)
    a = rng.random((10, 21, 19)).astype(np.float32)
    fine = make_volume(tmp_path / "v.zarr", a, (4, 8, 8), voxel_size=(40, 4, 4))
    emarray.pyramid(fine.url, levels=2)
    coarse = emarray.open_volume(fine.url, level=2)
    up = emarray.upsample(coarse, tmp_path / "u.zarr", like=fine, mode=mode)
    assert up.shape == fine.shape and up.voxel_size == fine.voxel_size
    c = coarse.read().astype(np.float64)
    scale = [f / s for f, s in zip(fine.voxel_size, coarse.voxel_size)]
    off = [-t / s for t, s in zip(coarse.translation, coarse.voxel_size)]
    coords = np.meshgrid(*[np.arange(n) * s + o for n, s, o in zip(a.shape, scale, off)],
                         indexing="ij")
    if mode == "linear":
        want = ndimage.map_coordinates(c, coords, order=1, mode="nearest")
        np.testing.assert_allclose(up.read(), want, atol=1e-6)
    else:
        idx = [np.clip(np.floor(x + 0.5).astype(int), 0, n - 1) for x, n in zip(coords, c.shape)]
        np.testing.assert_array_equal(up.read(), c[tuple(idx)].astype(np.float32))


def test_upsampled_labels_keep_their_ids(tmp_path):
    lab = np.random.default_rng(5).integers(1, 50, (3, 5, 5)).astype(np.uint32)
    coarse = make_volume(tmp_path / "c.zarr", lab, 2, voxel_size=(2, 2, 2))
    fine = emarray.create_volume(tmp_path / "f.zarr", (6, 10, 10), "uint8", 4, voxel_size=(1, 1, 1))
    with pytest.raises(InvalidArgumentError, match="must not be interpolated"):
        emarray.upsample(coarse, tmp_path / "u.zarr", like=fine, mode="linear")
    r = emarray_cli("upsample", tmp_path / "c.zarr", tmp_path / "u.zarr", "--like", tmp_path / "f.zarr")
    assert r.returncode == 0, r.stderr
    got = emarray.open_volume(tmp_path / "u.zarr").read()
    assert got.dtype == np.uint32 and set(np.unique(got)) <= set(np.unique(lab))


@pytest.mark.gpu
def test_cuda_pooling_equals_its_twin():
    pytest.importorskip("cupy")
    from emarray.cuda.pool import pool_block_cuda
    rng = np.random.default_rng(6)
    for dtype in ["uint8", "int8", "uint16", "int32", "uint32", "int64", "float32", "float64"]:
        for shape in [(8, 8, 8), (7, 9, 5), (1, 3, 3)]:
            a = (rng.random(shape) * 5 - (2 if dtype.startswith("int") else 0)).astype(dtype)
            for f in [(2, 2, 2), (1, 2, 2)]:
                for mode in ["mean", "mode"]:
                    got = pool_block_cuda(a, factors=f, mode=mode)
                    np.testing.assert_array_equal(got, pool_twin(a, f, mode))


def test_pyramid_levels_that_cannot_be_made_are_named(tmp_path):
    make_volume(tmp_path / "one.zarr", np.ones((1, 1, 1), np.uint8), 1)
    line = one_error_line(cli("pyramid", tmp_path / "one.zarr", "--levels", "2"))
    assert "None" not in line and "already 1 voxel" in line


def test_a_pyramid_level_is_an_input_with_its_own_voxel_size(tmp_path):
    a = (np.random.default_rng(0).random((8, 32, 32)) * 255).astype(np.uint8)
    make_volume(tmp_path / "x.zarr", a, (4, 16, 16), voxel_size=(8, 8, 8))
    emarray.pyramid(tmp_path / "x.zarr", levels=1)
    lv = emarray.open_volume(tmp_path / "x.zarr" / "1")
    assert lv.voxel_size == (16.0, 16.0, 16.0) and lv.translation == (4.0, 4.0, 4.0)
    r = cli("-q", "upsample", tmp_path / "x.zarr" / "1", tmp_path / "up.zarr", "--like",
            tmp_path / "x.zarr", "--mode", "nearest")
    assert r.returncode == 0, r.stderr
    coarse = lv.read()
    # each fine voxel centre 8i lies in the coarse voxel round((8i - 4) / 16)
    idx = [np.clip(np.floor((np.arange(n) * 8 - 4) / 16 + 0.5).astype(int), 0, m - 1)
           for n, m in zip(a.shape, coarse.shape)]
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "up.zarr").read(),
                                  coarse[np.ix_(*idx)])
    emarray.create_volume(tmp_path / "big.zarr", (40, 32, 32), "uint8", 8, voxel_size=(8, 8, 8))
    line = one_error_line(cli("upsample", tmp_path / "x.zarr" / "1", tmp_path / "up2.zarr",
                              "--like", tmp_path / "big.zarr"))
    assert "does not cover" in line and not (tmp_path / "up2.zarr").exists()
