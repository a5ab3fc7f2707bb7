"""Stream host blocks through device steps with bounded device memory.

A block is cut into pieces; pieces alternate between two CUDA streams owned by the calling
thread, so the copy in of one piece overlaps the kernels and copy out of the other. Host data
is staged through pinned buffers so copies run asynchronously at full PCIe/NVLink speed; the
process keeps at most :data:`PINNED_SETS` sets of them (a thread beyond waits for a free set),
so pinned host memory stays under ``PINNED_SETS * 4 * PIECE_BYTES`` however many threads run.
Device memory is capped through CuPy's pool limit; a piece that still runs
out of memory frees the pool and is retried in halves.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..engine.memory import DEFAULT_FRACTION

PIECE_BYTES = 64 * 2**20  # input bytes per pipelined piece
MIN_PIECE = 1 << 16       # halving stops here
PINNED_SETS = 2           # staging sets per process (each: two slots in, two out)
_local = threading.local()
_limits: dict[int, int] = {}
_limit_lock = threading.Lock()


def apply_memory_limit(limit: float | int | None) -> int:
    """Cap CuPy's device pool on the current device (once per process and device); return bytes."""
    import cupy
    dev = cupy.cuda.Device()
    total = dev.mem_info[1]
    limit = DEFAULT_FRACTION if limit is None else limit
    nbytes = int(total * limit) if isinstance(limit, float) and limit <= 1 else int(limit)
    with _limit_lock:
        if _limits.get(dev.id) != nbytes:
            cupy.get_default_memory_pool().set_limit(size=nbytes)
            _limits[dev.id] = nbytes
    return nbytes


def _streams() -> tuple[Any, Any]:
    import cupy
    dev = cupy.cuda.Device().id
    per_dev = getattr(_local, "streams", None)
    if per_dev is None:
        per_dev = _local.streams = {}
    if dev not in per_dev:
        per_dev[dev] = (cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True))
    return per_dev[dev]


_free_sets: queue.LifoQueue[dict[str, np.ndarray]] = queue.LifoQueue()
_sets_made = 0
_sets_lock = threading.Lock()


@contextlib.contextmanager
def staging() -> Iterator[dict[str, np.ndarray]]:
    """One set of pinned staging buffers for the caller's pipeline, returned after it; at most
    :data:`PINNED_SETS` exist in the process (a caller beyond waits)."""
    global _sets_made
    with _sets_lock:
        make = _free_sets.empty() and _sets_made < PINNED_SETS
        if make:
            _sets_made += 1
    bufs: dict[str, np.ndarray] = {} if make else _free_sets.get()
    try:
        yield bufs
    finally:
        _free_sets.put(bufs)


def _pinned(bufs: dict[str, np.ndarray], slot: str, nbytes: int) -> np.ndarray:
    """The pinned buffer ``slot`` of a staging set, of at least ``nbytes`` (grown when needed,
    then reused)."""
    import cupy
    buf = bufs.get(slot)
    if buf is None or buf.nbytes < nbytes:
        bufs.pop(slot, None)  # the smaller one is freed before the larger is pinned
        mem = cupy.cuda.alloc_pinned_memory(max(nbytes, 1))
        buf = np.frombuffer(mem, np.uint8, max(nbytes, 1))
        bufs[slot] = buf
    return buf


Step = Callable[[Any, Any], Any]  # (device array, stream) -> device array


