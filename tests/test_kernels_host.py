"""The real kernels/*.cu sources, run on the CPU through the real CuPy wrappers (tests/cuda_host),
compared exactly with their CPU twins: every kernel and every instantiated dtype, ragged shapes,
non-contiguous views, NaN, ±inf, subnormals, dtype extremes, one-value thresholds, empty and
full masks; blocks in shuffled order, each array against an inaccessible page at either end.

What this cannot find (a GPU run can): weak memory ordering between blocks, warp-level
scheduling, launch failures and resource limits, and flush-to-zero (the host keeps subnormals;
the module options that keep them on the GPU are checked below).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import tests.cuda_host as H
from emarray.kernel_table import (CTYPES, FAMILIES, HIST_BUCKET_DTYPES, HIST_LEVEL_DTYPES,
                                  LABEL_CONNECTIVITY, LABEL_CTYPES, POOL_MODES, SMOOTH_DTYPES,
                                  THRESHOLD_OPS, launch_blocks)

pytestmark = pytest.mark.skipif(H.CXX is None, reason="no C++ compiler (g++) on PATH")
#: ragged shapes: 1, 7, 33 and 1000 voxels on each axis
SHAPES = [(1, 1, 1), (7, 33, 1000), (1000, 7, 1), (33, 1000, 7), (1, 7, 33), (33, 33, 33)]
SMALL = [(1, 1, 1), (7, 33, 100), (33, 1, 7), (1, 100, 33)]


@pytest.fixture
def cp():
    with H.host_cupy() as module:
        yield module


@pytest.fixture(params=["end", "start"])
def guard(request, monkeypatch):
    monkeypatch.setattr(H, "GUARD", request.param)
    return request.param


def special_values(dtype) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        fi = np.finfo(dt)
        return np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, fi.smallest_subnormal,
                         -fi.smallest_subnormal, fi.smallest_subnormal * 7, fi.tiny, -fi.tiny,
                         fi.max, fi.min, 0.5, 1.0, -1.0], dt)
    ii = np.iinfo(dt)
    return np.array([ii.min, ii.max, 0, 1, ii.max - 1, ii.min + 1, ii.max // 2], dt)


def volume(shape, dtype, seed=0) -> np.ndarray:
    """Random values of ``dtype`` with every special value sprinkled in."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    if dt.kind == "f":
        a = (rng.standard_normal(n) * 3).astype(dt)
    else:
        ii = np.iinfo(dt)
        a = rng.integers(ii.min, ii.max, n, dtype=dt, endpoint=True)
    sp = special_values(dt)
    k = min(n, 4 * sp.size)
    a[rng.choice(n, k, replace=False)] = np.resize(sp, k)
    return a.reshape(shape)


