"""The model zoo: a configurable 3D U-Net, its size arithmetic, and its model files.

PyTorch is needed (``pip install 'emarray[train]'``) to build, save or load a network; the
size arithmetic (:class:`UNetConfig`) is plain Python.
"""
from __future__ import annotations

import os
from typing import Any

from ..errors import InvalidArgumentError
from .geometry import UNetConfig

__all__ = ["UNetConfig", "unet_config", "new_model", "load_model", "save_model", "describe", "build_model",
           "export_torchscript", "require_torch", "anisotropic_pool"]


def require_torch() -> Any:
    """Import torch, or say in one line how to install it."""
    from ..extras import require
    return require("torch", "building, saving or loading a model")


def anisotropic_pool(depth: int) -> tuple[tuple[int, int, int], ...]:
    """Pooling for anisotropic data (say 50x4x4 nm): y,x only, except the last level's z,y,x."""
    n = max(0, int(depth) - 1)
    return tuple((1, 2, 2) if i < n - 1 or n == 1 else (2, 2, 2) for i in range(n))


def default_patch(cfg: UNetConfig) -> tuple[int, int, int]:
    """A patch the net takes near 32,128,128 (anisotropic) or 64,64,64 (isotropic)."""
    want = (32, 128, 128) if cfg.factor[0] < cfg.factor[1] else (64, 64, 64)
    if cfg.padding == "valid":  # the output near 'want', not the input
        ctx = cfg.context()
        want = tuple(w + 2 * c for w, c in zip(want, ctx))  # type: ignore[assignment]
    return cfg.nearest_admissible(want)


def build_model(cfg: UNetConfig, seed: int | None = None) -> Any:
    require_torch()
    from .unet import build
    return build(cfg, seed)


def save_model(path: str | os.PathLike, module: Any, cfg: UNetConfig, *, normalize: Any = "0,255",
               patch: Any = None, meta: dict[str, Any] | None = None) -> str:
    require_torch()
    from . import modelfile
    return modelfile.save(path, module, cfg, normalize=normalize,
                           patch=patch if patch is not None else default_patch(cfg), meta=meta)


def load_model(path: str | os.PathLike, device: Any = "cpu") -> Any:
    """A :class:`~emarray.models.modelfile.ModelFile` (``.module`` is the network, in eval mode)."""
    require_torch()
    from . import modelfile
    return modelfile.load(path, device)


def export_torchscript(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    require_torch()
    from . import modelfile
    return modelfile.export_torchscript(src, dst)


def unet_config(*, depth: int = 3, filters: int = 16, padding: str = "same",
                anisotropic: bool = False, pool: Any = None, channels_in: int = 1,
                channels_out: int = 1, norm: str = "batch", residual: bool = False,
                dropout: float = 0.0, activation: str = "sigmoid", name: str = "pool"
                ) -> UNetConfig:
    """The :class:`UNetConfig` of ``model new``'s settings: ``pool`` as a list or as
    ``"1,2,2;2,2,2"`` (named ``name`` in errors); else anisotropic or isotropic pooling."""
    from .._normalize import parse_tuple
    if isinstance(pool, str):
        pool = [parse_tuple(p, name, 3, positive=True) for p in pool.split(";") if p.strip()]
    return UNetConfig(depth=depth, filters=filters, padding=padding,
                      pool=pool or (anisotropic_pool(depth) if anisotropic else ()),
                      in_channels=channels_in, out_channels=channels_out, norm=norm,
                      residual=residual, dropout=dropout, activation=activation)


def new_model(out: str | os.PathLike, *, depth: int = 3, filters: int = 16, padding: str = "same",
              anisotropic: bool = False, pool: Any = None, channels_in: int = 1,
              channels_out: int = 1, norm: str = "batch", residual: bool = False,
              dropout: float = 0.0, activation: str = "sigmoid", normalize: Any = "0,255",
              patch: Any = None, seed: int = 0, overwrite: bool = False) -> str:
    """Write a seeded, randomly initialised U-Net model file at ``out``.

    Examples
    --------
    >>> import emarray, tempfile, os
    >>> p = emarray.models.new_model(os.path.join(tempfile.mkdtemp(), "m.pt"), depth=2, filters=4)
    >>> emarray.models.describe(p)["parameters"]
    4789
    """
    from .._normalize import parse_tuple, whole_number
    if os.path.lexists(out) and not overwrite:
        raise InvalidArgumentError(f"{os.fspath(out)!r} exists; pass --overwrite to replace it")
    if pool is not None and anisotropic:
        raise InvalidArgumentError("give either anisotropic or pool, not both")
    cfg = unet_config(depth=depth, filters=filters, padding=padding, anisotropic=anisotropic,
                      pool=pool, channels_in=channels_in, channels_out=channels_out, norm=norm,
                      residual=residual, dropout=dropout, activation=activation)
    seed = whole_number(seed, "seed", 0)
    if patch is not None:
        patch = parse_tuple(patch, "patch", 3)
        cfg.check_patch(patch)
    module = build_model(cfg, seed)
    return save_model(out, module, cfg, normalize=normalize, patch=patch, meta={"seed": seed})


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What ``emarray model info`` prints: architecture, parameters, receptive field, sizes."""
    mf = load_model(path)
    from .unet import parameter_count
    cfg = mf.config
    sizes = []
    for a in range(3):
        adm = cfg.admissible(a, 1, 2 * mf.patch[a])
        adm = [s for s in adm if s >= min(mf.patch[a], adm[-1]) // 2][:8] if adm else []
        sizes.append([(s, cfg.output_size(tuple(s if i == a else mf.patch[i] for i in range(3)))[a])
                      for s in adm])
    return {"path": mf.path, "torchscript": mf.torchscript, "config": cfg.to_dict(),
            "parameters": parameter_count(mf.module), "receptive_field": list(cfg.receptive_field()),
            "context": list(cfg.context()), "factor": list(cfg.factor), "patch": list(mf.patch),
            "output": list(cfg.check_patch(mf.patch)), "normalize": mf.normalize,
            "admissible": {ax: s for ax, s in zip("zyx", sizes)}, "meta": mf.meta}
