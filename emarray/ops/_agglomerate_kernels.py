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
