"""Pooling one block by a factor of 1 or 2 per axis: mean, mode, max, min, nearest.

Odd sizes are handled, never dropped: the last window along an odd axis holds the voxels
there are and is pooled alone. Integer means are floored (``sum // count``, as tinybrain
does for unsigned data); a mode is the most frequent value of the window, ties going to the
value met first in z,y,x order.

The CPU path uses tinybrain where it computes exactly this (means of unsigned and float data,
2x2x2 modes); the rest, and the twin of ``kernels/pool.cu``, is :func:`pool_twin`.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import backends
from ..kernel_table import CTYPES
from ..errors import InvalidArgumentError

MODES = ("mean", "mode", "max", "min", "nearest")


def pooled_shape(shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    """``ceil(shape / factors)``: the last, partial window is kept."""
    return tuple(-(-s // f) for s, f in zip(shape, factors))


def _windows(a: np.ndarray, factors: Sequence[int]) -> tuple[list[np.ndarray], list[Any]]:
    """The window members, one array per offset in z,y,x (C) order, padded to the pooled
    shape, and for each a mask of where it exists (None: everywhere)."""
    out = pooled_shape(a.shape, factors)
    vals: list[np.ndarray] = []
    masks: list[Any] = []
    for off in itertools.product(*(range(f) for f in factors)):
        v = a[tuple(slice(o, None, f) for o, f in zip(off, factors))]
        if v.shape == out:
            vals.append(v)
            masks.append(None)
            continue
        full = np.zeros(out, a.dtype)
        m = np.zeros(out, np.bool_)
        full[tuple(slice(0, n) for n in v.shape)] = v
        m[tuple(slice(0, n) for n in v.shape)] = True
        vals.append(full)
        masks.append(m)
    return vals, masks


def pool_twin(a: np.ndarray, factors: Sequence[int], mode: str) -> np.ndarray:
    """Pool ``a`` (z,y,x) by ``factors`` (1 or 2 each): the NumPy twin of ``kernels/pool.cu``.

    >>> pool_twin(np.array([[[1, 2, 2, 5, 7]]], np.uint8), (1, 1, 2), "mean").tolist()
    [[[1, 3, 7]]]
    >>> pool_twin(np.array([[[3, 1], [1, 3]]], np.uint32), (1, 2, 2), "mode").tolist()
    [[[3]]]
    """
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "nearest":
        return np.ascontiguousarray(a[tuple(slice(None, None, f) for f in factors)])
    vals, masks = _windows(a, factors)
    if mode == "mean":
        count = np.zeros(vals[0].shape, np.int64)
        total = np.zeros(vals[0].shape, np.float64 if a.dtype.kind == "f" else np.int64)
        for v, m in zip(vals, masks):  # missing members are zeros: they add nothing
            count += 1 if m is None else m
            total += v
        if a.dtype.kind == "f":
            return (total / count).astype(a.dtype)
        return np.floor_divide(total, count).astype(a.dtype)
    if mode in ("max", "min"):
        pick = np.maximum if mode == "max" else np.minimum
        out = vals[0].copy()
        for v, m in zip(vals[1:], masks[1:]):
            out = pick(out, v) if m is None else np.where(m, pick(out, v), out)
        return out
    # mode: count each member's value among the members; the first most frequent wins
    counts = []
    for v, m in zip(vals, masks):
        c = sum((v == w) if mw is None else ((v == w) & mw) for w, mw in zip(vals, masks))
        counts.append(np.where(m, c, -1) if m is not None else c)
    best = np.argmax(np.stack(counts), axis=0)
    return np.choose(best, vals).astype(a.dtype)  # at most 8 members: within choose's limit


def _tinybrain_ok(a: np.ndarray, factors: Sequence[int], mode: str) -> bool:
    f = tuple(factors)
    if mode == "mean" and a.dtype.kind in "uf":
        if f == (2, 2, 2):
            return min(a.shape) >= 2
        # tinybrain's 2x2x1 mean treats an odd last row or column otherwise than we do
        return f == (1, 2, 2) and a.shape[1] % 2 == 0 and a.shape[2] % 2 == 0
    # tinybrain's 2x2x2 mode breaks ties by the first value in z,y,x order, as ours does;
    # its 2x2x1 (countless 2-D) does not, so that one is ours
    return mode == "mode" and f == (2, 2, 2) and min(a.shape) >= 2


def pool_block_cpu(a: np.ndarray, *, factors: Sequence[int], mode: str) -> np.ndarray:
    """Pool one z,y,x block on the CPU (tinybrain where it matches :func:`pool_twin`)."""
    if _tinybrain_ok(a, factors, mode):
        import tinybrain
        t = np.ascontiguousarray(a).T  # tinybrain works in x,y,z (Fortran) order: a free view
        f = tuple(factors)[::-1]
        if mode == "mean":
            out = tinybrain.downsample_with_averaging(t, f, num_mips=1)[0]
        else:
            out = tinybrain.downsample_segmentation(t, f, num_mips=1)[0]
        return np.ascontiguousarray(out.T)
    return pool_twin(a, factors, mode)


backends.register("pool", "cpu", pool_block_cpu)
backends.register("pool", "cuda", "emarray.cuda.pool:pool_block_cuda", list(CTYPES))
