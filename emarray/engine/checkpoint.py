"""A job's progress: per stage, a done-bitmap over its blocks and the summaries folded so far.

The driver alone writes it (workers only return), so there is no concurrent update: a block
counts as done once its task has returned, which is after its data was stored. Every few
seconds, and when a stage ends, the bitmap and the folded summary are written together into one
file by an atomic rename, so they always agree: a killed job resumes at (stage, block)
granularity, reductions included, and blocks finished after the last save are simply computed
again. A grid of 2.5 million blocks is a 312 KiB bitmap, not 2.5 million files.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..storage import RemotePath, is_remote, options_for
from .invalidate import boxes, volume_key
from .serialize import CorruptStateError, dump, dumps, loads

PROGRESS_DIR = ".emarray-progress"
FORMAT = 2  # 1 was pickled (never loaded now: a planted pickle would run code)


class Checkpoint:
    """The saved progress of one job in ``root`` (None: nothing is saved, nothing resumes)."""

    def __init__(self, root: str | os.PathLike | None, interval: float | None = None):
        self.root: Any = as_folder(root) if root is not None else None
        #: input key -> regions of its chunks changed since the job started (see :meth:`start`)
        self.changed: dict[str, list[tuple[slice, ...]]] = {}
        self.digests: dict[str, str] = {}
        self.stored: dict[str, tuple[int, int]] = {}
        if interval is None:
            from .. import environment
            interval = float(environment.number("EMARRAY_CHECKPOINT_SECONDS") or 0.0)
        self.interval = interval
        self._last = 0.0

    def _file(self, stage: str, part: str) -> Path:
        assert self.root is not None
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stage)
        return self.root / f"{safe}.{part}"

    def load(self, stage: str, nblocks: int) -> tuple[Bitmap, Any]:
        """The done-bitmap and the folded summary saved for ``stage`` (empty when none)."""
        state = self._progress(stage)
        if state is None or state.get("format") != FORMAT or state.get("nblocks") != nblocks:
            return Bitmap(nblocks), None  # another grid: start the stage again
        bits = np.asarray(state["done"], np.uint8)
        if bits.size != (nblocks + 7) // 8:
            raise CorruptStateError(f"{self._file(stage, 'progress')} is damaged (its bitmap "
                                    f"has {bits.size} bytes for {nblocks} blocks); remove it")
        return Bitmap(nblocks, bits.copy()), state["acc"]

    def _read(self, stage: str, part: str) -> tuple[bool, Any]:
        if self.root is None:
            return False, None
        return self._read_file(self._file(stage, part))

    def _read_file(self, path: Path) -> tuple[bool, Any]:
        try:
            if isinstance(path, RemotePath):
                data: Any = path.read_bytes()
                head = data[:2]
            else:  # read by NumPy from the file: no copy of it all in memory first
                with open(path, "rb") as f:
                    head = f.read(2)
                data = path
        except FileNotFoundError:
            return False, None
        if head != b"PK":  # an .npz is a zip archive; anything else is not ours
            raise CorruptStateError(
                f"{path} is not an emarray progress file (it may be from an older emarray, or "
                "planted there); remove it, or the folder it is in, to start that job again")
        return True, loads(data, os.fspath(path))

    def _progress(self, stage: str) -> dict[str, Any] | None:
        """The saved progress state of ``stage`` (None when nothing is saved)."""
        found, state = self._read(stage, "progress")
        if found and not isinstance(state, dict):
            raise CorruptStateError(f"{self._file(stage, 'progress')} is damaged; remove it")
        return state if found else None

    def save(self, stage: str, done: Bitmap, acc: Any, *, force: bool = False) -> None:
        """Save the stage's progress (at most every ``interval`` seconds unless ``force``)."""
        if self.root is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        state = {"format": FORMAT, "nblocks": int(done.size), "done": done.bits, "acc": acc}
        atomic_write(self._file(stage, "progress"), dumps(state))

    def finished(self, stage: str) -> tuple[bool, Any]:
        """Whether ``stage`` finished in an earlier run, and what its ``finalize`` returned."""
        found, value = self._read(stage, "result")
        if not found:
            return False, None
        if not (isinstance(value, dict) and value.get("format") == FORMAT):
            raise CorruptStateError(f"{self._file(stage, 'result')} is damaged; remove it")
        return True, value["result"]

    def finish(self, stage: str, result: Any) -> None:
        """Record a finished stage and its result; its block progress is no longer needed."""
        if self.root is None:
            return
        atomic_write(self._file(stage, "result"), dumps({"format": FORMAT, "result": result}))
        self._file(stage, "progress").unlink(missing_ok=True)

    def forget(self, stage: str) -> None:
        """Drop everything saved of ``stage``: it runs again from its first block."""
        if self.root is not None:
            self._file(stage, "result").unlink(missing_ok=True)
            self._file(stage, "progress").unlink(missing_ok=True)

    def reopen(self, stage: str, nblocks: int, redo: np.ndarray) -> None:
        """Turn a finished stage that folds nothing back into one with every block done but
        ``redo`` (flat indices): those blocks run again."""
        done = Bitmap.full(nblocks)
        done.unset_many(redo)
        self.save(stage, done, None, force=True)
        if self.root is not None:
            self._file(stage, "result").unlink(missing_ok=True)

    def done_count(self, stage: str) -> int:
        """How many blocks of ``stage`` the saved progress counts as done (0 when none)."""
        state = self._progress(stage)
        return 0 if state is None else Bitmap(int(state["nblocks"]), state["done"]).count()

    def start(self, job: dict[str, Any] | None = None, inputs: Sequence[Any] = ()) -> bool:
        """Create the folder; with ``job``, return whether saved progress belongs to that job
        (progress of another job is cleared).

        ``inputs`` (Volumes) are the job's inputs on local disk: a new job records every
        stored chunk of each (key, size, mtime); a resumed one compares them with that record
        and keeps, in :attr:`changed`, the regions of the chunks changed, added or removed
        since, so that :func:`~emarray.engine.stages.run_stages` computes the blocks that read
        them again (a chunk rewritten in place never mixes two inputs into one output).
        """
        self.changed = {}
        vols = [v for v in inputs
                if getattr(v, "local_path", None) is not None or getattr(v, "remote", False)]
        records = {volume_key(v): chunk_record(v) for v in vols}
        #: input key -> digest of its stored chunks as this run found them (what a finished
        #: output records, so that a later resume can tell the input changed since)
        self.digests = {k: record_digest(r) for k, r in records.items()}
        #: input key -> (chunks stored, their bytes)
        self.stored = {k: (int(r["sizes"].size), int(r["sizes"].sum())) for k, r in records.items()}
        if self.root is None:
            return False
        same = True
        if job is not None:
            ident = self.root / "job.json"
            try:
                same = json.loads(ident.read_text()) == json.loads(json.dumps(job))
            except (OSError, ValueError):
                same = False
            if not same:
                self.clear()
        fresh = not (self.root / INPUTS).is_file()
        self.root.mkdir(parents=True, exist_ok=True)
        if job is not None:
            atomic_write(self.root / "job.json", json.dumps(job).encode())
        if fresh:
            atomic_write(self.root / INPUTS, partial(dump, records))
        else:
            found, before = self._read_file(self.root / INPUTS)
            for v in vols:
                old = before.get(volume_key(v)) if found else None
                if old is not None:
                    regions = changed_regions(v, old, records[volume_key(v)])
                    if regions:
                        self.changed[volume_key(v)] = regions
        return same

    def clear(self) -> None:
        if isinstance(self.root, RemotePath):
            self.root.rmtree()
        elif self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


