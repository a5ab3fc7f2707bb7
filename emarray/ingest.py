"""Ingest a slice folder, TIFF stack or HDF5 dataset into an OME-Zarr volume, slab by slab."""
from __future__ import annotations

import os
from functools import partial
from typing import Any

import numpy as np

from ._normalize import parse_tuple, parse_unit
from .engine import BlockGrid, Runner, prepare_output, store_blocks
from .sources import open_source
from .volume import Volume, compressor_codecs, create_volume

DEFAULT_CHUNKS = (64, 256, 256)


def _read_slab(*_blocks: Any, region: tuple[slice, ...], source: Any) -> np.ndarray:
    z = region[0]
    return source.read(z.start, z.stop)[(slice(None), *region[1:])]


def ingest(src: str | os.PathLike, dst: str | os.PathLike, *, dataset: str | None = None,
           voxel_size: Any = (1.0, 1.0, 1.0), unit: str = "nanometer",
           chunks: Any = DEFAULT_CHUNKS, shards: Any = None, compression: str = "zstd",
           compression_level: int | None = None, overwrite: bool = False, resume: bool = False,
           scheduler: Any = None, workers: int | None = None,
           progress: bool = False) -> Volume:
    """Write ``src`` as an OME-Zarr 0.5 volume at ``dst``.

    ``src`` is a folder of 2D TIFF/PNG slices (ordered by the number in the name), a multi-page
    TIFF, or an HDF5 file (``dataset`` names the array when it holds several). Slabs one chunk
    (or shard) deep are read and written in parallel, so memory does not grow with the depth.

    Examples
    --------
    >>> import emarray, numpy as np, tifffile, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> tifffile.imwrite(os.path.join(d, "s.tif"), np.arange(60, dtype="uint8").reshape(3, 4, 5))
    >>> v = emarray.ingest(os.path.join(d, "s.tif"), os.path.join(d, "s.zarr"), voxel_size="40,4,4")
    >>> v.shape, v.voxel_size
    ((3, 4, 5), (40.0, 4.0, 4.0))
    """
    source = open_source(src, dataset)
    shape = source.shape
    chunk_t = tuple(min(c, s) for c, s in zip(parse_tuple(chunks, "chunks", 3), shape))
    shard_t = parse_tuple(shards, "shards", 3) if shards is not None else None
    voxel = parse_tuple(voxel_size, "voxel size", 3, kind=float)
    slab = (shard_t or chunk_t)[0]
    grid = BlockGrid(shape, (slab, *shape[1:]))
    job = {"operator": "ingest", "source": os.path.abspath(os.fspath(src)), "dataset": dataset}
    create = partial(create_volume, shape=shape, dtype=source.dtype, chunks=chunk_t,
                     shards=shard_t, compression=compression, compression_level=compression_level,
                     voxel_size=voxel, unit=unit, attrs={"job": job})
    # validate every option (creating nothing) before touching dst
    compressor_codecs(compression, compression_level)
    parse_unit(unit)
    with Runner(scheduler, workers, progress) as runner:
        out, resumed = prepare_output(dst, lambda p: create(p), inputs=[src], job=job,
                                      overwrite=overwrite, resume=resume)
        return store_blocks(partial(_read_slab, source=source), [], out, grid=grid,
                            resumed=resumed, runner=runner, desc="ingest")
