"""Kernel modules: each family's source compiled once per device with every instantiation."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..kernel_table import FAMILIES

_lock = threading.Lock()
_modules: dict[tuple[str, int], Any] = {}
#: IEEE float arithmetic as on the CPU: subnormals kept (no flush to zero; a sigmoid of a logit
#: below -87 is subnormal), no fused multiply-add, correctly rounded division and square root
OPTIONS = ("--std=c++17", "-DEMARRAY_VEC_BYTES=16", "-ftz=false", "-fmad=false",
           "-prec-div=true", "-prec-sqrt=true")


def kernel_dir() -> Path:
    """Where the ``.cu`` sources are: ``emarray.kernels`` when installed (the wheel maps the
    top-level ``kernels/`` there), else ``kernels/`` beside the package in a plain checkout."""
    try:
        from emarray.kernels import SOURCE_DIR
        return Path(SOURCE_DIR)
    except ImportError:
        here = Path(__file__).resolve().parents[2] / "kernels"
        if (here / "common.cuh").is_file():
            return here
        raise


def kernel_source(family: str) -> str:
    """The CUDA source of ``family``."""
    return (kernel_dir() / family).read_text()


def get_kernel(family: str, name: str) -> Any:
    """The compiled kernel ``name`` (a name expression) from ``family``, on the current device."""
    import cupy
    dev = cupy.cuda.Device().id
    key = (family, dev)
    mod = _modules.get(key)
    if mod is None:
        with _lock:
            mod = _modules.get(key)
            if mod is None:
                mod = cupy.RawModule(code=kernel_source(family),
                                     options=(*OPTIONS, f"-I{kernel_dir()}"),
                                     name_expressions=FAMILIES[family])
                mod.compile()
                _modules[key] = mod
    return mod.get_function(name)
