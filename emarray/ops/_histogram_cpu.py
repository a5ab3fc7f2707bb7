"""Numba kernels of the sweep: one pass per block into a (bucket x class) joint histogram."""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def bucket_histogram(x, cls, ts, table, t0, inv, out, nan_count):  # pragma: no cover - jitted
    """Add each voxel to ``out[bucket, cls]``; ``bucket`` = number of thresholds below the value.

    ``ts`` are sorted thresholds in the data's own type (exact comparisons). ``table`` maps a
    uniform cell of ``[ts[0], ts[-1]]`` to a lower bound of the bucket, so each voxel needs one
    multiply and, almost always, zero or one comparison. NaN voxels are counted apart.
    (Computing the class inside this loop was measured slower than one NumPy pass before it.)
    """
    K = ts.size
    M = table.size
    for i in range(x.size):
        v = x[i]
        if v != v:
            nan_count[cls[i]] += 1
            continue
        c = (v - t0) * inv
        if not c >= 0.0:  # also NaN, from inf * 0 when all thresholds are equal: 0 is safe
            b = 0
        elif c >= M:
            b = table[M - 1]
        else:
            b = table[int(c)]
        while b < K and ts[b] < v:
            b += 1
        out[b, cls[i]] += 1


@numba.njit(cache=True, nogil=True)
def level_histogram(x, cls, out):  # pragma: no cover - jitted
    """One bucket per level, for uint8/uint16 maps: ``out[x, cls] += 1``."""
    for i in range(x.size):
        out[x[i], cls[i]] += 1


def lookup_table(ts: np.ndarray, cells: int = 4096) -> tuple[np.ndarray, float, float]:
    """The cell table for :func:`bucket_histogram`: a safe lower bound of the bucket per cell."""
    t0, t1 = float(ts[0]), float(ts[-1])
    if not t1 > t0:
        return np.zeros(1, np.int64), t0, 0.0
    inv = cells / (t1 - t0)
    # the bound for cell c is taken at the start of cell c-1: robust to rounding of c
    starts = t0 + (np.arange(cells) - 1) / inv
    table = np.searchsorted(ts.astype(np.float64), starts, side="left").astype(np.int64)
    return table, t0, inv
