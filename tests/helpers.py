"""Helpers the test files share: run the command line (in this process, or as a real one),
check its one-line errors, make small volumes, start and watch slow jobs, leave an output
unfinished, write a small training config."""
from __future__ import annotations

import contextlib
import copy
import errno
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import emarray
from emarray.engine import Checkpoint
from emarray.engine.checkpoint import PROGRESS_DIR
from emarray.errors import BlockFailedError

from .conftest import make_volume

PY = sys.executable
BIN = Path(sys.executable).parent


def cli(*args, cwd=None, env=None, real: bool = False, drop=()) -> subprocess.CompletedProcess:
    """``emarray ARGS`` → a CompletedProcess (returncode, stdout, stderr).

    In this process through click's runner (about 50 ms, where ``python -m emarray`` takes
    1.5-3 s to start), with ``env`` and ``cwd`` set for the call and the process's global
    state (logging, storage options, dask's config) put back after it. ``real=True`` runs
    ``python -m emarray`` instead: for what only a process shows (its exit at a signal, what
    it imports on start, a worker in another directory, credentials in its environment:
    object-store clients made in this process keep the credentials they were made with).
    ``drop`` (a real process only) names environment variables it must not see."""
    argv = [str(a) for a in args]
    if real:
        full = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop}
        return subprocess.run([PY, "-m", "emarray", *argv], capture_output=True, text=True,
                              cwd=cwd, env=full)
    assert not drop, "drop: only for a real process"
    from click.testing import CliRunner

    from emarray.cli import cli as group
    with _process_state(cwd, env):
        result = CliRunner().invoke(group, argv, prog_name="emarray", catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # what Python prints for an uncaught exception: a test asking for one error line fails
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["emarray", *argv], result.exit_code, result.stdout,
                                       stderr)


@contextlib.contextmanager
def _process_state(cwd, env) -> Iterator[None]:
    """Run with ``env`` and ``cwd``; then put back what a command changes for its process."""
    import dask

    from emarray import storage
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: logging.getLogger(n).level for n in list(logging.root.manager.loggerDict)}
    options = dict(storage._OPTIONS)
    config = copy.deepcopy(dask.config.config)
    saved_env = dict(os.environ)
    here = os.getcwd()
    try:
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(saved_env)
        dask.config.config.update(config)  # (keys a library added on import stay)
        storage._OPTIONS.clear()
        storage._OPTIONS.update(options)
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)


def one_error_line(r) -> str:
    """The CLI failed with exit 2 and one line 'error: ...' (no traceback)."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def prob_map(path, shape=(12, 16, 20), chunks=(4, 8, 8), seed=0):
    a = np.random.default_rng(seed).random(shape).astype(np.float32)
    return a, make_volume(path, a, chunks)


def slow_job(src: Path, dst: Path, *extra) -> subprocess.Popen:
    """A threshold job over many tiny chunks, one at a time, each write 5 ms late: slow enough
    to kill mid-way on any machine."""
    return subprocess.Popen([PY, "-m", "emarray", "-q", "threshold", str(src), str(dst),
                             "--value", "0.3", "--scheduler", "synchronous", *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EMARRAY_CHECKPOINT_SECONDS": "0",
                                 "EMARRAY_SLOW_WRITES": "0.005"})


def wait_for(cond, proc, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"job ended too early: {proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("job made no progress")


def markers_in(path: Path, stage: str = "threshold") -> int:
    """Blocks the job's saved progress counts as done."""
    try:
        return Checkpoint(path / PROGRESS_DIR).done_count(stage)
    except (OSError, EOFError):
        return 0


def unfinished(tmp_path: Path, monkeypatch, name: str = "m.zarr", shape=(16, 16, 16),
                chunks=(4, 4, 4), op: str = "threshold") -> tuple[np.ndarray, Path]:
    """An input and an output of ``op`` left unfinished (a block kept failing): progress saved."""
    a = np.random.default_rng(3).random(shape).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, chunks)
    from emarray.engine import faults
    real_write, calls = faults.write_block, {"n": 0}

    def fails_at_the_20th(writes, what, *mode):
        calls["n"] += 1
        if calls["n"] == 20:
            raise OSError(errno.EIO, "injected: the disk went away", what)
        return real_write(writes, what, *mode)

    monkeypatch.setattr(faults, "write_block", fails_at_the_20th)
    monkeypatch.setenv("EMARRAY_CHECKPOINT_SECONDS", "0")
    run = {"retries": 0, "scheduler": "synchronous"}
    with pytest.raises(BlockFailedError):
        if op == "threshold":
            emarray.threshold(tmp_path / "p.zarr", tmp_path / name, 0.5, **run)
        else:
            emarray.smooth(tmp_path / "p.zarr", tmp_path / name, 1.0, **run)
    monkeypatch.setattr(faults, "write_block", real_write)
    assert Checkpoint(tmp_path / name / PROGRESS_DIR).done_count(op) > 0
    return a, tmp_path / name


def train_config(tmp_path: Path, raw: np.ndarray, **over) -> Path:
    import yaml
    make_volume(tmp_path / "raw.zarr", raw, (8, 32, 32))
    truth = (np.random.default_rng(2).random(raw.shape) > 0.5).astype(np.uint8)
    make_volume(tmp_path / "truth.zarr", truth, (8, 32, 32))
    cfg = {"out": str(tmp_path / "run"), "steps": 4, "batch": 1, "patch": "8,16,16",
           "threads": 1, "log_every": 1, "checkpoint_every": 2,
           "data": {"raw": str(tmp_path / "raw.zarr"), "labels": str(tmp_path / "truth.zarr")},
           "model": {"depth": 2, "filters": 4}, "augment": {"elastic": 0.0}, **over}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "c.yaml"
