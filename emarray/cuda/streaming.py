"""Stream host blocks through device steps with bounded device memory.

A block is cut into pieces; pieces alternate between two CUDA streams owned by the calling
thread, so the copy in of one piece overlaps the kernels and copy out of the other. Host data
is staged through pinned buffers (reused per thread) so copies run asynchronously at full
PCIe/NVLink speed. Device memory is capped through CuPy's pool limit; a piece that still runs
out of memory frees the pool and is retried in halves.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError

#: Default device memory cap: this fraction of the card's memory.
DEFAULT_FRACTION = 0.5
PIECE_BYTES = 64 * 2**20  # input bytes per pipelined piece
MIN_PIECE = 1 << 16       # halving stops here
_local = threading.local()
_limits: dict[int, int] = {}
_limit_lock = threading.Lock()


def parse_memory_limit(limit: Any) -> float | int | None:
    """``None``, a fraction in (0, 1], a byte count, or a string like ``"8GB"`` / ``"0.25"``."""
    if limit is None:
        return None
    raw = limit
    if isinstance(limit, str):
        s = limit.strip().upper().replace("IB", "B")
        mult = 1
        for suffix, m in (("KB", 2**10), ("MB", 2**20), ("GB", 2**30), ("TB", 2**40), ("B", 1)):
            if s.endswith(suffix):
                s, mult = s[: -len(suffix)], m
                break
        try:
            value = float(s) * mult
        except ValueError:
            raise InvalidArgumentError(
                f"gpu memory limit must be a fraction (0.5) or a size (8GB), got {raw!r}") from None
        limit = value
    if not isinstance(limit, (int, float)) or limit != limit or limit <= 0:
        raise InvalidArgumentError(
            f"gpu memory limit must be a positive fraction or size, got {raw!r}")
    return float(limit) if limit <= 1 else int(limit)


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


def _pinned(slot: str, nbytes: int) -> np.ndarray:
    """A per-thread pinned host buffer of at least ``nbytes`` (grown when needed, then reused)."""
    import cupy
    bufs = getattr(_local, "pinned", None)
    if bufs is None:
        bufs = _local.pinned = {}
    buf = bufs.get(slot)
    if buf is None or buf.nbytes < nbytes:
        mem = cupy.cuda.alloc_pinned_memory(max(nbytes, 1))
        buf = np.frombuffer(mem, np.uint8, max(nbytes, 1))
        bufs[slot] = buf
    return buf


Step = Callable[[Any, Any], Any]  # (device array, stream) -> device array


def run_steps(block: np.ndarray, steps: Sequence[Step], out_dtype: Any, *,
              memory_limit: float | int | None = None,
              piece_bytes: int = PIECE_BYTES) -> np.ndarray:
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
    _run_range(flat, out, 0, flat.size, steps, piece)
    return out.reshape(block.shape)


def _run_range(flat: np.ndarray, out: np.ndarray, start: int, stop: int,
               steps: Sequence[Step], piece: int) -> None:
    import cupy
    try:
        _pipeline(flat, out, start, stop, steps, piece)
    except cupy.cuda.memory.OutOfMemoryError:
        for stream in _streams():  # let in-flight copies finish before staging is reused
            stream.synchronize()
        cupy.get_default_memory_pool().free_all_blocks()
        n = stop - start
        if n <= MIN_PIECE:
            raise
        half = min(piece, n) // 2 or 1
        # retry this range in pieces half as big
        _run_range(flat, out, start, stop, steps, max(MIN_PIECE, half))


def _pipeline(flat: np.ndarray, out: np.ndarray, start: int, stop: int,
              steps: Sequence[Step], piece: int) -> None:
    import cupy
    streams = _streams()
    bounds = [(s, min(s + piece, stop)) for s in range(start, stop, piece)]
    in_item, out_item = flat.itemsize, out.itemsize
    # two pinned slots per direction: piece k uses slot k % 2, like its stream
    stage_in = [_pinned(f"in{k}", piece * in_item).view(flat.dtype) for k in (0, 1)]
    stage_out = [_pinned(f"out{k}", piece * out_item).view(out.dtype) for k in (0, 1)]
    pending: list[tuple[Any, int, int, int]] = []

    def drain(entry):
        stream, slot, a, b = entry
        stream.synchronize()
        out[a:b] = stage_out[slot][: b - a]

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
