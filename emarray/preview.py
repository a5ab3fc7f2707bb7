"""Small pictures of volumes: a few z slices of a bounded crop, as PNG bytes.

Whatever the volume's size, a preview reads at most ``side`` × ``side`` voxels per slice: the
finest pyramid level that fits, else a crop from the middle of level 0. Images are shown in
grey between robust percentiles, label volumes with one colour per id (over the raw image when
one of the same shape is given), masks as a colour over the raw.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from .volume import Volume, is_labels, open_volume

#: slices previewed, as fractions of the depth
DEPTHS = (0.25, 0.5, 0.75)


def _level(vol: Volume, side: int) -> Volume:
    """The finest level of ``vol`` whose y, x fit in ``side`` (else level 0)."""
    if len(vol.levels) <= 1 or vol.local_path is None:
        return vol
    for k in range(len(vol.levels)):
        lv = open_volume(vol.url, level=k)
        if max(lv.shape[-2:]) <= side:
            return lv
    return vol


def crop(vol: Volume, side: int) -> tuple[slice, slice]:
    """The y, x window read: the whole plane when it fits in ``side``, else its middle."""
    out = []
    for n in vol.shape[-2:]:
        a = max(0, (n - side) // 2)
        out.append(slice(a, min(n, a + side)))
    return out[0], out[1]


def read_slices(vol: Volume, depths: Sequence[float] = DEPTHS, side: int = 512,
                zs: Sequence[int] | None = None) -> tuple[list[int], list[np.ndarray]]:
    """The z indices (of level 0) and the 2D arrays of the slices previewed (channel 0, or
    the first three channels, of a volume with channels)."""
    lv = _level(vol, side)
    nz = lv.shape[-3]
    scale = vol.shape[-3] / nz
    if zs is None:
        picks = [min(nz - 1, int(f * nz)) for f in depths]
    else:
        picks = [min(nz - 1, int(z / scale)) for z in zs]
    cy, cx = crop(lv, side)
    planes = []
    for z in picks:
        if lv.ndim == 4:
            c = 3 if lv.shape[0] == 3 else 1
            block = lv.read((slice(0, c), slice(z, z + 1), cy, cx))[:, 0]
            planes.append(block[0] if c == 1 else np.moveaxis(block, 0, -1))
        else:
            planes.append(lv.read((slice(z, z + 1), cy, cx))[0])
    return [int(round(z * scale)) for z in picks], planes


def grey(planes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """uint8 grey (or RGB) images of ``planes``, stretched between the 0.5 and 99.5
    percentiles of them all."""
    finite = np.concatenate([p[np.isfinite(p)].ravel().astype(np.float64) for p in planes])
    lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    if hi <= lo:
        hi = lo + 1
    out = []
    for p in planes:
        g = np.clip((np.nan_to_num(p.astype(np.float64), nan=lo) - lo) / (hi - lo), 0, 1)
        g = (g * 255).astype(np.uint8)
        out.append(np.repeat(g[..., None], 3, axis=-1) if g.ndim == 2 else g)
    return out


def id_colours(ids: np.ndarray) -> np.ndarray:
    """A bright colour per id (the same id, the same colour, in every picture): the golden
    ratio walks the hue."""
    h = (ids.astype(np.uint64) * np.uint64(2654435761) % np.uint64(2**32)).astype(
        np.float64) / 2**32
    s, v = 0.75, 0.95
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([np.choose(i, [v, q, p, p, t, v]), np.choose(i, [t, v, v, q, p, p]),
                      np.choose(i, [p, p, t, v, v, q])], -1)
    return (table * 255).astype(np.uint8)


def _nothing(planes: Sequence[np.ndarray]) -> list[np.ndarray | None]:
    return [None] * len(planes)


def coloured(labels: np.ndarray, under: np.ndarray | None, alpha: float = 0.55) -> np.ndarray:
    """An RGB picture of a label plane: each id its colour, 0 the image ``under`` (or black)."""
    base = under.astype(np.float64) if under is not None else np.zeros(labels.shape + (3,))
    ids, inv = np.unique(labels, return_inverse=True)
    col = id_colours(ids)[inv.reshape(labels.shape)].astype(np.float64)
    fg = (labels != 0)[..., None]
    mix = np.where(fg, (1 - alpha) * base + alpha * col if under is not None else col, base)
    return mix.astype(np.uint8)


def masked(mask: np.ndarray, under: np.ndarray | None) -> np.ndarray:
    """A mask plane in orange over the image ``under`` (or white on black)."""
    if under is None:
        return np.repeat(((mask != 0) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    out = under.astype(np.float64)
    fg = mask != 0
    out[fg] = 0.45 * out[fg] + 0.55 * np.array([255, 140, 0])
    return out.astype(np.uint8)


def is_mask(vol: Volume, planes: Sequence[np.ndarray]) -> bool:
    """A uint8/bool volume that holds only 0 and 1 (in the slices read)."""
    return vol.dtype in (np.uint8, np.bool_) and all(
        p.size == 0 or (p.min() >= 0 and p.max() <= 1) for p in planes)


def png(rgb: np.ndarray, width: int = 320) -> bytes:
    """PNG bytes of an RGB (or grey) picture, scaled to ``width`` pixels (nearest: voxels
    stay sharp)."""
    from PIL import Image
    img = Image.fromarray(rgb)
    if img.width and img.width != width:
        h = max(1, round(img.height * width / img.width))
        img = img.resize((width, h), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def busiest(vol: Volume, n: int = 3, candidates: int = 16, side: int = 512) -> list[int]:
    """``n`` z indices (ascending) among ``candidates`` evenly spaced ones where the label or
    mask volume ``vol`` has the most foreground: slices that show objects."""
    nz = vol.shape[-3]
    zs = sorted({min(nz - 1, int((k + 0.5) * nz / candidates)) for k in range(candidates)})
    _, planes = read_slices(vol, side=side, zs=zs)
    fg = [float((p != 0).mean()) for p in planes]
    best = sorted(range(len(zs)), key=lambda k: -fg[k])[:n]
    return sorted(zs[k] for k in best)


def pictures(vol: Volume, raw: Volume | None = None, side: int = 512, width: int = 320,
             zs: Sequence[int] | None = None) -> tuple[list[int], list[bytes], str]:
    """PNGs of a few z slices of ``vol`` (``zs``, else at a quarter, half and three quarters
    of its depth; labels coloured and masks drawn over ``raw`` when it has the same z, y, x
    shape) and what they show (``image``, ``labels``, ``mask``)."""
    zs, planes = read_slices(vol, side=side, zs=zs)
    under = None
    if raw is not None and raw.shape[-3:] == vol.shape[-3:] and vol.ndim == 3:
        _, raw_planes = read_slices(raw, side=side, zs=zs)
        if all(r.shape[:2] == p.shape[:2] for r, p in zip(raw_planes, planes)):
            under = grey(raw_planes)
    if vol.ndim == 3 and is_labels(vol):
        return zs, [png(coloured(p, u), width) for p, u in
                    zip(planes, under or _nothing(planes))], "labels"
    if vol.ndim == 3 and is_mask(vol, planes):
        return zs, [png(masked(p, u), width) for p, u in
                    zip(planes, under or _nothing(planes))], "mask"
    return zs, [png(g, width) for g in grey(planes)], "image"


def shows_objects(vol: Volume) -> bool:
    """Whether ``vol`` is a z, y, x label or mask volume: the one whose objects a report's
    slices and the viewer's first view are placed on."""
    return vol.ndim == 3 and (is_labels(vol) or is_mask(vol, read_slices(vol, depths=(0.5,))[1]))


def object_voxel(vol: Volume, side: int = 512) -> tuple[int, int, int] | None:
    """A z, y, x voxel (of level 0) inside an object of the label or mask volume ``vol``: on
    the slice :func:`busiest` puts first by foreground, the middle of the widest object there
    (the foreground voxel farthest from the background). None when that slice is empty."""
    from scipy import ndimage
    z = busiest(vol, n=1, side=side)[0]
    zs, planes = read_slices(vol, side=side, zs=[z])
    fg = planes[0] != 0
    if not fg.any():
        return None
    depth = ndimage.distance_transform_edt(np.pad(fg, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), fg.shape)
    lv = _level(vol, side)
    cy, cx = crop(lv, side)
    sy, sx = vol.shape[-2] / lv.shape[-2], vol.shape[-1] / lv.shape[-1]
    return (zs[0], min(vol.shape[-2] - 1, int((cy.start + y + 0.5) * sy)),
            min(vol.shape[-1] - 1, int((cx.start + x + 0.5) * sx)))
