"""GPU tests: each kernel equals its CPU twin exactly; bounded memory; the OOM retry path.

Run on a machine with a CUDA device and CuPy:  python -m pytest -m gpu tests/test_cuda.py
(compute-sanitizer memcheck runs the parity tests again when it is on PATH).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import emarray
from emarray.backends import cuda_available
from emarray.kernel_table import CTYPES
from emarray.ops.rescale import rescale_block_cpu
from emarray.ops.threshold import normalize_threshold, threshold_block_cpu

from .conftest import make_volume

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA device")]
DTYPES = sorted((str(d) for d in CTYPES), key=str)
SIZES = [1, 3, 15, 16, 17, 255, 1023, 4099, (1 << 20) + 3]
POISON = 0xAB


def _poisoned(n, dtype=np.uint8):
    import cupy
    out = cupy.empty(n, dtype)
    out.view(cupy.uint8).fill(POISON)
    return out


def _data(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = rng.random(n).astype(dt)
        a[::5] = np.round(a[::5], 1)
        if n > 4:
            a[1], a[3] = np.nan, np.inf
        return a
    info = np.iinfo(dt)
    return rng.integers(max(info.min, -1000), min(info.max, 1000) + 1, n).astype(dt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["gt", "ge", "lt", "le"])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_threshold_kernel_parity(dtype, op, offset):
    import cupy
    from emarray.cuda.elementwise import threshold_device
    for n in SIZES:
        host = _data(n + offset, dtype, seed=n)
        t = 0.5 if np.dtype(dtype).kind == "f" else 7.5
        o, v = normalize_threshold(dtype, t, op)
        dev = cupy.asarray(host)[offset:]  # an unaligned start for offset > 0
        out_full = _poisoned(n + 1)
        out = out_full[1:] if offset else out_full[:n]  # and an unaligned output
        threshold_device(dev, o, v, out=out)
        want = threshold_block_cpu(host[offset:], op=o, value=v)
        np.testing.assert_array_equal(out.get(), want, err_msg=f"n={n}")
        if not offset:
            assert int(out_full[n]) == POISON  # nothing written past the end


@pytest.mark.parametrize("dtype", DTYPES)
def test_rescale_kernel_parity(dtype):
    import cupy
    from emarray.cuda.elementwise import rescale_u8_device
    for n in SIZES:
        host = _data(n, dtype, seed=n) * (3 if np.dtype(dtype).kind == "f" else 1)
        out = _poisoned(n)
        rescale_u8_device(cupy.asarray(host), 0.25, 2.0, out=out)
        np.testing.assert_array_equal(out.get(), rescale_block_cpu(host, lo=0.25, hi=2.0))


def test_threshold_above_2_pow_31_elements():
    import cupy
    from emarray.cuda.elementwise import threshold_device
    n = (1 << 31) + 77
    dev = cupy.arange(n, dtype=cupy.uint8)  # wraps every 256
    out = _poisoned(n)
    threshold_device(dev, "ge", np.uint8(200), out=out)
    # check the tail and a sample against the CPU twin without copying all back
    for a in (0, (1 << 31) - 5, n - 300):
        seg = np.arange(a, min(a + 300, n)).astype(np.uint8)
        np.testing.assert_array_equal(out[a:a + len(seg)].get(), (seg >= 200).astype(np.uint8))
    assert int(out.sum(dtype=cupy.int64)) == int(((np.arange(256) >= 200).sum()) * (n // 256)
                                                  + ((np.arange(n % 256) >= 200).sum()))


@pytest.mark.parametrize("chunks", [(8, 16, 16), (5, 7, 9)])
def test_zarr_to_zarr_cuda_equals_cpu(tmp_path, chunks):
    a = np.random.default_rng(3).random((21, 33, 40)).astype(np.float32)
    src = make_volume(tmp_path / "p.zarr", a, chunks)
    gpu = emarray.threshold(src, tmp_path / "g.zarr", 0.3, backend="cuda")
    cpu = emarray.threshold(src, tmp_path / "c.zarr", 0.3, backend="cpu")
    np.testing.assert_array_equal(gpu.read(), cpu.read())


def test_volume_five_times_the_memory_cap(tmp_path):
    import cupy
    from emarray.cuda import streaming
    cap = 64 * 2**20  # the smallest cap parse_memory_limit accepts
    a = np.random.default_rng(4).random((80, 1024, 1024)).astype(np.float32)  # 320 MiB = 5x cap
    src = make_volume(tmp_path / "p.zarr", a, (20, 1024, 1024))  # 80 MiB blocks > cap too
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    peak = [0]

    def tracking_malloc(nbytes):  # every device allocation goes through the pool: record its peak
        mem = pool.malloc(nbytes)
        peak[0] = max(peak[0], pool.total_bytes())
        return mem

    cupy.cuda.set_allocator(tracking_malloc)
    try:
        m = emarray.threshold(src, tmp_path / "m.zarr", 0.5, backend="cuda",
                              gpu_memory_limit=cap, scheduler="threads", workers=2)
    finally:
        cupy.cuda.set_allocator(pool.malloc)
        streaming._limits.clear()
        pool.set_limit(size=0)
    assert 0 < peak[0] <= cap
    np.testing.assert_array_equal(m.read(), (a > 0.5).astype(np.uint8))


def test_out_of_memory_retry_in_halves_gives_identical_output():
    import cupy
    from emarray.cuda import streaming
    from emarray.cuda.elementwise import threshold_device
    block = np.random.default_rng(5).random(6_000_000).astype(np.float32)  # 24 MB
    calls = []

    def step(d, s):
        calls.append(d.size)
        return threshold_device(d, "gt", np.float32(0.5), stream=s)

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    try:
        # force 24 MB pieces under a 4 MiB cap: the first try fails and is split
        real_cap = streaming.apply_memory_limit
        streaming.apply_memory_limit = lambda limit: (real_cap(limit), 1 << 40)[1]
        try:
            got = streaming.run_steps(block, [step], np.uint8, memory_limit=4 * 2**20,
                                      piece_bytes=len(block) * 4)
        finally:
            streaming.apply_memory_limit = real_cap
    finally:
        streaming._limits.clear()
        pool.set_limit(size=0)
    np.testing.assert_array_equal(got, (block > 0.5).astype(np.uint8))
    # the whole block's device copy failed (in cupy.empty, before any step), then it was
    # split: every piece the steps saw is at most half of it, and together they are all of it
    assert len(calls) > 1 and max(calls) <= len(block) // 2 and sum(calls) == len(block)


def test_out_of_memory_at_the_smallest_piece_is_a_clear_error(tmp_path):
    import cupy
    from emarray.cuda import streaming
    from emarray.errors import GpuOutOfMemoryError
    block = np.ones(3 * streaming.MIN_PIECE, np.float32)

    def step(d, s):
        raise cupy.cuda.memory.OutOfMemoryError(d.nbytes, 0, 0)

    with pytest.raises(GpuOutOfMemoryError, match="voxels 0:3"):
        streaming.run_steps(block, [step], np.uint8, region=(slice(0, 3),))
    streaming._limits.clear()


@pytest.mark.skipif(shutil.which("compute-sanitizer") is None or
                    os.environ.get("EMARRAY_UNDER_SANITIZER") == "1",
                    reason="compute-sanitizer not on PATH")
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer_is_clean(tool):
    """memcheck: no out-of-bounds or misaligned access; racecheck: no shared-memory hazard (the
    histogram's shared counters), on the kernel parity tests."""
    r = subprocess.run(["compute-sanitizer", "--tool", tool, "--error-exitcode", "99",
                        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        __file__, "-k", "parity or histogram_kernel"],
                       capture_output=True, text=True, env={**os.environ,
                                                            "EMARRAY_UNDER_SANITIZER": "1"})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    summary = "ERROR SUMMARY: 0 errors" if tool == "memcheck" else "SUMMARY: 0 hazards displayed (0 errors"
    assert summary in r.stdout + r.stderr


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8", "uint16"])
@pytest.mark.parametrize("nthresholds", [1, 100, 5000])
def test_histogram_kernel_equals_cpu(dtype, nthresholds):
    from emarray.cuda.histogram import histogram_block_cuda
    from emarray.ops._histogram_cpu import lookup_table
    from emarray.ops.sweep import exact_thresholds, histogram_block_cpu, sweep_thresholds
    rng = np.random.default_rng(nthresholds)
    for n in (1, 1023, 300_007):
        x = _data(n, dtype, seed=n) if dtype.startswith("float") else \
            rng.integers(0, np.iinfo(dtype).max + 1, n).astype(dtype)
        truth = rng.integers(0, 4, n).astype(np.uint8)
        mask = rng.integers(0, 5, n).astype(np.uint8)
        edges = exact_thresholds(np.dtype(dtype), sweep_thresholds(nthresholds))
        table = lookup_table(edges)
        kw = dict(truth_value=2, ignore_value=3, edges=edges, table=table)
        want = histogram_block_cpu(x, truth, mask, **kw)
        got = histogram_block_cuda(x, truth, mask, **kw)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_sweep_cuda_equals_cpu(tmp_path):
    a = np.random.default_rng(9).random((17, 33, 40)).astype(np.float32)
    t = (np.random.default_rng(10).random(a.shape) < 0.3).astype(np.uint8)
    pv = make_volume(tmp_path / "p.zarr", a, (8, 16, 16))
    tv = make_volume(tmp_path / "t.zarr", t, (8, 16, 16))
    import pandas as pd
    pd.testing.assert_frame_equal(emarray.sweep(pv, tv, backend="cuda"),
                                  emarray.sweep(pv, tv, backend="cpu"))
