"""The block contract: halo, scaled and channel reads, crops, stages, setup, retries, progress."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from fractions import Fraction
from functools import partial

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emarray
from emarray.engine import (BlockGrid, Checkpoint, Read, RunOptions, Stage, TreeFold, Write,
                            run_job, run_stages)
from emarray.engine.checkpoint import PROGRESS_DIR
from emarray.errors import BlockFailedError, InvalidArgumentError, JobFailedError

from .conftest import make_volume

PY = sys.executable
NP_MODE = {"reflect": "symmetric", "nearest": "edge", "constant": "constant"}


def _check_read(ctx, arr, *, whole, halo, scale, boundary):
    """Compare the array the engine read with the same region cut from a padded whole."""
    pad = max(halo) + 40
    ref = np.pad(whole, pad, mode=NP_MODE.get(boundary, "constant"))
    region = ctx.reads[0]
    expect = ref[tuple(slice(r.start + pad, r.stop + pad) for r in region)]
    if boundary == "none":  # clipped to the volume
        assert all(r.start >= 0 and r.stop <= n for r, n in zip(region, whole.shape))
    for w, r, h, f, n in zip(ctx.region, region, halo, scale, whole.shape):
        lo, hi = int(np.floor(w.start * f)) - h, int(np.ceil(w.stop * f)) + h
        if boundary == "none":
            lo, hi = max(lo, 0), min(hi, n)
        assert (r.start, r.stop) == (lo, hi)
    return int(arr.shape == expect.shape and np.array_equal(arr, expect))


@st.composite
def shapes_and_chunks(draw):
    """1 to 13 voxels along each axis in chunks of 1 to 6, at most 4 along an axis: an edge
    block at each end and inner ones (more blocks repeat the inner case, each a read)."""
    shape = draw(st.tuples(*[st.integers(1, 13)] * 3))
    return shape, tuple(draw(st.integers(-(-n // 4), 6)) for n in shape)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape_chunk=shapes_and_chunks(), halo=st.tuples(*[st.integers(0, 7)] * 3),
       boundary=st.sampled_from(["reflect", "nearest", "constant", "none"]),
       scale=st.sampled_from([(1, 1, 1), (1, 2, 2), (2, 2, 2)]))
def test_reads_equal_a_padded_whole_volume(tmp_path_factory, shape_chunk, halo, boundary, scale):
    """Halo and scaled reads, for any chunking (blocks smaller than the halo too), are the
    padded whole volume's region (SciPy's reflect = NumPy's symmetric)."""
    shape, chunk = shape_chunk
    d = tmp_path_factory.mktemp("r")
    whole = np.random.default_rng(0).integers(0, 1000, shape).astype(np.int32)
    v = make_volume(d / "a.zarr", whole, chunk)
    out_shape = tuple(-(-s // f) for s, f in zip(shape, scale))
    grid = BlockGrid(out_shape, chunk)
    fn = partial(_check_read, whole=whole, halo=halo, scale=scale, boundary=boundary)
    stage = Stage("check", fn, grid, [Read(v, halo=halo, scale=scale, boundary=boundary)],
                  combine=lambda a, b: a + b)
    with RunOptions(scheduler="synchronous").runner() as r:
        ok = run_stages([stage], r, Checkpoint(None), retries=0)
    assert ok == len(grid)


def _identity(ctx, arr):
    return arr  # the whole (grown) read: the engine crops it to the write region


@pytest.mark.parametrize("chunks", [(2, 3, 4), (5, 5, 5), (1, 7, 2)])
def test_a_result_covering_the_halo_is_cropped(tmp_path, chunks):
    a = np.random.default_rng(1).random((9, 11, 7)).astype(np.float32)
    v = make_volume(tmp_path / "a.zarr", a, chunks)

    def create(path):
        return emarray.create_volume(path, a.shape, a.dtype, chunks, attrs={"job": {"t": 1}})

    out = run_job(tmp_path / "o.zarr", create, job={"t": 1}, options=RunOptions(),
                  stages=lambda o: [Stage("id", _identity, BlockGrid(a.shape, chunks),
                                          [Read(v, halo=3, boundary="reflect")], [Write(o)])])
    np.testing.assert_array_equal(out.read(), a)


def _wrong(ctx, arr, *, kind):
    if kind == "dtype":
        return arr.astype(np.float64)
    return arr[:-1] if arr.shape[0] > 1 else np.zeros((5, 5, 5), arr.dtype)


@pytest.mark.parametrize("kind", ["dtype", "shape"])
def test_a_wrong_result_is_refused_not_cast(tmp_path, kind):
    a = np.ones((4, 4, 4), np.float32)
    v = make_volume(tmp_path / "a.zarr", a, 2)

    def create(path):
        return emarray.create_volume(path, a.shape, a.dtype, 2, attrs={"job": {"t": 1}})

    with pytest.raises(BlockFailedError, match="float64 for an output of float32|returned shape"):
        run_job(tmp_path / "o.zarr", create, job={"t": 1}, options=RunOptions(),
                stages=lambda o: [Stage("w", partial(_wrong, kind=kind), BlockGrid(a.shape, (2, 2, 2)),
                                        [Read(v)], [Write(o)])])


def test_a_grid_straddling_output_chunks_is_refused(tmp_path):
    from emarray.errors import ChunkAlignmentError
    a = np.ones((8, 8, 8), np.uint8)
    v = make_volume(tmp_path / "a.zarr", a, 4)
    stage = Stage("s", _identity, BlockGrid(a.shape, (3, 4, 4)), [Read(v)], [Write(v)])
    with pytest.raises(ChunkAlignmentError, match="axis 0"):
        stage.check()


def _two_maps(ctx, block):
    return np.stack([block * 2, block + 1]).astype(np.float32)


def test_a_write_with_a_channel_axis_the_grid_lacks(tmp_path):
    """Write(channels="all"): a 3-D grid writes all channels of a c,z,y,x output per block."""
    from emarray.engine import Checkpoint as Ck
    from emarray.engine.schedulers import Runner
    from emarray.errors import ChunkAlignmentError
    a = np.random.default_rng(0).random((6, 7, 9)).astype(np.float32)
    v = make_volume(tmp_path / "a.zarr", a, (3, 4, 5))
    out = emarray.create_volume(tmp_path / "o.zarr", (2, 6, 7, 9), "float32", (2, 3, 4, 5),
                                axes=("c", "z", "y", "x"))
    stage = Stage("two", _two_maps, BlockGrid(a.shape, (3, 4, 5)), [Read(v)],
                  [Write(out, channels="all")])
    with Runner("threads", 2) as r:
        run_stages([stage], r, Ck(None))
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "o.zarr").read(),
                                  np.stack([a * 2, a + 1]))
    bad = Stage("two", _two_maps, BlockGrid(a.shape, (3, 2, 5)), [Read(v)],
                [Write(out, channels="all")])
    with pytest.raises(ChunkAlignmentError, match="axis 1"):
        bad.check()
    with pytest.raises(InvalidArgumentError, match="channels must be 'same' or 'all'"):
        Write(out, channels="drop")


