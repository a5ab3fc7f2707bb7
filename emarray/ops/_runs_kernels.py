"""The compiled kernels of :mod:`emarray.ops._runs`, at module level so that numba caches
them on disk (a kernel that calls another one defined in a function's scope is compiled
again in every process: 1.7 s per match job)."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def table_size(room):  # pragma: no cover - compiled
    """Slots of an open-addressing table for ``room`` keys (a power of two, at most half
    full) and the mask that wraps a slot index."""
    cap = 2
    while cap < 2 * room:
        cap *= 2
    return cap, cap - 1


@njit(cache=True, nogil=True)
def object_runs(lab, nz, ny, nx, raw, has_raw, room):  # pragma: no cover - compiled
    """Per id (0 left out) in order of first appearance: voxels, bbox lo/hi (z, y, x),
    coordinate sums and raw sum/min/max (summed voxel by voxel in C order). ``n`` is -1
    when more than ``room`` ids were met."""
    cap, mask = table_size(room)
    keys = np.empty(cap, lab.dtype)
    slot_of = np.full(cap, -1, np.int64)
    ids = np.empty(room, lab.dtype)
    cnt = np.zeros(room, np.int64)
    lo = np.empty((room, 3), np.int64)
    hi = np.empty((room, 3), np.int64)
    sm = np.zeros((room, 3), np.int64)
    rsum = np.zeros(room, np.float64)
    rmin = np.full(room, np.inf)
    rmax = np.full(room, -np.inf)
    n = 0
    i = 0
    for z in range(nz):
        for y in range(ny):
            x = 0
            while x < nx:
                v = lab[i]
                e = x + 1
                while e + 8 <= nx:  # eight voxels at a time while the run lasts (vectorised)
                    same = True
                    for k in range(8):
                        same &= lab[i + e - x + k] == v
                    if not same:
                        break
                    e += 8
                while e < nx and lab[i + e - x] == v:
                    e += 1
                length = e - x
                if v != 0:
                    h = np.uint64(v) * np.uint64(0x9E3779B97F4A7C15)
                    s = np.int64((h ^ (h >> np.uint64(29))) & np.uint64(mask))
                    while slot_of[s] >= 0 and keys[s] != v:
                        s = (s + 1) & mask
                    k = slot_of[s]
                    if k < 0:
                        if n == room:
                            return -1, ids, cnt, lo, hi, sm, rsum, rmin, rmax
                        k = n
                        n += 1
                        keys[s] = v
                        slot_of[s] = k
                        ids[k] = v
                        lo[k, 0] = z
                        lo[k, 1] = y
                        lo[k, 2] = x
                        hi[k, 1] = y
                        hi[k, 2] = e - 1
                    cnt[k] += length
                    if y < lo[k, 1]:
                        lo[k, 1] = y
                    if x < lo[k, 2]:
                        lo[k, 2] = x
                    hi[k, 0] = z  # rows come in z order: the last z seen is the highest
                    if y > hi[k, 1]:
                        hi[k, 1] = y
                    if e - 1 > hi[k, 2]:
                        hi[k, 2] = e - 1
                    sm[k, 0] += z * length
                    sm[k, 1] += y * length
                    sm[k, 2] += (x + e - 1) * length // 2
                    if has_raw:
                        for j in range(i, i + length):
                            r = raw[j]
                            rsum[k] += r
                            if r < rmin[k]:
                                rmin[k] = r
                            if r > rmax[k]:
                                rmax[k] = r
                i += length
                x = e
    return n, ids, cnt, lo, hi, sm, rsum, rmin, rmax


@njit(cache=True, nogil=True)
def rank(keys, ranks, v, h, mask, count):  # pragma: no cover - compiled
    """The first-appearance rank of ``v`` (hash ``h``) in an open-addressing table, a new
    one (``count``) when ``v`` is new; returns (rank, the count after)."""
    s = np.int64((h ^ (h >> np.uint64(29))) & np.uint64(mask))
    while ranks[s] >= 0 and keys[s] != v:
        s = (s + 1) & mask
    if ranks[s] < 0:
        keys[s] = v
        ranks[s] = count
        count += 1
    return ranks[s], count


@njit(cache=True, nogil=True)
def pair_runs(t, p, room):  # pragma: no cover - compiled
    """Every (truth, pred) pair that overlaps with its voxels, and for each pair the
    first-appearance rank of its truth id and of its pred id (0 included). ``n`` is -1
    when more than ``room`` pairs were met."""
    cap, mask = table_size(room)
    ka = np.empty(cap, t.dtype)
    kb = np.empty(cap, p.dtype)
    slot_of = np.full(cap, -1, np.int64)
    tkey = np.empty(cap, t.dtype)
    trank = np.full(cap, -1, np.int64)
    pkey = np.empty(cap, p.dtype)
    prank = np.full(cap, -1, np.int64)
    pt = np.empty(room, t.dtype)
    pp = np.empty(room, p.dtype)
    pn = np.zeros(room, np.int64)
    tord = np.empty(room, np.int64)
    pord = np.empty(room, np.int64)
    n = 0
    nt = 0
    npd = 0
    size = t.size
    i = 0
    while i < size:
        a = t[i]
        b = p[i]
        e = i + 1
        while e + 8 <= size:  # eight voxels at a time while the run lasts (vectorised)
            same = True
            for k in range(8):
                same &= (t[e + k] == a) & (p[e + k] == b)
            if not same:
                break
            e += 8
        while e < size and t[e] == a and p[e] == b:
            e += 1
        ha = np.uint64(a) * np.uint64(0x9E3779B97F4A7C15)
        hb = np.uint64(b) * np.uint64(0xC2B2AE3D27D4EB4F)
        h = ha ^ hb
        s = np.int64((h ^ (h >> np.uint64(29))) & np.uint64(mask))
        while slot_of[s] >= 0 and not (ka[s] == a and kb[s] == b):
            s = (s + 1) & mask
        k = slot_of[s]
        if k < 0:
            if n == room:
                return -1, pt, pp, pn, tord, pord
            k = n
            n += 1
            ka[s] = a
            kb[s] = b
            slot_of[s] = k
            pt[k] = a
            pp[k] = b
            # the rank of a among truth ids, of b among pred ids, by first appearance
            tord[k], nt = rank(tkey, trank, a, ha, mask, nt)
            pord[k], npd = rank(pkey, prank, b, hb, mask, npd)
        pn[k] += e - i
        i = e
    return n, pt, pp, pn, tord, pord
