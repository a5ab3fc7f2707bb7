"""The one path every operator takes: blocks -> per-block function -> store or reduction."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (InvalidArgumentError, OutputExistsError, ResumeMismatchError,
                      ShapeMismatchError)
from ..volume import Volume, open_volume
from .grid import BlockGrid, Region, check_aligned
from .markers import Markers
from .schedulers import Runner


def check_same_shape(volumes: Sequence[Volume], names: Sequence[str]) -> None:
    """Refuse volumes that do not line up voxel for voxel."""
    first = volumes[0]
    for v, n in zip(volumes[1:], names[1:]):
        if v.shape != first.shape:
            raise ShapeMismatchError(
                f"{names[0]} has shape {first.shape} but {n} has shape {v.shape}; they must match")


def _is_within(a: Path, b: Path) -> bool:
    try:
        a.relative_to(b)
        return True
    except ValueError:
        return False


def prepare_output(path: str | os.PathLike, create: Callable[[str], Volume], *,
                   inputs: Sequence[Volume | str | os.PathLike] = (), job: dict[str, Any] | None = None,
                   overwrite: bool = False, resume: bool = False) -> tuple[Volume, bool]:
    """Decide what happens to ``path`` before any work, then create or reopen the output.

    Returns ``(volume, resumed)``. Nothing is deleted unless ``overwrite`` is true, and never a
    directory that is not a zarr store, nor one that holds or lies inside an input.
    """
    if overwrite and resume:
        raise InvalidArgumentError("choose either overwrite or resume, not both")
    dst = Path(os.fspath(path)).absolute()
    for v in inputs:
        src = v.local_path if isinstance(v, Volume) else Path(os.fspath(v))
        if src is not None and (_is_within(dst, src.absolute()) or _is_within(src.absolute(), dst)):
            raise InvalidArgumentError(
                f"output {os.fspath(path)!r} overlaps the input {str(src)!r}; choose another path")
    if dst.exists():
        if resume:
            vol = open_volume(dst)
            old = vol.attrs.get("emarray", {}).get("job")
            if old != job:
                raise ResumeMismatchError(
                    f"cannot resume into {os.fspath(path)!r}: it was made by another job "
                    f"({old}), not this one ({job}); use overwrite to start again")
            return vol, True
        if not overwrite:
            raise OutputExistsError(
                f"output {os.fspath(path)!r} already exists; pass overwrite (--overwrite) to "
                "replace it, or resume (--resume) to finish an interrupted run")
        if not (dst / "zarr.json").is_file():
            raise InvalidArgumentError(
                f"refusing to overwrite {os.fspath(path)!r}: it is not a zarr store")
        shutil.rmtree(dst)
    return create(os.fspath(dst)), False


def _store_block(fn: Callable, inputs: Sequence[Volume], out: Volume, index: tuple[int, ...],
                 region: Region, markers_dir: str) -> int:
    blocks = [v.read(region) for v in inputs]
    result = fn(*blocks, region=region)
    want = tuple(s.stop - s.start for s in region)
    if result.shape != want:
        raise RuntimeError(f"block function returned shape {result.shape} for region of {want}")
    out.write(region, np.asarray(result, dtype=out.dtype))
    Markers(markers_dir).mark(index)
    return 1


def _reduce_block(fn: Callable, inputs: Sequence[Volume], region: Region) -> Any:
    return fn(*[v.read(region) for v in inputs], region=region)


def _runner(runner: Runner | None, scheduler: Any, workers: int | None, progress: bool,
            desc: str) -> Any:
    """An entered Runner passed in is used as is; otherwise one is made for this call."""
    if runner is not None:
        runner.desc = desc
        return contextlib.nullcontext(runner)
    return Runner(scheduler, workers, progress, desc)


def store_blocks(fn: Callable, inputs: Sequence[Volume], out: Volume, *,
                 grid: BlockGrid | None = None, resumed: bool = False, scheduler: Any = None,
                 workers: int | None = None, progress: bool = False, desc: str = "blocks",
                 runner: Runner | None = None) -> Volume:
    """Compute ``fn(*input_blocks, region=...)`` for every block and store it into ``out``.

    Blocks default to the output's write unit (shard, else chunk); a grid whose blocks would
    share a storage object is refused before any work. With ``resumed``, blocks whose
    done-marker exists are skipped. The output is marked complete at the end. Pass an entered
    ``runner`` to connect to the scheduler before the output is created.
    """
    grid = grid or BlockGrid(out.shape, out.block_shape)
    check_aligned(grid, out.block_shape)
    if resumed and out.attrs.get("emarray", {}).get("complete"):
        return out
    markers = Markers(out.local_path)
    markers.start()
    todo = [i for i in grid.indices() if not (resumed and markers.is_done(i))]
    if resumed and (runner.progress if runner else progress):
        print(f"resuming: {len(grid) - len(todo)} of {len(grid)} blocks already done",
              file=sys.stderr)
    calls = [(_store_block, (fn, list(inputs), out, i, grid.region(i), str(out.local_path)))
             for i in todo]
    with _runner(runner, scheduler, workers, progress, desc) as r:
        r.run(calls)
    _mark_complete(out)
    markers.finish()
    return out


def _mark_complete(out: Volume) -> None:
    import zarr
    meta = {**out.attrs.get("emarray", {}), "complete": True}
    zarr.open_group(out.url, mode="r+").attrs["emarray"] = meta
    out.attrs["emarray"] = meta


def reduce_blocks(fn: Callable, inputs: Sequence[Volume], combine: Callable[[Any, Any], Any], *,
                  grid: BlockGrid | None = None, scheduler: Any = None,
                  workers: int | None = None, progress: bool = False, desc: str = "blocks",
                  runner: Runner | None = None) -> Any:
    """Compute ``fn(*input_blocks, region=...)`` per block and combine the results in a tree."""
    grid = grid or BlockGrid(inputs[0].shape, inputs[0].block_shape)
    calls = [(_reduce_block, (fn, list(inputs), grid.region(i))) for i in grid.indices()]
    with _runner(runner, scheduler, workers, progress, desc) as r:
        return r.run(calls, combine=combine)
