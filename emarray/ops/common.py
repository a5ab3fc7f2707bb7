"""What every operator that writes a volume does before work starts."""
from __future__ import annotations

import inspect

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from ..errors import ChunkAlignmentError, InvalidArgumentError
from ..engine import BlockContext, BlockGrid, Read, RunOptions, Stage, Write, check_aligned, run_job
from ..codecs import compressor_codecs
from ..volume import Volume, create_volume, open_volume


def as_volume(src: Volume | str | os.PathLike, allow_incomplete: bool = False) -> Volume:
    """Open ``src`` unless it already is a Volume; refuse an unfinished job's output as input."""
    vol = src if isinstance(src, Volume) else open_volume(src)
    return vol.require_complete(allow_incomplete)


def job_identity(operator: str, params: dict[str, Any], inputs: Sequence[Volume],
                 layout: dict[str, Any]) -> dict[str, Any]:
    """What a ``resume`` must match: the operator, its parameters, each input's fingerprint
    (location, layout, metadata files) and the output's storage layout."""
    import json
    ident = {"operator": operator, **params, "inputs": [v.fingerprint() for v in inputs],
             "layout": layout}
    return json.loads(json.dumps(ident))  # as it reads back from the output (tuples as lists)


def layout_of(chunks: Sequence[int], shards: Sequence[int] | None, compression: str) -> dict:
    return {"chunks": list(chunks), "shards": list(shards) if shards else None,
            "compression": str(compression).lower()}


def output_layout(src: Volume, chunks: Any, shards: Any, compression: str,
                  grid_block: Sequence[int] | None = None
                  ) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """The output's chunks and shards (default: the input's), checked against the block grid
    (default: ``src``'s write unit)."""
    from .._normalize import parse_tuple
    compressor_codecs(compression)  # refuse an unknown compression before any work
    out_chunks = parse_tuple(chunks, "chunks", src.ndim) if chunks is not None else src.chunks
    out_chunks = tuple(min(c, max(s, 1)) for c, s in zip(out_chunks, src.shape))
    out_shards = (parse_tuple(shards, "shards", src.ndim) if shards is not None
                  else (src.shards if chunks is None else None))
    block = tuple(grid_block or src.block_shape)
    _check_fits(src, block, chunks, shards, out_chunks, out_shards)
    check_aligned(BlockGrid(src.shape, block), out_shards or out_chunks)
    return out_chunks, out_shards


def _check_fits(src: Volume, block: tuple[int, ...], chunks: Any, shards: Any,
                out_chunks: tuple[int, ...], out_shards: tuple[int, ...] | None) -> None:
    """Refuse a ``--chunks``/``--shards`` the job's blocks cannot write, naming the option to
    change, its value, and one that fits (the engine's own check names only sizes)."""
    from .._normalize import parse_tuple
    if out_shards is not None and shards is not None:
        bad = [a for a, (s, c) in enumerate(zip(out_shards, out_chunks)) if s % c]
        if bad:
            whose = "" if chunks is not None else " (the input's: set --chunks to change them)"
            raise InvalidArgumentError(
                f"--shards {_csv(out_shards)} must be whole multiples of the chunks "
                f"{_csv(out_chunks)}{whose}; along {src.axes[bad[0]]} {out_shards[bad[0]]} is not")
    option, value = (("--shards", shards) if shards is not None else
                     ("--chunks", chunks) if chunks is not None else (None, None))
    unit: tuple[int, ...] = out_shards if out_shards is not None and shards is not None \
        else out_chunks
    bad = [a for a, (b, u, n) in enumerate(zip(block, unit, src.shape)) if b % u and b < n]
    if option is None or not bad:
        return  # the input's own layout: the engine's check speaks for itself
    given = parse_tuple(value, option[2:], src.ndim)
    a, what, kind = bad[0], "shards" if src.shards else "chunks", option[2:-1]
    size = f"{given[a]}, clipped to the volume's {unit[a]}" if given[a] != unit[a] else unit[a]

    def fit(sizes: Sequence[int], steps: Sequence[int]) -> list[int]:
        """Per axis: the size kept where it fits, else the largest multiple of the step that
        divides the block and is no larger (0: there is none)."""
        return [u if b % u == 0 or b >= n else
                max((d for d in range(t, u + 1, t) if b % d == 0), default=0)
                for b, u, n, t in zip(block, sizes, src.shape, steps)]
    chunk_fit = fit(out_chunks, (1,) * len(block))
    example = f"--chunks {_csv(chunk_fit)}"
    if option == "--shards":
        shard_fit = fit(unit, out_chunks)
        example = (f"--shards {_csv(shard_fit)}" if all(shard_fit)
                   else f"{example} --shards {_csv(fit(unit, chunk_fit))}")
    raise ChunkAlignmentError(
        f"{option} {_csv(given)} does not fit this job's blocks: it works in blocks of the "
        f"input's {what}, {_csv(block)} voxels, and each output {kind} must lie in one block, "
        f"but along {src.axes[a]} the {kind} ({size}) does not divide {block[a]}. Choose "
        f"{option} that divide {_csv(block)}, e.g. {example}, or leave {option} out (the "
        f"input's {what})")


