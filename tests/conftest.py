from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import emarray

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real EM crops beside the project; absent only off CI (where the tests skip)."""
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"../shared/data is missing at {SHARED}; CI must have it")
        pytest.skip("../shared/data is not beside the project")
    return SHARED


def make_volume(path, array: np.ndarray, chunks, shards=None, voxel_size=(1.0, 1.0, 1.0)):
    """Write ``array`` as an OME-Zarr volume (an independent numpy source of truth for tests)."""
    v = emarray.create_volume(path, array.shape, array.dtype, chunks, shards=shards,
                              voxel_size=voxel_size)
    v.write(tuple(slice(0, s) for s in array.shape), array)
    return emarray.open_volume(path)


def tree_digest(path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes: to show that nothing was touched."""
    out = {}
    for dirpath, _d, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, path)] = Path(p).read_bytes()
    return out


@contextlib.contextmanager
def real_dask_cluster(tmp_path: Path, workers: int = 2, cwd: Path | None = None,
                      procs: list | None = None):
    """A real `dask scheduler` and `workers` `dask worker` processes on 127.0.0.1 (the workers
    run in ``cwd``); yields the scheduler's address. ``procs`` receives the processes
    (scheduler first), for tests that kill one."""
    bin_dir = Path(sys.executable).parent
    sched_file = tmp_path / "scheduler.json"
    started = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                               "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file",
                               str(sched_file)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        t0, address = time.time(), None
        while address is None and time.time() - t0 < 60:
            time.sleep(0.1)
            with contextlib.suppress(OSError, ValueError):  # absent, or still being written
                address = json.loads(sched_file.read_text())["address"]
        assert address is not None, "the dask scheduler did not start in 60 s"
        for _ in range(workers):
            started.append(subprocess.Popen(
                [str(bin_dir / "dask"), "worker", address, "--nthreads", "1", "--host",
                 "127.0.0.1", "--no-dashboard"], cwd=cwd, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        from distributed import Client
        with Client(address, timeout="30s") as c:
            c.wait_for_workers(workers, timeout=60)
        if procs is not None:
            procs.extend(started)
        yield address
    finally:
        for p in started[::-1]:
            p.terminate()
        for p in started:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """One real cluster for the whole session: a `dask scheduler` and two `dask worker`
    processes on 127.0.0.1, the workers in a folder of their own (not the tests' working
    directory). Yields (address, the workers' folder). Only for tests that run jobs on it and
    neither kill nor change it; a test that kills a worker starts its own real_dask_cluster."""
    home = tmp_path_factory.mktemp("dask-cluster")
    elsewhere = home / "workers-folder"
    elsewhere.mkdir()
    procs: list = []
    with real_dask_cluster(home, workers=2, cwd=elsewhere, procs=procs) as address:
        yield address, elsewhere
        import psutil  # at the session's end, at once (a worker told to stop waits seconds)
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(p.pid).children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
            p.kill()


def kill_when(proc, count, at_least: int, timeout: float = 120) -> int:
    """SIGKILL ``proc`` (no chance to clean up) once ``count()`` reaches ``at_least``; return
    that count. Fails the test if the job ends first or makes no progress."""
    import signal
    t0 = time.time()
    while time.time() - t0 < timeout:
        n = count()
        if n >= at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return n
        if proc.poll() is not None:
            pytest.fail(f"job ended before it could be killed: {proc.stderr.read()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("job made no progress")


#: what puts a test under each marker: a fixture it uses, or a word in its source
_MARKERS = {
    "cluster": ("real_dask_cluster", "dask_cluster", "worker_elsewhere", "LocalCluster",
                "--scheduler\", address", "scheduler=address"),
    "slurm": ("slurm_up", "nodes", "slurm-local"),
    "browser": ("driver", "chromium", "screenshot", "webdriver"),
    "torch": ("torch", "new_model", "emarray.train(", "emarray.predict(", "\"train\"",
              "\"predict\"", "train_config("),
    "s3": ("s3", "s3_server", "atomic_s3", "moto"),
}
#: a test that starts processes (a job to kill, a cluster, SLURM, a browser, a model's
#: training) is slow: ``pytest -m "not slow"`` is the quick subset (about a third of the time)
_SLOW = ("subprocess.Popen", "real=True", "slow_job(", "kill_when(", "multiprocessing")


def pytest_collection_modifyitems(config, items):
    """Mark each test by what it uses, so that a developer can run a subset (``-m "not slow"``,
    ``-m cluster``); the README's test command runs them all."""
    import inspect
    for item in items:
        fn = getattr(item, "function", None)
        try:
            source = inspect.getsource(fn) if fn is not None else ""
        except (OSError, TypeError):
            source = ""
        module_torch = item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in (
            "test_train", "test_predict", "test_train_sampling")
        used = set(getattr(item, "fixturenames", ()))
        marks = {m for m, words in _MARKERS.items()
                 if used & set(words) or any(w in source for w in words)}
        if module_torch:
            marks.add("torch")
        if marks or any(w in source for w in _SLOW):
            marks.add("slow")
        for m in sorted(marks - {mk.name for mk in item.iter_markers()}):
            item.add_marker(getattr(pytest.mark, m))
    # the files with the most slow tests first, each file's tests in their order: the test
    # command's workers (pytest-xdist, a file each) then end together instead of one waiting
    # on the last long file
    slow: dict[str, int] = {}
    for item in items:
        file = item.nodeid.split("::")[0]
        slow[file] = slow.get(file, 0) + (item.get_closest_marker("slow") is not None)
    order = {f: i for i, f in enumerate(sorted(slow, key=lambda f: (-slow[f], f)))}
    items.sort(key=lambda item: order[item.nodeid.split("::")[0]])


@pytest.fixture
def many_chunks(tmp_path):
    a = np.random.default_rng(6).random((32, 48, 64)).astype(np.float32)
    return a, make_volume(tmp_path / "p.zarr", a, (4, 4, 8))  # 768 tiny chunks
