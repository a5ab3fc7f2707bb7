"""Every kernel template instantiation emarray uses: one table for NVRTC and for the nvcc check.

Pure Python (no CuPy), so the compile test and the wheel can use it on machines without a GPU.
"""
from __future__ import annotations

import numpy as np

#: NumPy dtype -> the C type the kernels are instantiated with.
CTYPES: dict[np.dtype, str] = {
    np.dtype(np.uint8): "unsigned char", np.dtype(np.int8): "signed char",
    np.dtype(np.uint16): "unsigned short", np.dtype(np.int16): "short",
    np.dtype(np.uint32): "unsigned int", np.dtype(np.int32): "int",
    np.dtype(np.int64): "long long", np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}
THRESHOLD_OPS = {"gt": 0, "ge": 1, "lt": 2, "le": 3}
THREADS = 256  # threads per block of every launch


def launch_blocks(n: int, sms: int, threads: int = THREADS) -> tuple[int]:
    """The grid of a grid-stride launch over ``n`` items: enough blocks to fill ``sms``
    multiprocessors (32 each), never more than there are items for.

    >>> launch_blocks(1000, 132), launch_blocks(10**9, 132), launch_blocks(0, 4)
    ((4,), (4224,), (1,))
    """
    return (max(1, min(-(-n // threads), sms * 32)),)


def threshold_name(dtype, op: str) -> str:
    return f"emarray_threshold<{CTYPES[np.dtype(dtype)]}, {THRESHOLD_OPS[op]}>"


def rescale_name(dtype) -> str:
    return f"emarray_rescale_u8<{CTYPES[np.dtype(dtype)]}>"


HIST_BUCKET_DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
HIST_LEVEL_DTYPES = [np.dtype(np.uint8), np.dtype(np.uint16)]


def bucket_hist_name(dtype) -> str:
    return f"emarray_bucket_hist<{CTYPES[np.dtype(dtype)]}>"


def level_hist_name(dtype) -> str:
    return f"emarray_level_hist<{CTYPES[np.dtype(dtype)]}>"


#: smoothing reads any of these; its output (and every pass after the first) is float32
SMOOTH_DTYPES = [dt for dt in CTYPES if dt != np.dtype(np.float64)]


def smooth_name(dtype) -> str:
    return f"emarray_smooth_axis<{CTYPES[np.dtype(dtype)]}>"


#: pooling: (mode, z factor) per dtype; mean accumulates in double, mode counts in registers
POOL_MODES = {"mean": 0, "mode": 1}


def pool_name(dtype, mode: str, fz: int) -> str:
    return f"emarray_pool<{CTYPES[np.dtype(dtype)]}, {POOL_MODES[mode]}, {fz}>"


#: labelling reads the binary mask (uint8) or the label values of any integer dtype
LABEL_CTYPES: dict[np.dtype, str] = {
    **{dt: c for dt, c in CTYPES.items() if dt.kind in "ui"},
    np.dtype(np.uint64): "unsigned long long",
}
LABEL_CONNECTIVITY = (6, 18, 26)


def ccl_init_name(dtype) -> str:
    return f"emarray_ccl_init<{LABEL_CTYPES[np.dtype(dtype)]}>"


def ccl_merge_name(dtype, connectivity: int) -> str:
    return f"emarray_ccl_merge<{LABEL_CTYPES[np.dtype(dtype)]}, {int(connectivity)}>"


#: kernel family file -> every name expression compiled from it.
FAMILIES: dict[str, list[str]] = {
    "threshold.cu": [threshold_name(dt, op) for dt in CTYPES for op in THRESHOLD_OPS],
    "convert.cu": [rescale_name(dt) for dt in CTYPES if dt.kind == "f"],  # integers: exact steps
    "histogram.cu": [bucket_hist_name(dt) for dt in HIST_BUCKET_DTYPES]
    + [level_hist_name(dt) for dt in HIST_LEVEL_DTYPES],
    "smooth.cu": [smooth_name(dt) for dt in SMOOTH_DTYPES],
    "pool.cu": [pool_name(dt, m, fz) for dt in CTYPES for m in POOL_MODES for fz in (1, 2)],
    "label.cu": [ccl_init_name(dt) for dt in LABEL_CTYPES]
    + [ccl_merge_name(dt, c) for dt in LABEL_CTYPES for c in LABEL_CONNECTIVITY]
    + ["emarray_ccl_flatten"],
}
