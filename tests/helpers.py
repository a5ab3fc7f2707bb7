"""Helpers the test files share: run the command line (in this process, or as a real one),
check its one-line errors, make small volumes, start and watch slow jobs."""
from __future__ import annotations

import contextlib
import copy
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

from emarray.engine import Checkpoint
from emarray.engine.checkpoint import PROGRESS_DIR

from .conftest import make_volume

PY = sys.executable
BIN = Path(sys.executable).parent


def cli(*args, cwd=None, env=None, real: bool = False) -> subprocess.CompletedProcess:
    """``emarray ARGS`` → a CompletedProcess (returncode, stdout, stderr).

    In this process through click's runner (about 50 ms, where ``python -m emarray`` takes
    1.5-3 s to start), with ``env`` and ``cwd`` set for the call and the process's global
    state (logging, storage options, dask's config) put back after it. ``real=True`` runs
    ``python -m emarray`` instead: for what only a process shows (its exit at a signal, what
    it imports on start, a worker in another directory)."""
    argv = [str(a) for a in args]
    if real:
        return subprocess.run([PY, "-m", "emarray", *argv], capture_output=True, text=True,
                              cwd=cwd, env={**os.environ, **(env or {})})
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