def test_tree_fold_equals_a_plain_fold():
    fold = TreeFold(lambda a, b: a + b)
    for i in range(1000):
        fold.add([i])
    assert sorted(fold.result()) == list(range(1000)) and len(fold.stack) <= 10


def _flaky(ctx, arr, *, marker: str, fail_times: int):
    """Fails the first ``fail_times`` attempts of block (0, 0, 0); counts attempts in a file."""
    if ctx.index == (0, 0, 0):
        with open(marker, "a") as f:
            f.write("x")
        if os.path.getsize(marker) <= fail_times:
            raise OSError("transient read error")
    return arr


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_a_failing_block_is_retried_then_named(tmp_path, scheduler):
    a = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    v = make_volume(tmp_path / "a.zarr", a, 2)

    def create(path):
        return emarray.create_volume(path, a.shape, a.dtype, 2, attrs={"job": {"t": 1}})

    def go(dst, fail_times, retries):
        marker = tmp_path / f"{dst}.attempts"
        fn = partial(_flaky, marker=str(marker), fail_times=fail_times)
        return run_job(tmp_path / dst, create, job={"t": 1},
                       options=RunOptions(scheduler=scheduler, retries=retries),
                       stages=lambda o: [Stage("flaky", fn, BlockGrid(a.shape, (2, 2, 2)),
                                               [Read(v)], [Write(o)])])

    out = go("ok.zarr", fail_times=2, retries=2)  # fails twice, third attempt succeeds
    np.testing.assert_array_equal(out.read(), a)
    with pytest.raises(BlockFailedError, match=r"block \(0, 0, 0\) \(voxels 0:2,0:2,0:2\) of "
                                               r"flaky failed after 3 attempts: transient"):
        go("bad.zarr", fail_times=5, retries=2)
    assert (tmp_path / "bad.zarr.attempts").read_text() == "xxx"  # 1 try + 2 retries


