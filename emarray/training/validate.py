"""Validation during training: the held-out set as zarr, scored by ``predict`` + ``sweep``.

The validation truth is written once per run as uint8: 1 foreground, 0 background, 255 not
counted (ignore label, outside the mask), with one channel per class for softmax nets, so the
one-pass sweep scores every threshold at once.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, ShapeMismatchError
from ..volume import Volume, create_volume
from .config import parse_region
from .sampler import IGNORE, Target

VALIDATION = "validation"


def open_volumes(paths: list[str] | None) -> list[Volume]:
    from ..ops.common import as_volume
    return [as_volume(p) for p in paths or []]


def check_pair(raw: Volume, lab: Volume, mask: Volume | None) -> None:
    from .._normalize import numeric_dtype
    if raw.ndim != 3:
        raise InvalidArgumentError(f"training reads z,y,x raw volumes; {raw.url} has axes "
                                   f"{','.join(raw.axes)}")
    numeric_dtype(raw.dtype, f"the raw {raw.url}")
    if lab.shape != raw.shape:
        raise ShapeMismatchError(f"labels {lab.url} have shape {lab.shape} but raw {raw.url} has "
                                 f"{raw.shape}; they must match")
    if lab.dtype.kind not in "iub":
        raise InvalidArgumentError(f"labels {lab.url} are {lab.dtype}; labels must be integers")
    if mask is not None and mask.shape != raw.shape:
        raise ShapeMismatchError(f"mask {mask.url} has shape {mask.shape} but raw {raw.url} has "
                                 f"{raw.shape}; they must match")


def _stored(t: np.ndarray) -> np.ndarray:
    """A target as stored: uint8, IGNORE as 255 (cast first: 255 does not fit a signed target
    dtype, which NumPy 2.5 refuses)."""
    return np.where(t == IGNORE, np.uint8(255), t.astype(np.uint8))


def _write_blocks(dst: Volume, fn: Any, shape: tuple[int, ...]) -> None:
    step = tuple(min(n, c * max(1, 256 // c)) for n, c in zip(shape, dst.chunks[-3:]))
    for idx in np.ndindex(*(-(-n // s) for n, s in zip(shape, step))):
        reg = tuple(slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(idx, step, shape))
        block = fn(reg)
        dst.write(((slice(None),) if block.ndim == 4 else ()) + reg, block)


@dataclass
class Held:
    """The validation data, checked: a region held out of the first training volume, or a
    separate volume (raw, labels, optional mask)."""

    raw: Volume
    labels: Volume
    mask: Volume | None
    region: tuple[slice, ...] | None


def held_out(cfg: dict[str, Any], raws: list[Volume], labs: list[Volume],
             masks: list[Volume | None]) -> Held | None:
    """What ``validation`` names, checked before any work (None: no validation)."""
    v = cfg["validation"]
    if v["region"] is not None:
        region = parse_region(v["region"], raws[0].shape, "validation.region")
        return Held(raws[0], labs[0], masks[0], region)
    if v["raw"] is None:
        return None
    raw, lab = open_volumes([v["raw"], v["labels"]])
    mask = open_volumes([v["mask"]])[0] if v["mask"] else None
    check_pair(raw, lab, mask)
    return Held(raw, lab, mask, None)


def validation_set(held: Held, run: Path, target: Target, softmax: bool) -> tuple[Volume, Volume]:
    """(raw, truth) for the sweep, in ``run/validation``: truth 1 = foreground, 0 =
    background, 255 = not counted (one channel per class for softmax nets)."""
    folder = run / VALIDATION
    folder.mkdir(exist_ok=True)
    region, src_lab, src_mask = held.region, held.labels, held.mask
    if region is not None:
        src_raw = held.raw
        shape = tuple(s.stop - s.start for s in region)
        val_raw = _fresh(folder / "raw.zarr", shape, src_raw.dtype, src_raw)
        _write_blocks(val_raw, lambda r: src_raw.read(_shift(r, region)), shape)
    else:
        val_raw, shape = held.raw, held.raw.shape
    classes = 3 if target.affinities else target.classes
    channels = softmax or target.affinities
    tshape = ((classes,) if channels else ()) + tuple(shape)
    truth = _fresh(folder / "truth.zarr", tshape, np.uint8, val_raw, channels=channels)

    def block(r: tuple[slice, ...]) -> np.ndarray:
        src = _shift(r, region) if region is not None else r
        if target.affinities:  # each voxel's link to the one below it: read one layer more
            grown = tuple(slice(max(s.start - 1, 0), s.stop) for s in src)
            low = tuple(g.start < s.start for g, s in zip(grown, src))
            lab = src_lab.read(grown)
            aff = target.affinity(lab, src_mask.read(grown) if src_mask is not None else None,
                                  low)
            return _stored(aff)
        lab = src_lab.read(src)
        target.check(lab, src_lab.url)
        t = target(lab, src_mask.read(src) if src_mask is not None else None)
        if softmax:
            out = np.stack([(t == c).astype(np.uint8) for c in range(classes)])
            out[:, t == IGNORE] = 255
            return out
        return _stored(t)

    _write_blocks(truth, block, tuple(shape))
    return val_raw, truth


def _shift(r: tuple[slice, ...], region: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(a.start + b.start, a.stop + b.start) for a, b in zip(r, region))


def _fresh(path: Path, shape: tuple[int, ...], dtype: Any, like: Volume, channels: bool = False
           ) -> Volume:
    if path.exists():
        shutil.rmtree(path)
    chunks = tuple(min(c, n) for c, n in zip(like.chunks[-3:], shape[-3:]))
    return create_volume(path, shape, dtype, ((shape[0],) if channels else ()) + chunks,
                         voxel_size=like.voxel_size, unit=like.unit,
                         axes=(("c",) if channels else ()) + ("z", "y", "x"))


def evaluate(model_file: str, val_raw: Volume, truth: Volume, run: Path, thresholds: int,
             backend: str, threads: int, softmax: bool = False) -> dict[str, Any]:
    """predict + sweep on the validation set: best F1 and IoU over the thresholds, averaged
    over the channels (a softmax net's foreground classes; an affinity net's three links)."""
    from ..engine.stages import forget_worker_state
    from ..ops.predict import file_sha256, predict
    from ..ops.sweep import best_rows, sweep
    try:
        pred = predict(val_raw, model_file, run / VALIDATION / "prediction.zarr", overwrite=True,
                       backend=backend, threads=threads, scheduler="threads", workers=1)
    finally:  # these weights are never loaded again: do not keep one network per evaluation
        forget_worker_state(f"predict:{file_sha256(model_file)}")
    df = sweep(pred, truth, thresholds=thresholds, truth_value=1, ignore_value=255,
               scheduler="threads", workers=1)
    df.to_csv(run / VALIDATION / "sweep.csv", index=False)
    rows = best_rows(df)
    if softmax:   # the foreground classes
        rows = {ch: r for ch, r in rows.items() if ch > 0}
    best: dict[str, Any] = {}
    for m in ("f1", "iou"):
        best[m] = float(np.mean([r[m][m] for r in rows.values()]))
        best[f"threshold_{m}"] = float(np.mean([r[m]["threshold"] for r in rows.values()]))
    return best


