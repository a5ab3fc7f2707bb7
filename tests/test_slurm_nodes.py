"""Several SLURM nodes: the three-node cluster of scripts/slurm-local.sh (one slurmd per node,
SLURM's multiple-slurmd mode), one job spread over every node, a node lost mid-job, the driver
killed and resumed, and adapt growing and shrinking the worker jobs. The node and driver tests
smooth a tiny volume in 216 chunks, each write made slow (EMARRAY_SLOW_WRITES) so that a kill
lands mid-job, and compare the output bit for bit with the same job run undisturbed on threads;
the adapt test queues one-second blocks through the engine's Runner, as --slurm-config sets it."""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import emarray
from emarray import RunOptions

from .conftest import ROOT, make_volume
from .helpers import PY
from .test_faults import _safe, popen, saved_done
from .test_slurm import slurm_up  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

NODES = ("node1", "node2", "node3")
SCRIPT = ROOT / "scripts" / "slurm-local.sh"
# one worker job per node (--exclusive takes a whole node), 1 core each
SPREAD = """\
slurm:
  jobs: 3
  memory: 1GB
  walltime: "00:10:00"
  directives: ["--exclusive"]
"""
WINDOW = 4 * 3  # blocks in flight: 4 per planned worker thread


def _squeue(*args: str) -> list[str]:
    return subprocess.run(["squeue", "-h", "-n", "emarray-worker", *args], capture_output=True,
                          text=True).stdout.split()


