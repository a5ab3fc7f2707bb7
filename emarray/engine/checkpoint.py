"""A job's progress: per stage, a done-bitmap over its blocks and the summaries folded so far.

The driver alone writes it (workers only return), so there is no concurrent update: a block
counts as done once its task has returned, which is after its data was stored. Every few
seconds, and when a stage ends, the bitmap and the folded summary are written together into one
file by an atomic rename, so they always agree: a killed job resumes at (stage, block)
granularity, reductions included, and blocks finished after the last save are simply computed
again. A grid of 2.5 million blocks is a 312 KiB bitmap, not 2.5 million files.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PROGRESS_DIR = ".emarray-progress"
FORMAT = 1
#: seconds between saves (``EMARRAY_CHECKPOINT_SECONDS`` overrides it; 0 saves every block)
DEFAULT_INTERVAL = 1.0


class Checkpoint:
    """The saved progress of one job in ``root`` (None: nothing is saved, nothing resumes)."""

    def __init__(self, root: str | os.PathLike | None, interval: float | None = None):
        self.root = Path(root) if root is not None else None
        if interval is None:
            interval = float(os.environ.get("EMARRAY_CHECKPOINT_SECONDS", DEFAULT_INTERVAL))
        self.interval = interval
        self._last = 0.0

    def _file(self, stage: str, part: str) -> Path:
        assert self.root is not None
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stage)
        return self.root / f"{safe}.{part}"

    def load(self, stage: str, nblocks: int) -> tuple[np.ndarray, Any]:
        """The done-bitmap and the folded summary saved for ``stage`` (empty when none)."""
        done = np.zeros(nblocks, np.bool_)
        state = self._progress(stage)
        if state is None or state.get("format") != FORMAT or state.get("nblocks") != nblocks:
            return done, None  # another grid: start the stage again
        done[:] = np.unpackbits(np.frombuffer(state["done"], np.uint8), count=nblocks).view(np.bool_)
        return done, state["acc"]

    def _progress(self, stage: str) -> dict[str, Any] | None:
        """The saved progress state of ``stage`` (None when nothing is saved)."""
        if self.root is None or not self._file(stage, "progress").is_file():
            return None
        with open(self._file(stage, "progress"), "rb") as f:
            return pickle.load(f)

    def save(self, stage: str, done: np.ndarray, acc: Any, *, force: bool = False) -> None:
        """Save the stage's progress (at most every ``interval`` seconds unless ``force``)."""
        if self.root is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        state = {"format": FORMAT, "nblocks": int(done.size),
                 "done": np.packbits(done).tobytes(), "acc": acc}
        _atomic_write(self._file(stage, "progress"), pickle.dumps(state, protocol=5))

    def finished(self, stage: str) -> tuple[bool, Any]:
        """Whether ``stage`` finished in an earlier run, and what its ``finalize`` returned."""
        if self.root is None:
            return False, None
        path = self._file(stage, "result")
        if not path.is_file():
            return False, None
        with open(path, "rb") as f:
            return True, pickle.load(f)

    def finish(self, stage: str, result: Any) -> None:
        """Record a finished stage and its result; its block progress is no longer needed."""
        if self.root is None:
            return
        _atomic_write(self._file(stage, "result"), pickle.dumps(result, protocol=5))
        self._file(stage, "progress").unlink(missing_ok=True)

    def done_count(self, stage: str) -> int:
        """How many blocks of ``stage`` the saved progress counts as done (0 when none)."""
        state = self._progress(stage)
        return 0 if state is None else int(np.unpackbits(np.frombuffer(state["done"], np.uint8)).sum())

    def start(self, job: dict[str, Any] | None = None) -> bool:
        """Create the folder; with ``job``, return whether saved progress belongs to that job
        (progress of another job is cleared)."""
        if self.root is None:
            return False
        same = True
        if job is not None:
            ident = self.root / "job.json"
            try:
                same = json.loads(ident.read_text()) == json.loads(json.dumps(job))
            except (OSError, ValueError):
                same = False
            if not same:
                self.clear()
        self.root.mkdir(parents=True, exist_ok=True)
        if job is not None:
            _atomic_write(self.root / "job.json", json.dumps(job).encode())
        return same

    def clear(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
