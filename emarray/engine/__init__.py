"""The chunked engine: the block contract, stages, schedulers, safe outputs and progress."""
from __future__ import annotations

from .checkpoint import Checkpoint
from .contract import BOUNDARIES, BlockContext, LaterStage, Read, Stage, Write, read_padded
from .grid import BlockGrid, check_aligned, work_block
from .options import RunOptions
from .output import Output, open_output
from .fold import TreeFold
from .stages import (mark_complete, reduce_blocks, run_block, run_job, run_stages,
                  worker_state)
from .schedulers import SCHEDULERS, Runner, check_scheduler

__all__ = ["BOUNDARIES", "BlockContext", "BlockGrid", "Checkpoint", "LaterStage", "Output", "Read",
           "RunOptions", "Runner", "SCHEDULERS", "Stage", "TreeFold", "Write", "check_aligned",
           "check_scheduler", "mark_complete", "open_output", "read_padded", "reduce_blocks",
           "run_block",
           "run_job", "run_stages", "work_block", "worker_state"]
