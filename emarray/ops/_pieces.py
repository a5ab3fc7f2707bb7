"""The plan of a two-stage per-object job (``mesh``, ``skeleton``): the first stage saves each
block's pieces of its objects and returns ``(objects, blocks)`` pairs; the plan sorts them by
object (saved beside the pieces), and each task of the second stage takes its objects, in
order, with the blocks that hold their pieces."""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import BlockContext
from ..engine.checkpoint import atomic_write, load_npz
from ..errors import InvalidArgumentError


def concat_pairs(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])


def add(a: int, b: int) -> int:
    return a + b


def save_plan(acc: Any, *, scratch: Path, dtype: np.dtype, url: str,
              unsigned_only: str = "") -> dict[str, Any]:
    """Which blocks hold a piece of each object, sorted by object (saved for the second
    stage): ``objects`` (the labels' ids, exact) and ``blocks``, pairwise, and the ``unique``
    ids. ``unsigned_only``: why negative ids are refused (the output names segments by
    unsigned ids), said in the one line that refuses them."""
    objects, blocks = acc if acc is not None else (np.empty(0, dtype), np.empty(0, np.int64))
    order = np.lexsort((blocks, objects))
    objects, blocks = objects[order].astype(dtype, copy=False), blocks[order]
    if unsigned_only and objects.size and objects[0] < 0:
        raise InvalidArgumentError(f"{url} holds negative label ids (e.g. {int(objects[0])}); "
                                   f"{unsigned_only}")
    unique = np.unique(objects)
    buf = io.BytesIO()
    np.savez(buf, objects=objects, blocks=blocks, unique=unique)
    atomic_write(scratch / "plan.npz", buf.getvalue())
    return {"objects": int(unique.size)}


def planned(scratch: Path) -> np.ndarray:
    """The ids of the objects the first stage found (saved by :func:`save_plan`)."""
    return load_npz(scratch / "plan.npz")["unique"]


def task_objects(ctx: BlockContext, scratch: Path) -> Iterator[tuple[int, np.ndarray]]:
    """The objects of one task of the second stage (its region of the object list), each with
    the blocks that hold its pieces."""
    z = load_npz(scratch / "plan.npz")
    objects, blocks, unique = z["objects"], z["blocks"], z["unique"]
    for k in range(ctx.region[0].start, min(ctx.region[0].stop, len(unique))):
        lo = np.searchsorted(objects, unique[k], side="left")
        hi = np.searchsorted(objects, unique[k], side="right")
        yield int(unique[k]), blocks[lo:hi]
