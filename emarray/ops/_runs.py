"""Per-block tables in one pass over runs (numba): a row of a label block is a few runs of one
id, so each run costs one hash-table lookup instead of one per voxel, and no sort or
renumbering pass comes first.

Ids are numbered in order of first appearance (C order), as ``fastremap.renumber`` numbers
them, so the tables come out in the same order as the per-voxel versions they replace. The
tables are sized before the pass (:data:`ROOM` entries; a block with more distinct ids or
pairs is passed again with room for every run), so the compiled loop never reallocates.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

ROOM = 1 << 16  # table entries of a first pass


def warm_objects(labels: np.dtype, raw: np.dtype | None = None) -> None:
    """Load :func:`object_table`'s kernel for blocks of these dtypes in a background thread,
    beside a job's first reads (about 0.7 s of numba import and cache loading that the first
    block would otherwise wait for)."""
    raw_block = np.zeros((1, 1, 1), raw) if raw is not None else None
    _in_background(object_table, np.zeros((1, 1, 1), labels), raw_block)


def warm_pairs(truth: np.dtype, pred: np.dtype) -> None:
    """:func:`warm_objects` for :func:`pair_table`."""
    _in_background(pair_table, np.zeros(1, truth), np.zeros(1, pred))


def _in_background(fn: Any, *args: Any) -> None:
    def call() -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - the job's own first block reports any failure
            pass
    threading.Thread(target=call, name="emarray-numba", daemon=True).start()


def object_table(labels: np.ndarray, raw: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """``(ids, voxels, lo, hi, sums, rsum, rmin, rmax)`` of the nonzero ids of a 3-D block.

    >>> ids, n, *_ = object_table(np.array([[[0, 5, 5, 2]]], np.uint8), None)
    >>> ids.tolist(), n.tolist()
    ([5, 2], [2, 1])
    """
    lab = np.ascontiguousarray(labels).reshape(-1)
    r = (np.ascontiguousarray(raw, dtype=np.float64).reshape(-1) if raw is not None
         else np.zeros(1, np.float64))
    nz, ny, nx = (int(s) for s in labels.shape)
    from ._runs_kernels import object_runs as run
    room = max(1, min(ROOM, lab.size))
    n, *out = run(lab, nz, ny, nx, r, raw is not None, room)
    if n < 0:  # more ids than a first pass holds: room for one per voxel
        n, *out = run(lab, nz, ny, nx, r, raw is not None, max(1, lab.size))
    return tuple(a[:n] for a in out)


def pair_table(truth: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """(truth id, pred id, voxels) of every overlapping pair, ordered by the first appearance
    of the truth id, then of the pred id (as a bincount over dense codes orders them).

    >>> pair_table(np.array([3, 3, 0, 3]), np.array([1, 1, 1, 0]))["n"].tolist()
    [2, 1, 1]
    """
    t = np.ascontiguousarray(truth).reshape(-1)
    p = np.ascontiguousarray(pred).reshape(-1)
    from ._runs_kernels import pair_runs as run
    n, *out = run(t, p, max(1, min(ROOM, t.size)))
    if n < 0:
        n, *out = run(t, p, max(1, t.size))
    pt, pp, pn, tord, pord = (a[:n] for a in out)
    order = np.lexsort((pord, tord))
    return {"t": pt[order].astype(np.uint64), "p": pp[order].astype(np.uint64),
            "n": pn[order]}
