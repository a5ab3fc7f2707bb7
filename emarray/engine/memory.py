"""Device memory caps, as users give them (``--gpu-memory-limit 0.5``, ``8GB``): parsed and
checked on the driver before any work, shared out among the processes of one device.

Pure Python: the CPU path checks these values without importing the CUDA backend.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError

#: Default device memory cap: this fraction of the card's memory.
DEFAULT_FRACTION = 0.5
MIN_LIMIT = 64 * 2**20    # the smallest device memory cap accepted


def parse_memory_limit(limit: Any) -> float | int | None:
    """``None``, a fraction in (0, 1], or a size: bytes, or a string as dask writes them.

    Sizes follow ``dask.utils.parse_bytes``: ``"8GB"`` is 8e9 bytes, ``"8GiB"`` 8 * 2**30. A
    bare number up to 1 is a fraction of the card; a size under :data:`MIN_LIMIT` is refused.

    >>> parse_memory_limit("8GB"), parse_memory_limit("0.25"), parse_memory_limit("2GiB")
    (8000000000, 0.25, 2147483648)
    """
    if limit is None:
        return None
    raw = limit
    value: float
    if isinstance(limit, str):
        s = limit.strip()
        try:
            value = float(s)
        except ValueError:
            from dask.utils import parse_bytes
            try:
                value = float(parse_bytes(s))
            except (ValueError, TypeError):
                raise InvalidArgumentError(
                    f"gpu memory limit must be a fraction (0.5) or a size (8GB, 8GiB), got "
                    f"{raw!r}") from None
            if value < MIN_LIMIT:
                raise InvalidArgumentError(
                    f"gpu memory limit {raw!r} is {int(value)} bytes; give at least 64MiB"
                ) from None
            return int(value)
    elif isinstance(limit, (int, float, np.integer, np.floating)) and not isinstance(limit, bool):
        value = float(limit)
    else:
        raise InvalidArgumentError(
            f"gpu memory limit must be a positive fraction or size, got {raw!r}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(
            f"gpu memory limit must be a positive fraction or size, got {raw!r}")
    if value <= 1:
        return value
    if value != int(value) or value < MIN_LIMIT:
        raise InvalidArgumentError(
            f"gpu memory limit {raw!r} is neither a fraction up to 1 nor a size of at least 64MiB")
    return int(value)


def split_memory_limit(limit: float | int | None, processes: int) -> float | int:
    """The share of a device memory cap for each of ``processes`` sharing one GPU.

    >>> split_memory_limit(None, 4), split_memory_limit(8 * 2**30, 2)
    (0.125, 4294967296)
    """
    limit = DEFAULT_FRACTION if limit is None else limit
    n = max(1, int(processes))
    return limit / n if isinstance(limit, float) else int(limit) // n
