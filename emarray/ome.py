"""OME-Zarr 0.5 metadata: build it for what emarray writes, read it from what users have."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import storage
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


def image_holding(array: str, options: dict[str, Any] | None = None) -> tuple[str, int] | None:
    """The OME-Zarr image whose multiscales list the array at ``array`` (its folder's parent),
    and the array's level there; None when it is a bare array."""
    import json
    try:
        if storage.is_remote(array):
            up, leaf = storage.parent(array), storage.name(array)
            d = storage.read_json(storage.join(up, "zarr.json"), options) or {}
        else:
            up, leaf = os.fspath(Path(array).parent), Path(array).name
            d = json.loads((Path(up) / "zarr.json").read_text())
        ms = read_multiscales(d.get("attributes") or {})
        paths = [ds["path"] for ds in ms["datasets"]] if ms else []
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return (up, paths.index(leaf)) if leaf in paths else None


def every_chunk_written(group: dict[str, Any], array: dict[str, Any], path: str,
                         levels: tuple[str, ...]) -> bool:
    """Whether a finished emarray job wrote every chunk of this array (its missing chunks are
    then lost ones): the array says so, and the job (or the pyramid) that wrote it finished."""
    mine = array.get("emarray")
    if not (isinstance(mine, dict) and mine.get("every_chunk") is True):
        return False
    em = group.get("emarray")
    if not isinstance(em, dict):
        return False
    if path == levels[0]:
        return "job" in em and em.get("complete") is True
    pyr = em.get("pyramid")
    # a replacement under way keeps the record of the pyramid it replaces, whose levels stay
    # listed (and whole) until the new ones are
    for rec in (pyr, pyr.get("previous") if isinstance(pyr, dict) else None):
        if isinstance(rec, dict) and rec.get("complete") is True and path in rec.get("paths", []):
            return True
    return False


def listed_levels(attrs: dict[str, Any]) -> set[str]:
    """The array paths an OME-Zarr group lists (and levels a killed pyramid job made but did
    not yet list)."""
    try:
        levels = {d["path"] for m in attrs["ome"]["multiscales"] for d in m["datasets"]}
    except (KeyError, TypeError):
        levels = set()
    pyramid = (attrs.get("emarray") or {}).get("pyramid") if isinstance(attrs, dict) else None
    if isinstance(pyramid, dict):
        levels |= {str(p) for p in pyramid.get("paths", [])}
    return levels
