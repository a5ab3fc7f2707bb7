"""Chunk keys and listings: which chunk files (objects) an array stores, with what size and
version, hashed for ``resume`` and a recipe's "unchanged" check; which grid index a key names;
and which keys a zarr v3 array's ``zarr.json`` allows (what emarray may replace)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

METADATA = ("zarr.json", ".zarray", ".zattrs", "attributes.json", "info")


def chunk_entries(array: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every file under the array folder ``array`` except its metadata, in key order: the keys
    (relative paths), their sizes and their modification times (ns)."""
    keys: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    stack = [(array, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for e in entries:
            key = f"{rel}{e.name}"
            if e.is_dir(follow_symlinks=False):
                stack.append((Path(e.path), key + "/"))
                continue
            if not rel and e.name in METADATA:
                continue
            st = e.stat()
            keys.append(key)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return ([keys[i] for i in order], np.array(sizes, np.int64)[order],
            np.array(mtimes, np.int64)[order])


def chunk_listing(array: Path) -> dict[str, Any]:
    """``count``, ``bytes`` and a ``digest`` of the (key, size, mtime) of every file under
    the array folder ``array`` except its metadata."""
    return listing_of(*chunk_entries(array))


def listing_of(keys: list[str], sizes: np.ndarray, mtimes: np.ndarray) -> dict[str, Any]:
    """``count``, ``bytes`` and a ``digest`` of chunk entries (see :func:`chunk_entries`)."""
    h = hashlib.blake2b(digest_size=16)
    h.update("\n".join(keys).encode())
    h.update(sizes.tobytes())
    h.update(mtimes.tobytes())
    return {"count": len(keys), "bytes": int(sizes.sum()), "digest": h.hexdigest()}


def chunk_index(key: str) -> tuple[int, ...] | None:
    """The grid index a chunk key names (``c/1/2/3``, ``1.2.3``, ``1/2/3``); None when it
    names none (a file that is not a chunk).

    >>> chunk_index("c/1/0/12"), chunk_index("3.4.5"), chunk_index("notes.txt")
    ((1, 0, 12), (3, 4, 5), None)
    """
    parts = key.split("/")
    if parts and parts[0] == "c":
        parts = parts[1:]
    if len(parts) == 1:
        parts = parts[0].split(".")
    return tuple(int(p) for p in parts) if parts and all(p.isdigit() for p in parts) else None


def key_layout(meta: Any) -> tuple[Any, str, str] | None:
    """How the chunk keys of a zarr v3 array look, from its parsed ``zarr.json``: (grid counts,
    prefix, separator); None when it is not a zarr v3 array."""
    try:
        if meta.get("node_type") != "array":
            return None
        shape = [int(n) for n in meta["shape"]]
        chunk = [int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"]]
        enc = meta.get("chunk_key_encoding") or {"name": "default"}
        sep = (enc.get("configuration") or {}).get("separator")
        if enc.get("name") == "v2":
            return [-(-n // c) for n, c in zip(shape, chunk)], "", sep or "."
        return [-(-n // c) for n, c in zip(shape, chunk)], "c", sep or "/"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError):
        return None


def valid_key(rel: str, counts: list[int], prefix: str, sep: str) -> bool:
    """Whether ``rel`` (a path inside the array folder, '/'-separated) is one of its chunk keys
    (or a key a killed write left as ``KEY.partial``)."""
    if rel.endswith(".partial"):
        rel = rel[:-len(".partial")]
    text = rel.replace("/", sep) if sep != "/" else rel
    parts = text.split(sep)
    if prefix:
        if not parts or parts[0] != prefix:
            return False
        parts = parts[1:]
    if len(parts) != len(counts) or not all(p.isdigit() for p in parts):
        return len(counts) == 0 and parts == ["0"]
    return all(int(p) < n for p, n in zip(parts, counts))


def blank_chunks(data: np.ndarray, region: tuple[slice, ...], grid: tuple[int, ...],
                 shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The grid indices of the chunks ``region`` touches whose part of ``data`` (read from
    ``region``) is all zeros: the ones a missing chunk would read as."""
    import itertools
    ranges = [range(s.start // g, -(-s.stop // g)) for s, g in zip(region, grid)]
    blank = []
    for idx in itertools.product(*ranges):
        sub = tuple(slice(max(i * g, s.start) - s.start, min((i + 1) * g, n, s.stop) - s.start)
                    for i, g, n, s in zip(idx, grid, shape, region))
        if not data[sub].any():
            blank.append(idx)
    return blank


def stored(handle: Any, indices: list[tuple[int, ...]]) -> list[bool]:
    """Whether the chunks at ``indices`` of the open zarr array ``handle`` are stored (all
    looked up at once)."""
    import asyncio

    from zarr.core.sync import sync
    paths = [handle.store_path / handle.metadata.encode_chunk_key(tuple(i)) for i in indices]

    async def present() -> list[bool]:
        return list(await asyncio.gather(*(p.exists() for p in paths)))

    return sync(present())
