"""Decoded chunks kept for the reads that cut through them (halos).

A block grown by a halo touches up to 26 neighbouring chunks and needs only a sliver of each,
but a codec decodes whole chunks: without a cache every chunk is decoded once for its own
block and again for each neighbour's halo. This process-wide LRU keeps decoded chunks (up to
``EMARRAY_CHUNK_CACHE`` bytes, default 256 MiB; 0 turns it off) under a key that includes the
chunk file's inode, size and modification time, so a rewritten chunk is never served stale.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from . import environment


def _capacity() -> int:
    """``EMARRAY_CHUNK_CACHE`` in bytes (a bad value is one line naming it)."""
    return int(environment.number("EMARRAY_CHUNK_CACHE") or 0)


class ChunkCache:
    """A thread-safe LRU of decoded chunks, bounded in bytes.

    >>> c = ChunkCache(400)
    >>> for k in "abcde":
    ...     c.put(k, np.zeros(90, np.uint8))
    >>> c.get("a") is None, c.get("e").size, c.nbytes
    (True, 90, 360)
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.nbytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return arr

    def put(self, key: Any, arr: np.ndarray) -> None:
        if arr.nbytes > self.capacity // 4:  # one chunk never crowds out the rest
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._items[key] = arr
            self.nbytes += arr.nbytes
            while self.nbytes > self.capacity and self._items:
                _, gone = self._items.popitem(last=False)
                self.nbytes -= gone.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


CACHE = ChunkCache(_capacity())