def _csv(t: Sequence[int]) -> str:
    return ",".join(map(str, t))


def work_layout(src: Volume, chunks: Any, shards: Any, compression: str,
                least: Sequence[int] | int = 1, shape: Sequence[int] | None = None
                ) -> tuple[int, ...]:
    """The processing block over ``src`` (spatial ``shape``, default its own) of an operator
    that reads a halo around each block: whole chunks (shards) of the output it will write
    (``chunks``, ``shards``; default ``src``'s), at least ``least`` voxels along each axis,
    grown past tiny chunks (:func:`~emarray.engine.grid.work_block`). Pass it on as
    ``run_blockwise``'s ``grid_block``."""
    from ..engine import work_block
    shape = tuple(shape or src.shape)
    out_chunks, out_shards = output_layout(src, chunks, shards, compression, shape)
    return work_block(shape, out_shards or out_chunks, least)


def backend_setup(op: str, backend: str, dtype: Any, memory_limit: Any,
                  processes_per_device: int) -> Any:
    """On a worker: the per-block function of ``op`` for ``dtype`` on the backend this worker
    has (``auto``: CUDA where this worker sees a device and a kernel exists, else the CPU)."""
    from .. import backends
    name = backends.resolve_backend(backend, op=op, dtype=dtype)
    impl = backends.implementation(op, name)
    if name == "cuda":
        from ..engine.memory import split_memory_limit
        impl = partial(impl, memory_limit=split_memory_limit(memory_limit, processes_per_device))
    elif "cores" in inspect.signature(impl).parameters:
        # a library that holds the GIL runs one block at a time per process: let it use this
        # process's share of the host's cores itself
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        impl = partial(impl, cores=max(1, cores // max(1, processes_per_device)))
    return impl


def backend_stage_setup(op: str, dtype: Any, options: RunOptions, runner: Any) -> dict[str, Any]:
    """The ``setup``/``setup_key`` of a stage whose blocks run ``op``'s registered backend.

    The choice is checked on the driver first (an explicit ``cuda`` without a kernel for the
    dtype, or without a device here when blocks run here, is refused before any work)."""
    from .. import backends
    from ..engine.memory import parse_memory_limit
    mem = parse_memory_limit(options.gpu_memory_limit)  # checked whatever the backend
    backends.check_backend(options.backend, op, dtype, local=not runner.distributed)
    ppd = runner.processes_per_device()
    return {"setup": partial(backend_setup, op, options.backend, np.dtype(dtype).str, mem, ppd),
            "setup_key": f"{op}:{options.backend}:{np.dtype(dtype).str}:{mem}:{ppd}"}


def _apply(ctx: BlockContext, block: np.ndarray, *, params: dict[str, Any]) -> np.ndarray:
    return ctx.state(block, **params)


def run_blockwise(op: str, src: Volume, dst: str | os.PathLike, out_dtype: Any,
                  job: dict[str, Any], options: RunOptions,
                  stages: Callable[[Volume, dict[str, Any]], Sequence[Any]], *,
                  chunks: Any = None, shards: Any = None, compression: str = "zstd",
                  backend: str | None = None, attrs: dict[str, Any] | None = None,
                  inputs: Sequence[Volume] | None = None,
                  grid_block: Sequence[int] | None = None) -> Volume:
    """The setup every operator that writes one volume like ``src`` repeats, done once.

    Checks the output layout (``chunks``, ``shards``, ``compression``; default: the input's)
    against ``src``'s blocks, identifies the job (``job`` params, ``src``'s fingerprint, the
    layout) for ``resume``, creates the output like ``src`` (shape, voxel size, translation,
    axes) with ``out_dtype``, connects to the scheduler, checks ``backend`` (an operator
    registered in :mod:`emarray.backends`) for ``src``'s dtype, and runs the job:
    ``stages(out, setup)`` builds its stages, ``setup`` being the ``setup``/``setup_key`` of
    the backend's per-block function (empty without ``backend``). ``attrs`` are recorded in
    the output's ``emarray`` attributes beside the job. ``inputs`` are every volume the job
    reads (default: ``src``), identified for ``resume`` and locked while it runs.
    ``grid_block``: the stages' block when it is not ``src``'s (see :func:`work_layout`).
    """
    reads = list(inputs) if inputs is not None else [src]
    out_chunks, out_shards = output_layout(src, chunks, shards, compression, grid_block)
    ident = job_identity(op, {**job, "dtype": np.dtype(out_dtype).str}, reads,
                         layout_of(out_chunks, out_shards, compression))

    def create(path: str) -> Volume:
        return create_volume(path, src.shape, out_dtype, out_chunks, shards=out_shards,
                             compression=compression, voxel_size=src.voxel_size, unit=src.unit,
                             translation=src.translation, axes=src.axes,
                             attrs={"job": ident, **(attrs or {})})

    with options.runner(op) as runner:
        setup = backend_stage_setup(backend, src.dtype, options, runner) if backend else {}
        return run_job(dst, create, job=ident, stages=lambda out: stages(out, setup),
                       options=options, inputs=reads, runner=runner)


def run_elementwise(op: str, src: Volume, dst: str | os.PathLike, out_dtype: Any,
                    params: dict[str, Any], job: dict[str, Any], options: RunOptions, *,
                    chunks: Any = None, shards: Any = None, compression: str = "zstd") -> Volume:
    """Run ``op``'s per-block function (picked per backend and dtype on each worker) over
    ``src`` into ``dst``: same region in, same region out. ``params`` go to the per-block
    function; ``job`` identifies the run for ``resume``."""
    def stages(out: Volume, setup: dict[str, Any]) -> list[Stage]:
        return [Stage(op, partial(_apply, params=params), BlockGrid(src.shape, src.block_shape),
                      [Read(src)], [Write(out)], **setup)]

    return run_blockwise(op, src, dst, out_dtype, job, options, stages, chunks=chunks,
                         shards=shards, compression=compression, backend=op)


def retype(out: Volume, dtype: str) -> Volume:
    """Give a (still empty) output the dtype its count of ids needs, found by an earlier stage."""
    import json

    from ..engine.checkpoint import as_folder, atomic_write
    from ..volume import open_volume
    if out.dtype == np.dtype(dtype):
        return out
    meta_path = as_folder(out.array_url) / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["data_type"] = dtype
    atomic_write(meta_path, json.dumps(meta, indent=2).encode())
    return open_volume(out.url)
