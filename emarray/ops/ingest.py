"""Ingest a slice folder, TIFF stack or HDF5 dataset into an OME-Zarr volume, chunk by chunk."""
from __future__ import annotations

from ..engine.contract import BlockContext

import os
import warnings
from functools import partial
from typing import Any

import numpy as np

from .._normalize import micrometres, parse_tuple, parse_unit
from ..engine import BlockGrid, RunOptions, Stage, Write, run_job
from ..errors import EmarrayWarning
from ..spec import COMPRESSIONS, ENGINE, REPLACE, Operator, Param, Port
from ..speaking import given
from ..sources import open_source
from ..codecs import compressor_codecs
from ..volume import Volume, create_volume

DEFAULT_CHUNKS = (64, 256, 256)


def _read_source(ctx: BlockContext, *, source: Any) -> np.ndarray:
    return source.read(ctx.region)


def _says(v: Volume, args: dict[str, Any]) -> list[str]:
    return [f"wrote {v.url}: {v.shape} {v.dtype}, chunks {v.chunks}"]


SPEC = Operator(
    "ingest", "a folder of TIFF/PNG slices, a multi-page TIFF or an HDF5 dataset into OME-Zarr, "
              "chunk by chunk",
    inputs=(Port("src", "file", "a folder of 2D TIFF/PNG slices (ordered by the number in the "
                                "name), a multi-page TIFF, or an HDF5 file"),),
    output=Port("dst", "volume", "the OME-Zarr volume"),
    params=(Param("dataset", "text", "the HDF5 dataset (when the file holds several)"),
            Param("voxel_size", "zyx-float", "voxel size z,y,x in unit (default: the source's "
                                             "own, else 1,1,1 with a warning)", metavar="Z,Y,X"),
            Param("unit", "text", "spatial unit: nanometer, micrometer, nm, um..."),
            Param("chunks", "zyx", "storage chunk shape", unit="voxels"),
            Param("shards", "zyx", "shard shape (multiples of chunks)", unit="voxels"),
            Param("compression", "choice", "compression", choices=COMPRESSIONS),
            Param("compression_level", "int", "compression level", aliases=("--level",))),
    run=ENGINE + REPLACE, says=_says,
    examples=("emarray ingest stack/raw/ raw.zarr --voxel-size 50,4.6,4.6",
              "emarray ingest train-p1.h5 prob.zarr --dataset stack"))


@SPEC.function
def ingest(src: str | os.PathLike, dst: str | os.PathLike, *, dataset: str | None = None,
           voxel_size: Any = None, unit: str | None = None,
           chunks: Any = DEFAULT_CHUNKS, shards: Any = None, compression: str = "zstd",
           compression_level: int | None = None, options: RunOptions | None = None,
           **run: Any) -> Volume:
    """Write ``src`` as an OME-Zarr 0.5 volume at ``dst``.

    Each chunk (or shard) is read from the source on its own, decoding only the TIFF strips or
    tiles it overlaps, so memory follows the chunks in flight, not the size of a slice or the
    depth. The voxel size comes from ``voxel_size`` (in ``unit``, default nanometer) or else
    from the source itself (HDF5 ``element_size_um``, TIFF/ImageJ resolution and spacing); when
    neither gives one, 1 nm is used and a warning says so.

    Returns
    -------
    Volume
        The ingested volume.

    Examples
    --------
    >>> import emarray, numpy as np, tifffile, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> tifffile.imwrite(os.path.join(d, "s.tif"), np.arange(60, dtype="uint8").reshape(3, 4, 5),
    ...                  photometric="minisblack")
    >>> v = emarray.ingest(os.path.join(d, "s.tif"), os.path.join(d, "s.zarr"), voxel_size="40,4,4")
    >>> v.shape, v.voxel_size
    ((3, 4, 5), (40.0, 4.0, 4.0))
    """
    opts = RunOptions.make(options, **run)
    source = open_source(src, dataset)
    shape = source.shape
    chunk_t = tuple(min(c, s) for c, s in zip(parse_tuple(chunks, "chunks", 3), shape))
    shard_t = parse_tuple(shards, "shards", 3) if shards is not None else None
    voxel, unit = _voxel_size(src, source, voxel_size, unit)
    grid = BlockGrid(shape, shard_t or chunk_t)
    # validate every option (creating nothing) before touching dst
    compressor_codecs(compression, compression_level)
    job = {"operator": "ingest", "source": os.path.realpath(os.fspath(src)), "dataset": dataset,
           "source_files": source.fingerprint(), "voxel_size": list(voxel), "unit": unit,
           "layout": {"chunks": list(chunk_t), "shards": list(shard_t) if shard_t else None,
                      "compression": compression, "level": compression_level}}
    create = partial(create_volume, shape=shape, dtype=source.dtype, chunks=chunk_t,
                     shards=shard_t, compression=compression, compression_level=compression_level,
                     voxel_size=voxel, unit=unit, attrs={"job": job})

    def stages(out: Volume) -> list[Stage]:
        return [Stage("ingest", partial(_read_source, source=source), grid, writes=[Write(out)])]

    return run_job(dst, create, job=job, stages=stages, options=opts, inputs=[os.fspath(src)],
                   desc="ingest")


def _voxel_size(src: Any, source: Any, voxel_size: Any,
                unit: str | None) -> tuple[tuple[float, ...], str]:
    """The user's voxel size, else the source's own, else 1 nm with a warning."""
    if voxel_size is not None:
        return parse_tuple(voxel_size, "voxel size", 3, kind=float), parse_unit(unit or "nanometer")
    found = source.voxel_size()
    if found is not None:
        size, found_unit = found
        if unit is not None:  # the user asked for another unit: convert
            f = micrometres(found_unit) / micrometres(unit)
            return tuple(v * f for v in size), parse_unit(unit)
        return tuple(size), found_unit
    warnings.warn(f"{os.fspath(src)} records no voxel size; using 1,1,1 "
                  f"{parse_unit(unit or 'nanometer')} (give {given('voxel_size', 'z,y,x')})",
                  EmarrayWarning, stacklevel=3)
    return (1.0, 1.0, 1.0), parse_unit(unit or "nanometer")
