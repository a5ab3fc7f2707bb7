"""``estimate``: what a job will cost, from a sample of its blocks, before it is run.

An operator called with ``estimate=True`` (``--estimate``) writes its output into a scratch
folder beside the real one (``.NAME.emarray-estimate-HOST-PID-N/NAME``, removed at the end, or
by the next estimate of NAME on that host when it was killed: nothing the user has is
touched), and every stage the engine runs (:func:`~emarray.engine.stages.
run_stages`) computes only a sample of its blocks, spread evenly over its grid (in C order),
on the scheduler and workers the job asks for:

- a first round of one block per worker thread (its time includes each worker's setup: a
  model loaded, a kernel compiled), then measured rounds of two blocks per thread, until six
  blocks and two seconds at least (or 512 blocks, or the whole grid): the stage takes the
  first round's time plus its other voxels at the measured rounds' rate;
- two blocks again in this process, one at a time, for the memory a block takes (the most
  Python's allocator traced, or the peak resident memory grew, whichever is more); a worker
  holds what it held to start, its threads times that, and the chunk cache as full as the run
  fills it (half as much again when the run overflows it: some of what it evicts stays in
  the allocator);
- the stored bytes the sampled blocks wrote, per voxel, for the size of each volume written.

What the operator does outside its stages (connecting, listing the inputs, creating the
output, what it does with the result) is timed as it happens and added once. A stage built
from the result of the one before (:class:`~emarray.engine.contract.LaterStage`) gets that
result made from the sample; the blocks the first stage of a grid sampled are sampled again,
and no others, by every later stage and recipe step with the same grid (so a step reads what
the step before it wrote for its sample).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage

SCRATCH = ".emarray-estimate-"
_HOST = socket.gethostname()
#: blocks the measured rounds take at least, and for at least how many seconds (more blocks
#: smooth out a machine whose load changes), out of at most MAX_SAMPLE positions
MIN_MEASURED, MIN_SECONDS, MAX_SAMPLE = 6, 2.0, 512
#: blocks run again one at a time for their memory
MEMORY_BLOCKS = 2
#: what the SLURM request adds to the estimate, for what a sample cannot see
SLURM_TIME_MARGIN, SLURM_MEMORY_MARGIN = 1.5, 1.25


@dataclass
class StageCost:
    """What the sample of one stage measured, and what it makes of the whole stage."""

    name: str
    blocks: int
    sampled: int
    seconds: float                # the whole stage, estimated
    block_memory: int             # bytes a block took at most
    read_bytes: int               # decompressed bytes the whole stage reads
    written: dict[str, float] = field(default_factory=dict)  # volume url -> stored bytes


@dataclass
class Estimate:
    """What ``estimate=True`` returns (and ``--estimate`` prints): the expected cost of the run.

    Attributes
    ----------
    seconds : float
        Expected wall time with the scheduler and workers given.
    memory_per_worker : int
        Expected peak resident memory of one worker process, in bytes.
    read_bytes, written_bytes, output_bytes : float
        Bytes read (decompressed), written (as stored) and left in the output (as stored).
    """

    operator: str
    scheduler: str
    workers: int
    threads_per_worker: int
    seconds: float
    fixed_seconds: float
    memory_per_worker: int
    base_memory: int
    read_bytes: float
    stored_read_bytes: float | None
    written_bytes: float
    output_bytes: float | None
    stages: list[StageCost]
    notes: list[str]
    slurm: dict[str, Any] | None = None

    def lines(self) -> list[str]:
        """The estimate as the command line prints it."""
        sampled = sum(s.sampled for s in self.stages)
        blocks = sum(s.blocks for s in self.stages)
        out = [f"estimate for {self.operator}: {sampled} of {blocks:,} blocks sampled, spread "
               "over the volume"]
        per = "; ".join(f"{s.name} {duration(s.seconds)}" for s in self.stages)
        out.append(f"  wall time: {duration(self.seconds)} with {self.scheduler}, "
                   f"{self.workers} worker thread{'s' if self.workers != 1 else ''} "
                   f"(setup {duration(self.fixed_seconds)}; {per})")
        block = max((s.block_memory for s in self.stages), default=0)
        out.append(f"  peak memory per worker: {size(self.memory_per_worker)} "
                   f"({size(self.base_memory)} to start, {size(block)} a block, "
                   f"{self.threads_per_worker} block{'s' if self.threads_per_worker != 1 else ''}"
                   " at a time)")
        stored = (f"{size(self.stored_read_bytes)} stored, " if self.stored_read_bytes is not None
                  else "")
        out.append(f"  read: {stored}{size(self.read_bytes)} decompressed; written: "
                   f"{size(self.written_bytes)}")
        if self.output_bytes is not None:
            out.append(f"  output storage: {size(self.output_bytes)}")
        if self.slurm is not None:
            out.append(f"  slurm: --slurm-walltime {self.slurm['walltime']} --slurm-memory "
                       f"{self.slurm['memory']} (a job of {self.slurm['processes']} worker "
                       f"process{'es' if self.slurm['processes'] != 1 else ''})")
        out += [f"  note: {n}" for n in self.notes]
        return out


def duration(seconds: float) -> str:
    """``seconds`` as a person reads it: 42 s, 3 min 20 s, 5 h 07 min."""
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def size(n: float | None) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


# -- the session: one estimate ---------------------------------------------------------------
class Session:
    """One estimate in the making: the scratch folders, and what each sampled stage measured."""

    def __init__(self, operator: str):
        self.operator = operator
        self.started = time.perf_counter()
        _reset_peak()
        self.base_memory = _rss()
        self.scratch: list[str] = []     # folders made for it (removed at the end)
        self.outputs: list[str] = []     # where the outputs went, inside them
        self.stages: list[StageCost] = []
        self.notes: list[str] = []
        self.sampling_seconds = 0.0      # time spent in sampled rounds (not fixed costs)
        self.runner: dict[str, Any] = {}
        self.input_bytes: dict[str, tuple[float, float]] = {}
        self.cached: dict[str, int] = {}  # volumes read through the chunk cache: their bytes
        #: blocks sampled, in order, by a grid's block count: a stage or step with the same
        #: grid samples them again (it reads what the one before wrote for them)
        self.positions: dict[int, list[int]] = {}
        #: the most resident memory a sampled round took (rounds that warmed the chunk cache
        #: out of order excluded), and what the chunk cache held then
        self.peak = (0, 0)

    def scratch_for(self, path: str | os.PathLike) -> str:
        """Where an output given as ``path`` goes: a new folder beside it, inside that."""
        text = os.fspath(path)
        if any(_within(text, s) for s in self.scratch):
            return text  # already in scratch (a recipe's workdir)
        if storage.is_remote(text):
            parent, _, name = text.rstrip("/").rpartition("/")
            folder = f"{parent}/.{name}{SCRATCH}{_HOST}-{os.getpid()}-{len(self.scratch)}"
            where = f"{folder}/{name}"
        else:
            real = Path(os.path.realpath(text))
            _remove_stale(real)
            folder = os.fspath(real.parent / f".{real.name}{SCRATCH}{_HOST}-{os.getpid()}-"
                                             f"{len(self.scratch)}")
            os.makedirs(folder)
            where = os.path.join(folder, real.name)
        self.scratch.append(folder)
        self.outputs.append(where)
        return where

    def remove(self) -> None:
        for folder in self.scratch:
            if storage.is_remote(folder):
                storage.RemotePath(folder, storage.options_for(folder)).rmtree()
            else:
                shutil.rmtree(folder, ignore_errors=True)

    def in_output(self, url: str) -> bool:
        return any(_within(url, o) for o in self.outputs) and ".emarray-progress" not in url

    # -- the estimate ----------------------------------------------------------------------
    def result(self) -> Estimate:
        total = time.perf_counter() - self.started
        fixed = max(0.0, total - self.sampling_seconds)
        r = self.runner or {"scheduler": "threads", "workers": 1, "threads": 1,
                            "base": self.base_memory, "slurm": None}
        seconds = fixed + sum(s.seconds for s in self.stages)
        block = max((s.block_memory for s in self.stages), default=0)
        memory = int(r["base"] + r["threads"] * block)
        local = r["scheduler"] in ("threads", "synchronous")  # the workers are this process
        if local and self.peak[0] > memory:
            memory = self.peak[0]
        from ..chunk_cache import CACHE  # it fills up to its size over a whole run
        cached = sum(self.cached.values())
        memory += max(0, min(CACHE.capacity, cached) -
                      (self.peak[1] if local and self.peak[0] >= memory else 0))
        # a cache that evicts leaves some of the chunks it dropped in the allocator's arenas
        # (seen: smooth of a 1 GiB volume with a 256 MiB cache peaked at 459-544 MiB over four
        # runs, 357 counted without them): half its size again
        memory += min(CACHE.capacity, max(0, cached - CACHE.capacity)) // 2
        read = float(sum(s.read_bytes for s in self.stages))
        written: dict[str, float] = {}
        for s in self.stages:
            for url, b in s.written.items():
                written[url] = written.get(url, 0.0) + b
        stored_read = None
        if self.input_bytes:
            decoded = sum(d for d, _ in self.input_bytes.values())
            stored = sum(b for _, b in self.input_bytes.values())
            stored_read = read * stored / decoded if decoded else None
        out_bytes = sum(b for u, b in written.items() if self.in_output(u)) if written else None
        slurm = None
        if r["scheduler"] == "slurm" and r["slurm"]:
            procs = int(r["slurm"].get("processes") or 1)
            slurm = {"walltime": walltime(seconds * SLURM_TIME_MARGIN),
                     "memory": f"{math.ceil(memory * procs * SLURM_MEMORY_MARGIN / 1e9)}GB",
                     "processes": procs}
        return Estimate(self.operator, r["scheduler"], r["workers"], r["threads"], seconds,
                        fixed, memory, r["base"], read, stored_read, float(sum(written.values())),
                        out_bytes, list(self.stages), list(self.notes), slurm)


def _remove_stale(real: Path) -> None:
    """Remove the scratch folders an estimate of ``real`` left when it was killed (named by a
    process of this machine that is gone)."""
    for folder in real.parent.glob(f".{real.name}{SCRATCH}*"):
        host, _, rest = folder.name[len(f".{real.name}{SCRATCH}"):].rpartition("-")[0] \
            .rpartition("-")
        pid = rest
        if host != _HOST or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def walltime(seconds: float) -> str:
    """A SLURM walltime (HH:MM:SS) of at least ``seconds``, in whole minutes, 10 at least."""
    minutes = max(10, math.ceil(seconds / 60))
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def _within(path: str, folder: str) -> bool:
    p, f = path.rstrip("/"), folder.rstrip("/")
    return p == f or p.startswith(f + "/")


_SESSION: ContextVar[Session | None] = ContextVar("emarray_estimate", default=None)


def current() -> Session | None:
    """The estimate being made in this context (None when the job runs for real)."""
    return _SESSION.get()


@contextlib.contextmanager
def estimating(operator: str) -> Iterator[Session]:
    """Make an estimate within (a session already open is used: a recipe's steps)."""
    open_ = _SESSION.get()
    if open_ is not None:
        yield open_
        return
    session = Session(operator)
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)
        session.remove()


