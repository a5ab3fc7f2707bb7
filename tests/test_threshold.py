from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emarray
from emarray.errors import (ChunkAlignmentError, InvalidArgumentError,
                            OutputExistsError)
from emarray.ops.threshold import normalize_threshold, threshold_block_cpu

from .conftest import make_volume, tree_digest

DTYPES = ["uint8", "uint16", "int16", "int32", "float32", "float64"]


def reference(a: np.ndarray, t: float, op: str) -> np.ndarray:
    """Exact comparison as real numbers (float64 holds every value of these dtypes exactly)."""
    x = a.astype(np.float64)
    compare = {"gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal}
    return compare[op](x, t).astype(np.uint8)


def random_map(rng, shape, dtype):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = rng.random(shape).astype(dt)
        a.flat[:: 7] = np.round(a.flat[:: 7], 1)  # many values exactly at round thresholds
        return a
    info = np.iinfo(dt)
    return rng.integers(max(info.min, -300), min(info.max, 300) + 1, shape).astype(dt)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(*[st.integers(1, 23)] * 3), chunks=st.tuples(*[st.integers(1, 9)] * 3),
       dtype=st.sampled_from(DTYPES), op=st.sampled_from(["gt", "ge", "lt", "le"]),
       t=st.sampled_from([0.5, 0.1, 0.3, 0.0, 1.0, 100.0, 127.5, -3.0, 0.7000000000000001]),
       seed=st.integers(0, 2**16))
def test_threshold_equals_numpy(tmp_path_factory, shape, chunks, dtype, op, t, seed):
    tmp = tmp_path_factory.mktemp("thr")
    a = random_map(np.random.default_rng(seed), shape, dtype)
    src = make_volume(tmp / "p.zarr", a, chunks)
    out = emarray.threshold(src, tmp / "m.zarr", t, op, backend="cpu")
    got = out.read()
    assert got.dtype == np.uint8 and out.chunks == src.chunks
    np.testing.assert_array_equal(got, reference(a, t, op))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_float_threshold_is_exact_not_rounded_to_dtype(dtype):
    # 0.1 is not a float32: float32(0.1) > 0.1 as reals, so it must pass "gt 0.1"
    x = np.array([np.float32(0.1), np.nextafter(np.float32(0.1), np.float32(0)), 0.2], dtype)
    for op in ("gt", "ge", "lt", "le"):
        o, v = normalize_threshold(dtype, 0.1, op)
        np.testing.assert_array_equal(threshold_block_cpu(x, op=o, value=v), reference(x, 0.1, op))


@pytest.mark.parametrize("dtype,t,op,expect", [
    ("uint8", -1, "gt", ("all", 1)), ("uint8", 255, "gt", ("none", 0)),
    ("uint8", 255, "ge", ("ge", 255)), ("int8", -128.5, "ge", ("all", 1)),
    ("uint16", 2.2, "gt", ("ge", 3)), ("uint16", 2.2, "ge", ("ge", 3)),
    ("int32", -2.5, "gt", ("ge", -2)),
    ("uint8", 0, "lt", ("none", 0)), ("uint8", 255, "le", ("all", 1)),
    ("uint8", 254.5, "le", ("lt", 255)), ("uint16", 2.2, "lt", ("lt", 3)),
    ("int32", -2.5, "le", ("lt", -2)), ("int8", -128, "le", ("lt", -127)),
])
def test_integer_threshold_normalisation(dtype, t, op, expect):
    assert normalize_threshold(dtype, t, op) == expect


def test_nan_voxels_give_zero(tmp_path):
    a = np.array([[[np.nan, 0.9, 0.1, np.inf, -np.inf]]], np.float32)
    m = emarray.threshold(make_volume(tmp_path / "p.zarr", a, (1, 1, 2)), tmp_path / "m.zarr", 0.5)
    np.testing.assert_array_equal(m.read().ravel(), [0, 1, 0, 1, 0])
    m = emarray.threshold(make_volume(tmp_path / "q.zarr", a, (1, 1, 2)), tmp_path / "n.zarr", 0.5,
                          "lt")
    np.testing.assert_array_equal(m.read().ravel(), [0, 0, 1, 0, 1])


