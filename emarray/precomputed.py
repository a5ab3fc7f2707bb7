"""Write a volume and all its pyramid levels as a sharded neuroglancer precomputed volume.

tensorstore's ``neuroglancer_precomputed`` driver writes the format (info file, sharded chunk
files); this module chooses its layout (64³ chunks, shards of at most 4³ chunks, compressed
segmentation for labels), copies each level shard box by shard box, and swaps the finished
folder into place through the engine's files output (:mod:`emarray.engine.files`), so a
failed export leaves nothing half-written.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._normalize import micrometres
from .engine.progress import Progress
from .errors import EmarrayWarning, InvalidArgumentError
from .storage import RemotePath
from .volume import Volume, is_labels, open_volume

#: precomputed's data types (uint64 for labels of any integer dtype that fits)
IMAGE_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32")
CHUNK = 64
#: chunks per shard, as a power of two (2**6 = 64 chunks: a shard box is about 256³ voxels)
SHARD_CHUNK_BITS = 6


def output_type(vol: Volume) -> tuple[str, str]:
    """The precomputed volume type and data type ``vol`` is written as.

    >>> import emarray, tempfile, os
    >>> v = emarray.create_volume(os.path.join(tempfile.mkdtemp(), "v.zarr"), (4, 4, 4),
    ...                           "float64", 2)
    >>> output_type(v)
    ('image', 'float32')
    """
    dt = vol.dtype
    if vol.ndim != 3:
        raise InvalidArgumentError(
            f"precomputed export takes a 3D volume; {vol.url!r} has axes {','.join(vol.axes)}")
    if is_labels(vol):
        if dt.kind not in "ui":
            raise InvalidArgumentError(f"labels must be integers to export, got {dt}")
        return "segmentation", "uint32" if dt.itemsize <= 4 else "uint64"
    if dt == np.bool_:
        return "image", "uint8"
    if dt == np.float64:
        return "image", "float32"
    if dt.name not in IMAGE_TYPES:
        raise InvalidArgumentError(
            f"neuroglancer precomputed cannot hold {dt} images (it holds {', '.join(IMAGE_TYPES)})")
    return "image", dt.name


def sharding(grid: tuple[int, ...]) -> dict[str, Any]:
    """A sharding spec for a chunk grid: compressed Morton codes, ``2**SHARD_CHUNK_BITS`` chunks
    per shard, one minishard per shard.

    >>> sharding((1, 1, 1))["shard_bits"], sharding((16, 16, 16))["shard_bits"]
    (0, 6)
    """
    bits = sum(max(0, math.ceil(math.log2(g))) for g in grid)
    pre = min(bits, SHARD_CHUNK_BITS)
    return {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": pre, "minishard_bits": 0,
            "shard_bits": bits - pre, "hash": "identity",
            "minishard_index_encoding": "gzip", "data_encoding": "gzip"}


def _scale(level: Volume, kind: str) -> dict[str, Any]:
    nm = micrometres(level.unit) * 1000.0
    size = [int(s) for s in level.shape[::-1]]  # x, y, z
    chunk = [min(CHUNK, s) for s in size]
    grid = tuple(math.ceil(s / c) for s, c in zip(size, chunk))
    scale: dict[str, Any] = {
        "size": size, "chunk_size": chunk, "voxel_offset": [0, 0, 0],
        "resolution": [float(v) * nm for v in level.voxel_size[::-1]],
        "encoding": "compressed_segmentation" if kind == "segmentation" else "raw",
        "sharding": sharding(grid)}
    if kind == "segmentation":
        scale["compressed_segmentation_block_size"] = [8, 8, 8]
    return scale


def is_precomputed(path: Path) -> bool:
    """Whether ``path`` is a precomputed volume folder (its ``info`` names the format)."""
    try:
        info = json.loads((path / "info").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("@type") == "neuroglancer_multiscale_volume"


def write_precomputed(vol: Volume, folder: Any, progress: bool = True) -> Any:
    """Write every level of ``vol`` into ``folder`` (the staging folder of an export, which
    :mod:`emarray.engine.files` moves into place when complete). On object storage (``folder``
    a :class:`~emarray.storage.RemotePath`) each shard is written to a local temporary folder
    and uploaded as soon as its box is done, so the local disk holds one shard at a time."""
    if isinstance(folder, RemotePath):
        with tempfile.TemporaryDirectory(prefix="emarray-export-") as tmp:
            _write_levels(vol, Path(tmp), progress, done=lambda: _upload(Path(tmp), folder))
            _upload(Path(tmp), folder, info=True)
        return folder
    return _write_levels(vol, folder, progress)


def _upload(local: Path, remote: RemotePath, info: bool = False) -> None:
    """Move the shards written in ``local`` under ``remote`` (and, with ``info``, the
    ``info`` file, which tensorstore updates level by level until the last)."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = path.relative_to(local).as_posix()
        if rel == "info" and not info:
            continue
        (remote / rel).write_bytes(path.read_bytes())
        path.unlink()


def _write_levels(vol: Volume, folder: Path, progress: bool,
                  done: Callable[[], None] | None = None) -> Path:
    from .extras import require
    ts = require("tensorstore", "writing neuroglancer precomputed")
    kind, dtype = output_type(vol)
    if vol.dtype == np.float64:
        warnings.warn(f"{vol.url}: precomputed holds no float64; written as float32",
                      EmarrayWarning, stacklevel=2)
    levels = [vol] + [open_volume(vol.url, level=i) for i in range(1, len(vol.levels))]
    boxes = []
    for lv in levels:
        spec = {"driver": "neuroglancer_precomputed",
                "kvstore": {"driver": "file", "path": os.fspath(folder)},
                "multiscale_metadata": {"type": kind, "data_type": dtype, "num_channels": 1},
                "scale_metadata": _scale(lv, kind), "create": True, "open": True}
        out = ts.open(spec).result()
        shard = out.chunk_layout.write_chunk.shape or ()
        step = [int(c or 1) for c in shard[:3]][::-1]  # z, y, x
        for z in range(0, lv.shape[0], step[0]):
            for y in range(0, lv.shape[1], step[1]):
                for x in range(0, lv.shape[2], step[2]):
                    boxes.append((lv, out, (slice(z, min(z + step[0], lv.shape[0])),
                                            slice(y, min(y + step[1], lv.shape[1])),
                                            slice(x, min(x + step[2], lv.shape[2])))))
    with Progress(len(boxes), "export", progress, unit="shard") as bar:
        for lv, out, box in boxes:  # tensorstore encodes and writes with its own threads
            block = lv.read(box)
            if kind == "segmentation" and block.dtype.kind == "i" and block.size and \
                    block.min() < 0:
                raise InvalidArgumentError(
                    f"{vol.url!r} holds negative label ids (e.g. {block.min()}); "
                    "precomputed segmentations are unsigned")
            block = block.astype(dtype, copy=False)
            try:
                out[box[2], box[1], box[0], 0].write(block.T).result()
            except ValueError as exc:  # tensorstore's errors: a disk error becomes an OSError
                raise _os_error(exc, folder) from None
            if done is not None:
                done()
            bar.update(1)
    return folder


def _os_error(exc: ValueError, folder: Path) -> Exception:
    """tensorstore's error for a failed write, as the OSError it reports (``os_error_code``),
    or as it is."""
    import errno
    import re
    found = re.search(r"os_error_code='?(\d+)", str(exc))
    if found is None:
        return exc
    code = int(found.group(1))
    return OSError(code, os.strerror(code) if code in errno.errorcode else str(exc),
                   os.fspath(folder))
