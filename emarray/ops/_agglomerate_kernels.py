"""The compiled agglomeration of :mod:`emarray.ops.agglomerate`, at module level so that numba
caches it on disk (kernels defined in a function's scope and calling one another were compiled
again in every process: 3.7 s per job)."""
from __future__ import annotations

import heapq

import numpy as np
from numba import njit, types
from numba.typed import Dict, List


@njit(cache=True)
def snapshot(parent, row):  # pragma: no cover - compiled
    """Each node's root (its segment at this threshold) into ``row``."""
    for k in range(parent.size):
        r = k
        while parent[r] != r:
            r = parent[r]
        row[k] = r


@njit(cache=True)
def run(n, eu, ev, esum, esize, thresholds):  # pragma: no cover - compiled
    m = eu.size
    adj = List()
    for _ in range(n):
        adj.append(Dict.empty(key_type=types.int64, value_type=types.int64))
    heap = []
    for i in range(m):
        a, b = eu[i], ev[i]
        adj[a][b] = i
        adj[b][a] = i
        heap.append((esum[i] / esize[i], i, 0))
    heapq.heapify(heap)
    stamp = np.zeros(m, np.int64)
    alive = np.ones(m, np.bool_)
    parent = np.arange(n)
    out = np.empty((thresholds.size, n), np.int64)
    ti = 0
    while heap and ti < thresholds.size:
        mean, i, st = heapq.heappop(heap)
        if not alive[i] or st != stamp[i]:
            continue
        while ti < thresholds.size and mean >= thresholds[ti]:
            snapshot(parent, out[ti])
            ti += 1
        if ti == thresholds.size:
            break
        a, b = eu[i], ev[i]
        if len(adj[a]) < len(adj[b]):
            a, b = b, a
        alive[i] = False
        del adj[a][b]
        del adj[b][a]
        for c, j in adj[b].items():
            del adj[c][b]
            if c in adj[a]:
                k = adj[a][c]
                esum[k] += esum[j]
                esize[k] += esize[j]
                alive[j] = False
                stamp[k] += 1
                heapq.heappush(heap, (esum[k] / esize[k], k, stamp[k]))
            else:
                adj[a][c] = j
                adj[c][a] = j
                if eu[j] == b:
                    eu[j] = a
                else:
                    ev[j] = a
        adj[b] = Dict.empty(key_type=types.int64, value_type=types.int64)
        parent[b] = a
    while ti < thresholds.size:
        snapshot(parent, out[ti])
        ti += 1
    return out


@njit(cache=True)
def best_neighbour(adj_a, esum, esize):  # pragma: no cover - compiled
    """The neighbour of lowest mean boundary (ties: the largest contact, then the lowest
    index); -1 when every contact is +inf (NaN: never merged)."""
    best, bmean, bcount = -1, np.inf, -1.0
    for c, j in adj_a.items():
        mean = esum[j] / esize[j]
        if not mean < np.inf:
            continue
        if best < 0 or mean < bmean or (mean == bmean and (
                esize[j] > bcount or (esize[j] == bcount and c < best))):
            best, bmean, bcount = c, mean, esize[j]
    return best


@njit(cache=True)
def merge_small(k, su, sv, esum, esize, voxels, min_size):  # pragma: no cover - compiled
    """Segments ``0..k-1`` under ``min_size`` voxels, the smallest first (ties: the lowest
    index), each merged into its neighbour of lowest mean boundary; the merged segment's
    contacts combined, its size the sum, until no segment under ``min_size`` has a neighbour
    it may merge into. Returns each segment's final representative."""
    adj = List()
    for _ in range(k):
        adj.append(Dict.empty(key_type=types.int64, value_type=types.int64))
    for i in range(su.size):
        adj[su[i]][sv[i]] = i
        adj[sv[i]][su[i]] = i
    parent = np.arange(k)
    size = voxels.copy()
    heap = [(size[0], 0)]
    heap.pop()
    for s in range(k):
        if size[s] < min_size:
            heap.append((size[s], s))
    heapq.heapify(heap)
    while heap:
        sz, a = heapq.heappop(heap)
        if parent[a] != a or sz != size[a]:
            continue  # merged away, or grown since it was pushed
        b = best_neighbour(adj[a], esum, esize)
        if b < 0:
            continue
        del adj[a][b]
        del adj[b][a]
        for c, j in adj[a].items():
            del adj[c][a]
            if c in adj[b]:
                kk = adj[b][c]
                esum[kk] += esum[j]
                esize[kk] += esize[j]
            else:
                adj[b][c] = j
                adj[c][b] = j
        adj[a] = Dict.empty(key_type=types.int64, value_type=types.int64)
        parent[a] = b
        size[b] += size[a]
        if size[b] < min_size:
            heapq.heappush(heap, (size[b], b))
    out = np.empty(k, np.int64)
    snapshot(parent, out)
    return out