def estimate_call(op: Any, fn: Any, bound: Any) -> Any:
    """Call the operator ``op``'s function ``fn`` with its arguments ``bound`` as an estimate:
    its output goes to a scratch folder beside the one given, its stages run a sample. Returns
    the :class:`Estimate` (within a recipe's estimate: what the function returns)."""
    from ..errors import InvalidArgumentError
    out = op.output
    nested = current()
    if out is not None and out.kind == "inplace":
        target = bound.arguments.get(out.name)
        where = os.fspath(getattr(target, "url", target) or "")
        if nested is None or not any(_within(where, s) for s in nested.scratch):
            raise InvalidArgumentError(
                f"{op.name} writes into its input, which --estimate never touches; estimate "
                "it on a copy of the input")
    with estimating(op.name) as session:
        dst = op.path_output
        if dst is not None and bound.arguments.get(dst.name) is not None:
            bound.arguments[dst.name] = session.scratch_for(bound.arguments[dst.name])
        if nested:
            return fn(*bound.args, **bound.kwargs)
        try:
            fn(*bound.args, **bound.kwargs)
        except Exception as exc:
            if not session.stages:
                raise
            session.notes.append(
                f"{op.name} stopped after its sampled stages ({type(exc).__name__}: "
                f"{str(exc)[:200]}); the estimate is of what ran")
        if not session.stages:
            raise InvalidArgumentError(
                f"{op.name} ran no stage of blocks through the engine: nothing to estimate")
        return session.result()


