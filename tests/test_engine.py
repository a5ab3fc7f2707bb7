from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import emarray
from emarray.engine import BlockGrid, Checkpoint, Runner, check_aligned, reduce_blocks
from emarray.engine.checkpoint import PROGRESS_DIR
from emarray.errors import ChunkAlignmentError, ResumeMismatchError

from .conftest import kill_when, make_volume, tree_digest
from .helpers import cli

PY = sys.executable
BIN = Path(sys.executable).parent


emarray_cli = cli


def test_block_grid_covers_the_array_once():
    g = BlockGrid((10, 7, 5), (4, 3, 5))
    seen = np.zeros((10, 7, 5), int)
    for i in g.indices():
        seen[g.region(i)] += 1
    assert len(g) == 3 * 3 * 1 and (seen == 1).all()


def test_alignment_check():
    check_aligned(BlockGrid((10, 10, 10), (4, 4, 4)), (2, 4, 4))
    check_aligned(BlockGrid((10, 10, 10), (10, 10, 10)), (4, 4, 4))  # one block per axis
    with pytest.raises(ChunkAlignmentError, match="axis 1"):
        check_aligned(BlockGrid((10, 10, 10), (4, 4, 4)), (4, 8, 4))


def _sumsq(ctx, block):
    b = block.astype(np.float64)
    return np.array([b.sum(), (b * b).sum(), b.size])


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_reduce_blocks_equals_whole_volume(tmp_path, scheduler):
    a = np.random.default_rng(5).random((19, 23, 29))
    v = make_volume(tmp_path / "a.zarr", a, (5, 6, 7))
    s, ss, n = reduce_blocks(_sumsq, [v], np.add, scheduler=scheduler)
    assert n == a.size
    assert s == pytest.approx(a.sum()) and ss == pytest.approx((a * a).sum())


def done_count(done_dir: Path, stage: str = "threshold") -> int:
    try:
        return Checkpoint(done_dir).done_count(stage)
    except (OSError, EOFError):
        return 0


def _kill_when(proc, done_dir: Path, at_least: int, timeout: float = 120) -> int:
    return kill_when(proc, lambda: done_count(done_dir) if done_dir.is_dir() else 0, at_least,
                     timeout)


def test_resume_after_kill_gives_a_clean_runs_output(tmp_path):
    a = np.random.default_rng(6).random((48, 48, 64)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (4, 4, 8))  # 1152 small chunks: a slow-ish job
    args = ["-q", "threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3",
            "--scheduler", "synchronous"]
    proc = subprocess.Popen([PY, "-m", "emarray", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EMARRAY_CHECKPOINT_SECONDS": "0"})
    done = _kill_when(proc, tmp_path / "m.zarr" / PROGRESS_DIR, 200)
    assert proc.returncode == -signal.SIGKILL
    markers = tmp_path / "m.zarr" / PROGRESS_DIR
    n_marked = done_count(markers)
    assert 200 <= done <= n_marked < 1152
    assert len(list(markers.iterdir())) <= 3  # a bitmap, not a file per block
    bitmap, _ = Checkpoint(markers).load("threshold", 1152)
    idx = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bitmap)[0]), (12, 12, 8)))
    chunk = tmp_path / "m.zarr" / "0" / "c" / Path(*map(str, idx))
    stamp = chunk.stat().st_mtime_ns

    # without --resume the partial output is protected
    r = emarray_cli(*args)
    assert r.returncode == 2 and "--resume" in r.stderr
    # a different job cannot resume into it
    r = emarray_cli(*args[:-4], "--value", "0.4", "--scheduler", "synchronous", "--resume")
    assert r.returncode == 2 and "another job" in r.stderr

    r = emarray_cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3",
                    "--resume")
    assert r.returncode == 0, r.stderr
    assert f"resuming: {n_marked} of 1152 blocks already done" in r.stderr
    assert chunk.stat().st_mtime_ns == stamp  # finished chunks were not rewritten
    assert not markers.exists()
    clean = emarray.threshold(tmp_path / "p.zarr", tmp_path / "clean.zarr", 0.3)
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(), clean.read())
    got, want = tree_digest(tmp_path / "m.zarr" / "0"), tree_digest(tmp_path / "clean.zarr" / "0")
    assert got == want  # byte for byte, chunk for chunk
    # resuming a finished job does nothing and changes nothing
    before = tree_digest(tmp_path / "m.zarr")
    assert emarray_cli(*args, "--resume").returncode == 0
    assert tree_digest(tmp_path / "m.zarr") == before


