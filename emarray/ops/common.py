"""What every operator that writes a volume does before work starts."""
from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from ..engine import BlockGrid, Runner, check_aligned, prepare_output, store_blocks
from ..volume import Volume, create_volume, open_volume


def as_volume(src: Volume | str | os.PathLike, what: str = "input") -> Volume:
    """Open ``src`` unless it already is a Volume."""
    return src if isinstance(src, Volume) else open_volume(src)


def prepare_like(src: Volume, dst: str | os.PathLike, dtype: Any, job: dict[str, Any], *,
                 inputs: Sequence[Volume] | None = None, chunks: Any = None, shards: Any = None,
                 compression: str = "zstd", overwrite: bool = False,
                 resume: bool = False) -> tuple[Volume, BlockGrid, bool]:
    """Check everything, then create (or reopen, to resume) an output shaped like ``src``.

    The processing grid is ``src``'s storage blocks; output chunks (default: ``src``'s) must not
    make two blocks share one output chunk or shard. Returns ``(output, grid, resumed)``.
    """
    from .._normalize import parse_tuple
    grid = BlockGrid(src.shape, src.block_shape)
    out_chunks = parse_tuple(chunks, "chunks", src.ndim) if chunks is not None else src.chunks
    out_shards = (parse_tuple(shards, "shards", src.ndim) if shards is not None
                  else (src.shards if chunks is None else None))
    check_aligned(grid, out_shards or tuple(min(c, s) for c, s in zip(out_chunks, src.shape)))
    job = {**job, "dtype": np.dtype(dtype).str, "shape": list(src.shape)}

    def create(path: str) -> Volume:
        return create_volume(path, src.shape, dtype, out_chunks, shards=out_shards,
                             compression=compression, voxel_size=src.voxel_size, unit=src.unit,
                             axes=src.axes, attrs={"job": job})

    out, resumed = prepare_output(dst, create, inputs=inputs or [src], job=job,
                                  overwrite=overwrite, resume=resume)
    return out, grid, resumed


def run_elementwise(op: str, src: Volume, dst: str | os.PathLike, out_dtype: Any,
                    params: dict[str, Any], job: dict[str, Any], *, backend: str = "auto",
                    gpu_memory_limit: Any = None, chunks: Any = None, shards: Any = None,
                    compression: str = "zstd", overwrite: bool = False, resume: bool = False,
                    scheduler: Any = None, workers: int | None = None,
                    progress: bool = False) -> Volume:
    """Run the per-block function of ``op`` (picked by backend) over ``src`` into ``dst``.

    What every elementwise operator shares: the backend and memory cap are checked, the
    scheduler is connected to, the output is created (or reopened to resume), then the blocks
    run. ``params`` go to the per-block function; ``job`` identifies the run for ``resume``.
    """
    from .. import backends
    from ..cuda.streaming import parse_memory_limit
    name = backends.resolve_backend(backend)
    mem = parse_memory_limit(gpu_memory_limit)  # checked whatever the backend
    extra = {"memory_limit": mem} if name == "cuda" else {}
    fn = partial(backends.implementation(op, name), **params, **extra)
    source = os.path.abspath(src.url) if "://" not in src.url else src.url
    job = {"operator": op, "source": source, **job}
    with Runner(scheduler, workers, progress) as runner:
        out, grid, resumed = prepare_like(src, dst, out_dtype, job, chunks=chunks, shards=shards,
                                          compression=compression, overwrite=overwrite,
                                          resume=resume)
        return store_blocks(fn, [src], out, grid=grid, resumed=resumed, runner=runner, desc=op)