# -- sampling a stage ------------------------------------------------------------------------
def spread(n: int, k: int) -> list[int]:
    """``k`` block indices out of ``n``, evenly spread (the same for the same n and k).

    >>> spread(100, 4), spread(3, 5)
    ([12, 37, 62, 87], [0, 1, 2])
    """
    if k >= n:
        return list(range(n))
    return [int((j + 0.5) * n / k) for j in range(k)]


def spread_order(n: int, k: int) -> list[int]:
    """:func:`spread`'s positions in an order whose every start is spread too (the bits of
    the rank reversed: the middle, the quarters, the eighths...).

    >>> spread_order(80, 8)
    [5, 45, 25, 65, 15, 55, 35, 75]
    """
    picks = spread(n, k)
    bits = max(1, (len(picks) - 1).bit_length())
    return [picks[j] for j in sorted(range(len(picks)),
                                     key=lambda j: int(f"{j:0{bits}b}"[::-1], 2))]


def _voxels(grid: Any, flats: Sequence[int]) -> int:
    """The voxels of the blocks of ``grid`` at the flat indices ``flats``."""
    counts = grid.counts
    return sum(math.prod(s.stop - s.start for s in
                         grid.region(tuple(int(k) for k in np.unravel_index(f, counts))))
               for f in flats)


