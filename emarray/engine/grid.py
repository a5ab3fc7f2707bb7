"""The block grid: which regions the engine processes, and whether writes stay inside chunks."""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import ChunkAlignmentError

Region = tuple[slice, ...]


@dataclass(frozen=True)
class BlockGrid:
    """A regular grid of blocks over ``shape``; edge blocks are clipped to the array."""

    shape: tuple[int, ...]
    block: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block))

    def __len__(self) -> int:
        n = 1
        for c in self.counts:
            n *= c
        return n

    def indices(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*(range(c) for c in self.counts))

    def region(self, index: Sequence[int]) -> Region:
        return tuple(slice(i * b, min((i + 1) * b, s))
                     for i, b, s in zip(index, self.block, self.shape))


def check_aligned(grid: BlockGrid, write_unit: Sequence[int], what: str = "output") -> None:
    """Refuse a grid whose blocks would share a storage chunk/shard of the output.

    Every block boundary must fall on a boundary of the output's write unit (or the array's
    end), so that each storage object is written by exactly one task.
    """
    for axis, (b, w, s) in enumerate(zip(grid.block, write_unit, grid.shape)):
        if b % w and b < s:
            raise ChunkAlignmentError(
                f"blocks of {tuple(grid.block)} voxels would straddle the {what}'s storage "
                f"chunks/shards of {tuple(write_unit)} along axis {axis}: two tasks would write "
                f"one chunk. Choose {what} chunks that divide the processing blocks")


#: the fewest voxels a block of an operator that reads a halo is grown to (whole write units)
MIN_BLOCK_VOXELS = 1024


def work_block(shape: Sequence[int], unit: Sequence[int], least: Sequence[int] | int = 1,
               min_voxels: int = MIN_BLOCK_VOXELS) -> tuple[int, ...]:
    """The processing block of an operator over ``shape`` whose output is written in ``unit``
    (chunks or shards): whole units, at least ``least`` voxels along each axis (an operator
    that reads a halo asks for a multiple of it, so that a block does not read many times its
    own voxels) and at least ``min_voxels`` (else the axis with the smallest block is doubled),
    capped at the shape. Storage chunks of usual sizes are processed as they are; tiny ones
    (1,1,1) are not each a task reading a halo many times their size. The block depends on
    the shape, the unit and ``least`` only: chunks of 1 voxel and chunks of the block's size
    give the same blocks, so the same result.

    >>> work_block((100, 100, 100), (1, 1, 1), (8, 32, 32))
    (8, 32, 32)
    >>> work_block((100, 100, 100), (1, 1, 1)), work_block((100, 100, 100), (64, 64, 64), 8)
    ((8, 8, 16), (64, 64, 64))
    """
    lows = tuple(least) if isinstance(least, Sequence) else (least,) * len(shape)
    block = []
    for n, u, low in zip(shape, unit, lows):
        b = u * -(-max(low, 1) // u)
        block.append(n if b >= n else b)
    while _count(block) < min_voxels:
        growable = [a for a in range(len(block)) if block[a] < shape[a]]
        if not growable:
            break
        a = min(growable, key=lambda k: (block[k], -k))  # ties: the last axis (x) first
        block[a] = shape[a] if 2 * block[a] >= shape[a] else 2 * block[a]
    return tuple(block)


def _count(block: Sequence[int]) -> int:
    n = 1
    for b in block:
        n *= b
    return n