INPUTS = "inputs.npz"


def as_folder(root: str | os.PathLike) -> Any:
    """A folder (a job's progress, scratch arrays): a local :class:`~pathlib.Path`, or a
    prefix on object storage (a :class:`~emarray.storage.RemotePath`)."""
    if isinstance(root, RemotePath):
        return root
    if is_remote(root):
        return RemotePath(os.fspath(root), options_for(os.fspath(root)))
    return Path(root)


def folder_of(out: Any) -> Any:
    """The folder of the output volume ``out`` (on object storage, with the options it was
    opened with: they travel to the workers with it)."""
    if getattr(out, "remote", False):
        return RemotePath(out.url, out.storage_options)
    return Path(out.url)


def progress_of(out: Any) -> Any:
    """The progress folder inside the output volume ``out``."""
    return folder_of(out) / PROGRESS_DIR


def load_npy(path: Any) -> np.ndarray:
    """An ``.npy`` file of a progress folder (memory-mapped on local disk)."""
    if isinstance(path, RemotePath):
        import io
        return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def load_npz(path: Any) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file of a progress folder (local, or an object)."""
    with path.open("rb") as f, np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def npy_rows(path: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an ``.npy`` file of a progress folder, reading only them (on
    local disk memory-mapped; on object storage one ranged read past the header)."""
    if not isinstance(path, RemotePath):
        return np.array(np.load(path, mmap_mode="r", allow_pickle=False)[start:stop])
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        if fortran or dtype.hasobject:
            raise CorruptStateError(f"{path} is not an array emarray wrote; remove it")
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        f.seek(f.tell() + start * row)
        data = f.read((stop - start) * row)
    return np.frombuffer(data, dtype).reshape((stop - start, *shape[1:]))


