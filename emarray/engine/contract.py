"""The block contract: what one block of a stage reads, computes and writes.

A stage runs over a :class:`~emarray.engine.grid.BlockGrid`. Each block has a **write region**
(the grid's region, aligned to every output's write unit) and, per input, a **read region**
derived by a :class:`Read`: the same region, grown by a halo, scaled by a factor, with a
channel axis added or dropped. Reads past the volume edge are filled by the read's boundary
mode. The block function gets a :class:`BlockContext` and one array per read, and returns one
array per :class:`Write` (the engine crops a halo off and refuses a wrong shape or dtype) or,
for a stage without writes, a summary that the stage's ``combine`` folds.

Anchors: daisy's ``Task(read_roi, write_roi, process_function)``, dask's
``map_overlap(depth, boundary)``, gunpowder's request/provide.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .grid import BlockGrid, Region, check_aligned

#: boundary modes for reads past the volume edge (``reflect`` is SciPy's: d c b a | a b c d)
BOUNDARIES = ("reflect", "nearest", "constant", "none")
CHANNELS = ("same", "all", "drop")
#: most blocks a stage may have (its done-bitmap then takes 256 MiB on the driver)
MAX_BLOCKS = 2**31


def per_axis(value: Any, ndim: int, what: str, kind: Callable = int) -> tuple:
    """One value per axis from a scalar or a sequence (dask's ``coerce_depth``, in short)."""
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim
    if len(vals) != ndim:
        raise InvalidArgumentError(f"{what} needs {ndim} values, got {value!r}")
    return tuple(kind(v) for v in vals)


@dataclass(frozen=True)
class Read:
    """How a block reads one input (``volume``: anything with ``shape``, ``dtype``, ``read``).

    The read region of a block with write region ``[a, b)`` along an axis is
    ``[floor(a * scale) - halo, ceil(b * scale) + halo)`` (``sides="high"``: no halo below
    ``a``, for a block that only needs the first voxels of the next one). ``boundary`` fills what lies outside
    the volume (``none``: the read is clipped to the volume and the array is smaller).
    ``channels``: ``all`` reads a leading channel axis the grid does not have, whole; ``drop``
    ignores the grid's leading (channel) axis for a volume without one. ``lazy``: the block
    gets a function that reads it, for an input a block reads only sometimes (it is declared
    all the same: a change of it redoes the blocks that may read it).
    """

    volume: Any
    halo: tuple[int, ...] | int = 0
    scale: tuple[Fraction, ...] | Fraction | int = 1
    boundary: str = "none"
    cval: float = 0.0
    channels: str = "same"
    sides: str = "both"
    lazy: bool = False

    def __post_init__(self) -> None:
        if self.boundary not in BOUNDARIES:
            raise InvalidArgumentError(
                f"boundary must be one of {', '.join(BOUNDARIES)}, got {self.boundary!r}")
        if self.channels not in CHANNELS:
            raise InvalidArgumentError(
                f"channels must be one of {', '.join(CHANNELS)}, got {self.channels!r}")
        if self.sides not in ("both", "high"):
            raise InvalidArgumentError(f"sides must be both or high, got {self.sides!r}")
        n = self.spatial_ndim
        halo = per_axis(self.halo, n, "halo")
        if any(h < 0 for h in halo):
            raise InvalidArgumentError(f"halo must be >= 0 on every axis, got {self.halo!r}")
        scale = per_axis(self.scale, n, "scale", Fraction)
        if any(s <= 0 for s in scale):
            raise InvalidArgumentError(f"scale must be > 0 on every axis, got {self.scale!r}")
        object.__setattr__(self, "halo", halo)
        object.__setattr__(self, "scale", scale)

    @property
    def spatial_ndim(self) -> int:
        nd = len(self.volume.shape)
        return nd - 1 if self.channels == "all" else nd

    def region(self, write: Region) -> Region:
        """The read region (in the input's coordinates; may reach past its edges)."""
        if self.channels == "drop":
            write = write[1:]
        out = []
        low = self.sides == "both"
        for w, h, f in zip(write, self.halo, self.scale):  # type: ignore[arg-type]
            out.append(slice(math.floor(w.start * f) - h * low, math.ceil(w.stop * f) + h))
        if self.channels == "all":
            out.insert(0, slice(0, self.volume.shape[0]))
        return tuple(out)

    def clipped(self, want: Region) -> Region:
        return tuple(slice(max(s.start, 0), min(s.stop, n))
                     for s, n in zip(want, self.volume.shape))

    def read(self, write: Region) -> tuple[np.ndarray, Region]:
        """Read this input for a block; returns the array and the region it covers."""
        want = self.region(write)
        have = self.clipped(want)
        if have == want or self.boundary == "none":
            return self.volume.read(have), have
        return read_padded(self.volume, want, self.boundary, self.cval), want


def source_index(i: np.ndarray, n: int, boundary: str) -> np.ndarray:
    """Where voxel ``i`` (possibly outside ``[0, n)``) comes from under ``boundary``."""
    if boundary == "nearest":
        return np.clip(i, 0, n - 1)
    m = np.mod(i, 2 * n)  # reflect: period 2n, mirrored about the edges
    return np.where(m < n, m, 2 * n - 1 - m)


def read_padded(volume: Any, want: Region, boundary: str, cval: float = 0.0) -> np.ndarray:
    """Read ``want`` from ``volume``, filling what lies outside it by ``boundary``.

    >>> class A:
    ...     shape, data = (3,), np.array([1, 2, 3])
    ...     def read(self, r): return self.data[r]
    >>> read_padded(A(), (slice(-2, 5),), "reflect").tolist()
    [2, 1, 1, 2, 3, 3, 2]
    """
    shape = volume.shape
    if boundary == "constant":
        out = np.full(tuple(s.stop - s.start for s in want), cval, dtype=volume.dtype)
        have = tuple(slice(max(s.start, 0), min(s.stop, n)) for s, n in zip(want, shape))
        if all(h.stop > h.start for h in have):
            inner = tuple(slice(h.start - w.start, h.stop - w.start) for h, w in zip(have, want))
            out[inner] = volume.read(have)
        return out
    idx = [source_index(np.arange(s.start, s.stop), n, boundary) for s, n in zip(want, shape)]
    hull = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    data = volume.read(hull)
    for axis, (i, h) in enumerate(zip(idx, hull)):  # only the axes that need it, one by one
        local = i - h.start
        if local.size == data.shape[axis] and bool((local == np.arange(local.size)).all()):
            continue
        data = np.take(data, local, axis=axis)
    return data


@dataclass(frozen=True)
class Write:
    """One output of a stage: ``volume`` and its write region, the grid region times ``scale``.

    ``channels="all"``: the output has a leading channel axis the grid does not have, and each
    block writes all of it (a network's output channels for a grid over space).
    """

    volume: Any
    scale: tuple[Fraction, ...] | Fraction | int = 1
    channels: str = "same"
    sides: str = "both"
    lazy: bool = False

    def __post_init__(self) -> None:
        if self.channels not in ("same", "all"):
            raise InvalidArgumentError(
                f"a write's channels must be 'same' or 'all', got {self.channels!r}")
        object.__setattr__(self, "scale", per_axis(self.scale, len(self.spatial_shape), "scale",
                                                   Fraction))

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        shape = tuple(self.volume.shape)
        return shape[1:] if self.channels == "all" else shape

    @property
    def spatial_unit(self) -> tuple[int, ...]:
        unit = tuple(self.volume.block_shape)
        return unit[1:] if self.channels == "all" else unit

    def region(self, write: Region) -> Region:
        out = tuple(slice(math.ceil(w.start * f), min(math.ceil(w.stop * f), n))
                    for w, f, n in zip(write, self.scale, self.spatial_shape))  # type: ignore[arg-type]
        return ((slice(0, self.volume.shape[0]),) + out) if self.channels == "all" else out


@dataclass
class BlockContext:
    """What a block function knows about its block.

    ``region`` is the write region in the grid's coordinates, ``reads`` the region each input
    array covers, ``writes`` each output's write region, ``state`` the stage's per-worker setup
    result, ``given`` what the previous stage's ``finalize`` returned.
    """

    index: tuple[int, ...]
    region: Region
    reads: list[Region]
    writes: list[Region]
    state: Any = None
    given: Any = None


#: what a stage runs for each block: ``fn(ctx, *arrays)`` with a :class:`BlockContext` and one
#: array per :class:`Read`; it returns one array per :class:`Write` (a tuple when several, the
#: stage's summary last when it also folds one), or the block's summary when it writes nothing
BlockFunction = Callable[..., Any]


@dataclass
class Stage:
    """One pass over a grid of blocks.

    ``fn(ctx, *arrays)`` returns one array per write (a tuple when there are several), or a
    summary when the stage writes nothing; a stage with both writes and ``combine`` returns
    its arrays and then its summary, in one tuple. Summaries are folded with ``combine`` (associative
    and commutative) and turned by ``finalize`` (on the driver) into what the next stage gets
    as ``ctx.given`` and what the job returns. ``setup()`` runs once per worker process (and
    device) and its result reaches every block there as ``ctx.state``; ``setup_key`` names it
    in that cache. ``work(index)`` is how many ``unit``s a block counts for in the progress
    display (say, the patches a network runs on), when not one block each.
    """

    name: str
    fn: BlockFunction
    grid: BlockGrid
    reads: Sequence[Read] = ()
    writes: Sequence[Write] = ()
    combine: Callable[[Any, Any], Any] | None = None
    finalize: Callable[[Any], Any] | None = None
    setup: Callable[[], Any] | None = None
    setup_key: str = ""
    given: Any = field(default=None, repr=False)
    work: Callable[[tuple[int, ...]], int] | None = field(default=None, repr=False)
    unit: str = "block"
    job: str = field(default="", repr=False)  # where the job's progress is kept (set by the engine)
    #: the job's test modes (emarray.engine.faults), read once by the engine when it starts
    faults: Any = field(default=None, repr=False)

    def check(self) -> None:
        """Refuse a grid whose blocks would share an output's storage chunk or shard, or one
        of more blocks than the driver keeps track of."""
        if len(self.grid) > MAX_BLOCKS:
            raise InvalidArgumentError(
                f"stage {self.name!r} would run {len(self.grid):,} blocks of "
                f"{','.join(map(str, self.grid.block))} voxels; at most {MAX_BLOCKS:,} are "
                "tracked: store the volume in larger chunks or shards")
        for w in self.writes:
            block = tuple(max(1, math.ceil(b * f)) if b < s else n for b, f, s, n in
                          zip(self.grid.block, w.scale, self.grid.shape,  # type: ignore[arg-type]
                              w.spatial_shape))
            check_aligned(BlockGrid(w.spatial_shape, block), w.spatial_unit)
        if not self.writes and self.combine is None:
            raise InvalidArgumentError(f"stage {self.name!r} writes nothing and combines nothing")


@dataclass
class LaterStage:
    """A stage that can only be built once the stage before it has finished: ``build(given)``
    gets that stage's result (a global step: say, an output dtype or a lookup table that
    depends on counts over the whole volume). ``name`` is the stage's name, known up front so
    that a resumed job can skip it when it finished."""

    name: str
    build: Callable[[Any], Stage]