@pytest.mark.parametrize("scheduler", ["synchronous", "processes", "local-cluster"])
def test_schedulers_agree(tmp_path, scheduler):
    a = np.random.default_rng(3).random((13, 17, 19)).astype(np.float32)
    src = make_volume(tmp_path / "p.zarr", a, (4, 5, 6), shards=(8, 10, 12))
    m = emarray.threshold(src, tmp_path / "m.zarr", 0.25, scheduler=scheduler, workers=2)
    np.testing.assert_array_equal(m.read(), reference(a, 0.25, "gt"))
    assert m.shards == (8, 10, 12)


def test_finer_output_chunks_are_fine_coarser_are_refused(tmp_path):
    a = np.random.default_rng(4).random((16, 16, 16)).astype(np.float32)
    src = make_volume(tmp_path / "p.zarr", a, (8, 8, 8))
    m = emarray.threshold(src, tmp_path / "fine.zarr", 0.5, chunks="4,4,8")
    assert m.chunks == (4, 4, 8)
    np.testing.assert_array_equal(m.read(), reference(a, 0.5, "gt"))
    with pytest.raises(ChunkAlignmentError, match=r"chunks 16,16,16 does not fit.*e\.g\. --chunks 8,8,8"):
        emarray.threshold(src, tmp_path / "coarse.zarr", 0.5, chunks="16,16,16")
    assert not (tmp_path / "coarse.zarr").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "abc"])
def test_bad_threshold_is_refused_before_work(tmp_path, bad):
    src = make_volume(tmp_path / "p.zarr", np.zeros((4, 4, 4), np.float32), 2)
    before = tree_digest(tmp_path)
    with pytest.raises(InvalidArgumentError, match="value must be"):
        emarray.threshold(src, tmp_path / "m.zarr", bad)
    assert tree_digest(tmp_path) == before


def test_existing_output_needs_overwrite_and_is_kept(tmp_path):
    src = make_volume(tmp_path / "p.zarr", np.ones((4, 4, 4), np.float32), 2)
    old = emarray.rescale(src, tmp_path / "m.zarr", (0, 2))  # an earlier emarray job's output
    before = tree_digest(tmp_path / "m.zarr")
    with pytest.raises(OutputExistsError, match="m.zarr.*--overwrite"):
        emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    assert tree_digest(tmp_path / "m.zarr") == before
    np.testing.assert_array_equal(old.read(), 128)
    m = emarray.threshold(src, tmp_path / "m.zarr", 0.5, overwrite=True)
    np.testing.assert_array_equal(m.read(), np.ones((4, 4, 4)))


def test_output_inside_input_is_refused(tmp_path):
    src = make_volume(tmp_path / "p.zarr", np.ones((4, 4, 4), np.float32), 2)
    before = tree_digest(tmp_path)
    for dst in (tmp_path / "p.zarr", tmp_path / "p.zarr" / "m"):
        with pytest.raises(InvalidArgumentError, match="overlaps the input"):
            emarray.threshold(src, dst, 0.5, overwrite=True)
    assert tree_digest(tmp_path) == before


def test_non_numeric_input_is_refused(tmp_path):
    import zarr
    zarr.create_array(str(tmp_path / "b.zarr"), shape=(4, 4, 4), dtype=bool, chunks=(2, 2, 2))
    with pytest.raises(InvalidArgumentError, match="numeric dtype.*bool"):
        emarray.threshold(tmp_path / "b.zarr", tmp_path / "m.zarr", 0.5)
    assert not (tmp_path / "m.zarr").exists()


def test_bad_op_backend_and_scheduler_are_named(tmp_path):
    src = make_volume(tmp_path / "p.zarr", np.ones((4, 4, 4), np.float32), 2)
    with pytest.raises(InvalidArgumentError, match="'lessthan'"):
        emarray.threshold(src, tmp_path / "m.zarr", 0.5, compare="lessthan")
    with pytest.raises(InvalidArgumentError, match="'tpu'"):
        emarray.threshold(src, tmp_path / "m.zarr", 0.5, backend="tpu")
    with pytest.raises(InvalidArgumentError, match="'fast'"):
        emarray.threshold(src, tmp_path / "m.zarr", 0.5, scheduler="fast")
    assert not (tmp_path / "m.zarr").exists()