#: seconds an estimate waits for the SLURM jobs it asked for before it samples
WAIT_FOR_WORKERS = 120.0


def sample_stage(session: Session, st: Any, runner: Any, retries: int,
                 run_block: Callable[..., Any]) -> Any:
    """Run a sample of the blocks of ``st`` (see the module's docs); return their summaries
    folded (what the stage's ``finalize`` gets). ``run_block`` is the engine's block runner."""
    from .fold import TreeFold
    if not session.runner:
        runner.wait_for_planned(WAIT_FOR_WORKERS)
        session.runner = _runner_shape(runner, session.base_memory)
    n = len(st.grid)
    counts = st.grid.counts
    threads = max(1, runner.n_workers())
    again = session.positions.get(n)  # a grid sampled before: the same blocks, no others
    order = again if again is not None else spread_order(n, min(n, MAX_SAMPLE))
    fold = TreeFold(st.combine) if st.combine is not None else None
    before = _written_bytes(st)

    def run_round(flats: list[int]) -> float:
        t0 = time.perf_counter()
        idx = [tuple(int(k) for k in np.unravel_index(f, counts)) for f in flats]

        def take(i: int, value: Any) -> None:
            if fold is not None:
                fold.add(value)
        shown, runner.progress = runner.progress, False  # a sample shows no progress
        try:
            runner.run([(run_block, (st, i)) for i in idx], total=len(idx), retries=retries,
                       on_result=take, name=lambda i: f"block {idx[i]} of {st.name}")
        finally:
            runner.progress = shown
        return time.perf_counter() - t0

    from ..chunk_cache import CACHE
    first = order[:threads]
    _reset_peak()
    t_first = run_round(first)
    peak = (_peak_rss(), CACHE.nbytes)  # before the cache is warmed out of order
    measured: list[int] = []
    t_measured = t_warm = t_decoding = 0.0
    decodes = chunks = 0
    while len(first) + len(measured) < len(order) and (
            again is not None or len(measured) < MIN_MEASURED or t_measured < MIN_SECONDS):
        at = len(first) + len(measured)  # rounds that double: few ends of rounds to wait at
        batch = order[at:at + max(2 * threads, MIN_MEASURED - len(measured), len(measured))]
        t0 = time.perf_counter()
        took, n_decoded, n_chunks = _warm_cache(session, st, batch)
        t_warm += time.perf_counter() - t0
        t_decoding, decodes, chunks = t_decoding + took, decodes + n_decoded, max(chunks, n_chunks)
        t_measured += run_round(batch)
        measured += batch
    decode = chunks * t_decoding / decodes if decodes else 0.0  # one decode a chunk
    if not decodes:  # no chunk cache churn: the rounds' peak is a worker's, as in a run
        peak = (_peak_rss(), CACHE.nbytes)
    if peak[0] > session.peak[0]:
        session.peak = peak
    picks = first + measured
    session.positions[n] = picks
    memory, t_memory = _block_memory(st, measured or first, run_block)
    session.sampling_seconds += t_first + t_warm + t_measured + t_memory
    total = math.prod(st.grid.shape)
    done = _voxels(st.grid, picks)
    seconds = t_first
    if measured:  # the first round, then the other voxels at the measured round's rate
        rate = _voxels(st.grid, measured) / max(t_measured, 1e-9)
        seconds += (total - _voxels(st.grid, first)) / rate + decode / threads
    written = {}
    if done:
        for url, b in _written_bytes(st).items():
            written[url] = (b - before.get(url, 0)) * total / done
    from ..speaking import current_step
    step = current_step()
    session.stages.append(StageCost(f"{step}: {st.name}" if step else st.name, n, len(picks),
                                    seconds, memory, read_bytes(st), written))
    return fold.result() if fold is not None else None


