"""Model files: weights, architecture and input normalisation in one file.

A checkpoint is a ``torch.save`` dictionary of plain types (loaded with ``weights_only=True``:
opening one runs no code from it). A TorchScript archive loads too when it carries an
``emarray.json`` extra file with the same settings (:func:`export_torchscript` writes one).
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._normalize import finite_number
from ..errors import InvalidArgumentError, VolumeNotFoundError
from .geometry import UNetConfig

FORMAT = "emarray-model"
VERSION = 1
EXTRA = "emarray.json"


def check_normalize(normalize: Any) -> dict[str, float]:
    """``{"mean": m, "std": s}``: the network sees ``(raw - m) / s``."""
    if isinstance(normalize, str):
        parts = normalize.split(",")
        if len(parts) != 2:
            raise InvalidArgumentError(f"normalize must be MEAN,STD, got {normalize!r}")
        normalize = {"mean": parts[0], "std": parts[1]}
    if not isinstance(normalize, dict) or set(normalize) != {"mean", "std"}:
        raise InvalidArgumentError(f"normalize must be a mean and a std, got {normalize!r}")
    mean = finite_number(normalize["mean"], "normalize mean")
    std = finite_number(normalize["std"], "normalize std")
    if std <= 0:
        raise InvalidArgumentError(f"normalize std must be > 0, got {normalize['std']!r}")
    return {"mean": mean, "std": std}


@dataclass
class ModelFile:
    """What a model file holds: ``config``, ``normalize``, the default ``patch`` and the
    network (``module``, built on load)."""

    config: UNetConfig
    normalize: dict[str, float]
    patch: tuple[int, int, int]
    module: Any = field(default=None, repr=False)
    path: str = ""
    torchscript: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "config": self.config.to_dict(),
                "normalize": self.normalize, "patch": list(self.patch), "meta": self.meta}


def _settings(d: dict[str, Any], where: str) -> tuple[UNetConfig, dict[str, float], tuple, dict]:
    if d.get("format") != FORMAT:
        raise InvalidArgumentError(f"{where} is not an emarray model file (no {FORMAT!r} format tag)")
    if int(d.get("version", 0)) > VERSION:
        raise InvalidArgumentError(
            f"{where} was written by a newer emarray (model format {d['version']}); upgrade emarray")
    cfg = UNetConfig.from_dict(d["config"])
    patch = tuple(int(p) for p in d["patch"])
    cfg.check_patch(patch)
    return cfg, check_normalize(d["normalize"]), patch, dict(d.get("meta") or {})


def save(path: str | os.PathLike, module: Any, config: UNetConfig, *, normalize: Any,
         patch: Any, meta: dict[str, Any] | None = None) -> str:
    """Write ``module``'s weights with its architecture, normalisation and default patch.

    Written beside the target and renamed over it, so a killed save leaves the old file."""
    import torch
    p3 = tuple(int(p) for p in patch)
    mf = ModelFile(config, check_normalize(normalize), (p3[0], p3[1], p3[2]), meta=meta or {})
    config.check_patch(mf.patch)
    payload = {**mf.settings(), "state_dict": {k: v.detach().cpu() for k, v in
                                               module.state_dict().items()}}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return os.fspath(path)


def export_torchscript(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Write the model file ``src`` as a TorchScript archive (with its settings) at ``dst``.

    The network is traced at its default patch, so the archive takes that patch size only,
    and without dropout sampling (``predict`` refuses another patch or ``--mc-samples``)."""
    import torch
    mf = load(src)
    example = torch.zeros((1, mf.config.in_channels, *mf.patch))
    with torch.no_grad(), _quiet_jit():
        scripted = torch.jit.trace(mf.module, example, check_trace=False)
        torch.jit.save(scripted, os.fspath(dst),
                       _extra_files={EXTRA: json.dumps({**mf.settings(), "torchscript": True})})
    return os.fspath(dst)


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """PyTorch 2.13 marks TorchScript deprecated; archives still load, and users need not be
    told so on every run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit.*")
        yield


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def verify_archive(path: Path, where: str) -> None:
    """Refuse a model file whose archive is damaged: every member's CRC-32 is checked (PyTorch
    itself loads weights with flipped bytes without a word)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InvalidArgumentError(f"{where} is not a readable model file: the archive is "
                                   f"damaged ({type(exc).__name__}: {exc})") from None
    if bad is not None:
        raise InvalidArgumentError(
            f"{where} is damaged: its member {bad!r} fails its CRC check (a corrupt copy or "
            "download?); copy the model file again")


def load(path: str | os.PathLike, device: Any = "cpu") -> ModelFile:
    """Open a model file (or an emarray TorchScript archive); the network is in eval mode.

    The archive is verified first (every member's checksum), so a damaged file is refused
    instead of predicting with corrupt weights."""
    import torch
    p = Path(path)
    if not p.is_file():
        raise VolumeNotFoundError(f"no model file at {os.fspath(path)!r}")
    where = repr(os.fspath(path))
    verify_archive(p, where)
    if _is_torchscript(p):
        extra = {EXTRA: ""}
        with _quiet_jit():
            module = torch.jit.load(os.fspath(p), map_location=device, _extra_files=extra)
        if not extra[EXTRA]:
            raise InvalidArgumentError(
                f"{where} is a TorchScript archive without emarray settings ({EXTRA}); export it "
                "with emarray.models.export_torchscript")
        cfg, norm, patch, meta = _settings(json.loads(extra[EXTRA]), where)
        return ModelFile(cfg, norm, patch, module.eval(), os.fspath(p), True, meta)
    try:
        d = torch.load(os.fspath(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidArgumentError(
            f"{where} is not a readable model file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(d, dict):
        raise InvalidArgumentError(f"{where} is not an emarray model file")
    cfg, norm, patch, meta = _settings(d, where)
    from .unet import build
    module = build(cfg)
    try:
        module.load_state_dict(d["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise InvalidArgumentError(
            f"{where}: the weights do not fit its architecture ({str(exc)[:200]})") from None
    return ModelFile(cfg, norm, patch, module.to(device).eval(), os.fspath(p), False, meta)
