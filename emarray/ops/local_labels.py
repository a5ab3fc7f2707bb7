"""Each block's local labels, kept in the process between label's first and last stage.

``label`` needs every block's local labels twice: to find its components and faces, and at
the end to write them with their global ids. Labelling a block costs more than squeezing its
labels (cc3d 8-20 ms and the per-component facts 4.5 ms against LZ4's 3 ms each way on a
64x256x256 block), so when the last stage runs in the process that ran the first (the
``threads`` and ``synchronous`` schedulers) it takes each block from here. What is kept stays
within a byte budget (``EMARRAY_LABEL_KEEP_MIB``, default 256); a block not kept — over the
budget, run in another process, or in a job resumed after the process ended — is read and
labelled again. Labelling is deterministic, so the output is the same either way.
"""
from __future__ import annotations

import threading

import numpy as np

from .. import environment
from .components import BlockComponents

_LOCK = threading.Lock()
_KEPT: dict[tuple[str, int], tuple] = {}
_USED = {"bytes": 0}


def budget() -> int:
    """Bytes that may be kept (``EMARRAY_LABEL_KEEP_MIB``; 0 keeps nothing)."""
    return int((environment.number("EMARRAY_LABEL_KEEP_MIB") or 0) * 2**20)


def keep(job: str, block: int, comp: BlockComponents, limit: int) -> bool:
    """Keep ``comp`` of ``block`` of ``job`` if it fits in ``limit`` bytes; return whether kept."""
    from numcodecs import LZ4
    if limit <= 0:
        return False
    packed = LZ4().encode(np.ascontiguousarray(comp.labels))
    entry = (packed, comp.labels.shape, comp.size, comp.first, comp.face)
    cost = len(packed) + comp.size.nbytes + comp.first.nbytes + comp.face.nbytes
    with _LOCK:
        if _USED["bytes"] + cost > limit:
            return False
        old = _KEPT.pop((job, block), None)
        if old is not None:
            _USED["bytes"] -= old[-1]
        _KEPT[(job, block)] = (*entry, cost)
        _USED["bytes"] += cost
    return True


def take(job: str, block: int, origin: tuple[int, ...],
         vshape: tuple[int, ...]) -> BlockComponents | None:
    """The kept components of ``block`` of ``job`` (removed from here), or None."""
    from numcodecs import LZ4
    with _LOCK:
        entry = _KEPT.pop((job, block), None)
        if entry is None:
            return None
        _USED["bytes"] -= entry[-1]
    packed, shape, size, first, face, _ = entry
    labels = np.frombuffer(LZ4().decode(packed), np.uint32).reshape(shape)
    return BlockComponents(labels, size, first, face, origin, vshape)


def forget(job: str) -> None:
    """Drop whatever is still kept of ``job`` (its end, or its failure)."""
    with _LOCK:
        for key in [k for k in _KEPT if k[0] == job]:
            _USED["bytes"] -= _KEPT.pop(key)[-1]


def kept_bytes() -> int:
    """Bytes kept now, over all jobs of this process."""
    return _USED["bytes"]
