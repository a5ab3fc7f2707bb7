"""Volumes: a chunked 3D (or channel + 3D) array on disk, with its voxel size and axes.

Zarr v3 (OME-Zarr 0.5) is read and written through zarr-python; zarr v2, N5 and neuroglancer
precomputed volumes are read through tensorstore (:mod:`emarray._tensorstore`).
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import chunk_io, ome, storage
from .chunks import METADATA, chunk_entries, listing_of
from .codecs import compressor_codecs, with_checksum
from .ome import default_axes
from ._normalize import numeric_dtype, parse_tuple, parse_unit
from .errors import (ChunkReadError, EmarrayError, IncompleteVolumeError, InputChangedError,
                     InvalidArgumentError, VolumeNotFoundError)

Region = tuple[slice, ...]

_SCHEMES = {"zarr3": "zarr3", "zarr": "zarr3", "zarr2": "zarr2", "n5": "n5",
            "precomputed": "precomputed"}
#: array attributes of what emarray writes: every chunk is stored (zeros too), so a chunk that
#: is missing once the job finished was lost, and is named when read
EVERY_CHUNK: dict[str, Any] = {"emarray": {"every_chunk": True}}


@dataclass
class Volume:
    """A chunked array on disk with its physical metadata.

    Open one with :func:`open_volume`; emarray's operators take and return Volumes.

    Attributes
    ----------
    url : str
        Where the volume lives (a local path, or ``scheme://location``).
    kind : str
        ``"zarr3"`` (read-write) or ``"zarr2"``, ``"n5"``, ``"precomputed"`` (read-only).
    shape, dtype, chunks, shards :
        Array shape, dtype, storage chunk shape and shard shape (None when unsharded).
    axes : tuple of str
        Axis names, ``("z", "y", "x")`` or ``("c", "z", "y", "x")``.
    voxel_size : tuple of float
        Physical size of one voxel along each spatial axis, in ``unit``.
    levels : tuple of str
        Paths of the pyramid levels (level 0 is the one this Volume reads).
    translation : tuple of float, optional
        Physical position of the first voxel's centre per spatial axis (None: the origin).
    every_chunk : bool
        True for a finished emarray output, whose every chunk was written (zeros included):
        a missing chunk is then an error naming it, not a block of zeros.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> v = emarray.create_volume(os.path.join(d, "v.zarr"), (4, 6, 8), "uint8", (2, 3, 4))
    >>> v.write((slice(0, 2), slice(0, 3), slice(0, 4)), np.ones((2, 3, 4), np.uint8))
    >>> int(emarray.open_volume(os.path.join(d, "v.zarr")).data.sum().compute())
    24
    """

    url: str
    kind: str
    array_path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    axes: tuple[str, ...]
    voxel_size: tuple[float, ...]
    unit: str
    levels: tuple[str, ...] = ("0",)
    attrs: dict[str, Any] = field(default_factory=dict)
    translation: tuple[float, ...] | None = None
    every_chunk: bool = False
    #: fsspec options of a remote volume (credentials, endpoint): they go to the workers with
    #: the volume and are never printed nor written anywhere
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _handle: Any = field(default=None, repr=False, compare=False)

    # -- pickling: handles are reopened where the block runs (threads, processes, workers) --
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def block_shape(self) -> tuple[int, ...]:
        """The unit of independent writes: the shard when sharded, else the chunk."""
        return self.shards or self.chunks

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        return tuple(i for i, a in enumerate(self.axes) if a in ("z", "y", "x"))

    @property
    def local_path(self) -> Path | None:
        """The directory of the whole volume on local disk (None for remote stores)."""
        if "://" in self.url:
            return None
        return Path(self.url)

    @property
    def remote(self) -> bool:
        """Whether the volume is a zarr v3 store on object storage (s3://, gs://, https://)."""
        return self.kind == "zarr3" and storage.is_remote(self.url)

    @property
    def array_url(self) -> str:
        """Where the level-0 array is (path or URL)."""
        if not self.array_path:
            return self.url
        return storage.join(self.url, self.array_path) if self.remote else os.path.join(
            self.url, self.array_path)

    def open_group(self, mode: Literal["r", "r+"] = "r+") -> Any:
        """The zarr group holding this volume (its OME-Zarr image), opened with ``mode``."""
        import zarr
        if self.remote:
            return zarr.open_group(storage.store(self.url, self.storage_options,
                                                 read_only=mode == "r"), mode=mode)
        return zarr.open_group(self.url, mode=mode)

    def handle(self) -> Any:
        """The open array; opened (and checked against this Volume) once per process."""
        if self._handle is None:
            self.check_handle()
        return self._handle

    def check_handle(self) -> None:
        """Open the array and refuse it unless it has this Volume's shape and dtype.

        A job is planned from the Volume it was given; a worker that finds something else at
        the same path (another directory, a rewritten store) must not compute on it.
        """
        try:
            if self.remote:
                import zarr
                read_only = storage.scheme(self.url) in storage.READ_ONLY
                h = zarr.open_array(storage.store(self.array_url, self.storage_options,
                                                  read_only=read_only),
                                    mode="r" if read_only else "r+")
                h = h.with_config({"write_empty_chunks": True})
                shape, dtype = tuple(h.shape), np.dtype(h.dtype)
            elif self.kind == "zarr3":
                import zarr
                h = zarr.open_array(self.array_url,
                                    mode="r+" if os.access(self.url, os.W_OK) else "r")
                # every chunk is stored, zeros too: a missing chunk then means a lost one
                h = h.with_config({"write_empty_chunks": True})
                shape, dtype = tuple(h.shape), np.dtype(h.dtype)
            else:
                from ._tensorstore import open_tensorstore
                h, meta = open_tensorstore(self.kind, self.url)
                shape, dtype = meta["shape"], meta["dtype"]
        except Exception as exc:
            if self.remote:
                raise InputChangedError(storage.describe(exc, self.url)) from None
            raise InputChangedError(f"cannot open {self.url}: {type(exc).__name__}: {exc}") from None
        if shape != self.shape or dtype != self.dtype:
            raise InputChangedError(
                f"{self.url} now holds {shape} {dtype}, not the {self.shape} {self.dtype} the job "
                "was planned for")
        self._handle = h

    @property
    def unfinished_job(self) -> str | None:
        """The operator of the interrupted emarray job that made this volume, if it is unfinished."""
        em = self.attrs.get("emarray")
        if isinstance(em, dict) and isinstance(em.get("job"), dict) and not em.get("complete"):
            return str(em["job"].get("operator", "unknown"))
        return None

    def require_complete(self, allow_incomplete: bool = False) -> Volume:
        """Refuse an unfinished output as an input (its missing chunks would read as zeros)."""
        op = self.unfinished_job
        if op is not None and not allow_incomplete:
            raise IncompleteVolumeError(
                f"{self.url} is the unfinished output of an interrupted emarray {op} job: its "
                "missing chunks would read as zeros. Finish it by running that command again "
                "with --resume, or pass --allow-incomplete to use it as it is")
        return self

    def fingerprint(self, listing: bool = False) -> dict[str, Any]:
        """What identifies this input for ``resume`` and a recipe's "unchanged" check: location,
        layout, voxel grid and its array's metadata (adding pyramid levels beside it does not
        change it), and with ``listing`` its stored chunks: each chunk file's key, size and
        modification time, hashed, which a chunk rewritten in place by any tool changes.

        Resumed jobs look at the chunks one by one instead (see
        :meth:`emarray.engine.checkpoint.Checkpoint.start`): blocks that read a chunk changed
        since the job started are computed again.
        """
        meta = []
        root = self.local_path
        if root is not None:
            arr = root / self.array_path if self.array_path else root
            for n in ("zarr.json", ".zarray", "attributes.json", "info"):
                p = arr / n
                if p.is_file():
                    meta.append(f"{n}:{hashlib.sha256(p.read_bytes()).hexdigest()[:16]}")
        elif self.remote:
            data = storage.read_bytes(storage.join(self.array_url, "zarr.json"),
                                      self.storage_options)
            if data is not None:
                meta.append(f"zarr.json:{hashlib.sha256(data).hexdigest()[:16]}")
        out = {"url": self.url, "shape": list(self.shape), "dtype": self.dtype.str,
               "chunks": list(self.chunks), "shards": list(self.shards) if self.shards else None,
               "voxel_size": list(self.voxel_size), "unit": self.unit,
               "translation": list(self.translation) if self.translation else None,
               "metadata": meta}
        if listing and (root is not None or self.remote):
            out["stored"] = self.listing()["digest"]
        return out

    def listing(self) -> dict[str, Any]:
        """The chunk files (objects) of this array: ``count``, ``bytes`` and a ``digest`` of
        every (key, size, mtime) on local disk, (key, size, ETag) on object storage. About a
        second per million chunks locally (one stat each); one listing request per 1000
        objects remotely."""
        if self.local_path is None and not self.remote:
            return {"count": None, "bytes": None, "digest": None}
        return listing_of(*self.chunk_entries())

    def chunk_entries(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The array's stored chunks in key order: keys, sizes, and each one's version (the
        mtime in ns on local disk, a number made from the ETag on object storage)."""
        if self.remote:
            found = storage.objects(self.array_url, self.storage_options)
            keys = sorted(k for k in found if k not in METADATA)
            return (keys, np.array([found[k][0] for k in keys], np.int64),
                    np.array([storage.etag_number(found[k][1]) for k in keys], np.int64))
        root = self.local_path
        assert root is not None
        return chunk_entries(root / self.array_path if self.array_path else root)

    @property
    def expected_chunks(self) -> int:
        """How many chunk (or shard) objects a fully written array has."""
        return math.prod(-(-n // b) for n, b in zip(self.shape, self.block_shape))

    # -- reading and writing -------------------------------------------------------------
    def read(self, region: Region | None = None) -> np.ndarray:
        """Read ``region`` (a tuple of slices; the whole array by default) into memory.

        A chunk that cannot be read or decoded raises :class:`ChunkReadError` naming it.
        """
        region = region or tuple(slice(0, n) for n in self.shape)
        try:
            return self._read(region)
        except EmarrayError:
            raise
        except Exception as exc:  # a store or codec error: find and name the bad chunk
            raise self._chunk_error(region, exc) from exc

    def _read(self, region: Region) -> np.ndarray:
        h = self.handle()
        if self.remote:
            data = np.asarray(h[region])
            if self.every_chunk:
                self._check_stored_remote(region, data)
            return data
        if self.every_chunk:
            self._check_stored(region)
        if self.kind == "zarr3":
            if self._cut(region):
                return self._read_through_cache(region)
            whole = chunk_io.whole(h, region, self.shape)
            got = chunk_io.read(*whole, region) if whole is not None else None
            return got if got is not None else np.asarray(h[region])
        return np.asarray(h[region].read().result())

    def _cut(self, region: Region) -> bool:
        """Whether ``region`` cuts through chunks (a grown block's halo) of a local volume."""
        from .chunk_cache import CACHE
        if not CACHE.capacity or "://" in self.url:
            return False
        return any(s.start % b or (s.stop % b and s.stop != n)
                   for s, b, n in zip(region, self.block_shape, self.shape))

    def _read_through_cache(self, region: Region) -> np.ndarray:
        """Assemble ``region`` from whole decoded chunks, each decoded once while it stays in
        :data:`emarray.chunk_cache.CACHE` (keyed by the chunk file's inode, size and mtime)."""
        from .chunk_cache import CACHE
        h = self.handle()
        grid = self.block_shape
        out = np.empty(tuple(s.stop - s.start for s in region), self.dtype)
        ranges = [range(s.start // g, -(-s.stop // g)) for s, g in zip(region, grid)]
        pieces = []
        for idx in itertools.product(*ranges):
            whole = tuple(slice(i * g, min((i + 1) * g, n))
                          for i, g, n in zip(idx, grid, self.shape))
            try:
                st = os.stat(os.path.join(self.url, self.chunk_key(idx)))
                key: Any = (self.url, self.array_path, idx, st.st_ino, st.st_size,
                            st.st_mtime_ns)
            except FileNotFoundError:  # never written: the fill value, nothing to keep
                key = None
            pieces.append([whole, key, CACHE.get(key) if key is not None else None])
        missing = [p for p in pieces if p[2] is None]
        for p in missing:  # decoded in this thread where chunk_io can
            w = chunk_io.whole(h, p[0], self.shape)
            p[2] = chunk_io.read(*w, p[0]) if w is not None else None
        rest = [p for p in missing if p[2] is None]
        if rest:  # one read of the others (zarr fetches them together)
            hull = tuple(slice(min(p[0][a].start for p in rest),
                               max(p[0][a].stop for p in rest)) for a in range(len(grid)))
            data = np.asarray(h[hull])
            for p in rest:
                p[2] = data[tuple(slice(w.start - c.start, w.stop - c.start)
                                  for w, c in zip(p[0], hull))].copy()
        for p in missing:
            if p[1] is not None:
                CACHE.put(p[1], p[2])
        for whole, _key, chunk in pieces:
            src = tuple(slice(max(s.start, w.start) - w.start, min(s.stop, w.stop) - w.start)
                        for s, w in zip(region, whole))
            dst = tuple(slice(max(s.start, w.start) - s.start, min(s.stop, w.stop) - s.start)
                        for s, w in zip(region, whole))
            out[dst] = chunk[src]
        return out

    def _chunk_error(self, region: Region, exc: Exception) -> ChunkReadError:
        grid = self.block_shape
        ranges = [range(s.start // g, -(-s.stop // g)) for s, g in zip(region, grid)]
        for idx in itertools.product(*ranges):
            sub = tuple(slice(i * g, min((i + 1) * g, n)) for i, g, n in zip(idx, grid, self.shape))
            try:
                self._read(sub)
            except Exception as inner:
                where = f"chunk {self.chunk_key(idx)!r} of {self.url} (voxels {_fmt_region(sub)})"
                if isinstance(inner, chunk_io.ChecksumMismatch) or "checksum do not match" in str(
                        inner):  # ours, or zarr's crc32c codec (shards, object storage)
                    return ChunkReadError(
                        f"{where} is damaged: its crc32c checksum does not match its bytes, so "
                        "it is not read as values; restore it, or make the volume again (run "
                        "its job with --overwrite)")
                return ChunkReadError(f"cannot read {where}: {type(inner).__name__}: {inner}")
        return ChunkReadError(f"cannot read voxels {_fmt_region(region)} of {self.url}: "
                              f"{type(exc).__name__}: {exc}")

    def _check_stored(self, region: Region) -> None:
        """Refuse to read a missing chunk of a volume whose every chunk was written."""
        grid = self.block_shape
        ranges = [range(s.start // g, -(-s.stop // g)) for s, g in zip(region, grid)]
        for idx in itertools.product(*ranges):
            if not os.path.exists(os.path.join(self.url, self.chunk_key(idx))):
                raise self._missing(idx)

    def _check_stored_remote(self, region: Region, data: np.ndarray) -> None:
        """The remote twin of :meth:`_check_stored`, without a request per chunk: a missing
        chunk reads as the fill value, so only chunks read as nothing but zeros are looked up."""
        from .chunks import blank_chunks, stored
        blank = blank_chunks(data, region, self.block_shape, self.shape)
        for idx, ok in zip(blank, stored(self.handle(), blank) if blank else []):
            if not ok:
                raise self._missing(idx)

    def _missing(self, idx: Sequence[int]) -> ChunkReadError:
        """The error for the chunk at grid ``idx`` of a volume whose every chunk was written."""
        sub = tuple(slice(i * g, min((i + 1) * g, n))
                    for i, g, n in zip(idx, self.block_shape, self.shape))
        return ChunkReadError(
            f"chunk {self.chunk_key(idx)!r} of {self.url} (voxels {_fmt_region(sub)}) is missing: "
            "emarray wrote every chunk of this volume, so it was deleted or lost; make the volume "
            "again (run its job with --overwrite)")

    def chunk_key(self, index: Sequence[int]) -> str:
        """The storage key of the chunk (or shard) at grid ``index``, relative to the volume."""
        if self.kind == "zarr3":
            key = self.handle().metadata.encode_chunk_key(tuple(index))
            return f"{self.array_path}/{key}" if self.array_path else key
        return "/".join(str(i) for i in index)

    def write(self, region: Region, block: np.ndarray) -> None:
        """Write ``block`` at ``region`` (zarr v3 volumes only; callers align to :attr:`block_shape`)."""
        if self.kind != "zarr3":
            raise InvalidArgumentError(f"{self.url} is a {self.kind} volume, which emarray only reads")
        whole = chunk_io.whole(self.handle(), region, self.shape)  # None for remote arrays
        if whole is not None and np.shape(block) == tuple(s.stop - s.start for s in region):
            return chunk_io.write(*whole, np.asarray(block))
        self.handle()[region] = block

    @property
    def data(self):
        """A dask array over the volume whose blocks are whole storage chunks (or shards)."""
        import dask.array as da
        from dask.base import tokenize
        return da.from_array(_Reader(self), chunks=self.block_shape, asarray=False, lock=False,
                             fancy=False, meta=np.empty((0,) * self.ndim, self.dtype),
                             name="emarray-read-" + tokenize(self.url, self.array_path, self.shape))

    def stored_bytes(self) -> int | None:
        """Bytes the level-0 array takes on disk or in the bucket (None when unknown)."""
        if self.remote and storage.scheme(self.url) not in storage.READ_ONLY:
            return int(sum(self.chunk_entries()[1]))
        root = self.local_path
        if root is None:
            return None
        root = root / self.array_path if self.array_path else root
        total = 0
        for dirpath, _dirs, files in os.walk(root):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
        return total


class _Reader:
    """What dask reads blocks from: indexable, with shape, dtype and ndim."""

    def __init__(self, volume: Volume):
        self.volume = volume
        self.shape = volume.shape
        self.dtype = volume.dtype
        self.ndim = volume.ndim

    def __getitem__(self, region: Region) -> np.ndarray:
        return self.volume.read(tuple(region))


def _fmt_region(region: Region) -> str:
    return ",".join(f"{s.start}:{s.stop}" for s in region)


LABEL_DTYPES = ("uint32", "uint64", "int32", "int64")


def is_labels(vol: Volume) -> bool:
    """Integer volumes marked as labels (OME ``image-label``, emarray's ``labels``), or of a
    32/64-bit integer type (label ids, not intensities)."""
    attrs = vol.attrs
    o = attrs.get("ome", attrs)
    marked = (isinstance(o, dict) and "image-label" in o) or bool(
        attrs.get("emarray", {}).get("labels"))
    return vol.dtype.kind in "ui" and (marked or vol.dtype.name in LABEL_DTYPES)


# -- opening ------------------------------------------------------------------------------
def _split_url(path_or_url: str | os.PathLike) -> tuple[str | None, str]:
    s = os.fspath(path_or_url)
    if "://" in s:
        scheme, rest = s.split("://", 1)
        if scheme.lower() in _SCHEMES:
            return _SCHEMES[scheme.lower()], rest
    return None, s


def _detect_kind(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise VolumeNotFoundError(f"no volume at {path!r}: the path does not exist")
    if (p / "zarr.json").is_file():
        return "zarr3"
    if (p / ".zarray").is_file():
        return "zarr2"
    if (p / "attributes.json").is_file():
        return "n5"
    if (p / "info").is_file():
        return "precomputed"
    raise VolumeNotFoundError(
        f"{path!r} is not a volume: found no zarr.json (zarr v3), .zarray (zarr v2), "
        "attributes.json (N5) or info (neuroglancer precomputed)")


def open_volume(path_or_url: str | os.PathLike, *, level: int = 0) -> Volume:
    """Open a volume for reading (and, for zarr v3 on local disk, writing).

    Parameters
    ----------
    path_or_url : str or path
        An OME-Zarr image group or a bare zarr v3 array on local disk, or a zarr v2, N5 or
        neuroglancer precomputed volume (detected from its metadata file). Prefix with
        ``zarr2://``, ``n5://`` or ``precomputed://`` to name the format explicitly; those
        also take tensorstore URLs such as ``precomputed://gs://bucket/path``.
    level : int
        Pyramid level to open (0 = full resolution).

    Returns
    -------
    Volume

    Examples
    --------
    >>> import emarray, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "v.zarr")
    >>> _ = emarray.create_volume(p, (8, 8, 8), "float32", 4, voxel_size=(40, 4, 4))
    >>> emarray.open_volume(p).voxel_size
    (40.0, 4.0, 4.0)
    """
    kind, location = _split_url(path_or_url)
    if kind is None and storage.is_remote(location):
        return _open_remote(location, level)
    if kind is None:
        kind = _detect_kind(location)
    elif "://" not in location and not Path(location).exists():
        raise VolumeNotFoundError(f"no volume at {location!r}: the path does not exist")
    if "://" not in location:
        location = os.path.realpath(location)  # workers elsewhere must read this very volume
    if kind == "zarr3":
        try:
            return _open_zarr3(location, level)
        except EmarrayError:
            raise
        except Exception as exc:  # malformed metadata, a missing level array, a bad shape
            raise VolumeNotFoundError(
                f"{location!r} is a broken zarr store ({type(exc).__name__}: {exc}); if an "
                "emarray job was killed while creating it, run it again with --overwrite") from None
    from ._tensorstore import open_tensorstore
    handle, meta = open_tensorstore(kind, location)
    return Volume(url=location, kind=kind, array_path="", _handle=handle, **meta)


def _open_remote(url: str, level: int) -> Volume:
    """Open a zarr v3 volume on object storage (other formats: ``zarr2://s3://...``)."""
    url = url.rstrip("/")
    options = storage.options_for(url)
    try:
        return _open_zarr3(url, level, options)
    except EmarrayError as exc:
        if not isinstance(exc, VolumeNotFoundError):
            raise
        try:  # say why: no bucket, no permission, or no volume there
            found = storage.exists(storage.join(url, "zarr.json"), options)
        except Exception as inner:
            raise VolumeNotFoundError(storage.describe(inner, url)) from None
        if found:
            raise
        held = storage.inside_version(url, options)
        if held is not None:  # an image inside a remote output (an agglomerate's DST/t0.3)
            return _open_zarr3(held, level, options)
        storage.check_reachable(url, options)
        raise VolumeNotFoundError(
            f"no volume at {url!r}: found no zarr.json there (remote volumes are zarr v3; "
            "name other formats with zarr2://, n5:// or precomputed:// before the URL)") from None
    except Exception as exc:
        raise VolumeNotFoundError(f"{url!r} is a broken zarr store ({storage.describe(exc, url)})"
                                  ) from None


def _open_zarr3(path: str, level: int, options: dict[str, Any] | None = None) -> Volume:
    import zarr
    remote = storage.is_remote(path)
    try:
        node = zarr.open(storage.store(path, options) if remote else path, mode="r")
    except Exception as exc:
        raise VolumeNotFoundError(f"cannot open zarr v3 store {path!r}: {exc}") from None
    attrs = dict(node.attrs)
    voxel_size = None
    unit = "nanometer"
    levels: tuple[str, ...] = ("",)
    axes = None
    translation = None
    if isinstance(node, zarr.Group):
        ms = ome.read_multiscales(attrs)
        if ms is None:
            arrays = sorted(name for name, _ in node.arrays())
            raise VolumeNotFoundError(
                f"{path!r} is a zarr group without OME multiscales metadata; open one of its "
                f"arrays directly: {arrays}")
        levels = tuple(d["path"] for d in ms["datasets"])
        if not 0 <= level < len(levels):
            raise InvalidArgumentError(
                f"level must be between 0 and {len(levels) - 1} for {path!r}, got {level}")
        axes = tuple(a["name"] for a in ms["axes"])
        scale = ome.level_scale(ms, level)
        shift = ome.level_translation(ms, level)
        if shift is not None:
            translation = tuple(t for t, a in zip(shift, ms["axes"]) if a.get("type") == "space")
        units = [a.get("unit") for a in ms["axes"] if a.get("type") == "space"]
        unit = next((u for u in units if u), unit)
        if scale is not None:
            voxel_size = tuple(s for s, a in zip(scale, ms["axes"]) if a.get("type") == "space")
        arr = node[levels[level]]
        if not isinstance(arr, zarr.Array):
            raise VolumeNotFoundError(f"level {levels[level]!r} of {path!r} is not an array")
        array_path = levels[level]
    else:
        parent = ome.image_holding(path, options)
        if parent is not None:  # a level of an OME-Zarr image, named by its path
            return _open_zarr3(parent[0], parent[1], options)
        arr = node
        array_path = ""
    names = getattr(arr.metadata, "dimension_names", None)
    axes = axes or (tuple(names) if names and all(names) else default_axes(arr.ndim))
    n_space = sum(a in ("z", "y", "x") for a in axes)
    shards = tuple(arr.shards) if arr.shards is not None else None
    return Volume(url=path, kind="zarr3", array_path=array_path, shape=tuple(arr.shape),
                  dtype=np.dtype(arr.dtype), chunks=tuple(arr.chunks), shards=shards, axes=axes,
                  voxel_size=voxel_size or (1.0,) * n_space, unit=unit, levels=levels,
                  attrs=attrs, translation=translation,
                  every_chunk=ome.every_chunk_written(attrs, dict(arr.attrs), array_path, levels),
                  storage_options=dict(options or {}) if remote else {})


# -- creating -----------------------------------------------------------------------------
def image_name(path: str | os.PathLike) -> str:
    """The name an image at ``path`` goes by (``cells`` for ``cells.zarr``, also while a job
    builds it as ``.cells.zarr.emarray-new``).

    >>> image_name("/w/.cells.ome.zarr.emarray-new"), image_name("raw.zarr"), image_name("a.b")
    ('cells', 'raw', 'a.b')
    """
    name = Path(path).name
    if storage.VERSION.fullmatch(name):  # a version of a remote output
        name = Path(path).parent.name
    m = re.fullmatch(r"\.(.+)\.emarray-(new|old)", name)
    name = m.group(1) if m else name
    for suffix in (".ome.zarr", ".zarr"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def create_volume(path: str | os.PathLike, shape: Sequence[int], dtype: Any,
                  chunks: int | Sequence[int] | str, *, shards: Sequence[int] | str | None = None,
                  compression: str = "zstd", compression_level: int | None = None,
                  voxel_size: Sequence[float] | str | None = None, unit: str = "nanometer",
                  axes: Sequence[str] | None = None, name: str | None = None,
                  attrs: dict[str, Any] | None = None,
                  translation: Sequence[float] | None = None, checksum: bool = True) -> Volume:
    """Create an empty OME-Zarr 0.5 image (zarr v3 group with one array, ``0``).

    Each chunk is stored with a crc32c checksum (zarr v3's ``crc32c`` codec after the
    compressor; in a sharded array, each inner chunk and the shard index) unless ``checksum``
    is False: a damaged chunk is then named when read, never read as values.

    The caller decides what to do with an existing path (see :func:`emarray.engine.prepare_output`);
    this function refuses to replace anything that exists.

    Examples
    --------
    >>> import emarray, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "v.zarr")
    >>> emarray.create_volume(p, (10, 20, 30), "uint8", (4, 8, 8)).chunks
    (4, 8, 8)
    """
    import zarr
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    dt = numeric_dtype(dtype, "a volume")
    axes = tuple(axes) if axes else default_axes(ndim)
    n_space = sum(a in ("z", "y", "x") for a in axes)
    chunks = parse_tuple(chunks, "chunks", ndim)
    chunks = tuple(min(c, max(s, 1)) for c, s in zip(chunks, shape))
    if shards is not None:
        shards = parse_tuple(shards, "shards", ndim)
        bad = [(s, c) for s, c in zip(shards, chunks) if s % c]
        if bad:
            raise InvalidArgumentError(
                f"shards must be whole multiples of chunks, got shards={shards} chunks={chunks}")
    voxel = parse_tuple(voxel_size if voxel_size is not None else 1.0, "voxel size", n_space,
                        kind=float)
    unit = parse_unit(unit)
    codecs = compressor_codecs(compression, compression_level)
    if checksum:  # sharded: the inner chunks; the shard index has one too (zarr's default)
        codecs = with_checksum(codecs)
    remote = storage.is_remote(path)
    if storage.scheme(path) in storage.READ_ONLY:
        raise InvalidArgumentError(f"{os.fspath(path)}: https:// volumes are read-only")
    if storage.exists(storage.join(os.fspath(path), "zarr.json")) if remote else Path(path).exists():
        raise InvalidArgumentError(f"create_volume will not replace the existing {os.fspath(path)!r}")
    scale, shift = [], []
    it = iter(voxel)
    moved = iter(translation) if translation is not None else iter(())
    for a in axes:
        scale.append(next(it) if a in ("z", "y", "x") else 1.0)
        shift.append(float(next(moved, 0.0)) if a in ("z", "y", "x") else 0.0)
    group = zarr.open_group(storage.store(os.fspath(path), read_only=False) if remote
                            else os.fspath(path), mode="w-")
    group.attrs.update({"ome": ome.multiscales(name or image_name(path), axes, unit,
                                               [("0", scale, shift)]),
                        **({"emarray": attrs} if attrs else {})})
    group.create_array("0", shape=shape, dtype=dt, chunks=chunks, shards=shards,
                       compressors=codecs, fill_value=0, dimension_names=axes,
                       attributes=EVERY_CHUNK)
    return open_volume(path)
