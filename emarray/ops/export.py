"""Write a region of a volume back to a TIFF stack or an HDF5 dataset, slab by slab, or a
whole volume with its pyramid as neuroglancer precomputed (:mod:`emarray.precomputed`)."""
from __future__ import annotations

import errno
import math
import os
import shutil
from pathlib import Path
from typing import Any

from .. import storage
from .._normalize import micrometres
from ..engine import RunOptions
from ..engine.files import open_files
from ..engine.output import reading
from ..engine.progress import Progress
from ..errors import InvalidArgumentError
from ..extras import require
from .common import as_volume
from ..spec import Operator, Param, Port
from ..volume import Volume

EXPORT_EXTS = {".tif": "tiff", ".tiff": "tiff", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5"}
#: the module each format is written with (the formats extra)
WRITERS = {"tiff": "tifffile", "hdf5": "h5py", "precomputed": "tensorstore"}


def parse_region(region: Any, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Parse ``"z0:z1,y0:y1,x0:x1"`` (parts may be empty or ``:``) into slices inside ``shape``.

    >>> parse_region("2:4,,:5", (10, 10, 10))
    (slice(2, 4, None), slice(0, 10, None), slice(0, 5, None))
    """
    if region is None:
        return tuple(slice(0, s) for s in shape)
    parts = region.split(",") if isinstance(region, str) else list(region)
    if len(parts) != len(shape):
        raise InvalidArgumentError(
            f"region must have {len(shape)} parts written z0:z1,y0:y1,x0:x1, got {region!r}")
    out = []
    for p, n in zip(parts, shape):
        if isinstance(p, slice):
            a, b = p.start, p.stop
        else:
            p = p.strip()
            bits = p.split(":") if p else ["", ""]
            if len(bits) != 2:
                raise InvalidArgumentError(f"region parts are start:stop, got {p!r} in {region!r}")
            try:
                a, b = (int(x) if x.strip() else None for x in bits)
            except ValueError:
                raise InvalidArgumentError(f"region bounds must be integers, got {region!r}") from None
        a = 0 if a is None else a
        b = n if b is None else b
        if not 0 <= a < b <= n:
            raise InvalidArgumentError(
                f"region {region!r} is empty or outside the volume of shape {shape}")
        out.append(slice(a, b))
    return tuple(out)


def _says(p: Path, args: dict[str, Any]) -> list[str]:
    return [f"wrote {p}"]


SPEC = Operator(
    "export", "a region of a volume back to a TIFF stack or an HDF5 dataset, or a volume and its "
              "pyramid as sharded neuroglancer precomputed, written whole or not at all",
    inputs=(Port("src", "volume", "the volume"),),
    output=Port("dst", "file", "a .tif/.tiff stack, a .h5/.hdf5 file or a precomputed folder"),
    params=(Param("region", "text", "z0:z1,y0:y1,x0:x1 (empty parts mean all; default the "
                                    "whole volume)"),
            Param("dataset", "text", "the dataset name in an HDF5 output"),
            Param("format", "choice", "tiff, hdf5 or precomputed (sharded neuroglancer "
                                      "precomputed, every pyramid level; default: from DST's "
                                      "extension)", choices=("tiff", "hdf5", "precomputed"))),
    run=("overwrite", "allow_incomplete"), says=_says,
    examples=("emarray export mask.zarr mask.tif --region 0:10,,",
              "emarray export cells.zarr cells-ng --format precomputed"))


@SPEC.function
def export(src: Volume | str | os.PathLike, dst: str | os.PathLike, *, region: Any = None,
           dataset: str = "data", format: str | None = None, options: RunOptions | None = None,
           **run: Any) -> Path:
    """Export ``region`` of ``src`` to a TIFF stack (``.tif``) or an HDF5 dataset (``.h5``).

    The file is written slab by slab into a staging folder beside ``dst`` and moved into place
    when complete (see :mod:`emarray.engine.files`: locked, and ``overwrite`` replaces only
    what an export wrote), so a failed export leaves nothing half-written.
    The voxel size goes along: ImageJ resolution, spacing and unit in a TIFF (tifffile's JSON
    description where ImageJ cannot hold the dtype or size), ``element_size_um`` in HDF5.
    With ``format="precomputed"``, ``dst`` is a folder: the whole volume and every level of its
    pyramid become one sharded neuroglancer precomputed volume (an image, or a segmentation when
    ``src`` holds labels; compressed segmentation encoding), resolutions in nm, written through
    tensorstore into a staging folder and moved into place when complete; files in ``dst``
    that no export wrote stay as they are.
    Of the run options, ``overwrite``, ``allow_incomplete`` and ``progress`` apply.

    Returns
    -------
    Path
        The file written (for a precomputed export to object storage, its
        :class:`~emarray.storage.RemotePath`).

    Examples
    --------
    >>> import emarray, numpy as np, tifffile, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> v = emarray.create_volume(os.path.join(d, "v.zarr"), (4, 4, 4), "uint8", 2)
    >>> p = emarray.export(v, os.path.join(d, "v.tif"), region="1:3,,")
    >>> tifffile.imread(p).shape
    (2, 4, 4)
    """
    opts = RunOptions.make(options, **run)
    overwrite, progress = opts.overwrite, opts.progress
    vol = as_volume(src, opts.allow_incomplete)
    shown = os.fspath(dst)
    fmt = format or EXPORT_EXTS.get(Path(shown).suffix.lower())
    if fmt in WRITERS:
        require(WRITERS[fmt], f"emarray export to {fmt}")
    if fmt == "precomputed":
        return _precomputed(vol, shown, shown, region, overwrite, progress)
    if storage.is_remote(shown):
        raise InvalidArgumentError(f"export writes TIFF and HDF5 files to local disk only, got "
                                   f"{shown!r} (--format precomputed writes to s3://)")
    dst = Path(dst)
    if fmt is None:
        raise InvalidArgumentError(f"export writes .tif/.tiff or .h5/.hdf5 files (or a folder "
                                   f"with --format precomputed), got {shown!r}")
    if fmt == "hdf5" and not str(dataset).strip("/ "):
        raise InvalidArgumentError(f"dataset must name the HDF5 dataset, got {dataset!r}")
    reg = parse_region(region, vol.shape)
    slab = vol.block_shape[0]
    zs = range(reg[0].start, reg[0].stop, slab)
    out_shape = tuple(s.stop - s.start for s in reg)
    job = {"operator": "export", "input": vol.fingerprint(), "format": fmt,
           "region": [[s.start, s.stop] for s in reg], "dataset": str(dataset)}
    with open_files(dst, job=job, inputs=[vol], overwrite=overwrite, folder=False,
                    names=(dst.name,), resumable=False) as target, reading([vol]), \
            Progress(len(zs), "export", progress, unit="slab") as bar:
        _write(vol, target.path(dst.name), fmt, reg, zs, slab, out_shape, dataset, bar, shown)
        target.commit([dst.name])
        return target.dst


def _precomputed(vol: Volume, dst: str, shown: str, region: Any, overwrite: bool,
                 progress: bool) -> Any:
    from ..precomputed import output_type, write_precomputed
    if region is not None and parse_region(region, vol.shape) != parse_region(None, vol.shape):
        raise InvalidArgumentError("--region is for TIFF and HDF5 exports; precomputed exports "
                                   "the whole volume with its pyramid")
    output_type(vol)  # refused before any work
    job = {"operator": "export", "input": vol.fingerprint(), "format": "precomputed",
           "levels": list(vol.levels)}
    with open_files(dst, job=job, inputs=[vol], overwrite=overwrite, names=("info",),
                    resumable=False) as target, reading([vol]):
        write_precomputed(vol, target.staging, progress)
        target.commit()
        return target.dst


def _write(vol: Volume, path: Path, fmt: str, reg: tuple[slice, ...], zs: range, slab: int,
           out_shape: tuple[int, ...], dataset: str, bar: Progress, shown: str) -> None:
    """Write the slabs of ``reg`` to the file ``path`` (in the export's staging folder)."""
    try:
        if fmt == "tiff":
            import tifffile

            def planes():
                for z in zs:
                    block = vol.read((slice(z, min(z + slab, reg[0].stop)), *reg[1:]))
                    yield from block
                    bar.update(1)

            big = vol.dtype.itemsize * math.prod(out_shape) > 2**31
            imagej = not big and vol.dtype.str.lstrip("<>|=") in ("u1", "u2", "f4")
            z_um, y_um, x_um = (v * micrometres(vol.unit) for v in vol.voxel_size[-3:])
            with tifffile.TiffWriter(path, bigtiff=big, imagej=imagej) as tw:
                tw.write(planes(), shape=out_shape, dtype=vol.dtype, photometric="minisblack",
                         resolution=(1 / x_um, 1 / y_um),
                         metadata={"spacing": z_um, "unit": "um", "axes": "ZYX"},
                         resolutionunit=None if imagej else "MICROMETER")
        else:
            import h5py
            with h5py.File(path, "w") as f:
                chunks = tuple(min(c, s) for c, s in zip(vol.chunks, out_shape))
                ds = f.create_dataset(dataset, shape=out_shape, dtype=vol.dtype, chunks=chunks,
                                      compression="gzip")
                ds.attrs["element_size_um"] = [v * micrometres(vol.unit) for v in vol.voxel_size]
                for z in zs:
                    z1 = min(z + slab, reg[0].stop)
                    ds[z - reg[0].start:z1 - reg[0].start] = vol.read((slice(z, z1), *reg[1:]))
                    bar.update(1)
    except OSError as exc:
        if exc.errno is None and shutil.disk_usage(path.parent).free < 2**20:
            # tifffile/numpy report a short write without an errno: name the cause
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), shown) from None
        raise
