"""Per-id tables summed over blocks: what the object table and instance matching fold.

A table is a dict of equal-length columns with an ``id`` column (or ``key`` columns) sorted
and unique. Block tables are merged pairwise (the engine folds them in a tree), so the driver
holds one row per object or per overlapping pair, never per voxel.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Checkpoint, Read, RunOptions, Stage, run_stages
from ..engine.checkpoint import PROGRESS_DIR
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
               opts: RunOptions, progress_dir: Path | None, job: dict[str, Any]) -> Any:
    """Run one summarising stage over ``grid`` and return the folded table (resumable when
    ``progress_dir`` is given)."""
    checkpoint = Checkpoint(progress_dir)
    with opts.runner(name) as runner, reading([r.volume for r in reads]):
        runner.check_volumes([r.volume for r in reads])
        if not opts.resume:
            checkpoint.clear()
        checkpoint.start(job, inputs=[r.volume for r in reads])
        table = run_stages([Stage(name, fn, grid, reads, combine=combine)], runner, checkpoint,
                           retries=opts.retries)
    return table, checkpoint


def _check_beside_inputs(paths: Sequence[Path], inputs: Sequence[Any], what: str) -> None:
    """Refuse an output file or folder that is, holds or lies inside an input (links resolved)."""
    from ..engine.output import check_no_overlap, real_path
    for p in paths:
        check_no_overlap(real_path(p), [v for v in inputs if v is not None], f"{what} {p}")


def check_out_folder(out: Path, replace: bool, files: Sequence[str], what: str,
                     inputs: Sequence[Any] = ()) -> None:
    """Refuse an output folder holding an earlier result (unless ``replace``), a file, or a
    folder inside (or holding) an input."""
    _check_beside_inputs([out], inputs, "--out")
    existing = [out / f for f in files if (out / f).exists()]
    if existing and not replace:
        raise InvalidArgumentError(
            f"{existing[0]} already exists; pass --overwrite to replace the {what} in {out}")
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"--out {str(out)!r} is a file, not a folder")


def check_out_file(path: Path, replace: bool, suffixes: Sequence[str],
                   beside: Sequence[str] = (), inputs: Sequence[Any] = ()) -> None:
    """Refuse an output file with an unknown suffix, one that exists (unless ``replace``), or
    one inside an input; the same for the files written ``beside`` it (other suffixes)."""
    if path.suffix.lower() not in suffixes:
        raise InvalidArgumentError(
            f"--out {str(path)!r} must end in {' or '.join(suffixes)}")
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"the folder of --out {str(path)!r} does not exist")
    files = [path] + [path.with_suffix(s) for s in beside]
    _check_beside_inputs(files + [progress_beside(path)], inputs, "output")
    for f in files:
        if f.is_dir() or (f.is_symlink() and not f.exists()):
            raise InvalidArgumentError(f"{str(f)!r} is a folder or a broken link, not a file: "
                                       "choose another --out")
        if f.exists() and not replace:
            what = "" if f == path else f" (written beside --out {path.name})"
            raise InvalidArgumentError(f"{f}{what} already exists; pass --overwrite to replace it")


def write_frame(df: Any, path: Path) -> None:
    """Write a DataFrame as CSV or Parquet (by suffix) through a temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix.lower() == ".parquet":
        try:
            df.to_parquet(tmp, index=False)
        except ImportError as exc:
            raise InvalidArgumentError(
                "writing .parquet needs pyarrow (pip install pyarrow); or use a .csv output"
            ) from exc
    else:
        df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def progress_beside(path: Path) -> Path:
    """Where a job writing the file ``path`` keeps its progress."""
    return path.with_name(f".{path.name}{PROGRESS_DIR}")
