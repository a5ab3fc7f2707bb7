"""The one dispatch point between the CPU and the CUDA implementation of each operator.

Operators register their per-block functions here, by name and backend. CUDA implementations
are registered as ``"module:function"`` strings and imported only when the CUDA backend is
used, so importing emarray never imports CuPy.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

from .errors import BackendUnavailableError, InvalidArgumentError

BACKENDS = ("auto", "cpu", "cuda")
_INSTALL_HINT = "install the GPU extra: pip install 'emarray[gpu]' (CuPy for CUDA 12)"
_registry: dict[tuple[str, str], Callable | str] = {}


def register(op: str, backend: str, impl: Callable | str) -> None:
    """Register ``impl`` (a callable, or a lazy ``"module:function"``) for ``op`` on ``backend``."""
    _registry[(op, backend)] = impl


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def resolve_backend(backend: str | None) -> str:
    """Turn ``auto``/``cpu``/``cuda`` into ``cpu`` or ``cuda``, failing early when CUDA is missing."""
    name = (backend or "auto").lower()
    if name not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if name == "auto":
        return "cuda" if cuda_available() else "cpu"
    if name == "cuda":
        try:
            import cupy  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(f"the cuda backend needs CuPy: {_INSTALL_HINT}") from exc
        if not cuda_available():
            raise BackendUnavailableError("the cuda backend needs a CUDA device, and CuPy sees none")
    return name


def implementation(op: str, backend: str) -> Callable:
    """The per-block function of ``op`` on a resolved ``backend``."""
    impl = _registry.get((op, backend))
    if impl is None:
        raise BackendUnavailableError(f"{op} has no {backend} implementation")
    if isinstance(impl, str):
        module, _, func = impl.partition(":")
        impl = getattr(importlib.import_module(module), func)
        _registry[(op, backend)] = impl
    return impl