def _count_setup(path: str) -> str:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return "state"


def _use_state(ctx, arr):
    assert ctx.state == "state"
    return arr


@pytest.mark.parametrize("scheduler,workers", [("threads", 2), ("processes", 2)])
def test_setup_runs_once_per_worker_process_not_per_block(tmp_path, scheduler, workers):
    a = np.random.default_rng(2).random((8, 8, 8)).astype(np.float32)
    v = make_volume(tmp_path / "a.zarr", a, 2)  # 64 blocks
    log = tmp_path / "setups.txt"

    def create(path):
        return emarray.create_volume(path, a.shape, a.dtype, 2, attrs={"job": {"t": 1}})

    out = run_job(tmp_path / "o.zarr", create, job={"t": 1},
                  options=RunOptions(scheduler=scheduler, workers=workers),
                  stages=lambda o: [Stage("s", _use_state, BlockGrid(a.shape, (2, 2, 2)), [Read(v)],
                                          [Write(o)], setup=partial(_count_setup, str(log)),
                                          setup_key="count")])
    np.testing.assert_array_equal(out.read(), a)
    pids = log.read_text().split()
    assert 1 <= len(pids) <= workers and len(set(pids)) == len(pids)


TWO_STAGE = textwrap.dedent('''
    import os, sys, time
    from functools import partial
    import numpy as np
    import emarray
    from emarray.engine import BlockGrid, Read, RunOptions, Stage, Write, run_job

    src, dst, log, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    v = emarray.open_volume(src)

    def total(ctx, a):  # stage 1: a reduction (its calls are logged)
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"1")
        os.close(fd)
        return np.array([a.astype(np.float64).sum(), a.size])

    def centre(ctx, a):  # stage 2: uses stage 1's result
        time.sleep(delay)
        return (a - np.float32(ctx.given)).astype(np.float32)

    def create(path):
        return emarray.create_volume(path, v.shape, "float32", v.chunks, attrs={"job": {"j": 2}})

    run_job(dst, create, job={"j": 2}, options=RunOptions.make(None, scheduler="synchronous",
            resume="--resume" in sys.argv, progress=True),
            stages=lambda o: [
                Stage("sum", total, BlockGrid(v.shape, v.chunks), [Read(v)], combine=np.add,
                      finalize=lambda s: float(s[0] / s[1])),
                Stage("centre", centre, BlockGrid(v.shape, v.chunks), [Read(v)], [Write(o)])])
''')


