"""Readers for what users ingest: a folder of slices, a multi-page TIFF, an HDF5 dataset.

Each source knows its shape and dtype from headers alone and reads any z,y,x region, decoding
only the TIFF strips or tiles (or HDF5 chunks) it overlaps, so ingest streams chunk by chunk:
its memory follows the chunks in flight, not the size of a slice.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ._normalize import numeric_dtype, parse_unit
from .errors import InvalidArgumentError, ShapeMismatchError, VolumeNotFoundError
from .extras import require
from .speaking import given

#: (voxel size z,y,x, unit) read from a file's own metadata, or None
VoxelInfo = tuple[tuple[float, float, float], str] | None
_RESOLUTION_UNITS = {2: "inch", 3: "centimeter"}  # TIFF ResolutionUnit tag values


def tiff_voxel_size(tf) -> VoxelInfo:
    """Voxel size from a TIFF's ImageJ or tifffile metadata and X/YResolution tags.

    Returns None when the file records no physical size. A file with a pixel size but no z
    spacing (a 2D slice) gets z = x, which the caller reports.
    """
    page = tf.pages[0]
    meta = dict(tf.imagej_metadata or {})
    if not meta and tf.shaped_metadata:
        meta = dict(tf.shaped_metadata[0])
    xr, yr = page.tags.get("XResolution"), page.tags.get("YResolution")
    res_unit = page.tags.get("ResolutionUnit")
    unit_name = meta.get("unit")
    if unit_name in (None, "", "pixel") and res_unit is not None:
        unit_name = _RESOLUTION_UNITS.get(int(res_unit.value))
    if unit_name in (None, "", "pixel") or xr is None or yr is None:
        return None
    try:
        unit = parse_unit(str(unit_name))
    except InvalidArgumentError:
        return None
    x = xr.value[1] / xr.value[0] if xr.value[0] else 0.0
    y = yr.value[1] / yr.value[0] if yr.value[0] else 0.0
    z = float(meta.get("spacing", x))
    if not (x > 0 and y > 0 and z > 0):
        return None
    return (z, float(y), float(x)), unit

def _tiff_region(path: str, region: tuple[slice, ...],
                 shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read ``region`` of a TIFF's first series, decoding only the strips/tiles it overlaps."""
    tifffile = require("tifffile", "reading TIFF files")
    import zarr
    with tifffile.imread(path, aszarr=True) as store:
        arr = zarr.open_array(store, mode="r")
        if shape is not None and tuple(arr.shape) != shape:  # a single page read as a stack
            return np.asarray(arr[region[1:]]).reshape(
                tuple(s.stop - s.start for s in region))
        return np.asarray(arr[region])


SLICE_EXTS = (".tif", ".tiff", ".png")
HDF5_EXTS = (".h5", ".hdf5", ".hdf")


