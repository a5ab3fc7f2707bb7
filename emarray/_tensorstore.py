"""Read zarr v2, N5 and neuroglancer precomputed volumes through tensorstore."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._normalize import parse_unit
from .errors import VolumeNotFoundError
from .ome import default_axes

_DRIVERS = {"zarr2": "zarr", "n5": "n5", "precomputed": "neuroglancer_precomputed"}
KIND_NAMES = {"zarr2": "zarr v2", "n5": "N5", "precomputed": "neuroglancer precomputed"}


def _kvstore(location: str) -> Any:
    if "://" in location:
        return location  # tensorstore parses kvstore URLs (gs://, s3://, https://, file://)
    return {"driver": "file", "path": location}


def open_tensorstore(kind: str, location: str) -> tuple[Any, dict[str, Any]]:
    """Open ``location`` read-only; return the tensorstore (axes z,y,x) and Volume metadata."""
    from .extras import require
    ts = require("tensorstore", f"reading {KIND_NAMES.get(kind, kind)} volumes")
    spec = {"driver": _DRIVERS[kind], "kvstore": _kvstore(location)}
    try:
        arr = ts.open(spec, read=True).result()
    except Exception as exc:
        raise VolumeNotFoundError(f"cannot open {kind} volume {location!r}: {exc}") from exc
    labels = list(arr.domain.labels)
    if kind == "precomputed":
        # neuroglancer precomputed is x, y, z, channel: keep one channel, present z, y, x
        if arr.shape[-1] == 1:
            arr = arr[ts.d["channel"][0]]
            labels = labels[:-1]
    if kind in ("precomputed", "n5"):
        # both list their dimensions x first (N5 is column-major): present z, y, x
        arr = arr.T
        labels = labels[::-1]
    ndim = arr.rank
    axes = tuple(labels) if all(labels) and set(labels) <= {"c", "z", "y", "x"} else default_axes(ndim)
    chunks = tuple(int(c or 1) for c in arr.chunk_layout.read_chunk.shape or ())
    voxel, unit = [], "nanometer"
    units = arr.dimension_units
    for a, u in zip(axes, units):
        if a in ("z", "y", "x"):
            if u is not None and u.base_unit:
                voxel.append(float(u.multiplier))
                try:
                    unit = parse_unit(u.base_unit)
                except Exception:
                    pass
            else:
                voxel.append(1.0)
    meta = {"shape": tuple(int(s) for s in arr.shape), "dtype": np.dtype(arr.dtype.numpy_dtype),
            "chunks": chunks, "shards": None, "axes": axes, "voxel_size": tuple(voxel),
            "unit": unit, "levels": ("",), "attrs": {}}
    return arr, meta
