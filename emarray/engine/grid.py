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
