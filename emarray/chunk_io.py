"""Whole chunks of local zarr v3 arrays, read and written in the calling thread.

zarr-python passes every read and write of a process through its one event-loop thread: the
file, the codec and the copy into the caller's array each hop between threads, and the copy
and the fresh output buffer are made on that one thread for every worker. Measured on a
64x256x256 uint32 chunk (zstd): zarr's write 24-36 ms against 5 ms of encoding, and two
threads reading through it run 1.3x as fast as one.

Blocks are whole chunks in most jobs, so this module serves that case directly: a local array
without shards whose codecs are the bytes codec, then at most zstd, then at most crc32c, one
whole chunk (clipped at the array's end) per call. The file is read, its crc32c checked, decoded
into the caller's array, or encoded, given its checksum and written (to a temporary name, then
renamed, as zarr does) in the worker's own thread; numcodecs' zstd releases the GIL, and
google-crc32c (zarr's own) checks a few GB/s. Anything else returns None and goes through zarr.
"""
from __future__ import annotations

import os
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

Region = tuple[slice, ...]


@dataclass(frozen=True)
class Layout:
    """What reading and writing one chunk of an array needs."""

    root: str                   # the array's folder
    chunks: tuple[int, ...]
    stored: np.dtype            # the dtype with the bytes codec's byte order
    fill: Any
    zstd: Any                   # a numcodecs Zstd, or None for no compression
    key: Any                    # the array's chunk-key encoding (not the array: a layout
                                # must not keep its array alive, see :func:`whole`)
    crc: bool = False           # each chunk ends with the crc32c of the bytes before it

    def path(self, index: tuple[int, ...]) -> str:
        return os.path.join(self.root, self.key(index))


def layout(arr: Any) -> Layout | bool:
    """The :class:`Layout` of a zarr array this module handles, or False."""
    try:
        from numcodecs import Zstd
        from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
        from zarr.storage import LocalStore
        if not isinstance(arr.store, LocalStore) or arr.shards is not None:
            return False
        codecs = list(arr.metadata.codecs)
        crc = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
        if crc:
            codecs.pop()
        if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
            return False
        zstd = None
        if len(codecs) == 2:
            if not isinstance(codecs[1], ZstdCodec):
                return False
            zstd = Zstd(level=codecs[1].level, checksum=codecs[1].checksum)
        dtype = np.dtype(arr.dtype)
        if dtype.hasobject or dtype.kind not in "biuf":
            return False
        endian = getattr(codecs[0].endian, "value", None)
        stored = dtype.newbyteorder("<" if endian == "little" else ">") if (
            endian and dtype.itemsize > 1) else dtype
        root = os.path.join(str(arr.store.root), arr.path) if arr.path else str(arr.store.root)
        return Layout(root, tuple(arr.chunks), stored, arr.metadata.fill_value, zstd,
                      arr.metadata.encode_chunk_key, crc)
    except Exception:  # noqa: BLE001 - anything unexpected: zarr does the work
        return False


_LAYOUTS: dict[int, Layout | bool] = {}  # by id() of the open array (zarr's are unhashable)


def whole(arr: Any, region: Region, shape: tuple[int, ...]) -> tuple[Layout, tuple[int, ...]] | None:
    """(layout, chunk index) where ``region`` is one whole chunk of ``arr`` that this module
    serves (the layout found once per open array), else None."""
    lay = _LAYOUTS.get(id(arr))
    if lay is None:
        lay = _LAYOUTS[id(arr)] = layout(arr)
        weakref.finalize(arr, _LAYOUTS.pop, id(arr), None)
    if not isinstance(lay, Layout):
        return None
    index = chunk_of(lay, region, shape)
    return None if index is None else (lay, index)