def test_a_two_stage_job_killed_in_stage_two_resumes_without_redoing_stage_one(tmp_path):
    a = np.random.default_rng(3).random((16, 16, 16)).astype(np.float32)
    make_volume(tmp_path / "a.zarr", a, 4)  # 64 blocks per stage
    script = tmp_path / "job.py"
    script.write_text(TWO_STAGE)
    log = tmp_path / "stage1.log"
    env = {**os.environ, "EMARRAY_CHECKPOINT_SECONDS": "0"}
    proc = subprocess.Popen([PY, str(script), str(tmp_path / "a.zarr"), str(tmp_path / "o.zarr"),
                             str(log), "0.05"], env=env, stderr=subprocess.PIPE, text=True)
    progress = tmp_path / "o.zarr" / PROGRESS_DIR
    from .helpers import wait_for
    wait_for(lambda: Checkpoint(progress).done_count("centre") >= 10 if progress.exists() else False,
             proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done2 = Checkpoint(progress).done_count("centre")
    assert 10 <= done2 < 64 and log.read_text() == "1" * 64
    assert len(list(progress.iterdir())) <= 4  # job, stage results and a bitmap: no file per block
    r = subprocess.run([PY, str(script), str(tmp_path / "a.zarr"), str(tmp_path / "o.zarr"),
                        str(log), "0", "--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert log.read_text() == "1" * 64  # stage one was not run again
    assert f"resuming: {done2} of 64 blocks already done" in r.stderr
    mean = np.float32(a.astype(np.float64).sum() / a.size)
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "o.zarr").read(), a - mean)


def test_a_reduction_resumes_from_its_saved_summary(tmp_path):
    """A sweep killed mid-way continues from the blocks and histogram it saved."""
    rng = np.random.default_rng(4)
    p = make_volume(tmp_path / "p.zarr", rng.random((12, 12, 12)).astype(np.float32), 2)
    t = make_volume(tmp_path / "t.zarr", (rng.random((12, 12, 12)) > 0.5).astype(np.uint8), 2)
    full = emarray.sweep(p, t, thresholds=10)
    # a sweep that fails on one block after the others were saved...
    out = tmp_path / "sw"
    from emarray.ops import sweep as sweep_mod
    orig = sweep_mod._sweep_block

    def broken(ctx, *a, **kw):
        if ctx.index == (5, 5, 5):
            raise OSError("disk went away")
        return orig(ctx, *a, **kw)

    sweep_mod._sweep_block = broken
    try:
        # (the job says where its staged work is kept, for --resume)
        with pytest.raises(JobFailedError, match=r"block \(5, 5, 5\).*--resume"):
            emarray.sweep(p, t, thresholds=10, out=out, scheduler="synchronous", retries=0,
                          progress=False)
    finally:
        sweep_mod._sweep_block = orig
    staged = tmp_path / ".sw.emarray-new" / PROGRESS_DIR
    saved = Checkpoint(staged).done_count("sweep")
    assert saved == 5 * 36 + 5 * 6 + 5  # every block before (5, 5, 5) in C order
    df = emarray.sweep(p, t, thresholds=10, out=out, resume=True)
    assert df[["tp", "fp", "fn", "tn"]].equals(full[["tp", "fp", "fn", "tn"]])
    assert not staged.exists() and not (out / PROGRESS_DIR).exists()


def test_a_million_block_grid_starts_and_resumes_without_a_file_per_block(tmp_path):
    v = emarray.create_volume(tmp_path / "z.zarr", (100, 100, 100), "float32", 1)  # 10^6 chunks
    args = [PY, "-m", "emarray", "threshold", str(v.url), str(tmp_path / "m.zarr"), "--value",
            "0.5", "--scheduler", "synchronous"]
    progress = tmp_path / "m.zarr" / PROGRESS_DIR
    from .helpers import wait_for

    def run_until(n, *extra):
        proc = subprocess.Popen(args + list(extra), stderr=subprocess.PIPE, text=True)
        wait_for(lambda: progress.is_dir() and Checkpoint(progress).done_count("threshold") >= n,
                 proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return proc, Checkpoint(progress).done_count("threshold")

    _, first = run_until(200)
    assert len(list(progress.iterdir())) <= 2  # the bitmap (and no file per block)
    proc, second = run_until(first + 200, "--resume")
    assert second >= first + 200
    assert f"resuming: {first} of 1000000 blocks already done" in proc.stderr.read()
    assert len(list(progress.iterdir())) <= 2


def test_run_options_are_checked_before_work():
    with pytest.raises(InvalidArgumentError, match="unknown run option 'worker'"):
        RunOptions.make(None, worker=2)
    with pytest.raises(InvalidArgumentError, match="either overwrite or resume"):
        RunOptions(overwrite=True, resume=True)
    with pytest.raises(InvalidArgumentError, match="retries"):
        RunOptions(retries=-1)
    assert RunOptions.make(RunOptions(workers=3), resume=True) == RunOptions(workers=3, resume=True)


def test_scaled_write_regions_and_read_fractions():
    r = Read(np.zeros((10, 10, 10)), scale=(1, Fraction(1, 2), 2), halo=(0, 1, 0))
    assert r.region((slice(2, 5), slice(3, 7), slice(1, 4))) == (slice(2, 5), slice(0, 5),
                                                                 slice(2, 8))
    w = Write(emarray.engine.contract.np.zeros((5, 5, 5)), scale=2)  # type: ignore[arg-type]
    assert w.region((slice(1, 3), slice(0, 1), slice(2, 3))) == (slice(2, 5), slice(0, 2),
                                                                 slice(4, 5))