def _settled(timeout: float = 90) -> None:
    """Every node answers and is idle, and no worker job is left (for the next test)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        states = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True,
                                text=True).stdout.split()
        if not _squeue("-o", "%i") and states and all(s == "idle" for s in states):
            return
        time.sleep(0.5)
    pytest.fail(f"the cluster did not settle: {_squeue('-o', '%i:%T:%N')} {states}")


def _revive_all() -> None:
    """Every node's slurmd runs (slurm-local.sh starts one only where it is not running), and
    no worker job is left (one a failed test left behind is cancelled)."""
    subprocess.run(["scancel", "--name", "emarray-worker"], capture_output=True)
    for node in NODES:
        subprocess.run(["bash", str(SCRIPT), "revive", node], check=True, capture_output=True)
    _settled()


@pytest.fixture
def nodes(slurm_up):  # noqa: F811
    """Three nodes up and idle; afterwards every node is up again and no worker job is left."""
    up = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True,
                        text=True).stdout.split()
    if not set(NODES) <= set(up):
        pytest.fail(f"these tests need the nodes {', '.join(NODES)}, SLURM has {up}: run "
                    "`bash scripts/slurm-local.sh --nodes 3` (as root)")
    _revive_all()
    yield
    _revive_all()  # a node a test lost comes back


def _rows(trace: Path) -> list[tuple[str, str, int, str]]:
    """(job, stage, block, node) of every block computed (EMARRAY_TRACE)."""
    if not trace.exists():
        return []
    rows = [ln.split("\t") for ln in trace.read_text().splitlines()]
    return [(job, _safe(stage), int(flat), node) for job, stage, flat, _pid, node in rows]


def _job(tmp_path: Path) -> tuple[Path, Path]:
    """A float volume in 6*6*6 = 216 chunks, and its smoothing run undisturbed on threads."""
    a = np.random.default_rng(38).random((24, 48, 48)).astype(np.float32)
    src = make_volume(tmp_path / "src.zarr", a, (4, 8, 8))
    emarray.smooth(src, tmp_path / "threads.zarr", 1.0)
    return Path(src.url), tmp_path / "threads.zarr"


def _smooth(src: Path, out: Path, cfg: Path, trace: Path, *extra: str) -> subprocess.Popen:
    return popen("smooth", src, out, "--sigma", "1", "--scheduler", "slurm", "--slurm-config",
                 cfg, *extra, env={"EMARRAY_TRACE": str(trace), "EMARRAY_SLOW_WRITES": "0.1",
                                   "EMARRAY_CHECKPOINT_SECONDS": "0"})


def _wait_for(job: subprocess.Popen, ready, what: str, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not ready():
        if job.poll() is not None:
            pytest.fail(f"the job ended before {what}: {job.communicate()}")
        if time.monotonic() - t0 > timeout:
            job.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.05)


def _same(a: Path, b: Path) -> None:
    np.testing.assert_array_equal(emarray.open_volume(a).read(), emarray.open_volume(b).read())


def test_one_job_runs_on_every_node_and_finishes_when_a_node_is_lost(tmp_path, nodes):
    src, threads = _job(tmp_path)
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text(SPREAD)
    out, trace = tmp_path / "out.zarr", tmp_path / "trace"
    t0 = time.monotonic()
    job = _smooth(src, out, cfg, trace)
    # a third of the blocks done, and each node has run some: node2 is lost without warning
    _wait_for(job, lambda: len(rows := _rows(trace)) >= 72 and {r[3] for r in rows} == set(NODES),
              "blocks on every node")
    subprocess.run(["bash", str(SCRIPT), "lose", "node2"], check=True, capture_output=True)
    lost_at = len(_rows(trace))
    saved = saved_done(out, [])  # the blocks whose completion the driver had saved
    stdout, stderr = job.communicate(timeout=240)
    took = time.monotonic() - t0
    assert job.returncode == 0, stderr
    assert not _squeue("-t", "R,PD", "-o", "%i")  # the worker jobs were cancelled with the job
    _same(out, threads)  # every block there, bit for bit the undisturbed run's
    rows = _rows(trace)
    before, after = rows[:lost_at], rows[lost_at:]
    assert {r[3] for r in before} == set(NODES)  # one job spread over all three nodes
    assert after and {r[3] for r in after} <= {"node1", "node3"}  # the rest ran elsewhere
    blocks = [r[:3] for r in rows]
    assert len(set(blocks)) == 216
    twice = {b for b in blocks if blocks.count(b) > 1}
    # the only blocks computed again are ones node2 finished but the driver had not yet taken
    # (lost with node2's memory), at most the blocks in flight; no block saved done is redone
    assert twice <= {r[:3] for r in before if r[3] == "node2"}, twice
    assert len(twice) <= WINDOW and not twice & saved
    assert not {r[:3] for r in after} & saved
    print(f"\nnode2 lost after {lost_at} of 216 blocks; the job took {took:.1f} s; "
          f"{len(twice)} blocks computed twice")


def test_the_driver_killed_then_resume_finishes_on_an_adaptive_cluster(tmp_path, nodes):
    src, threads = _job(tmp_path)
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text(SPREAD)
    out, trace1, trace2 = tmp_path / "out.zarr", tmp_path / "trace1", tmp_path / "trace2"
    job = _smooth(src, out, cfg, trace1)
    _wait_for(job, lambda: len(_rows(trace1)) >= 72, "72 blocks")
    job.send_signal(signal.SIGKILL)  # the driver, and the dask scheduler inside it
    job.wait()
    saved = saved_done(out, [])
    assert 0 < len(saved) < 216
    # its worker jobs would end within a minute (dask's death timeout); end them now
    orphans = _squeue("-o", "%i")
    assert len(orphans) == 3
    subprocess.run(["scancel", *orphans], check=True)
    # resumed on an adaptive cluster that starts with no job at all (adapt from 0: one starts
    # once blocks are queued)
    cfg.write_text('slurm:\n  adapt: {minimum: 0, maximum: 3}\n  memory: 1GB\n'
                   '  walltime: "00:10:00"\n  start_timeout: 60\n')
    resumed = _smooth(src, out, cfg, trace2, "--resume")
    stdout, stderr = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, stderr
    assert not _squeue("-t", "R,PD", "-o", "%i")
    _same(out, threads)
    again = [r[:3] for r in _rows(trace2)]
    assert not set(again) & saved  # nothing saved done is computed again
    assert len(again) == len(set(again)) == 216 - len(saved)


def test_adapt_grows_with_the_queue_and_shrinks_when_idle(tmp_path, nodes, monkeypatch):
    cfg = tmp_path / "adapt.yaml"  # what --slurm-config reads
    cfg.write_text('slurm:\n  adapt: {minimum: 1, maximum: 3}\n  memory: 1GB\n'
                   '  walltime: "00:10:00"\n  directives: ["--exclusive"]\n')
    running: list[tuple[float, int]] = []  # (seconds, worker jobs running), every 0.25 s
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            running.append((time.monotonic(), len(_squeue("-t", "R", "-o", "%i"))))
            stop.wait(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with RunOptions(scheduler="slurm", slurm=str(cfg)).runner("adapt") as runner:
            at_start = len(_squeue("-t", "R", "-o", "%i"))
            busy = time.monotonic()
            runner.run([(time.sleep, (1.0,))] * 36)  # a queue of 36 one-second blocks
            idle = time.monotonic()
            while running[-1][1] > 1 and time.monotonic() - idle < 60:
                time.sleep(0.25)
            shrunk = running[-1][1]
            assert runner.run([(abs, (-3,))] * 4) == [3] * 4  # the one job left still works
    finally:
        stop.set()
        watcher.join()
    during = [n for t, n in running if busy <= t <= idle]
    assert at_start == 1  # the minimum
    assert max(during) == 3  # grown to the maximum while blocks were queued
    assert shrunk == 1  # back to the minimum once idle, the cluster still open
    print(f"\njobs running over time (0.25 s apart): {[n for _, n in running]}")


def test_an_estimate_samples_on_every_slurm_job_it_asked_for(tmp_path, nodes):
    """--estimate waits for the three jobs of its config before it samples, so it says the
    wall time of the workers the run will have (it sampled on the first job to start, and
    said 2 threads where the run had 6: a 62 s estimate for a 34 s run)."""
    src, _ = _job(tmp_path)
    cfg = tmp_path / "slurm.yaml"
    # the jobs join 0, 4 and 8 s apart (by their job ids), as on a busy cluster
    cfg.write_text(SPREAD.replace("  jobs: 3\n", "  jobs: 3\n  cores: 2\n  prologue: "
                                  "['sleep $(( SLURM_JOB_ID % 3 * 4 ))']\n"))
    r = subprocess.run([PY, "-m", "emarray", "smooth", str(src), str(tmp_path / "e.zarr"),
                        "--sigma", "1", "--scheduler", "slurm", "--slurm-config", str(cfg),
                        "--estimate"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    said = r.stdout + r.stderr
    assert "with slurm, 6 worker threads" in said, said
    assert not (tmp_path / "e.zarr").exists()
