"""The one dispatch point between the CPU and the CUDA implementation of each operator.

Operators register their per-block functions here, by name and backend. CUDA implementations
are registered as ``"module:function"`` strings and imported only when the CUDA backend is
used, so importing emarray never imports CuPy.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, InvalidArgumentError

BACKENDS = ("auto", "cpu", "cuda")
_INSTALL_HINT = "install the GPU extra: pip install 'emarray[gpu]' (CuPy for CUDA 12)"
_registry: dict[tuple[str, str], Callable | str] = {}
_dtypes: dict[tuple[str, str], frozenset[np.dtype]] = {}


def register(op: str, backend: str, impl: Callable | str, dtypes: Iterable[Any] | None = None) -> None:
    """Register ``impl`` (a callable, or a lazy ``"module:function"``) for ``op`` on ``backend``.

    ``dtypes`` lists the input dtypes it has a kernel for (None: every dtype).
    """
    _registry[(op, backend)] = impl
    if dtypes is not None:
        _dtypes[(op, backend)] = frozenset(np.dtype(d) for d in dtypes)


_all_declared = False


def _declared() -> None:
    """Import every operator module (once a process), so that each has registered its
    functions: a worker process imports only what the blocks it runs name, and ``import
    emarray`` imports operators when they are first used. Once is enough: ``supports`` asks
    for kernels most operators lack on every block, and the operators' folder is listed once."""
    global _all_declared
    if not _all_declared:
        importlib.import_module("emarray.spec").operators()  # by name: the operators import this
        _all_declared = True


def supports(op: str, backend: str, dtype: Any) -> bool:
    """True when ``op`` has a ``backend`` implementation for input ``dtype``."""
    if (op, backend) not in _registry:
        _declared()
    if (op, backend) not in _registry:
        return False
    allowed = _dtypes.get((op, backend))
    return allowed is None or np.dtype(dtype) in allowed


def registered() -> dict[tuple[str, str], frozenset[np.dtype] | None]:
    """Every (operator, backend) with an implementation, and the dtypes it has a kernel for
    (None: every dtype)."""
    _declared()
    return {key: _dtypes.get(key) for key in _registry}


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def resolve_backend(backend: str | None, op: str | None = None, dtype: Any = None) -> str:
    """Turn ``auto``/``cpu``/``cuda`` into ``cpu`` or ``cuda``, failing early when CUDA is missing.

    With ``op`` and ``dtype``, ``auto`` falls back to the CPU where CUDA has no kernel for that
    dtype, and an explicit ``cuda`` is refused before any work.
    """
    name = (backend or "auto").lower()
    if name not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    has_kernel = op is None or dtype is None or supports(op, "cuda", dtype)
    if name == "auto":
        return "cuda" if has_kernel and cuda_available() else "cpu"
    if name == "cuda" and not has_kernel:
        raise BackendUnavailableError(
            f"the cuda backend has no {op} kernel for {np.dtype(dtype)} data; use --backend "
            "auto or cpu")
    if name == "cuda":
        try:
            import cupy  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(f"the cuda backend needs CuPy: {_INSTALL_HINT}") from exc
        if not cuda_available():
            raise BackendUnavailableError("the cuda backend needs a CUDA device, and CuPy sees none")
    return name


def check_backend(backend: str | None, op: str, dtype: Any, *, local: bool = True) -> None:
    """Refuse a backend choice before any work: an unknown name, an explicit ``cuda`` without
    a kernel for ``dtype``, or (when blocks run in this process tree) without CuPy or a device.

    ``auto`` is decided where each block runs (:func:`resolve_backend` on the worker).
    """
    name = (backend or "auto").lower()
    if name not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if name == "cuda" and (local or not supports(op, "cuda", dtype)):
        resolve_backend(name, op=op, dtype=dtype)  # raises, naming the dtype or what is missing


def implementation(op: str, backend: str) -> Callable:
    """The per-block function of ``op`` on a resolved ``backend``."""
    impl = _registry.get((op, backend))
    if impl is None:
        _declared()
        impl = _registry.get((op, backend))
    if impl is None:
        raise BackendUnavailableError(f"{op} has no {backend} implementation")
    if isinstance(impl, str):
        module, _, func = impl.partition(":")
        impl = getattr(importlib.import_module(module), func)
        _registry[(op, backend)] = impl
    return impl
