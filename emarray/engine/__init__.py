"""The chunked engine: block grids, schedulers, done-markers and the blockwise runner."""
from __future__ import annotations

from .grid import BlockGrid, check_aligned
from .run import check_same_shape, prepare_output, reduce_blocks, store_blocks
from .schedulers import SCHEDULERS, Runner, check_scheduler

__all__ = ["BlockGrid", "Runner", "SCHEDULERS", "check_aligned", "check_same_shape",
           "check_scheduler", "prepare_output", "reduce_blocks", "store_blocks"]
