"""Per-block CUDA functions of emarray's operators (the twins of the CPU ones in emarray/ops)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .elementwise import rescale_u8_device, threshold_device
from .streaming import run_steps


def threshold_block_cuda(block: np.ndarray, *, op: str, value: Any, region: Any = None,
                         memory_limit: Any = None) -> np.ndarray:
    """CUDA twin of :func:`emarray.ops.threshold.threshold_block_cpu`."""
    if op in ("all", "none"):  # the answer does not depend on the data: no device needed
        from ..ops.threshold import threshold_block_cpu
        return threshold_block_cpu(block, op=op, value=value)
    return run_steps(block, [lambda d, s: threshold_device(d, op, value, stream=s)], np.uint8,
                     memory_limit=memory_limit, region=region)


def rescale_block_cuda(block: np.ndarray, *, lo: float, hi: float, region: Any = None,
                       memory_limit: Any = None) -> np.ndarray:
    """CUDA twin of :func:`emarray.ops.convert.rescale_block_cpu`."""
    return run_steps(block, [lambda d, s: rescale_u8_device(d, lo, hi, stream=s)], np.uint8,
                     memory_limit=memory_limit, region=region)