def remove_tree(path: Any) -> None:
    """Remove a folder of a progress folder (or its prefix on object storage)."""
    if isinstance(path, RemotePath):
        path.rmtree()
    elif os.path.lexists(path):
        shutil.rmtree(path)


#: the version of :func:`chunk_record`'s digest (an older one is a digest of the key listing)
RECORD_DIGEST = "2:"


def chunk_record(v: Any) -> dict[str, Any]:
    """What a job records of an input's stored chunks: for each chunk of its grid that is
    stored, its size and version (mtime in ns; on object storage a number made from the
    ETag), 16 bytes a chunk, with the stored flat indices as runs; files that name no chunk
    (kept by key) apart."""
    from ..chunks import chunk_index, stored_chunks
    counts = grid_counts(v)
    if getattr(v, "remote", False):
        keys, sz, mt = v.chunk_entries()
        grid, other = [], []
        for k, size, mtime in zip(keys, sz.tolist(), mt.tolist()):
            idx = chunk_index(k)
            if idx is not None and len(idx) == len(counts) and all(
                    i < n for i, n in zip(idx, counts)):
                grid.append((int(np.ravel_multi_index(idx, counts)), size, mtime))
            else:
                other.append((k, size, mtime))
        grid.sort()
        flat = np.array([g[0] for g in grid], np.int64)
        sizes = np.array([g[1] for g in grid], np.int64)
        mtimes = np.array([g[2] for g in grid], np.int64)
    else:
        root = v.local_path
        table = stored_chunks(root / v.array_path if v.array_path else root, counts)
        flat, sizes, mtimes, other = table
    return {"runs": runs_of(flat), "sizes": sizes, "mtimes": mtimes,
            "other": np.frombuffer("\n".join(o[0] for o in other).encode(), np.uint8),
            "other_sizes": np.array([o[1] for o in other], np.int64),
            "other_mtimes": np.array([o[2] for o in other], np.int64),
            "block": list(v.block_shape), "shape": list(v.shape)}


