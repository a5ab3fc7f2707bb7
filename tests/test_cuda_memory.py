"""CUDA memory caps, tested on the CPU through the host-run kernels (tests/cuda_host): every
CUDA operator honours its cap (splits a block on out of memory, or says in one line that a step
needs its whole block), smoothing is one algorithm per volume, pinned staging is bounded per
process, and the GPU tests' own memory cap is one the parser accepts."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import emarray
import tests.cuda_host as H
from emarray.engine.memory import MIN_LIMIT, parse_memory_limit
from emarray.errors import EmarrayError, GpuOutOfMemoryError

from .conftest import make_volume

pytestmark = pytest.mark.skipif(H.CXX is None, reason="no C++ compiler (g++) on PATH")


@pytest.fixture
def cp(monkeypatch):
    monkeypatch.setattr(H, "DEVICE_BYTES", 1 << 20)  # a 1 MiB device: caps as fractions of it
    with H.host_cupy() as module:
        yield module


def test_the_gpu_tests_memory_cap_is_one_the_parser_accepts():
    """tests/test_cuda.py's caps (the review found 32 MiB, refused below 64 MiB)."""
    import ast
    from pathlib import Path
    src = Path(__file__).with_name("test_cuda.py").read_text()
    caps = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Assign)
            and any(getattr(t, "id", "") == "cap" for t in n.targets)]
    assert caps
    for node in caps:
        value = eval(compile(ast.Expression(node.value), "cap", "eval"))
        assert value >= MIN_LIMIT and parse_memory_limit(value) == value


def test_pooling_splits_a_block_that_does_not_fit(cp):
    from emarray.cuda.pool import pool_block_cuda
    from emarray.ops.pool import pool_twin
    block = np.random.default_rng(0).integers(0, 255, (41, 96, 80)).astype(np.uint8)  # 315 KB
    for fz in (1, 2):
        H.ALLOCATIONS_REFUSED.clear()
        got = pool_block_cuda(block, factors=(fz, 2, 2), mode="mean", memory_limit=0.25)
        assert H.POOL.limit == (1 << 20) // 4  # the cap went to the pool
        assert H.ALLOCATIONS_REFUSED, "the whole block should not have fit"
        np.testing.assert_array_equal(got, pool_twin(block, (fz, 2, 2), "mean"))


def test_the_sweep_histogram_splits_a_block_that_does_not_fit(cp):
    from emarray.cuda.histogram import histogram_block_cuda
    from emarray.ops._histogram_cpu import lookup_table
    from emarray.ops.sweep import histogram_block_cpu
    rng = np.random.default_rng(1)
    prob = rng.random((20, 64, 64)).astype(np.float32)  # 320 KiB
    prob[0, 0, :5] = np.nan
    truth = (rng.random(prob.shape) > 0.7).astype(np.uint8)
    edges = np.linspace(0, 1, 100, endpoint=False).astype(np.float32)
    table = lookup_table(edges)
    got = histogram_block_cuda(prob, truth, edges=edges, table=table, memory_limit=0.25)
    assert H.ALLOCATIONS_REFUSED
    want = histogram_block_cpu(prob, truth, edges=edges, table=table)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("what", ["label", "smooth"])
def test_a_step_that_needs_its_whole_block_says_so_in_one_line(cp, what):
    block = np.ones((20, 64, 64), np.uint8)
    if what == "label":
        from emarray.cuda.label import label_block_cuda
        run = lambda cap: label_block_cuda(block, connectivity=26, binary=True,  # noqa: E731
                                           background=0, memory_limit=cap)
    else:
        from emarray.cuda.smooth import smooth_block_cuda
        from emarray.ops.smooth import gaussian_weights
        w = (gaussian_weights(1.0),) * 3
        run = lambda cap: smooth_block_cuda(block, weights=w, memory_limit=cap)  # noqa: E731
    with pytest.raises(GpuOutOfMemoryError, match=r"smaller --chunks") as exc:
        run(0.1)
    assert "\n" not in str(exc.value) and "MiB cap" in str(exc.value)
    H.POOL.limit = 0
    run(1.0)  # fits under the whole device


def test_smoothing_is_one_algorithm_per_volume(cp, tmp_path):
    """auto is the CPU (SciPy); --backend cuda runs the kernel on every block, equal to its
    twin on the whole volume; a resume on the other backend is refused."""
    from emarray.ops.smooth import gaussian_weights, smooth_block_twin
    a = np.random.default_rng(2).random((12, 20, 18)).astype(np.float32)
    src = make_volume(tmp_path / "a.zarr", a, (5, 8, 7))
    auto = emarray.smooth(src, tmp_path / "auto.zarr", 1.0, progress=False)
    assert auto.attrs["emarray"]["job"]["backend"] == "cpu"  # though "CUDA" is here
    from scipy import ndimage
    np.testing.assert_allclose(auto.read(), ndimage.gaussian_filter(a, 1.0), rtol=0, atol=1e-6)
    gpu = emarray.smooth(src, tmp_path / "gpu.zarr", 1.0, backend="cuda", progress=False,
                         scheduler="threads", workers=2)
    assert gpu.attrs["emarray"]["job"]["backend"] == "cuda"
    w = (gaussian_weights(1.0),) * 3
    np.testing.assert_array_equal(gpu.read(), smooth_block_twin(a, weights=w))
    with pytest.raises(EmarrayError, match="backend was 'cuda', this run has 'cpu'"):
        emarray.smooth(src, tmp_path / "gpu.zarr", 1.0, backend="cpu", resume=True,
                       progress=False)


def test_pinned_staging_is_bounded_per_process(cp):
    from emarray.cuda import streaming
    from emarray.cuda.elementwise import threshold_device
    blocks = [np.random.default_rng(i).random(300_000).astype(np.float32) for i in range(8)]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = streaming.run_steps(
            blocks[i], [lambda d, s: threshold_device(d, "gt", np.float32(0.5), stream=s)],
            np.uint8, piece_bytes=1 << 18)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, b in enumerate(blocks):
        np.testing.assert_array_equal(results[i], (b > 0.5).astype(np.uint8))
    assert streaming._sets_made <= streaming.PINNED_SETS
    # each set holds two slots in and two out of one piece each: nothing per thread
    piece = max(streaming.MIN_PIECE, (1 << 18) // 4)
    assert sum(H.PINNED) <= streaming.PINNED_SETS * 2 * (piece * 4 + piece)
