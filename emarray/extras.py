"""The optional dependencies: which extra of ``pip install 'emarray[EXTRA]'`` brings each module,
and :func:`require`, the one way a feature imports one (a missing one is one line that names the
extra to install, :class:`~emarray.errors.BackendUnavailableError`, exit 2 on the command line).

The core install is what every job needs (NumPy, dask, zarr, numba, SciPy and the seung-lab
pieces of label and pyramid); everything else is imported only by the feature that uses it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import BackendUnavailableError

#: module -> (the distribution that provides it, the extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "tifffile": ("tifffile", "formats"),
    "imagecodecs": ("imagecodecs", "formats"),
    "h5py": ("h5py", "formats"),
    "tensorstore": ("tensorstore", "formats"),
    "edt": ("edt", "segment"),
    "skimage": ("scikit-image", "segment"),
    "zmesh": ("zmesh", "segment"),
    "pandas": ("pandas", "measure"),
    "matplotlib": ("matplotlib", "measure"),
    "s3fs": ("s3fs", "s3"),
    "gcsfs": ("gcsfs", "gcs"),
    "aiohttp": ("aiohttp", "https"),
    "neuroglancer": ("neuroglancer", "view"),
    "selenium": ("selenium", "view"),
    "starlette": ("starlette", "gui"),
    "uvicorn": ("uvicorn", "gui"),
    "jinja2": ("jinja2", "gui"),
    "torch": ("torch", "train"),
    "kimimaro": ("kimimaro", "skeleton"),
    "dask_jobqueue": ("dask-jobqueue", "cluster"),
    "cupy": ("cupy-cuda12x", "gpu"),
    "dask_cuda": ("dask-cuda", "gpu"),
}


def missing(module: str, feature: str, extra: str | None = None) -> BackendUnavailableError:
    """The one-line error for ``feature`` when ``module`` cannot be imported; ``extra``: the
    feature's own extra, where it brings the module too (default: the module's).

    >>> print(missing("skimage", "emarray watershed"))
    emarray watershed needs scikit-image: pip install 'emarray[segment]'
    """
    dist, default = EXTRAS[module.split(".")[0]]
    extra = extra or default
    return BackendUnavailableError(f"{feature} needs {dist}: pip install 'emarray[{extra}]'")


def require(module: str, feature: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` for ``feature`` (``"emarray watershed"``, ``"reading TIFF files"``), or
    raise the one line that names the extra to install. An installed module that fails to
    import (a broken build) says why as well."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        err = missing(module, feature, extra)
        if isinstance(exc, ModuleNotFoundError) and exc.name and module.startswith(exc.name):
            raise err from None
        raise BackendUnavailableError(f"{err} ({type(exc).__name__}: {exc})") from exc


def require_all(modules: tuple[str, ...], feature: str, extra: str | None = None) -> None:
    """:func:`require` each of ``modules`` (an operator's declared ``needs``)."""
    for module in modules:
        require(module, feature, extra)
