"""Which saved blocks a resumed job must compute again because an input changed under it.

A resumed job compares each input's stored chunks with the record made when it started
(:meth:`~emarray.engine.checkpoint.Checkpoint.start`). A block whose read region touches a
changed chunk was computed from data that is gone: a stage that only writes computes those
blocks again (and the regions they write count as changed for the stages after it); a stage
that folds summaries cannot take one block's share back out of its total, so it starts again,
and so does every stage after it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .contract import Stage

Region = tuple[slice, ...]


def volume_key(v: Any) -> str:
    """How inputs are named in a job's record of changed chunks."""
    return f"{getattr(v, 'url', '')}#{getattr(v, 'array_path', '')}"


def axis_reads(read: Any, axis: int, grid: Any) -> tuple[np.ndarray, np.ndarray]:
    """Where the read of each block along ``axis`` of ``grid`` starts and stops (both
    non-decreasing with the block index)."""
    f, h = read.scale[axis], read.halo[axis]
    below = h if read.sides == "both" else 0
    b, n = grid.block[axis], grid.shape[axis]
    i = np.arange(grid.counts[axis], dtype=np.int64)
    # floor and ceil of a block edge times a Fraction, exactly, in integers
    starts = (i * b * f.numerator) // f.denominator - below
    stops = -((-np.minimum((i + 1) * b, n) * f.numerator) // f.denominator) + h
    return starts, stops


def affected_blocks(st: Stage, changed: dict[str, list[Region]]) -> np.ndarray:
    """Flat indices (ascending) of the blocks of ``st`` that read a changed region of one of
    its inputs: a mask of one byte a block, boxes set in it, never a Python object a block."""
    grid = st.grid
    mask = np.zeros(grid.counts, np.bool_)
    for r in st.reads:
        regions = changed.get(volume_key(r.volume))
        if not regions:
            continue
        offset = 1 if r.channels == "drop" else 0
        axes = SpatialAxes(grid, offset)
        reads = [axis_reads(r, axis, axes) for axis in range(len(axes.counts))]
        for reg in regions:
            if r.channels == "all":
                reg = reg[1:]
            box: list[slice] = [slice(None)] * offset
            for (starts, stops), s in zip(reads, reg):
                # blocks whose read [start, stop) meets [s.start, s.stop): a run of indices
                box.append(slice(int(np.searchsorted(stops, s.start, side="right")),
                                 int(np.searchsorted(starts, s.stop, side="left"))))
            mask[tuple(box)] = True
    return np.flatnonzero(mask)


class SpatialAxes:
    """A grid's spatial axes seen from a read that drops its leading channel axis."""

    def __init__(self, grid: Any, offset: int):
        self.block = grid.block[offset:]
        self.shape = grid.shape[offset:]
        self.counts = grid.counts[offset:]


#: most regions a list of changed regions holds: beyond, rows of chunks (or blocks) along the
#: last axis are merged into one region, then planes, as far as needed
MAX_REGIONS = 4096


def boxes(idx: np.ndarray, counts: Any) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[lo, hi)`` of grid indices that hold every index of ``idx`` (an array of shape
    (k, ndim)): one per index while there are at most :data:`MAX_REGIONS`, else whole rows
    along the last axis, then whole planes, and so on, as few as that makes them."""
    lo, hi = idx.astype(np.int64), idx.astype(np.int64) + 1
    for axis in range(len(counts) - 1, 0, -1):
        if len(lo) <= MAX_REGIONS:
            break
        lo[:, axis], hi[:, axis] = 0, int(counts[axis])
        keep = np.sort(np.unique(lo, axis=0, return_index=True)[1])
        lo, hi = lo[keep], hi[keep]
    return lo, hi


def mark_written(st: Stage, hits: np.ndarray, changed: dict[str, list[Region]]) -> None:
    """The regions the recomputed blocks write are changed for the stages that read them."""
    if not len(hits):
        return
    idx = np.stack(np.unravel_index(np.asarray(hits, np.int64), st.grid.counts), axis=1)
    lo, hi = boxes(idx, st.grid.counts)
    for w in st.writes:
        key = volume_key(w.volume)
        for a, e in zip(lo.tolist(), hi.tolist()):
            region = tuple(slice(i * b, min(j * b, n))
                           for i, j, b, n in zip(a, e, st.grid.block, st.grid.shape))
            changed.setdefault(key, []).append(w.region(region))