def thresholds(dtype) -> list:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        fi = np.finfo(dt)
        return [dt.type(0.5), dt.type(fi.smallest_subnormal), dt.type(-0.0), dt.type(fi.max)]
    ii = np.iinfo(dt)
    return [dt.type(ii.max // 3), dt.type(ii.min), dt.type(ii.max)]


COMPARE = {"gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal}


# -- threshold.cu ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", list(CTYPES), ids=str)
def test_threshold_kernel_equals_numpy(cp, guard, dtype):
    """Every shape, and every op at every threshold; a launch costs the same whatever the op
    (one template), so the shapes take turns among the ops rather than all meeting all."""
    from emarray.cuda.elementwise import threshold_device

    def check(a, op, t):
        want = COMPARE[op](a, t).astype(np.uint8)  # NaN compares false, as in the kernel
        got = threshold_device(cp.asarray(a), op, t)
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"{op} {t!r} {a.shape}")
    ops = list(THRESHOLD_OPS)
    for i, shape in enumerate(SHAPES):
        a = volume(shape, dtype, seed=i)
        check(a, ops[i % len(ops)], thresholds(dtype)[i % 2])
    # every op at every threshold, on a ragged volume holding every special value
    a = volume((1, 7, 33), dtype, seed=7)
    for op, t in itertools.product(THRESHOLD_OPS, thresholds(dtype)):
        check(a, op, t)
    # one value everywhere, at the threshold itself: gt and lt give 0, ge and le give 1
    t = thresholds(dtype)[0]
    flat = np.full((3, 5, 37), t, dtype)
    for op in THRESHOLD_OPS:
        got = np.asarray(threshold_device(cp.asarray(flat), op, t))
        assert (got == (1 if op in ("ge", "le") else 0)).all(), op
    # a non-contiguous view: the wrapper copies it to a contiguous array first
    a = volume((9, 40, 66), dtype, seed=3)
    view = cp.asarray(a)[:, 1::3, ::2]
    got = threshold_device(view, "gt", thresholds(dtype)[0])
    np.testing.assert_array_equal(np.asarray(got), (a[:, 1::3, ::2] > thresholds(dtype)[0]))


def test_the_vector_path_and_the_scalar_path_both_run(cp, monkeypatch):
    """Aligned arrays take the 16-byte vector loads; an array that starts off 16 bytes takes
    the element-by-element loop: both give the same bytes, ragged tails included."""
    from emarray.cuda.elementwise import threshold_device
    a = volume((1, 3, 1001), np.float32, seed=9)
    monkeypatch.setattr(H, "GUARD", "start")  # page-aligned: the vector path
    aligned = cp.asarray(a)
    assert aligned.data.ptr % 16 == 0
    monkeypatch.setattr(H, "GUARD", "end")  # 3003 * 4 bytes end on a page: start is not aligned
    unaligned = cp.asarray(a)
    assert unaligned.data.ptr % 16 != 0
    for d in (aligned, unaligned):
        np.testing.assert_array_equal(np.asarray(threshold_device(d, "ge", np.float32(0.5))),
                                      a >= np.float32(0.5))


# -- convert.cu ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int16], ids=str)
def test_rescale_equals_the_cpu_path(cp, guard, dtype):
    from emarray.cuda.elementwise import rescale_u8_device
    from emarray.ops.rescale import rescale_block_cpu
    dt = np.dtype(dtype)
    ranges = [(0.0, 1.0), (-3.0, 3.0), (float(np.finfo(np.float32).smallest_subnormal), 1e-30)] \
        if dt.kind == "f" else [(0, 1000), (-5, 300), (1, 2)]
    for (lo, hi), shape in itertools.product(ranges, SMALL):
        a = volume(shape, dt, seed=len(shape))
        got = np.asarray(rescale_u8_device(cp.asarray(a), lo, hi))
        np.testing.assert_array_equal(got, rescale_block_cpu(a, lo=lo, hi=hi),
                                      err_msg=f"{lo}..{hi} {shape}")


# -- histogram.cu ----------------------------------------------------------------------------
def histogram_twin(x, cls, edges):
    """The sweep's CPU histogram (numba, emarray.ops.sweep) on the same classes."""
    from emarray.ops._histogram_cpu import lookup_table
    from emarray.ops.sweep import histogram_block_cpu
    table = lookup_table(edges) if x.dtype not in HIST_LEVEL_DTYPES else None
    # the twin takes truth and derives classes: truth 1/0 and a mask for class 2
    truth = (cls == 1).astype(np.uint8)
    mask = (cls != 2).astype(np.uint8)
    return histogram_block_cpu(x, truth, mask, edges=edges, table=table)


@pytest.mark.parametrize("dtype", HIST_BUCKET_DTYPES + HIST_LEVEL_DTYPES, ids=str)
def test_histogram_kernel_equals_the_cpu_histogram(cp, guard, dtype):
    from emarray.cuda.histogram import histogram_device
    rng = np.random.default_rng(1)
    dt = np.dtype(dtype)
    cases = [(1, 1, 1), (7, 33, 100), (33, 7, 1)]
    # 1 and 99 thresholds use shared memory; 5000 do not fit it (global atomics)
    counts = [1, 99, 5000] if dt.kind == "f" else [None]
    for shape, k in itertools.product(cases, counts):
        if dt.kind == "f":
            x = volume(shape, dt, seed=k).reshape(-1)
            x[::5] = rng.random(x[::5].size)  # most values inside the swept range
            edges = np.unique(np.concatenate([np.linspace(0, 1, k, endpoint=False)[:k],
                                              special_values(dt)[3:5]]))[:k].astype(dt)
            edges = np.sort(edges)
        else:
            x = volume(shape, dt, seed=2).reshape(-1)
            edges = np.arange(np.iinfo(dt).max, dtype=dt)
        cls = rng.integers(0, 3, x.size).astype(np.uint8)
        hist, nan = histogram_device(cp.asarray(x), cp.asarray(cls), edges)
        want, want_nan = histogram_twin(x, cls, edges)
        np.testing.assert_array_equal(np.asarray(hist).reshape(-1, 3), want, err_msg=str(shape))
        np.testing.assert_array_equal(np.asarray(nan), want_nan)


# -- smooth.cu -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", SMOOTH_DTYPES, ids=str)
def test_smooth_kernel_equals_its_numpy_twin(cp, guard, dtype):
    from emarray.cuda.smooth import smooth_device
    from emarray.ops.smooth import gaussian_weights, smooth_block_twin
    dt = np.dtype(dtype)
    for shape, sig in [((1, 1, 1), (1.0, 1.0, 1.0)), ((7, 33, 40), (0.0, 2.0, 1.0)),
                       ((33, 7, 1), (3.0, 0.5, 2.0)), ((5, 1, 60), (1.0, 0.0, 9.0))]:
        a = volume(shape, dt, seed=4)
        if dt.kind == "f":
            a = np.where(np.isfinite(a), a, 0).astype(dt)  # one inf smears inf/NaN everywhere
            a.reshape(-1)[::7] = np.finfo(dt).smallest_subnormal
        weights = tuple(gaussian_weights(s) if s else None for s in sig)
        got = np.asarray(smooth_device(cp.asarray(a), weights))
        np.testing.assert_array_equal(got, smooth_block_twin(a, weights=weights),
                                      err_msg=f"{shape} {sig}")


def test_smooth_kernel_propagates_nan_and_inf_like_its_twin(cp):
    from emarray.cuda.smooth import smooth_device
    from emarray.ops.smooth import gaussian_weights, smooth_block_twin
    a = np.zeros((5, 9, 11), np.float32)
    a[2, 4, 5], a[0, 0, 0], a[4, 8, 10] = np.nan, np.inf, -np.inf
    w = (gaussian_weights(1.0),) * 3
    np.testing.assert_array_equal(np.asarray(smooth_device(cp.asarray(a), w)),
                                  smooth_block_twin(a, weights=w))


# -- pool.cu ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", list(CTYPES), ids=str)
def test_pool_kernel_equals_its_numpy_twin(cp, guard, dtype):
    from emarray.cuda.pool import pool_device
    from emarray.ops.pool import pool_twin
    dt = np.dtype(dtype)
    for shape, mode, fz in itertools.product([(1, 1, 1), (7, 33, 9), (33, 7, 1), (2, 100, 33)],
                                             POOL_MODES, (1, 2)):
        a = volume(shape, dt, seed=fz)
        if mode == "mode":  # few distinct values: real ties and majorities
            a = special_values(dt)[np.random.default_rng(fz).integers(0, 3, shape)]
        factors = (fz, 2, 2)
        got = np.asarray(pool_device(cp.asarray(a), factors, mode))
        want = pool_twin(a, factors, mode)
        np.testing.assert_array_equal(got, want, err_msg=f"{mode} {factors} {shape}")


# -- label.cu --------------------------------------------------------------------------------
#: each dtype beside one guard page, each item size beside both: the three kernels index the
#: same way whatever the dtype, so a read or write past either end shows at either size
LABEL_CASES = [("start" if i % 2 == 0 else "end", dt) for i, dt in enumerate(LABEL_CTYPES)]


@pytest.mark.parametrize(("at", "dtype"), LABEL_CASES, ids=lambda v: str(v))
def test_label_kernels_equal_cc3d(cp, monkeypatch, at, dtype):
    monkeypatch.setattr(H, "GUARD", at)
    from emarray.cuda.label import label_device
    from emarray.ops.components import label_block_cpu
    dt = np.dtype(dtype)
    rng = np.random.default_rng(5)
    vals = np.array([0, 1, 2, np.iinfo(dt).max], dt)
    conns = list(LABEL_CONNECTIVITY)
    for i, shape in enumerate([(1, 1, 1), (7, 33, 20), (20, 7, 1), (1, 40, 33)]):
        a = vals[rng.integers(0, 4, shape) * (rng.random(shape) < 0.6)]
        # the random block at every connectivity; the empty and the full one (the same at
        # any connectivity) at one, in turn
        blocks = [(a, c) for c in conns] + [(np.zeros(shape, dt), conns[i % len(conns)]),
                                            (np.full(shape, vals[3], dt), conns[i % len(conns)])]
        for block, conn in blocks:
            got = np.asarray(label_device(cp.asarray(block), conn))
            want = label_block_cpu(block, connectivity=conn, binary=False, background=0)
            np.testing.assert_array_equal(got, want, err_msg=f"{shape} {conn}")


def test_label_kernel_on_a_long_snake_that_merges_late(cp):
    """One component threading through every block of the grid: the unions race across
    threads of a block and across blocks, and roots must still end at the first voxel."""
    from emarray.cuda.label import label_device
    from emarray.ops.components import label_block_cpu
    a = np.zeros((3, 31, 64), np.uint8)
    a[1, ::2, :] = 1
    a[1, 1::4, -1] = 1
    a[1, 3::4, 0] = 1
    got = np.asarray(label_device(cp.asarray(a), 6))
    assert got.max() == 1
    np.testing.assert_array_equal(got, label_block_cpu(a, connectivity=6, binary=True,
                                                       background=0))


# -- the wrappers around the kernels ---------------------------------------------------------
def test_launch_sizes_come_from_the_shared_computation(cp, monkeypatch):
    """The wrappers launch what launch_blocks says for the device's multiprocessors."""
    from emarray.cuda.elementwise import threshold_device
    seen = []
    real = H.HostKernel.__call__

    def spy(self, grid, block, args, shared_mem=0, stream=None):
        seen.append((tuple(grid), tuple(block)))
        return real(self, grid, block, args, shared_mem=shared_mem, stream=stream)

    monkeypatch.setattr(H.HostKernel, "__call__", spy)
    a = np.zeros(100_001, np.float64)
    monkeypatch.setattr(H, "GUARD", "end")  # 800008 bytes: not 16-aligned, element by element
    threshold_device(cp.asarray(a), "gt", np.float64(0))
    assert seen[-1] == (launch_blocks(a.size, H.SMS), (256,))
    assert seen[-1][0][0] == H.SMS * 32  # grid-stride: fewer blocks than items


def test_a_wrong_argument_type_is_caught_as_the_gpu_would_misread_it(cp):
    from emarray.cuda.modules import get_kernel
    from emarray.kernel_table import threshold_name
    k = get_kernel("threshold.cu", threshold_name(np.float32, "gt"))
    a, out = cp.asarray(np.zeros(8, np.float32)), cp.empty(8, np.uint8)
    with pytest.raises(TypeError, match="argument 2"):
        k((1,), (256,), (a, out, np.int32(8), np.float32(0), np.int32(0)))  # n is 64-bit
    with pytest.raises(TypeError, match="argument 0"):
        k((1,), (256,), (np.zeros(8, np.float32), out, np.int64(8), np.float32(0), np.int32(0)))
    with pytest.raises(TypeError, match="argument 3"):
        k((1,), (256,), (a, out, np.int64(8), np.float64(0), np.int32(0)))


def test_reading_past_an_array_crashes_instead_of_passing(tmp_path):
    """The guard pages work: a kernel that reads one element past the end is killed."""
    import subprocess
    import sys
    code = (
        "import numpy as np, tests.cuda_host as H\n"
        "from emarray.cuda.elementwise import threshold_device\n"
        "with H.host_cupy() as cp:\n"
        "    a = cp.asarray(np.zeros(1024, np.float32))\n"
        "    threshold_device(a[:1000], 'gt', np.float32(0))\n"  # fine: a copy of 1000
        "    print('ok', flush=True)\n"
        "    from emarray.cuda.modules import get_kernel\n"
        "    from emarray.kernel_table import threshold_name\n"
        "    k = get_kernel('threshold.cu', threshold_name(np.float32, 'gt'))\n"
        "    b = cp.asarray(np.zeros(1000, np.float32)); o = cp.empty(2000, np.uint8)\n"
        "    k((1,), (256,), (b, o, np.int64(2000), np.float32(0), np.int32(0)))\n"
        "    print('not caught', flush=True)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert r.stdout.startswith("ok") and "not caught" not in r.stdout
    assert r.returncode < 0 or r.returncode == 139 or r.returncode == -11, (r.returncode, r.stderr)


def test_the_modules_keep_subnormals_and_ieee_rounding(cp):
    """CuPy's NVRTC options: no flush-to-zero, no fused multiply-add (as the CPU twins)."""
    from emarray.cuda.elementwise import threshold_device
    threshold_device(cp.asarray(np.zeros(3, np.float32)), "gt", np.float32(0))
    opts = H.OPTIONS_SEEN["threshold.cu"]
    assert "-ftz=false" in opts and "-fmad=false" in opts
    assert "-prec-div=true" in opts and "-prec-sqrt=true" in opts


def test_every_instantiation_ran():
    """Runs last in this module: every name expression of every family was launched above."""
    want = {(f, n) for f, names in FAMILIES.items() for n in names}
    missing = sorted(want - H.LAUNCHED)
    assert not missing, f"{len(missing)} of {len(want)} never ran: {missing[:5]}"
