"""Chunk-aware training of the zoo's 3D U-Net on volumes that stay in zarr.

:func:`train` (``emarray train CONFIG.yaml``) samples patches from zarr through a decoded-chunk
cache (:mod:`.sampler`), augments raw and labels with one random draw (:mod:`.augment`), trains
with BCE/Dice/OHEM losses (:mod:`.losses`), validates with ``predict`` + ``sweep``, stops early,
and resumes exactly (:mod:`.loop`, :mod:`.run`). The config is described in :mod:`.config`.
"""
from __future__ import annotations

from .config import DEFAULTS, load_config
from .loop import TrainResult, resolve_config, train

__all__ = ["train", "TrainResult", "load_config", "resolve_config", "DEFAULTS"]
