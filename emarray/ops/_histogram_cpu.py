"""Numba kernels of the sweep: one pass per block into a (bucket x class) joint histogram."""
from __future__ import annotations

import numba
import numpy as np


def bucket_histogram(x: np.ndarray, cls: np.ndarray, ts: np.ndarray, table: np.ndarray,
                     t0: float, inv: float, out: np.ndarray, nan_count: np.ndarray) -> None:
    """Add each voxel to ``out[bucket, cls]``; ``bucket`` = number of thresholds below the value.

    ``ts`` are sorted thresholds in the data's own type (exact comparisons). ``table`` maps a
    uniform cell of ``[ts[0], ts[-1]]`` to a lower bound of the bucket, so each voxel needs one
    multiply and a comparison or two. NaN voxels are counted apart. Where the table is fine
    enough that no voxel is more than one threshold above its cell's bound (checked here, for
    maps whose values float64 holds exactly), the branch-free kernel runs; else the searching one.
    (Computing the class inside this loop was measured slower than one NumPy pass before it.)
    """
    if one_step(ts, table, t0, inv, x.dtype):
        padded = np.append(ts, np.array([np.inf], ts.dtype))
        _one_step_histogram(x, cls, padded, table, t0, inv, out, nan_count)
    else:
        _searching_histogram(x, cls, ts, table, t0, inv, out, nan_count)


def one_step(ts: np.ndarray, table: np.ndarray, t0: float, inv: float, dtype: np.dtype) -> bool:
    """Whether every value's bucket is its cell's bound or one above (with a cell of slack)."""
    if not inv > 0 or not (dtype.kind == "f" or dtype.itemsize <= 4):
        return False
    ends = t0 + (np.arange(table.size) + 2) / inv
    upper = np.searchsorted(ts.astype(np.float64), ends, side="right")
    upper[-1] = ts.size  # the last cell takes every value above the thresholds
    return bool(np.all(upper - table <= 1))


STRETCH = 2048  # voxels binned before they are counted (a buffer that stays in L1)


@numba.njit(cache=True, nogil=True)
def _add_copies(copies, out):  # pragma: no cover - jitted
    """Add the four copies of a flat (bucket x 3 classes) histogram into ``out``; entries past
    ``out``'s buckets (the NaN counts) are left to the caller."""
    for r in range(copies.shape[0]):
        for k in range(out.shape[0] * 3):
            out[k // 3, k % 3] += copies[r, k]


@numba.njit(cache=True, nogil=True)
def _one_step_histogram(x, cls, padded, table, t0, inv, out, nan_count):  # pragma: no cover
    """:func:`bucket_histogram` without branches: ``padded`` ends with +inf. Bins of a stretch
    are computed first (vectorisable), then counted into four copies of the histogram so that
    runs of equal values do not wait on one counter."""
    B = out.shape[0]
    copies = np.zeros((4, B * 3 + 3), np.int64)  # the last three: NaN per class
    buf = np.empty(STRETCH, np.int32)
    hi = table.size - 1.0
    for s in range(0, x.size, STRETCH):
        m = min(STRETCH, x.size - s)
        xs = x[s:s + m]
        cs = cls[s:s + m]
        for j in range(m):
            v = xs[j]
            c = (v - t0) * inv
            c = c if c > 0.0 else 0.0  # NaN lands on 0 too
            c = c if c < hi else hi
            b = table[np.int64(c)]
            b += padded[b] < v
            b = b if v == v else B
            buf[j] = b * 3 + cs[j]
        j = 0
        while j + 4 <= m:
            copies[0, buf[j]] += 1
            copies[1, buf[j + 1]] += 1
            copies[2, buf[j + 2]] += 1
            copies[3, buf[j + 3]] += 1
            j += 4
        while j < m:
            copies[0, buf[j]] += 1
            j += 1
    _add_copies(copies, out)
    for r in range(4):
        for k in range(3):
            nan_count[k] += copies[r, B * 3 + k]


@numba.njit(cache=True, nogil=True)
def _searching_histogram(x, cls, ts, table, t0, inv, out, nan_count):  # pragma: no cover
    """:func:`bucket_histogram` for any table: from the cell's bound, step while below."""
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
    """One bucket per level, for uint8/uint16 maps: ``out[x, cls] += 1``. With 256 levels, into
    four copies of the histogram in turn (runs of equal values do not wait on one counter)."""
    n = x.size
    L = out.shape[0]
    if L > 256:  # uint16: four copies would not stay in cache
        for i in range(n):
            out[x[i], cls[i]] += 1
        return
    copies = np.zeros((4, L * 3), np.int64)
    i = 0
    while i + 4 <= n:
        copies[0, np.int64(x[i]) * 3 + cls[i]] += 1
        copies[1, np.int64(x[i + 1]) * 3 + cls[i + 1]] += 1
        copies[2, np.int64(x[i + 2]) * 3 + cls[i + 2]] += 1
        copies[3, np.int64(x[i + 3]) * 3 + cls[i + 3]] += 1
        i += 4
    while i < n:
        copies[0, np.int64(x[i]) * 3 + cls[i]] += 1
        i += 1
    _add_copies(copies, out)


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
