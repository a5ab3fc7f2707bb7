"""CUDA distance transform: ``cupyx.scipy.ndimage.distance_transform_edt`` on one grown block,
the twin of :func:`emarray.ops.distance.distance_block_cpu` (within float32 rounding)."""
from __future__ import annotations

from typing import Any

import numpy as np


def distance_block_cuda(mask: np.ndarray, *, sampling: tuple[float, ...], signed: bool,
                        cap: float, memory_limit: Any = None) -> np.ndarray:
    import cupy
    from cupyx.scipy import ndimage

    from .streaming import apply_memory_limit
    apply_memory_limit(memory_limit)
    m = cupy.asarray(mask)
    if not bool((~m).any()):  # no background: cupyx, as SciPy, measures to outside the array
        out = cupy.full(m.shape, cap, cupy.float32)
    else:
        out = ndimage.distance_transform_edt(m, sampling=sampling, float64_distances=False)
        out = cupy.minimum(out.astype(cupy.float32), cupy.float32(cap))
    if signed:
        if bool(m.any()):
            outside = ndimage.distance_transform_edt(~m, sampling=sampling,
                                                     float64_distances=False)
            out -= cupy.minimum(outside.astype(cupy.float32), cupy.float32(cap))
        else:
            out -= cupy.float32(cap)
    return cupy.asnumpy(out)