def run_steps(block: np.ndarray, steps: Sequence[Step], out_dtype: Any, *,
              memory_limit: float | int | None = None, piece_bytes: int = PIECE_BYTES,
              region: Any = None) -> np.ndarray:
    """Run device ``steps`` over a host block; return the host result (same shape).

    The steps run one after another on each piece without leaving the device.
    """
    cap = apply_memory_limit(memory_limit)
    flat = np.ascontiguousarray(block).reshape(-1)
    out = np.empty(flat.size, out_dtype)
    # two pieces are in flight, each with its input, output and step temporaries: keep them
    # well inside the cap (the out-of-memory retry is the safety net, not the plan)
    piece_bytes = min(piece_bytes, max(cap // 8, 1))
    piece = max(MIN_PIECE, piece_bytes // max(flat.itemsize, 1))
    what = ("the block at voxels " + ",".join(f"{r.start}:{r.stop}" for r in region)
            if region is not None else "the block")
    _run_range(flat, out, 0, flat.size, steps, piece, what)
    return out.reshape(block.shape)


def _run_range(flat: np.ndarray, out: np.ndarray, start: int, stop: int,
               steps: Sequence[Step], piece: int, what: str) -> None:
    import cupy

    def attempt(a: int, b: int, size: int, done: list[int]) -> None:
        with staging() as bufs:
            _pipeline(flat, out, a, b, steps, size, done, bufs)

    def recover() -> None:
        for stream in _streams():  # let in-flight copies finish before staging is reused
            stream.synchronize()
        cupy.get_default_memory_pool().free_all_blocks()

    retry_in_halves(attempt, start, stop, piece, MIN_PIECE, cupy.cuda.memory.OutOfMemoryError,
                    recover, what)


def retry_in_halves(attempt: Callable[[int, int, int, list[int]], None], start: int, stop: int,
                    piece: int, min_piece: int, oom: type[BaseException],
                    recover: Callable[[], None], what: str = "the block") -> None:
    """Run ``attempt(a, b, piece, done)`` over ``[start, stop)``; on ``oom``, halve the piece.

    ``attempt`` records in ``done[0]`` how far it finished; a retry starts there (finished
    pieces are not redone). Once pieces of ``min_piece`` still fail, a
    :class:`GpuOutOfMemoryError` is raised instead of retrying for ever.
    """
    from ..errors import GpuOutOfMemoryError
    pos = start
    while pos < stop:
        done = [pos]
        try:
            attempt(pos, stop, piece, done)
            return
        except oom as exc:
            recover()
            pos = done[0]
            if piece <= min_piece:
                raise GpuOutOfMemoryError(
                    f"{what} does not fit the GPU even in pieces of {piece} elements (elements "
                    f"{pos}:{stop} left; {exc}); lower --workers or raise --gpu-memory-limit"
                ) from None
            piece = max(min_piece, piece // 2)


def _pipeline(flat: np.ndarray, out: np.ndarray, start: int, stop: int,
              steps: Sequence[Step], piece: int, done: list[int],
              bufs: dict[str, np.ndarray]) -> None:
    import cupy
    streams = _streams()
    bounds = [(s, min(s + piece, stop)) for s in range(start, stop, piece)]
    in_item, out_item = flat.itemsize, out.itemsize
    # two pinned slots per direction: piece k uses slot k % 2, like its stream
    piece = min(piece, max(stop - start, 1))  # a small block pins only what it needs
    stage_in = [_pinned(bufs, f"in{k}", piece * in_item)[:piece * in_item].view(flat.dtype)
                for k in (0, 1)]
    stage_out = [_pinned(bufs, f"out{k}", piece * out_item)[:piece * out_item].view(out.dtype)
                 for k in (0, 1)]
    pending: list[tuple[Any, int, int, int]] = []

    def drain(entry):
        stream, slot, a, b = entry
        stream.synchronize()
        out[a:b] = stage_out[slot][: b - a]
        done[0] = b  # pieces drain in order: everything before b is finished

    for k, (a, b) in enumerate(bounds):
        slot = k % 2
        stream = streams[slot]
        if len(pending) == 2:
            drain(pending.pop(0))  # the slot we are about to reuse is free again
        n = b - a
        stage_in[slot][:n] = flat[a:b]
        with stream:
            d = cupy.empty(n, flat.dtype)
            d.set(stage_in[slot][:n], stream=stream)
            for step in steps:
                d = step(d, stream)
            d.get(stream=stream, out=stage_out[slot][:n], blocking=False)
        pending.append((stream, slot, a, b))
    for entry in pending:
        drain(entry)


def whole_block(fn: Callable[[], Any], memory_limit: Any, what: str) -> Any:
    """Run ``fn`` (a step that needs its whole block on the device: labelling, smoothing) under
    the memory cap; out of memory is one line naming the block and the cap, not a retry."""
    import cupy

    from ..errors import GpuOutOfMemoryError
    cap = apply_memory_limit(memory_limit)
    try:
        return fn()
    except cupy.cuda.memory.OutOfMemoryError as exc:
        cupy.get_default_memory_pool().free_all_blocks()
        raise GpuOutOfMemoryError(
            f"{what} does not fit the GPU's {cap / 2**20:.0f} MiB cap ({exc}); this step needs "
            "the whole block on the device: use smaller --chunks or raise --gpu-memory-limit"
        ) from None


def in_slabs(fn: Callable[[int, int], None], length: int, memory_limit: Any, what: str,
             multiple: int = 1) -> None:
    """Run ``fn(a, b)`` over ``[0, length)`` under the memory cap: the whole range first, then,
    on out of memory, halves (slab edges on multiples of ``multiple``), down to one slab of
    ``multiple``; finished slabs are not redone."""
    import cupy
    apply_memory_limit(memory_limit)
    units = -(-length // multiple)

    def attempt(a: int, b: int, size: int, done: list[int]) -> None:
        for s in range(a, b, size):
            e = min(s + size, b)
            fn(s * multiple, min(e * multiple, length))
            done[0] = e

    def recover() -> None:
        cupy.get_default_memory_pool().free_all_blocks()

    retry_in_halves(attempt, 0, units, max(units, 1), 1, cupy.cuda.memory.OutOfMemoryError,
                    recover, what)
