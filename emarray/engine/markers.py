"""Done-markers: one empty file per finished block, created atomically after its data is stored.

A block's marker is created (by an atomic rename) only once the block's chunks are fully
written, and zarr writes each chunk atomically too, so a killed job never leaves a marker for a
block that is not complete: on ``resume`` such blocks are simply computed again.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

MARKER_DIR = ".emarray-progress"


class Markers:
    """The done-markers of one output volume (stored inside it, removed when the job ends)."""

    def __init__(self, volume_dir: str | os.PathLike):
        self.root = Path(volume_dir) / MARKER_DIR

    @staticmethod
    def name(index: Sequence[int]) -> str:
        return "b" + ".".join(str(i) for i in index)

    def _name(self, index: Sequence[int]) -> Path:
        return self.root / self.name(index)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def is_done(self, index: Sequence[int]) -> bool:
        return self._name(index).exists()

    def mark(self, index: Sequence[int]) -> None:
        _atomic_write(self._name(index), b"")

    def done(self) -> set[str]:
        """The names of the finished blocks (one directory listing, no stat per block)."""
        if not self.root.exists():
            return set()
        return {n for n in os.listdir(self.root) if n.startswith("b")}

    def finish(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
