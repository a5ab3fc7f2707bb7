"""The chunked engine: block grids, schedulers, safe outputs, done-markers and the runner."""
from __future__ import annotations

from .grid import BlockGrid, check_aligned
from .output import Output, open_output
from .run import reduce_blocks, store_blocks
from .schedulers import SCHEDULERS, Runner, check_scheduler

__all__ = ["BlockGrid", "Output", "Runner", "SCHEDULERS", "check_aligned", "check_scheduler",
           "open_output", "reduce_blocks", "store_blocks"]
