"""Which saved blocks a resumed job must compute again because an input changed under it.

A resumed job compares each input's stored chunks with the record made when it started
(:meth:`~emarray.engine.checkpoint.Checkpoint.start`). A block whose read region touches a
changed chunk was computed from data that is gone: a stage that only writes computes those
blocks again (and the regions they write count as changed for the stages after it); a stage
that folds summaries cannot take one block's share back out of its total, so it starts again,
and so does every stage after it.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from .contract import Stage

Region = tuple[slice, ...]


def volume_key(v: Any) -> str:
    """How inputs are named in a job's record of changed chunks."""
    return f"{getattr(v, 'url', '')}#{getattr(v, 'array_path', '')}"


def _axis_hits(read: Any, axis: int, grid: Any, lo: int, hi: int) -> list[int]:
    """Block indices along ``axis`` of ``grid`` whose read (by ``read``) touches [lo, hi)."""
    f, h = read.scale[axis], read.halo[axis]
    below = h if read.sides == "both" else 0
    b, n = grid.block[axis], grid.shape[axis]
    out = []
    for i in range(grid.counts[axis]):
        a, e = i * b, min((i + 1) * b, n)
        if math.floor(a * f) - below < hi and math.ceil(e * f) + h > lo:
            out.append(i)
    return out


def affected_blocks(st: Stage, changed: dict[str, list[Region]]) -> set[int]:
    """Flat indices of the blocks of ``st`` that read a changed region of one of its inputs."""
    hits: set[int] = set()
    grid = st.grid
    for r in st.reads:
        regions = changed.get(volume_key(r.volume))
        if not regions:
            continue
        for reg in regions:
            if r.channels == "all":
                reg = reg[1:]
            ranges: list[Any] = []
            offset = 1 if r.channels == "drop" else 0
            if offset:
                ranges.append(range(grid.counts[0]))
            for axis, s in enumerate(reg):
                ranges.append(_axis_hits(r, axis, _Axes(grid, offset), s.start, s.stop))
            for idx in itertools.product(*ranges):
                hits.add(int(np.ravel_multi_index(idx, grid.counts)))
    return hits


class _Axes:
    """A grid's spatial axes seen from a read that drops its leading channel axis."""

    def __init__(self, grid: Any, offset: int):
        self.block = grid.block[offset:]
        self.shape = grid.shape[offset:]
        self.counts = grid.counts[offset:]


def mark_written(st: Stage, hits: set[int], changed: dict[str, list[Region]]) -> None:
    """The regions the recomputed blocks write are changed for the stages that read them."""
    for w in st.writes:
        key = volume_key(w.volume)
        for flat in hits:
            idx = np.unravel_index(flat, st.grid.counts)
            changed.setdefault(key, []).append(w.region(st.grid.region(tuple(int(i) for i in idx))))
