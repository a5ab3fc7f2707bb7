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
_KERNELS: dict[str, Any] = {}
_LOCK = threading.Lock()


def _compile() -> dict[str, Any]:
    from ._runs_kernels import object_runs, pair_runs
    return {"objects": object_runs, "pairs": pair_runs}


def kernels() -> dict[str, Any]:
    """The compiled kernels (loaded from numba's cache once per process, under a lock)."""
    with _LOCK:
        if not _KERNELS:
            _KERNELS.update(_compile())
    return _KERNELS


def warm(*dtypes: np.dtype | None) -> None:
    """Load the kernels for blocks of ``dtypes`` in a background thread, beside a job's first
    reads (about 0.7 s of numba import and cache loading that the first block would wait for):
    ``warm(labels)`` and ``warm(labels, raw)`` for object tables, ``warm(truth, pred, None)``
    for pair tables."""
    threading.Thread(target=_warm, args=dtypes, name="emarray-numba", daemon=True).start()


def _warm(*dtypes: np.dtype | None) -> None:
    try:
        if len(dtypes) == 3:
            pair_table(np.zeros(1, dtypes[0]), np.zeros(1, dtypes[1]))
        else:
            raw = np.zeros((1, 1, 1), dtypes[1]) if len(dtypes) > 1 and dtypes[1] else None
            object_table(np.zeros((1, 1, 1), dtypes[0]), raw)
    except Exception:  # noqa: BLE001 - the job's own first block reports any failure
        pass


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
    run = kernels()["objects"]
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
    run = kernels()["pairs"]
    n, *out = run(t, p, max(1, min(ROOM, t.size)))
    if n < 0:
        n, *out = run(t, p, max(1, t.size))
    pt, pp, pn, tord, pord = (a[:n] for a in out)
    order = np.lexsort((pord, tord))
    return {"t": pt[order].astype(np.uint64), "p": pp[order].astype(np.uint64),
            "n": pn[order]}
