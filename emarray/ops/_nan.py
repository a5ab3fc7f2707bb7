"""NaN in the maps of the segmentation operators: one rule, one warning per job.

NaN is the highest boundary: nothing is inside, seeded, flooded through or merged across
there before every finite value has been. ``distance`` never counts a NaN voxel as foreground
(``src > t`` and ``src < t`` are both false for NaN: with ``--below``, NaN is boundary);
``watershed`` floods NaN voxels after every finite value and never seeds there;
``agglomerate`` gives a contact that touches a NaN voxel the value +inf, so the two segments it
joins never merge, at any threshold.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: what each operator does with NaN voxels, as its warning says it
NAN_RULE = {
    "distance": "counts them as background, never foreground (NaN is neither above nor below "
                "any threshold; with --below, NaN is boundary)",
    "watershed": "treats NaN as the highest boundary: never a seed, flooded after every finite "
                 "value",
    "agglomerate": "treats NaN as the highest boundary: a contact touching one counts as +inf, "
                   "so the segments it joins never merge, at any threshold",
}


def count_nan(block: np.ndarray, own: tuple[slice, ...], channels: bool = False) -> int:
    """NaN voxels of a block's own region (``channels``: a voxel with NaN in any channel of
    a leading channel axis counts once); 0 for integer data."""
    if block.dtype.kind != "f":
        return 0
    mine = block[(slice(None),) + own] if channels else block[own]
    nan = np.isnan(mine)
    return int((nan.any(axis=0) if channels else nan).sum())


def warn_nan(volume: Any, count: int, op: str) -> None:
    """One warning line for the job when ``volume`` held NaN voxels: how many, and the rule."""
    if count:
        import warnings

        from ..errors import EmarrayWarning
        warnings.warn(f"{volume.url} holds {count:,} NaN voxels: {op} {NAN_RULE[op]}",
                      EmarrayWarning, stacklevel=3)