def _warm_cache(session: Session, st: Any, flats: list[int]) -> tuple[float, int, int]:
    """Decode into the chunk cache what the reads of the blocks ``flats`` touch, as the blocks
    before them would have in a whole run (in C order, a block finds its neighbours' chunks
    decoded): the measured round then pays no decode, and the whole run pays one decode a
    chunk of each volume read through the cache. Returns the seconds those decodes took, how
    many they were, and how many chunks the volumes read through the cache have."""
    from ..chunk_cache import CACHE
    seconds, decodes, chunks = 0.0, 0, 0
    counts = st.grid.counts
    regions = [st.grid.region(tuple(int(k) for k in np.unravel_index(f, counts))) for f in flats]
    for r in st.reads:
        if r.lazy or not CACHE.capacity or not hasattr(r.volume, "block_shape") or not regions:
            continue
        if not any(_cuts(r, region) for region in regions):
            continue  # whole chunks: not read through the cache, nothing to warm
        misses, t0 = CACHE.misses, time.perf_counter()
        for region in regions:
            r.read(region)
        if CACHE.misses > misses:  # a read through the cache (a halo)
            seconds += time.perf_counter() - t0
            decodes += CACHE.misses - misses
            chunks += math.prod(-(-n // b) for n, b in zip(r.volume.shape, r.volume.block_shape))
            session.cached[r.volume.url] = math.prod(r.volume.shape) * \
                np.dtype(r.volume.dtype).itemsize
    return seconds, decodes, chunks


def _cuts(r: Any, region: Any) -> bool:
    """Whether the read ``r`` of a block's ``region`` cuts through its volume's chunks (a halo:
    read through the chunk cache, on local disk)."""
    v = r.volume
    if "://" in str(getattr(v, "url", "")):
        return False
    want = r.clipped(r.region(region))
    return any(s.start % b or (s.stop % b and s.stop != n)
               for s, b, n in zip(want, v.block_shape, v.shape))


def _block_memory(st: Any, flats: list[int],
                  run_block: Callable[..., Any]) -> tuple[int, float]:
    """The most memory one block of ``st`` took, run here one at a time, and the time it took."""
    t0 = time.perf_counter()
    peak = 0
    counts = st.grid.counts
    for f in flats[:MEMORY_BLOCKS]:
        index = tuple(int(k) for k in np.unravel_index(f, counts))
        _reset_peak()
        rss0 = _rss()
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        traced0 = tracemalloc.get_traced_memory()[0]
        try:
            run_block(st, index)
            traced = tracemalloc.get_traced_memory()[1] - traced0
        finally:
            if not tracing:
                tracemalloc.stop()
        peak = max(peak, traced, _peak_rss() - rss0)
    return peak, time.perf_counter() - t0


def _written_bytes(st: Any) -> dict[str, int]:
    """Stored bytes of each volume ``st`` writes, now."""
    out = {}
    for w in st.writes:
        listing = getattr(w.volume, "listing", None)
        if listing is not None:
            out[w.volume.url] = int(listing()["bytes"] or 0)
    return out


def read_bytes(st: Any) -> int:
    """Decompressed bytes every block of ``st`` reads together (halos counted once a block,
    clipped to the volumes; a product over the axes, not a sum over the blocks)."""
    from .invalidate import SpatialAxes, axis_reads
    total = 0
    for r in st.reads:
        if r.lazy:  # read only by some blocks: not counted
            continue
        offset = 1 if r.channels == "drop" else 0
        axes = SpatialAxes(st.grid, offset)
        shape = r.volume.shape[1:] if r.channels == "all" else r.volume.shape
        voxels = 1
        for axis in range(len(axes.counts)):
            starts, stops = axis_reads(r, axis, axes)
            voxels *= int((np.minimum(stops, shape[axis]) - np.maximum(starts, 0)).clip(0).sum())
        if offset:
            voxels *= st.grid.counts[0]
        if r.channels == "all":
            voxels *= r.volume.shape[0]
        total += voxels * np.dtype(r.volume.dtype).itemsize
    return total


def note_inputs(session: Session, inputs: Sequence[Any], stored: dict[str, tuple[int, int]]
                ) -> None:
    """Remember how well each input volume is compressed: ``stored`` (input key -> chunks
    stored, their bytes, as the job's record of its inputs found them)."""
    from .invalidate import volume_key
    for v in inputs:
        count, nbytes = stored.get(volume_key(v), (0, 0))
        if count:
            chunk = math.prod(v.block_shape) * np.dtype(v.dtype).itemsize
            session.input_bytes[volume_key(v)] = (float(count * chunk), float(nbytes))


def _runner_shape(runner: Any, base: int) -> dict[str, Any]:
    """The scheduler, worker threads, threads a worker process, and a worker's memory to start."""
    s = runner.scheduler
    name = s if isinstance(s, str) else "a dask cluster"
    workers = max(1, runner.n_workers())
    threads = workers if name in ("threads", "synchronous") else 1
    client = getattr(runner, "client", None)
    if client is not None:
        info = client.scheduler_info().get("workers", {})
        threads = max([int(w.get("nthreads", 1)) for w in info.values()] or [1])
        with contextlib.suppress(Exception):
            found = client.run(_rss)
            base = int(max(found.values())) if found else base
    if name == "synchronous":
        threads = workers = 1
    return {"scheduler": name, "workers": workers, "threads": threads, "base": base,
            "slurm": getattr(runner, "slurm", None)}


def _rss() -> int:
    return _status("VmRSS")


def _peak_rss() -> int:
    return _status("VmHWM")


def _status(field_name: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _reset_peak() -> None:
    """Let the peak resident memory (VmHWM) start again from now (Linux)."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
