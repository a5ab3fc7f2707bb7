"""The one path every operator takes: blocks -> per-block function -> store or reduction."""
from __future__ import annotations

import contextlib
import logging
import operator
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..volume import Volume
from .grid import BlockGrid, Region, check_aligned
from .markers import Markers
from .schedulers import Runner

log = logging.getLogger("emarray")


def _store_block(fn: Callable, inputs: Sequence[Volume], out: Volume, index: tuple[int, ...],
                 region: Region, markers_dir: str) -> int:
    blocks = [v.read(region) for v in inputs]
    result = np.asarray(fn(*blocks, region=region))
    want = tuple(s.stop - s.start for s in region)
    if result.shape != want:
        raise InvalidArgumentError(
            f"block function returned shape {result.shape} for the region of {want}")
    if result.dtype != out.dtype:
        raise InvalidArgumentError(
            f"block function returned {result.dtype} for an output of {out.dtype} "
            "(emarray does not cast silently)")
    out.write(region, result)
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
    done-marker exists are skipped. The result must have the block's shape and the output's
    dtype exactly. The output is marked complete at the end. Pass an entered ``runner`` to
    connect to the scheduler before the output is created, and call its ``check_volumes``
    on the inputs then, so that a worker that reads them differently stops the job first.
    """
    grid = grid or BlockGrid(out.shape, out.block_shape)
    check_aligned(grid, out.block_shape)
    if resumed and out.attrs.get("emarray", {}).get("complete"):
        return out
    markers = Markers(out.url)
    markers.start()
    done = markers.done() if resumed else set()
    log.info("%s: %d blocks of %s into %s (%d already done)", desc, len(grid), grid.block,
             out.url, len(done))
    with _runner(runner, scheduler, workers, progress, desc) as r:
        if resumed and r.progress:
            print(f"resuming: {len(done)} of {len(grid)} blocks already done", file=sys.stderr)
        base = (fn, list(inputs), out)

        def calls() -> Iterator[tuple[Callable, tuple]]:
            for i in grid.indices():
                if Markers.name(i) not in done:
                    yield _store_block, (*base, i, grid.region(i), out.url)

        r.run(calls(), total=len(grid) - len(done), combine=operator.add)
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
    """Compute ``fn(*input_blocks, region=...)`` per block and fold the results with ``combine``.

    ``combine`` must be associative and commutative (results are folded as they arrive).
    """
    grid = grid or BlockGrid(inputs[0].shape, inputs[0].block_shape)
    with _runner(runner, scheduler, workers, progress, desc) as r:
        r.check_volumes(inputs)
        calls = ((_reduce_block, (fn, list(inputs), grid.region(i))) for i in grid.indices())
        return r.run(calls, total=len(grid), combine=combine)