def natural_key(name: str) -> tuple:
    """Sort key that orders ``2.png`` before ``10.png`` (numbers compared as numbers)."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))


def _png_array(path: str, white: int = 1) -> np.ndarray:
    """A PNG slice; a 1-bit one as 0/``white`` (255 among 8-bit greyscale slices)."""
    from PIL import Image
    with Image.open(path) as im:
        a = np.asarray(im)  # a palette ("P") image gives its palette indices
    return a.astype(np.uint8) * np.uint8(white) if a.dtype == np.bool_ else a


def _slice_header(path: Path) -> tuple[tuple[int, ...], np.dtype, str]:
    if path.suffix.lower() == ".png":
        from PIL import Image
        with Image.open(path) as im:
            mode = {"1": np.uint8, "L": np.uint8, "P": np.uint8, "I;16": np.uint16,
                    "I;16B": np.uint16, "I": np.int32, "F": np.float32}.get(im.mode)
            if mode is None:
                raise InvalidArgumentError(
                    f"{path} is a {im.mode} (colour) image; emarray ingests single-channel "
                    "slices: convert it to greyscale or labels first")
            return (im.size[1], im.size[0]), np.dtype(mode), im.mode
    tifffile = require("tifffile", "reading TIFF files")
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        return tuple(page.shape), np.dtype(page.dtype), "tiff"


class SliceFolder:
    """A folder of 2D TIFF or PNG slices, ordered by the number in the file name."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        files = [p for p in self.folder.iterdir() if p.suffix.lower() in SLICE_EXTS]
        if not files:
            raise VolumeNotFoundError(f"{os.fspath(folder)!r} holds no .tif, .tiff or .png slices")
        exts = {p.suffix.lower().replace(".tiff", ".tif") for p in files}
        if len(exts) > 1:
            raise InvalidArgumentError(
                f"{os.fspath(folder)!r} mixes slice formats {sorted(exts)}; keep one per folder")
        self.files = [str(p) for p in sorted(files, key=lambda p: natural_key(p.name))]
        shape, dtype, mode = _slice_header(Path(self.files[0]))
        modes = {mode}
        for f in self.files[1:]:
            s, d, m = _slice_header(Path(f))
            if s != shape or d != dtype:
                raise ShapeMismatchError(
                    f"slice {f} is {s} {d} but {self.files[0]} is {shape} {dtype}")
            modes.add(m)
        # 1-bit slices among 8-bit greyscale ones are white = 255, as the greyscale ones are
        # (PIL's own conversion); a folder of 1-bit slices only stays 0/1
        if "1" in modes and "P" in modes:
            raise InvalidArgumentError(
                f"{os.fspath(folder)!r} mixes 1-bit and palette (label index) PNG slices; their "
                "values do not compare: convert them to one kind first")
        self.white = 255 if modes == {"1", "L"} else 1
        if len(shape) != 2:
            raise InvalidArgumentError(f"slice {self.files[0]} has shape {shape}; expected 2D")
        self.shape = (len(self.files), *shape)
        self.dtype = numeric_dtype(dtype, f"slice {self.files[0]}")

    def voxel_size(self) -> VoxelInfo:
        if self.files[0].lower().endswith(".png"):
            return None
        tifffile = require("tifffile", "reading TIFF files")
        with tifffile.TiffFile(self.files[0]) as tf:
            return tiff_voxel_size(tf)

    def fingerprint(self) -> list:
        """Every slice's name, size and modification time, hashed (a slice replaced in the
        middle of the stack changes it too)."""
        import hashlib
        h = hashlib.blake2b(digest_size=16)
        for f in self.files:
            st = os.stat(f)
            h.update(f"{os.path.basename(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return [len(self.files), h.hexdigest()]

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        z, yx = region[0], region[1:]
        out = np.empty((z.stop - z.start, *(s.stop - s.start for s in yx)), self.dtype)
        for i, f in enumerate(self.files[z]):
            if f.lower().endswith(".png"):
                out[i] = _png_array(f, self.white)[yx]  # PNG rows decode as a whole image
            else:
                out[i] = _tiff_region(f, yx)
        return out


class MultiPageTiff:
    """A 3D TIFF stack (one page per z-slice)."""

    def __init__(self, path: str | os.PathLike):
        tifffile = require("tifffile", "reading TIFF files")
        self.path = os.fspath(path)
        with tifffile.TiffFile(self.path) as tf:
            series = tf.series[0]
            shape, dtype = tuple(series.shape), series.dtype
            self.paged = len(series.pages) == (shape[0] if len(shape) == 3 else 1)
            # a stack stored as one contiguous, uncompressed run of bytes (ImageJ's large
            # files) is memory-mapped, so each slab reads only its own slices
            self.offset = series.dataoffset
            self.byteorder = tf.byteorder
            self._voxel = tiff_voxel_size(tf)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3:
            raise InvalidArgumentError(f"{self.path} holds a {len(shape)}D image; expected 3D z,y,x")
        self.shape = shape
        self.dtype = numeric_dtype(dtype, self.path)

    def voxel_size(self) -> VoxelInfo:
        return self._voxel

    def fingerprint(self) -> list:
        st = os.stat(self.path)
        return [st.st_size, st.st_mtime_ns]

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        tifffile = require("tifffile", "reading TIFF files")
        if self.offset is not None:
            mm = np.memmap(self.path, dtype=self.dtype.newbyteorder(self.byteorder), mode="r",
                           offset=self.offset, shape=self.shape)
            return np.array(mm[region], dtype=self.dtype)
        if self.paged:
            return np.asarray(_tiff_region(self.path, region, self.shape), self.dtype)
        return tifffile.imread(self.path).reshape(self.shape)[region]


class Hdf5Dataset:
    """A 3D dataset inside an HDF5 file."""

    def __init__(self, path: str | os.PathLike, dataset: str | None):
        h5py = require("h5py", "reading HDF5 files")
        self.path = os.fspath(path)
        with h5py.File(self.path, "r") as f:
            names: list[str] = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            if dataset is None:
                if len(names) != 1:
                    raise InvalidArgumentError(
                        f"{self.path} holds {len(names)} datasets {names}; name one with "
                        f"{given('dataset', 'NAME')}")
                dataset = names[0]
            if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
                raise InvalidArgumentError(
                    f"dataset {dataset!r} is not in {self.path}; it holds {names}")
            ds = f[dataset]
            shape, dtype = tuple(ds.shape), ds.dtype
            size = ds.attrs.get("element_size_um", f.attrs.get("element_size_um"))
        if len(shape) != 3:
            raise InvalidArgumentError(f"dataset {dataset!r} is {len(shape)}D; expected 3D z,y,x")
        self.dataset = dataset
        self.shape = shape
        self.dtype = numeric_dtype(dtype, f"dataset {dataset!r}")
        self._voxel: VoxelInfo = None
        if size is not None and np.size(size) == 3 and np.all(np.asarray(size, float) > 0):
            z, y, x = (float(v) for v in np.asarray(size, float).ravel())
            self._voxel = ((z, y, x), "micrometer")

    def voxel_size(self) -> VoxelInfo:
        """From the ``element_size_um`` attribute (z,y,x, as Fiji and ilastik write it)."""
        return self._voxel

    def fingerprint(self) -> list:
        st = os.stat(self.path)
        return [self.dataset, st.st_size, st.st_mtime_ns]

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        h5py = require("h5py", "reading HDF5 files")
        with h5py.File(self.path, "r") as f:
            return f[self.dataset][region]


def open_source(src: str | os.PathLike, dataset: str | None = None):
    """Pick the reader for ``src``: a slice folder, a TIFF stack, or an HDF5 dataset.

    A relative path is made absolute here, on the client: workers in another folder read the
    same source."""
    p = Path(os.path.abspath(os.fspath(src)))
    if not p.exists():
        raise VolumeNotFoundError(f"no such file or folder: {os.fspath(src)!r}")
    if p.is_dir():
        return SliceFolder(p)
    ext = p.suffix.lower()
    if ext in (".tif", ".tiff"):
        return MultiPageTiff(p)
    if ext in HDF5_EXTS:
        return Hdf5Dataset(p, dataset)
    raise InvalidArgumentError(
        f"cannot ingest {os.fspath(src)!r}: expected a folder of slices, a .tif stack or an "
        f"HDF5 file ({', '.join(HDF5_EXTS)})")
