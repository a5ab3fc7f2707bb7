"""Chunk keys and listings: which chunk files (objects) an array stores, with what size and
version, hashed for ``resume`` and a recipe's "unchanged" check; which grid index a key names;
and which keys a zarr v3 array's ``zarr.json`` allows (what emarray may replace)."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

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


class StoredChunks(NamedTuple):
    """The stored chunks of an array, one number per chunk, no Python object each: their flat
    grid indices (C order, ascending), sizes and modification times (ns); and the files that
    name no chunk of the grid (key, size, mtime), in key order."""

    flat: np.ndarray
    sizes: np.ndarray
    mtimes: np.ndarray
    other: list[tuple[str, int, int]]


def _number(name: str) -> int | None:
    return int(name) if name.isascii() and name.isdigit() else None


#: a folder to list: its path, its key prefix, and the grid index its path names so far
#: (None when it names none)
_Folder = tuple[str, str, "tuple[int, ...] | None"]


def _scan(folder: _Folder, counts: Sequence[int], strides: Sequence[int]) -> tuple:
    """One folder of :func:`stored_chunks`: its chunk files as rows of flat indices (ascending),
    sizes and mtimes, its other files, and its sub-folders in grid order."""
    path, rel, head = folder
    ndim = len(counts)
    try:
        entries = list(os.scandir(path))
    except OSError:
        return np.zeros((3, 0), np.int64), [], []
    leaf = head is not None and len(head) == ndim - 1
    base = sum(i * s for i, s in zip(head or (), strides))
    last = counts[-1] if ndim else 0
    flat: list[int] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    other: list[tuple[str, int, int]] = []
    dirs: list[tuple[int, str, tuple[int, ...] | None]] = []
    if leaf and rel:  # the usual folder: chunk files named by their last index, at full speed
        rest = []
        add_flat, add_size, add_mtime = flat.append, sizes.append, mtimes.append
        for e in entries:
            name = e.name
            if name.isdigit() and name.isascii() and not e.is_dir(follow_symlinks=False):
                i = int(name)
                if i < last:
                    st = e.stat()
                    add_flat(base + i)
                    add_size(st.st_size)
                    add_mtime(st.st_mtime_ns)
                    continue
            rest.append(e)
        entries = rest
    for e in entries:
        name = e.name
        digits = name.isascii() and name.isdigit()
        if e.is_dir(follow_symlinks=False):
            sub: tuple[int, ...] | None = None
            if not rel and name == "c":
                sub = ()
            elif digits and head is not None and len(head) < ndim - 1 and \
                    int(name) < counts[len(head)]:
                sub = head + (int(name),)
            dirs.append((int(name) if digits else -1, name, sub))
            continue
        if not rel and name in METADATA:
            continue
        st = e.stat()
        if leaf and digits and int(name) < last:
            flat.append(base + int(name))
        else:
            idx = chunk_index(rel + name)
            if idx is None or len(idx) != ndim or any(k >= n for k, n in zip(idx, counts)):
                other.append((rel + name, st.st_size, st.st_mtime_ns))
                continue
            flat.append(sum(k * s for k, s in zip(idx, strides)))
        sizes.append(st.st_size)
        mtimes.append(st.st_mtime_ns)
    subs = [(os.path.join(path, name), f"{rel}{name}/", sub) for _, name, sub in sorted(dirs)]
    rows = np.array([flat, sizes, mtimes], np.int64).reshape(3, -1)
    if rows.shape[1] > 1 and not bool((rows[0, 1:] > rows[0, :-1]).all()):
        rows = rows[:, np.argsort(rows[0], kind="stable")]  # a folder lists in any order
    return rows, other, subs


def stored_chunks(array: Path, counts: Sequence[int], threads: int | None = None
                  ) -> StoredChunks:
    """Every file under the array folder ``array`` except its metadata (one ``stat`` each, as
    :func:`chunk_entries`), for a grid of ``counts`` chunks: 24 bytes a chunk while listing,
    where a list of keys takes ten times that. The folders of each level are listed by
    ``threads`` threads (default: one per core, at most 16): a ``stat`` that waits on a
    network file system lets the others go on."""
    from array import array as numbers
    from concurrent.futures import ThreadPoolExecutor
    counts = [int(c) for c in counts]
    strides = [int(np.prod(counts[i + 1:], dtype=np.int64)) for i in range(len(counts))]
    flat, sizes, mtimes = numbers("q"), numbers("q"), numbers("q")
    other: list[tuple[str, int, int]] = []
    level: list[_Folder] = [(os.fspath(array), "", ())]
    n = threads or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(n, thread_name_prefix="emarray-list") as pool:
        while level:
            below: list[_Folder] = []
            for start in range(0, len(level), 256):  # a bounded number of folders at a time
                for rows, oth, subs in pool.map(_scan, level[start:start + 256],
                                                [counts] * 256, [strides] * 256):
                    flat.frombytes(rows[0].tobytes())
                    sizes.frombytes(rows[1].tobytes())
                    mtimes.frombytes(rows[2].tobytes())
                    other += oth
                    below += subs
            level = below
    fl = np.frombuffer(flat, np.int64) if flat else np.zeros(0, np.int64)
    sz_a = np.frombuffer(sizes, np.int64) if sizes else np.zeros(0, np.int64)
    mt_a = np.frombuffer(mtimes, np.int64) if mtimes else np.zeros(0, np.int64)
    if fl.size > 1 and not bool((fl[1:] > fl[:-1]).all()):  # chunks at several depths
        perm = np.argsort(fl, kind="stable")
        fl, sz_a, mt_a = fl[perm], sz_a[perm], mt_a[perm]
    return StoredChunks(fl, sz_a, mt_a, sorted(other))


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
    return (tuple(int(p) for p in parts)
            if parts and all(p.isascii() and p.isdigit() for p in parts) else None)


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