def chunk_of(lay: Layout, region: Region, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The grid index of the chunk ``region`` is exactly (clipped at the array's end), or None."""
    if not isinstance(region, tuple) or len(region) != len(shape):
        return None
    index = []
    for s, c, n in zip(region, lay.chunks, shape):
        if not isinstance(s, slice):
            return None
        start, stop, step = s.indices(n)
        if step != 1 or start % c or stop != min(start + c, n) or start >= n or (
                s.stop is not None and s.stop > n):
            return None
        index.append(start // c)
    return tuple(index)


def read(lay: Layout, index: tuple[int, ...], region: Region) -> np.ndarray | None:
    """Chunk ``index`` (which covers ``region``) as a new writable array of ``region``'s shape
    (None: a chunk this module leaves to zarr)."""
    path = lay.path(index)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:  # never written: the fill value
        return np.full(tuple(s.stop - s.start for s in region), lay.fill, lay.stored.newbyteorder("="))
    data = checked(raw) if lay.crc else np.frombuffer(raw, np.uint8)
    size = zstd_content_size(data) if lay.zstd is not None else len(data)
    if size is None:  # a frame that does not declare its size: zarr decodes it
        return None
    chunk = np.empty(lay.chunks, lay.stored)
    if size != chunk.nbytes:  # (numcodecs would fill a larger buffer in part, silently)
        raise ValueError(f"chunk file {path} decodes to {size} bytes, not {chunk.nbytes}")
    if lay.zstd is not None:
        lay.zstd.decode(data, out=chunk)
    else:
        chunk.reshape(-1).view(np.uint8)[:] = data
    if not chunk.dtype.isnative:
        chunk = chunk.astype(chunk.dtype.newbyteorder("="))
    part = tuple(slice(0, s.stop - s.start) for s in region)
    return chunk if chunk.shape == tuple(s.stop for s in part) else chunk[part].copy()


class ChecksumMismatch(ValueError):
    """A chunk's bytes do not give the crc32c stored with them: the chunk is damaged."""


def checked(data: bytes) -> np.ndarray:
    """The bytes of a chunk stored by zarr's crc32c codec (its last 4 bytes, little-endian),
    without the checksum, once they match it.

    >>> import google_crc32c
    >>> good = b"abc" + google_crc32c.value(b"abc").to_bytes(4, "little")
    >>> bytes(checked(good))
    b'abc'
    >>> try:
    ...     checked(b"abd" + good[3:])
    ... except ChecksumMismatch as exc:
    ...     print(exc)
    its crc32c checksum does not match its bytes (stored 0x364b3fb7, computed 0xe2815b5c)
    """
    import google_crc32c
    buf = np.frombuffer(data, np.uint8)
    if buf.size < 4:
        raise ChecksumMismatch(f"it has {buf.size} bytes, too few to hold its crc32c checksum")
    body = buf[:-4]
    stored = int.from_bytes(buf[-4:].tobytes(), "little")
    computed = google_crc32c.value(body)
    if computed != stored:
        raise ChecksumMismatch(f"its crc32c checksum does not match its bytes (stored "
                               f"{stored:#010x}, computed {computed:#010x})")
    return body


def zstd_content_size(data: Any) -> int | None:
    """The decoded size a zstd frame's header declares (None: not a frame, or not declared).

    >>> from numcodecs import Zstd
    >>> zstd_content_size(Zstd().encode(bytes(1000))), zstd_content_size(b"junk")
    (1000, None)
    """
    head = bytes(data[:18])  # magic, descriptor, window, dictionary id and size: at most 18
    if len(head) < 6 or head[:4] != b"\x28\xb5\x2f\xfd":
        return None
    desc = head[4]
    fcs_flag, single, dict_flag = desc >> 6, (desc >> 5) & 1, desc & 3
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if width == 0 or len(head) < at + width:
        return None
    value = int.from_bytes(head[at:at + width], "little")
    return value + 256 if width == 2 else value


def write(lay: Layout, index: tuple[int, ...], block: np.ndarray) -> None:
    """Store ``block`` as chunk ``index`` (a chunk at the array's end padded with the fill)."""
    if block.shape != lay.chunks:
        full = np.full(lay.chunks, lay.fill, lay.stored)
        full[tuple(slice(0, n) for n in block.shape)] = block
        block = full
    data = np.ascontiguousarray(block, dtype=lay.stored)
    payload: Any = lay.zstd.encode(data) if lay.zstd is not None else data.reshape(-1).view(np.uint8)
    path = lay.path(index)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            if lay.crc:
                import google_crc32c
                f.write(google_crc32c.value(payload).to_bytes(4, "little"))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
