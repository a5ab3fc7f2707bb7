"""emarray: out-of-core chunked array engine for electron-microscopy volumes.

Volumes live as zarr chunks; dask schedules them; each block runs a fast CPU path (or, with
CuPy, a CUDA kernel), so stacks far larger than RAM or GPU memory run with bounded memory.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, errors, models
from .export import export
from .info import info
from .ingest import ingest
from .engine import RunOptions
from .ops.rescale import rescale
from .ops.label import label
from .ops.match import match
from .ops.objects import objects
from .ops.predict import predict
from .ops.pyramid import pyramid
from .ops.smooth import smooth
from .ops.sweep import sweep
from .ops.threshold import threshold
from .ops.upsample import upsample
from .pipeline import run_pipeline
from .training import train
from .volume import Volume, create_volume, open_volume

try:
    __version__ = version("emarray")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

def __getattr__(name: str) -> object:
    """Any declared operator is ``emarray.NAME``, without an import here (see emarray.spec)."""
    from .spec import operators
    ops = operators()
    if name in ops and ops[name].call is not None:
        return ops[name].call
    raise AttributeError(f"module 'emarray' has no attribute {name!r}")


__all__ = ["RunOptions", "Volume", "create_volume", "datasets", "errors", "export", "info", "ingest",
           "label", "match", "models", "objects", "open_volume", "predict", "pyramid", "rescale",
           "run_pipeline", "smooth", "sweep", "threshold", "train", "upsample", "__version__"]
