"""CUDA labelling of one block (``kernels/label.cu``); cc3d is its twin."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.components import foreground
from .elementwise import THREADS, launch_grid
from ..kernel_table import ccl_init_name, ccl_merge_name
from .modules import get_kernel
from .streaming import whole_block

NONE = 0xFFFFFFFF


def label_device(v: Any, connectivity: int, stream: Any = None) -> Any:
    """Labels (uint32, 1..n in C order of each component's first voxel) of the 3-D device
    array ``v``: voxels of equal nonzero value that touch are one component."""
    import cupy
    v = cupy.ascontiguousarray(v)
    n = int(v.size)
    if n >= NONE:
        raise ValueError(f"a block of {n} voxels is too large for 32-bit labels")
    parent = cupy.empty(n, cupy.uint32)
    if n == 0:
        return parent.reshape(v.shape)
    nz, ny, nx = (np.int64(s) for s in v.shape)
    grid, block = launch_grid(n), (THREADS,)
    get_kernel("label.cu", ccl_init_name(v.dtype))(grid, block, (v, parent, np.int64(n)),
                                                   stream=stream)
    get_kernel("label.cu", ccl_merge_name(v.dtype, connectivity))(
        grid, block, (v, parent, nz, ny, nx), stream=stream)
    get_kernel("label.cu", "emarray_ccl_flatten")(grid, block, (parent, np.int64(n)),
                                                  stream=stream)
    fg = parent != NONE
    roots = fg & (parent == cupy.arange(n, dtype=cupy.uint32))
    rank = cupy.cumsum(roots, dtype=cupy.uint32)  # at a root: its number among the roots
    out = cupy.where(fg, rank[cupy.where(fg, parent, 0)], 0).astype(cupy.uint32)
    return out.reshape(v.shape)


def label_block_cuda(block: np.ndarray, *, connectivity: int, binary: bool, background: Any,
                     memory_limit: Any = None) -> np.ndarray:
    """CUDA twin of :func:`emarray.ops.components.label_block_cpu` (cc3d): the same labels."""
    import cupy
    fg = np.ascontiguousarray(foreground(block, binary=binary, background=background))
    return whole_block(lambda: cupy.asnumpy(label_device(cupy.asarray(fg), connectivity)),
                       memory_limit, f"labelling a block of {block.shape}")
