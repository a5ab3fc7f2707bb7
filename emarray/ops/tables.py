"""Per-id tables summed over blocks: what the object table and instance matching fold.

A table is a dict of equal-length columns with an ``id`` column (or ``key`` columns) sorted
and unique. Block tables are merged pairwise (the engine folds them in a tree), so the driver
holds one row per object or per overlapping pair, never per voxel.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..engine import Checkpoint, Read, RunOptions, Stage, run_stages
from ..engine.checkpoint import atomic_write
from ..engine.files import FilesOutput, open_files
from ..engine.output import reading
from ..errors import InvalidArgumentError

#: how each column of a table is merged when two tables hold the same id
SUM, MIN, MAX = "sum", "min", "max"


def merge(a: dict[str, np.ndarray], b: dict[str, np.ndarray], keys: Sequence[str],
          how: dict[str, str]) -> dict[str, np.ndarray]:
    """Merge two tables on ``keys``: rows of the same key are combined column by column."""
    cat = {k: np.concatenate([a[k], b[k]]) for k in a}
    order = np.lexsort(tuple(cat[k] for k in reversed(keys)))
    cat = {k: v[order] for k, v in cat.items()}
    n = cat[keys[0]].size
    if n == 0:
        return cat
    same = np.ones(n - 1, np.bool_)
    for k in keys:
        same &= cat[k][1:] == cat[k][:-1]
    starts = np.flatnonzero(np.r_[True, ~same])
    out = {k: cat[k][starts] for k in keys}
    for col, rule in how.items():
        ufunc = {SUM: np.add, MIN: np.minimum, MAX: np.maximum}[rule]
        out[col] = ufunc.reduceat(cat[col], starts)
    return out


def fold_table(name: str, fn: Any, reads: list[Read], grid: Any, combine: Any, *,
               opts: RunOptions, target: FilesOutput | None, job: dict[str, Any]) -> Any:
    """Run one summarising stage over ``grid`` and return the folded table (resumable when it
    writes a ``target``: its progress is kept in the target's staging folder)."""
    checkpoint = Checkpoint(target.progress if target is not None else None)
    with opts.runner(name) as runner, reading([r.volume for r in reads]):
        runner.check_volumes([r.volume for r in reads])
        checkpoint.start(job, inputs=[r.volume for r in reads])
        return run_stages([Stage(name, fn, grid, reads, combine=combine)], runner, checkpoint,
                          retries=opts.retries)


@contextlib.contextmanager
def table_output(out: str | os.PathLike | None, *, job: dict[str, Any], inputs: Sequence[Any],
                 opts: RunOptions, names: Sequence[str],
                 folder: bool = True) -> Iterator[FilesOutput | None]:
    """The files output of a table job (a folder, or a named table with ``folder=False``) —
    locked, staged and committed by the engine (:mod:`emarray.engine.files`) — or None when
    ``out`` is None (the Python API returns the table only). A resumed table that finished
    earlier is computed again (cheap next to its inputs; equal to a fresh run)."""
    if out is None:
        yield None
        return
    with open_files(out, job=job, inputs=[v for v in inputs if v is not None],
                    overwrite=opts.overwrite, resume=opts.resume, folder=folder, names=names,
                    again=True) as target:
        yield target


def write_frame(df: Any, path: Any) -> None:
    """Write a DataFrame as CSV or Parquet (by suffix) whole or not at all (local disk or
    object storage)."""
    if path.name.lower().endswith(".parquet"):
        buf = io.BytesIO()
        try:
            df.to_parquet(buf, index=False)
        except ImportError as exc:
            raise InvalidArgumentError(
                "writing .parquet needs pyarrow (pip install pyarrow); or use a .csv output"
            ) from exc
        data = buf.getvalue()
    else:
        data = df.to_csv(index=False).encode()
    atomic_write(path, data)


def write_json(obj: Any, path: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=float).encode())
