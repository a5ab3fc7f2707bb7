"""OME-Zarr 0.5 metadata: build it for what emarray writes, read it from what users have."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import InvalidArgumentError

OME_VERSION = "0.5"


def axis_entries(axes: Sequence[str], unit: str) -> list[dict[str, Any]]:
    """The ``axes`` list of a multiscale: spatial axes carry ``unit``, ``c`` is a channel axis."""
    out: list[dict[str, Any]] = []
    for name in axes:
        if name in ("z", "y", "x"):
            out.append({"name": name, "type": "space", "unit": unit})
        elif name == "c":
            out.append({"name": "c", "type": "channel"})
        elif name == "t":
            out.append({"name": "t", "type": "time"})
        else:
            out.append({"name": name})
    return out


def multiscales(name: str, axes: Sequence[str], unit: str,
                levels: Sequence[tuple[str, Sequence[float]] | tuple[str, Sequence[float],
                                                                      Sequence[float]]],
                *, method: str = "none", metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``attributes.ome`` object of an image group.

    ``levels`` lists ``(path, scale)`` or ``(path, scale, translation)`` from full resolution
    down; ``scale`` and ``translation`` have one entry per axis.
    ``method`` names how lower levels were made (``"none"`` for a single level).
    """
    return {
        "version": OME_VERSION,
        "multiscales": [{
            "name": name,
            "type": method,
            "metadata": {"description": "written by emarray", **(metadata or {})},
            "axes": axis_entries(axes, unit),
            "datasets": [dataset_entry(*level) for level in levels],
        }],
    }


def dataset_entry(path: str, scale: Sequence[float],
                  translation: Sequence[float] | None = None) -> dict[str, Any]:
    """One ``datasets`` entry: its path, scale and (when not all zero) translation."""
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [float(s) for s in scale]}]
    if translation is not None and any(float(t) != 0 for t in translation):
        transforms.append({"type": "translation", "translation": [float(t) for t in translation]})
    return {"path": path, "coordinateTransformations": transforms}


def level_translation(multiscale: dict[str, Any], index: int = 0) -> list[float] | None:
    """The translation of dataset ``index`` (None when it has none)."""
    for tr in multiscale["datasets"][index].get("coordinateTransformations", []):
        if tr.get("type") == "translation":
            return [float(t) for t in tr["translation"]]
    return None


def read_multiscales(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """Return the first multiscale of a group's attributes (OME 0.5 or 0.4 layout), or None."""
    ome = attrs.get("ome", attrs)
    ms = ome.get("multiscales") if isinstance(ome, dict) else None
    if not ms:
        return None
    return ms[0]


def level_scale(multiscale: dict[str, Any], index: int = 0) -> list[float] | None:
    """The combined scale of dataset ``index`` of a multiscale (None when it has no scale)."""
    ds = multiscale["datasets"][index]
    scale = None
    for tr in ds.get("coordinateTransformations", []):
        if tr.get("type") == "scale":
            scale = [float(s) for s in tr["scale"]]
    for tr in multiscale.get("coordinateTransformations", []) or []:
        if tr.get("type") == "scale" and scale is not None:
            scale = [a * float(b) for a, b in zip(scale, tr["scale"])]
    return scale


def default_axes(ndim: int) -> tuple[str, ...]:
    if ndim == 3:
        return ("z", "y", "x")
    if ndim == 4:
        return ("c", "z", "y", "x")
    if ndim == 2:
        return ("y", "x")
    raise InvalidArgumentError(f"emarray volumes are 2D, 3D or channel+3D, got {ndim} dimensions")
