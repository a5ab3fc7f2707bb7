"""Faults, for real: a pipeline killed with SIGKILL at random moments and resumed, a dask worker
SIGKILLed mid-job, a corrupt chunk, and injected write faults. Each ends with the output of a
clean run, and finished blocks are counted to show they were not computed again."""
from __future__ import annotations

import os

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import emarray
from emarray.engine.checkpoint import PROGRESS_DIR
from emarray.engine.serialize import loads

from .conftest import make_volume, real_dask_cluster
from .helpers import cli, one_error_line
from .test_pipeline import DEMO, assert_same_outputs, demo_sets

SETS = demo_sets((40, 160, 144), (16, 64, 64))  # 27 blocks a volume, a few seconds in all


def popen(*args: object, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "emarray", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def traced(path: Path) -> list[tuple[str, str, int]]:
    """(job, stage, block) of every block a run computed (EMARRAY_TRACE)."""
    if not path.exists():
        return []
    rows = [ln.split("\t") for ln in path.read_text().splitlines()]
    return [(job, stage, int(flat)) for job, stage, flat, *_pid_node in rows]


def _safe(stage: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stage)


def saved_done(workdir: Path, earlier: list[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
    """The blocks whose completion is saved: in a progress bitmap, in a finished stage, or in a
    job that finished (its progress folder is gone once its output is complete)."""
    done = set()
    for prog in workdir.rglob(PROGRESS_DIR):
        for f in prog.glob("*.progress"):
            st = loads(f.read_bytes())
            bits = np.unpackbits(np.asarray(st["done"], np.uint8), count=st["nblocks"])
            done |= {(str(prog), f.stem, int(i)) for i in np.flatnonzero(bits)}
    for job, stage, flat in earlier:
        finished_stage = (Path(job) / f"{_safe(stage)}.result").exists()
        if finished_stage or not Path(job).exists():
            done.add((job, _safe(stage), flat))
    return done


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> tuple[Path, float]:
    """The demo recipe run once without faults (read only): its work folder, and its time."""
    clean = tmp_path_factory.mktemp("faults") / "clean"
    t0 = time.monotonic()
    r = cli("run", DEMO, "--workdir", clean, *SETS, "-q")
    assert r.returncode == 0, r.stderr
    return clean, time.monotonic() - t0


def test_whole_job_killed_at_random_moments_then_resumed(tmp_path, clean_run):
    clean, t_clean = clean_run
    work = tmp_path / "killed"
    rng = random.Random(20261122)
    kills, recomputed_saved, recomputed_unsaved, history = 0, 0, 0, []
    for attempt in range(12):
        trace = tmp_path / f"trace{attempt}"
        done_before = saved_done(work, history)  # what the last kill left saved
        resume = ("--resume",) if attempt else ()
        proc = popen("run", DEMO, "--workdir", work, *SETS, "-q", *resume,
                     env={"EMARRAY_TRACE": str(trace), "EMARRAY_CHECKPOINT_SECONDS": "0"})
        if kills < 4:  # a random moment once this run computes blocks
            while proc.poll() is None and not trace.exists():
                time.sleep(0.005)
            try:
                proc.wait(rng.uniform(0.0, 0.2) * t_clean)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
        out, err = proc.communicate()
        rows = traced(trace)
        again = [(j, _safe(s), f) for j, s, f in rows]
        recomputed_saved += sum(1 for x in again if x in done_before)
        seen = {(j, _safe(s), f) for j, s, f in history}
        recomputed_unsaved += sum(1 for x in again if x in seen and x not in done_before)
        history += rows
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err
    else:
        pytest.fail("the job never finished")
    assert kills >= 3, kills
    assert_same_outputs(work, clean)
    # a block whose completion was saved is never computed again; the only repeats are
    # blocks that finished in a worker after the last save, at most those in flight per kill
    assert recomputed_saved == 0
    window = max(8, 4 * (os.cpu_count() or 1))
    assert recomputed_unsaved <= kills * window
    blocks = len({(j, _safe(s), f) for j, s, f in history})
    print(f"\n{kills} kills survived; {blocks} blocks, {len(history)} computed "
          f"({recomputed_unsaved} twice: finished in a worker after the last save)")


def test_a_worker_killed_mid_job_changes_nothing(tmp_path, clean_run):
    clean, _ = clean_run
    elsewhere = tmp_path / "worker-home"  # the workers run in another directory
    elsewhere.mkdir()
    trace = tmp_path / "trace"
    procs: list[subprocess.Popen] = []
    try:
        with real_dask_cluster(tmp_path, workers=2, cwd=elsewhere, procs=procs) as address:
            work = tmp_path / "work"
            # set where the job starts: the engine sends it to the workers with the stages
            job = popen("run", DEMO, "--workdir", work, *SETS, "-q", "--scheduler", address,
                        env={"EMARRAY_TRACE": str(trace)})
            t0 = time.monotonic()
            while len(traced(trace)) < 40:  # well into the job
                assert job.poll() is None, job.communicate()
                assert time.monotonic() - t0 < 120
                time.sleep(0.02)
            import psutil
            nanny = psutil.Process(procs[-1].pid)
            victims = [nanny] + nanny.children(recursive=True)
            for p in victims:  # the nanny first, so that it cannot start the worker again
                p.send_signal(signal.SIGKILL)
            killed_at = len(traced(trace))
            out, err = job.communicate(timeout=300)
            assert job.returncode == 0, err
    finally:
        os.environ.pop("EMARRAY_TRACE", None)
    assert killed_at < len(traced(trace))  # the job went on after the kill
    assert_same_outputs(work, clean)


def test_a_bad_chunk_is_retried_then_named_and_finished_blocks_stay(tmp_path):
    a = np.random.default_rng(2).random((24, 32, 32)).astype(np.float32)
    src = make_volume(tmp_path / "p.zarr", a, (4, 8, 8))  # 6*4*4 = 96 chunks
    chunk = Path(src.url) / "0" / "c" / "3" / "1" / "2"
    good = chunk.read_bytes()
    chunk.write_bytes(b"not a zstd frame" * 4)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"steps:\n  mask: {{op: threshold, src: {src.url}, value: 0.5}}\n"
                      f"  cells: {{op: label, src: mask}}\n")
    work = tmp_path / "work"
    trace1 = tmp_path / "trace1"
    r = cli("run", recipe, "--workdir", work, "--workers", "1", "--retries", "2",
            env={"EMARRAY_TRACE": str(trace1), "EMARRAY_CHECKPOINT_SECONDS": "0"})
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if "retrying" in ln or "error" in ln]
    assert "retrying (1 of 2)" in lines[0] and "retrying (2 of 2)" in lines[1], r.stderr
    assert "c/3/1/2" in lines[0] and len(lines) == 3, r.stderr
    assert lines[-1].startswith("error: step 'mask' (threshold): block (3, 1, 2)")
    assert "after 3 attempts" in lines[-1] and "c/3/1/2" in lines[-1], lines[-1]
    first = traced(trace1)
    done = saved_done(work, [])
    assert 0 < len(first) and len(done) >= len(first) - 8  # the finished blocks stay finished
    chunk.write_bytes(good)  # the chunk is restored (from a backup, say): finish the job
    trace2 = tmp_path / "trace2"
    r = cli("run", recipe, "--workdir", work, "--resume", "-q",
            env={"EMARRAY_TRACE": str(trace2)})
    assert r.returncode == 0, r.stderr
    again = [(j, _safe(s), f) for j, s, f in traced(trace2)]
    assert not [x for x in again if x in done]
    assert sum(1 for j, s, f in again if s == "threshold") == 96 - len(done)
    np.testing.assert_array_equal(emarray.open_volume(work / "mask.zarr").read(), a > 0.5)


def test_a_pipeline_finishes_under_injected_write_faults(tmp_path):
    clean = tmp_path / "clean"
    sets = demo_sets((24, 80, 72), (8, 32, 32))
    assert cli("run", DEMO, "--workdir", clean, *sets, "-q").returncode == 0
    work = tmp_path / "faulty"
    r = cli("run", DEMO, "--workdir", work, *sets, "--retries", "12",
            env={"EMARRAY_FAULT_WRITES": "0.3", "EMARRAY_FAULT_SEED": "5"})
    assert r.returncode == 0, r.stderr
    faults = r.stderr.count("injected write fault")
    assert faults > 10, r.stderr  # about 0.3 of the writes failed, torn, and were retried
    assert_same_outputs(work, clean)


@pytest.mark.parametrize("value", ["2", "-0.1", "often"])
def test_a_bad_fault_fraction_is_refused(tmp_path, value):
    line = one_error_line(cli("threshold", make_volume(tmp_path / "p.zarr", np.ones((4, 4, 4),
                                                       np.float32), 2).url, tmp_path / "m.zarr",
                              "-t", "0.5", env={"EMARRAY_FAULT_WRITES": value}))
    assert f"EMARRAY_FAULT_WRITES must be a fraction in [0, 1), got '{value}'" in line
    assert not (tmp_path / "m.zarr").exists()