def test_resume_into_other_jobs_output_is_refused(tmp_path):
    src = make_volume(tmp_path / "p.zarr", np.ones((4, 4, 4), np.float32), 2)
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    with pytest.raises(ResumeMismatchError, match="another job"):
        emarray.threshold(src, tmp_path / "m.zarr", 0.7, resume=True)


@pytest.mark.cluster
def test_threshold_on_a_real_dask_cluster(tmp_path, dask_cluster):
    address, _ = dask_cluster  # (the session's: two workers)
    a = np.random.default_rng(7).random((20, 30, 40)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (5, 10, 10))
    r = emarray_cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.6",
                    "--scheduler", address)
    assert r.returncode == 0, r.stderr
    assert "dask dashboard: http://127.0.0.1" in r.stderr
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  (a > 0.6).astype(np.uint8))
    # the address may also come from the environment, as on a cluster job
    r = emarray_cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "m2.zarr", "--value",
                    "0.6", env={"DASK_SCHEDULER_ADDRESS": address})
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m2.zarr").read(),
                                  (a > 0.6).astype(np.uint8))
    # both workers did work: reductions run there too
    from distributed import Client
    with Client(address) as c:
        with Runner(c) as runner:
            hosts = runner.run([(os.getpid, ()) for _ in range(40)])
    assert len(set(hosts)) == 2 and os.getpid() not in hosts


def test_unreachable_scheduler_is_named(tmp_path, monkeypatch):
    from emarray.engine import schedulers
    monkeypatch.setattr(schedulers, "DEFAULT_CONNECT_TIMEOUT", 0.5)  # the default's path, sooner
    src = make_volume(tmp_path / "p.zarr", np.ones((4, 4, 4), np.float32), 2)
    with pytest.raises(OSError, match="127.0.0.1:9"):
        emarray.threshold(src, tmp_path / "m.zarr", 0.5, scheduler="tcp://127.0.0.1:9")
    assert not (tmp_path / "m.zarr").exists()  # connecting comes before creating the output


def test_reads_through_the_chunk_cache_equal_direct_reads_and_never_go_stale(tmp_path):
    """Grown reads (halos) assemble whole decoded chunks kept in emarray.chunk_cache; a chunk
    rewritten since is read again, and a cache of 0 bytes reads directly."""
    from emarray.chunk_cache import CACHE
    a = np.random.default_rng(3).random((20, 30, 41)).astype(np.float32)
    v = make_volume(tmp_path / "a.zarr", a, (8, 16, 16))
    CACHE.clear()
    hits = CACHE.hits
    for region in [(slice(3, 17), slice(5, 30), slice(0, 41)), (slice(0, 20), slice(15, 17),
                                                                  slice(31, 40))]:
        np.testing.assert_array_equal(v.read(region), a[region])
        np.testing.assert_array_equal(v.read(region), a[region])
    assert CACHE.hits > hits and CACHE.nbytes > 0
    v.write((slice(8, 16), slice(16, 30), slice(16, 32)), np.full((8, 14, 16), -1, np.float32))
    a[8:16, 16:30, 16:32] = -1
    region = (slice(3, 17), slice(5, 30), slice(0, 41))
    np.testing.assert_array_equal(v.read(region), a[region])
    # aligned reads and a disabled cache bypass it
    n = CACHE.misses + CACHE.hits
    np.testing.assert_array_equal(v.read((slice(0, 8), slice(0, 16), slice(0, 16))),
                                  a[:8, :16, :16])
    capacity, CACHE.capacity = CACHE.capacity, 0
    try:
        np.testing.assert_array_equal(v.read(region), a[region])
    finally:
        CACHE.capacity = capacity
    assert CACHE.misses + CACHE.hits == n


def test_a_job_that_fails_before_any_block_leaves_no_unfinished_output(tmp_path):
    from emarray.engine import BlockGrid, Stage, Write, run_job
    from emarray.engine.contract import MAX_BLOCKS

    def create(path):
        return emarray.create_volume(path, (4, 4, 4), "uint8", 2)

    def stages(out):
        return [Stage("huge", lambda ctx: None, BlockGrid((MAX_BLOCKS + 1, 1, 1), (1, 1, 1)),
                      writes=[Write(out)])]

    with pytest.raises(emarray.errors.InvalidArgumentError, match="blocks"):
        run_job(tmp_path / "o.zarr", create, job={"operator": "x"}, stages=stages,
                options=emarray.RunOptions())
    assert list(tmp_path.iterdir()) == []