def grid_counts(v: Any) -> list[int]:
    """How many stored chunks (files, objects) ``v`` has along each axis."""
    return [-(-n // b) for n, b in zip(v.shape, v.block_shape)]


def runs_of(flat: np.ndarray) -> np.ndarray:
    """Ascending indices as ``(start, stop)`` runs of consecutive ones (an array of shape (k, 2)).

    >>> runs_of(np.array([0, 1, 2, 5, 7, 8])).tolist()
    [[0, 3], [5, 6], [7, 9]]
    """
    if flat.size == 0:
        return np.zeros((0, 2), np.int64)
    breaks = np.flatnonzero(np.diff(flat) != 1) + 1
    starts = flat[np.concatenate(([0], breaks))]
    stops = flat[np.concatenate((breaks - 1, [flat.size - 1]))] + 1
    return np.stack([starts, stops], axis=1).astype(np.int64)


def flat_of(runs: np.ndarray) -> np.ndarray:
    """The indices of :func:`runs_of`'s runs, ascending."""
    runs = np.asarray(runs, np.int64).reshape(-1, 2)
    lengths = runs[:, 1] - runs[:, 0]
    if not lengths.size:
        return np.zeros(0, np.int64)
    offsets = np.repeat(runs[:, 0] - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + offsets


def _legacy(record: dict[str, Any], v: Any) -> dict[str, Any]:
    """A record an older emarray saved (every key as text) in today's form."""
    from ..chunks import chunk_index
    text = bytes(np.asarray(record["keys"], np.uint8)).decode()
    keys = text.split("\n") if text else []
    counts = [-(-int(n) // int(b)) for n, b in zip(record["shape"], record["block"])]
    grid, other = [], []
    for k, size, mtime in zip(keys, np.asarray(record["sizes"]).tolist(),
                              np.asarray(record["mtimes"]).tolist()):
        idx = chunk_index(k)
        if idx is not None and len(idx) == len(counts) and all(i < n for i, n in zip(idx, counts)):
            grid.append((int(np.ravel_multi_index(idx, counts)), size, mtime))
        else:
            other.append((k, size, mtime))
    grid.sort()
    return {"runs": runs_of(np.array([g[0] for g in grid], np.int64)),
            "sizes": np.array([g[1] for g in grid], np.int64),
            "mtimes": np.array([g[2] for g in grid], np.int64),
            "other": np.frombuffer("\n".join(o[0] for o in other).encode(), np.uint8),
            "other_sizes": np.array([o[1] for o in other], np.int64),
            "other_mtimes": np.array([o[2] for o in other], np.int64),
            "block": list(record["block"]), "shape": list(record["shape"])}


def record_digest(record: dict[str, Any]) -> str:
    """A digest of a :func:`chunk_record` (which chunks are stored, their sizes and versions)."""
    import hashlib
    h = hashlib.blake2b(digest_size=16)
    for name in ("runs", "sizes", "mtimes", "other", "other_sizes", "other_mtimes"):
        h.update(np.ascontiguousarray(record[name], np.uint8 if name == "other" else np.int64)
                 .tobytes())
    return RECORD_DIGEST + h.hexdigest()


def inputs_digest(inputs: Sequence[Any]) -> dict[str, str]:
    """Each input's (local or remote volume's) digest of its stored chunks, by its key."""
    return {volume_key(v): record_digest(chunk_record(v)) for v in inputs
            if getattr(v, "local_path", None) is not None or getattr(v, "remote", False)}


def stored_since(v: Any, recorded: str) -> bool:
    """Whether ``v``'s stored chunks are as the digest ``recorded`` says (one that an older
    emarray recorded is a digest of its listing, compared as such)."""
    if not recorded.startswith(RECORD_DIGEST):
        return bool(v.listing()["digest"] == recorded)
    return record_digest(chunk_record(v)) == recorded


def changed_regions(v: Any, old: dict[str, Any],
                    now: dict[str, Any] | None = None) -> list[tuple[slice, ...]]:
    """The regions of ``v``'s chunks whose (size, version) differ from the record ``old``, or
    that were added or removed since (``now``: the current record, when already made); the
    whole volume when a changed file names no chunk."""
    now = now if now is not None else chunk_record(v)
    if "keys" in old:
        old = _legacy(old, v)
    whole = [tuple(slice(0, n) for n in v.shape)]
    if now["block"] != [int(b) for b in old["block"]] or \
            now["shape"] != [int(n) for n in old["shape"]]:
        return whole
    for name in ("other", "other_sizes", "other_mtimes"):
        if not np.array_equal(np.asarray(old[name]), now[name]):
            return whole
    runs_old, runs_now = np.asarray(old["runs"], np.int64).reshape(-1, 2), now["runs"]
    if np.array_equal(runs_old, runs_now):  # the usual case: the same chunks stored
        moved = (np.asarray(old["sizes"]) != now["sizes"]) | \
            (np.asarray(old["mtimes"]) != now["mtimes"])
        diff = flat_of(runs_now)[moved] if moved.any() else np.zeros(0, np.int64)
    else:
        a, b = flat_of(runs_old), flat_of(runs_now)
        both, ia, ib = np.intersect1d(a, b, assume_unique=True, return_indices=True)
        moved = (np.asarray(old["sizes"])[ia] != now["sizes"][ib]) | \
            (np.asarray(old["mtimes"])[ia] != now["mtimes"][ib])
        diff = np.union1d(np.setxor1d(a, b, assume_unique=True), both[moved])
    return regions_of(diff, v)


def regions_of(flat: np.ndarray, v: Any) -> list[tuple[slice, ...]]:
    """The regions of ``v``'s chunks at the flat indices ``flat``; when there are more than
    :data:`~emarray.engine.invalidate.MAX_REGIONS`, fewer, larger regions that hold every one
    of them (see :func:`~emarray.engine.invalidate.boxes`)."""
    counts, block, shape = grid_counts(v), list(v.block_shape), list(v.shape)
    if flat.size == 0:
        return []
    lo, hi = boxes(np.stack(np.unravel_index(flat, counts), axis=1), counts)
    return [tuple(slice(a * b, min(e * b, n)) for a, e, b, n in zip(lo_i, hi_i, block, shape))
            for lo_i, hi_i in zip(lo.tolist(), hi.tolist())]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the process's umask, read once (reading it sets it: not something to do from many threads)
UMASK = _umask()


def atomic_write(path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, renamed), with the
    permissions a new file gets (mkstemp's are private). On object storage a put is whole.
    ``data``: the bytes, or a function that writes them to the open file it is given."""
    if isinstance(path, RemotePath):
        if callable(data):
            buf = io.BytesIO()
            data(buf)
            data = buf.getvalue()
        path.write_bytes(data)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: how many bits each byte value has set
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


class Bitmap:
    """One bit per block: which blocks of a stage are done (a grid of 134 million blocks is
    16 MiB here, not the 1.2 GB a byte and an index per block would take)."""

    def __init__(self, size: int, bits: np.ndarray | None = None):
        self.size = int(size)
        self.bits = bits if bits is not None else np.zeros((self.size + 7) // 8, np.uint8)

    def set(self, i: int) -> None:
        self.bits[i >> 3] |= np.uint8(0x80 >> (i & 7))

    def unset(self, i: int) -> None:
        self.bits[i >> 3] &= np.uint8(~(0x80 >> (i & 7)) & 0xFF)

    def __getitem__(self, i: int) -> bool:
        return bool(self.bits[i >> 3] & (0x80 >> (i & 7)))

    def get_many(self, idx: np.ndarray) -> np.ndarray:
        """Whether each bit at the indices ``idx`` is set (a boolean array)."""
        idx = np.asarray(idx, np.int64)
        return (self.bits[idx >> 3] & (np.uint8(0x80) >> (idx & 7).astype(np.uint8))) != 0

    def unset_many(self, idx: np.ndarray) -> None:
        """Unset the bits at the indices ``idx``."""
        idx = np.asarray(idx, np.int64)
        np.bitwise_and.at(self.bits, idx >> 3,
                          ~(np.uint8(0x80) >> (idx & 7).astype(np.uint8)))

    def count(self) -> int:
        """How many bits are set (counted a byte at a time: no byte a bit)."""
        return int(_POPCOUNT[self.bits].sum(dtype=np.int64)) if self.size else 0

    @classmethod
    def full(cls, size: int) -> Bitmap:
        """Every one of ``size`` bits set."""
        bits = np.full((size + 7) // 8, 0xFF, np.uint8)
        if size % 8:
            bits[-1] = np.uint8((0xFF << (8 - size % 8)) & 0xFF)
        return cls(size, bits)

    def missing(self, step: int = 1 << 16):
        """The indices of the unset bits, in order, a slice of ``step`` blocks at a time."""
        for start in range(0, self.size, step):
            stop = min(start + step, self.size)
            part = np.unpackbits(self.bits[start >> 3:(stop + 7) >> 3], count=stop - start)
            for i in np.flatnonzero(part == 0):
                yield start + int(i)


def job_difference(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "it was not made by an emarray job"
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "inputs":
            for o, n in zip(old.get(key) or [], new.get(key) or []):
                if o != n:
                    what = [k for k in sorted(set(o) | set(n)) if o.get(k) != n.get(k)]
                    return (f"its input {n.get('url')} changed since that run "
                            f"({', '.join(what)} differ)")
        if key == "layout":
            return f"its storage layout was {old.get(key)}, this run asks for {new.get(key)}"
        return f"{key} was {old.get(key)!r}, this run has {new.get(key)!r}"
    return "the jobs differ"
