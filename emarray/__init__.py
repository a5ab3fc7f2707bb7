"""emarray: out-of-core chunked array engine for electron-microscopy volumes.

Volumes live as zarr chunks; dask schedules them; each block runs a fast CPU path (or, with
CuPy, a CUDA kernel), so stacks far larger than RAM or GPU memory run with bounded memory.

Every declared operator (:mod:`emarray.spec`) is ``emarray.NAME`` — ``emarray.threshold``,
``emarray.label``, ``emarray.mesh``, ... — loaded when first used; the rest of the API (volumes,
run options, training, recipes) is imported here.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets as datasets, errors as errors, models as models
from .engine import RunOptions as RunOptions
from .info import info as info
from .pipeline import run_pipeline as run_pipeline
from .training import train as train
from .volume import Volume as Volume, create_volume as create_volume, open_volume as open_volume

try:
    __version__ = version("emarray")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

#: what the package holds besides its operators
BASE = ["RunOptions", "Volume", "create_volume", "datasets", "errors", "info", "models",
        "open_volume", "run_pipeline", "train", "__version__"]


def _operators() -> dict:
    from .spec import operators
    return {name: op.call for name, op in operators().items() if op.call is not None}


def __getattr__(name: str) -> object:
    """Every declared operator is ``emarray.NAME`` (one way, for all of them: see
    :mod:`emarray.spec`); ``__all__`` is the base API and every operator."""
    if name == "__all__":
        return BASE + sorted(_operators())
    import importlib.util
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule (from . import x)
        return importlib.import_module(f"{__name__}.{name}")
    if not name.startswith("_"):
        found = _operators().get(name)
        if found is not None:
            return found
    raise AttributeError(f"module 'emarray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_operators()))
