"""What every operator that writes a volume does before work starts."""
from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from ..engine import BlockGrid, Runner, check_aligned, open_output, store_blocks
from ..volume import Volume, compressor_codecs, create_volume, open_volume


def as_volume(src: Volume | str | os.PathLike, allow_incomplete: bool = False) -> Volume:
    """Open ``src`` unless it already is a Volume; refuse an unfinished job's output as input."""
    vol = src if isinstance(src, Volume) else open_volume(src)
    return vol.require_complete(allow_incomplete)


def job_identity(operator: str, params: dict[str, Any], inputs: Sequence[Volume],
                 layout: dict[str, Any]) -> dict[str, Any]:
    """What a ``resume`` must match: the operator, its parameters, each input's fingerprint
    (location, layout, metadata files) and the output's storage layout."""
    return {"operator": operator, **params, "inputs": [v.fingerprint() for v in inputs],
            "layout": layout}


def output_layout(src: Volume, chunks: Any, shards: Any,
                  compression: str) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """The output's chunks and shards (default: the input's), checked against ``src``'s grid."""
    from .._normalize import parse_tuple
    compressor_codecs(compression)  # refuse an unknown compression before any work
    out_chunks = parse_tuple(chunks, "chunks", src.ndim) if chunks is not None else src.chunks
    out_chunks = tuple(min(c, max(s, 1)) for c, s in zip(out_chunks, src.shape))
    out_shards = (parse_tuple(shards, "shards", src.ndim) if shards is not None
                  else (src.shards if chunks is None else None))
    check_aligned(BlockGrid(src.shape, src.block_shape), out_shards or out_chunks)
    return out_chunks, out_shards


def run_elementwise(op: str, src: Volume, dst: str | os.PathLike, out_dtype: Any,
                    params: dict[str, Any], job: dict[str, Any], *, backend: str = "auto",
                    gpu_memory_limit: Any = None, chunks: Any = None, shards: Any = None,
                    compression: str = "zstd", overwrite: bool = False, resume: bool = False,
                    scheduler: Any = None, workers: int | None = None,
                    connect_timeout: float | None = None, progress: bool = False) -> Volume:
    """Run the per-block function of ``op`` (picked by backend and dtype) over ``src`` into ``dst``.

    What every elementwise operator shares: the backend and memory cap are checked, the
    scheduler is connected to, the output is created (or reopened to resume, or staged beside
    the old one to overwrite), then the blocks run and the output is committed. ``params`` go
    to the per-block function; ``job`` identifies the run for ``resume``.
    """
    from .. import backends
    from ..cuda.streaming import parse_memory_limit, split_memory_limit
    name = backends.resolve_backend(backend, op=op, dtype=src.dtype)
    mem = parse_memory_limit(gpu_memory_limit)  # checked whatever the backend
    out_chunks, out_shards = output_layout(src, chunks, shards, compression)
    ident = job_identity(op, {**job, "dtype": np.dtype(out_dtype).str}, [src],
                         {"chunks": list(out_chunks),
                          "shards": list(out_shards) if out_shards else None,
                          "compression": str(compression).lower()})

    def create(path: str) -> Volume:
        return create_volume(path, src.shape, out_dtype, out_chunks, shards=out_shards,
                             compression=compression, voxel_size=src.voxel_size, unit=src.unit,
                             axes=src.axes, attrs={"job": ident})

    with Runner(scheduler, workers, progress, connect_timeout=connect_timeout) as runner:
        extra = ({"memory_limit": split_memory_limit(mem, runner.processes_per_device())}
                 if name == "cuda" else {})
        fn = partial(backends.implementation(op, name), **params, **extra)
        runner.check_volumes([src])  # every worker reads this very input, before any output
        with open_output(dst, create, inputs=[src], job=ident, overwrite=overwrite,
                         resume=resume) as target:
            store_blocks(fn, [src], target.volume, grid=BlockGrid(src.shape, src.block_shape),
                         resumed=target.resumed, runner=runner, desc=op)
            return target.commit()
