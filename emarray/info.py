"""Describe a volume: layout, physical size, pyramid, and how well it compresses."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .volume import Volume, open_volume


def info(path: Volume | str | os.PathLike) -> dict[str, Any]:
    """Return a dict describing the volume at ``path``.

    Keys: ``url``, ``format``, ``shape``, ``dtype``, ``axes``, ``chunks``, ``shards``,
    ``voxel_size``, ``unit``, ``levels``, ``codecs``, ``nbytes``, ``stored_bytes``,
    ``compression_ratio`` (the last two are None for remote stores), ``fill_value`` (what a
    chunk never stored reads as), ``chunks_stored`` and
    ``chunks_expected`` (chunk or shard files found and expected; None where not counted) and
    ``status`` (``complete``, or what is unfinished, missing or damaged, and what to do).

    Examples
    --------
    >>> import emarray, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "v.zarr")
    >>> _ = emarray.create_volume(p, (8, 8, 8), "uint16", 4)
    >>> emarray.info(p)["nbytes"]
    1024
    """
    vol = path if isinstance(path, Volume) else open_volume(path)
    level_info = []
    if len(vol.levels) > 1:
        for k, p in enumerate(vol.levels):
            lv = open_volume(vol.url, level=k)
            level_info.append({"path": p, "shape": lv.shape, "voxel_size": lv.voxel_size,
                               "translation": lv.translation, "chunks": lv.chunks})
    stored = vol.stored_bytes()
    codecs: list[str] = []
    if vol.kind == "zarr3":
        meta = vol.handle().metadata
        codecs = [type(c).__name__.replace("Codec", "").lower() for c in meta.codecs]
        for c in meta.codecs:
            inner = getattr(c, "codecs", None)
            if inner:
                codecs += ["shard:" + type(i).__name__.replace("Codec", "").lower() for i in inner]
    fill = fill_value(vol)
    stored_chunks = vol.listing()["count"] if vol.kind in ("zarr3", "zarr2") else None
    expected = vol.expected_chunks
    status = (f"UNFINISHED: an interrupted emarray {vol.unfinished_job} job; missing chunks "
              "read as 0. Run that command again with --resume" if vol.unfinished_job
              else "complete")
    if stored_chunks is not None and stored_chunks < expected:
        missing = expected - stored_chunks
        status = (f"DAMAGED: {missing:,} of its {expected:,} chunks are missing (emarray wrote "
                  "every one): reading them fails; make the volume again" if vol.every_chunk else
                  f"{status}; {missing:,} of {expected:,} chunks are not stored (they read as the "
                  f"fill value, {fill})" if not vol.unfinished_job else status)
    return {
        "url": vol.url, "format": vol.kind, "shape": vol.shape, "dtype": str(vol.dtype),
        "axes": vol.axes, "chunks": vol.chunks, "shards": vol.shards,
        "voxel_size": vol.voxel_size, "unit": vol.unit, "levels": list(vol.levels),
        "level_info": level_info,
        "codecs": codecs, "nbytes": vol.nbytes, "stored_bytes": stored,
        "compression_ratio": (vol.nbytes / stored) if stored else None,
        "fill_value": fill.item(), "chunks_stored": stored_chunks, "chunks_expected": expected,
        "status": status,
    }


def fill_value(vol: Volume) -> np.generic:
    """What a chunk of ``vol`` that was never stored reads as, in the volume's dtype.

    >>> import emarray, tempfile, os, zarr
    >>> p = os.path.join(tempfile.mkdtemp(), "f.zarr")
    >>> _ = zarr.create_array(p, shape=(2, 4, 4), chunks=(1, 4, 4), dtype="int16",
    ...                       fill_value=-7)
    >>> fill_value(emarray.open_volume(p))
    np.int16(-7)
    """
    h = vol.handle()
    meta = getattr(h, "metadata", None)
    value = meta.fill_value if meta is not None else getattr(h, "fill_value", None)
    # tensorstore has no fill value for zarr v2's null: missing chunks read as zeros
    return vol.dtype.type(0 if value is None else value)
