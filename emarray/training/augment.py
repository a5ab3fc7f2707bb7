"""Paired augmentation: one random draw applied alike to raw, labels and mask.

A :class:`Transform` maps every voxel of the output patch to a position in the source volume.
The geometric part (flips, transposes, in-plane rotations by 90 degrees, elastic deformation,
misaligned sections) moves raw, labels and mask together; the sampler reads the source box the
transform needs (:attr:`Transform.box`), enlarged past the patch where the deformation reaches,
and :meth:`Transform.apply` resamples it. Labels and mask are taken at the nearest source voxel,
never interpolated, so they keep only their own values. The intensity part (contrast,
brightness, gamma, noise, blur, missing sections) changes the raw only.

Anisotropic data (z sections much thicker than the in-plane pixels) is never transposed between
z and y,x, deformed along z or blurred along z.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

_INDEX = np.intp


@dataclass(frozen=True)
class AugmentConfig:
    """What may happen to a patch; see the ``augment`` section of the training config."""

    flip: bool = True
    transpose: bool = True
    rotate90: bool = True
    elastic: float = 0.5            # probability per patch
    elastic_magnitude: tuple[float, float, float] = (2.0, 4.0, 4.0)  # voxels, z,y,x
    elastic_spacing: tuple[int, int, int] = (8, 32, 32)               # control points, voxels
    contrast: float = 0.5           # probability per patch
    contrast_range: tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.1         # largest shift, fraction of the intensity range
    gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.75, 1.33)
    noise: float = 0.3
    noise_std: float = 0.03         # fraction of the intensity range
    blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    missing_section: float = 0.0    # probability per section
    misalignment: float = 0.0       # probability per patch
    misalignment_shift: int = 8     # largest in-plane shift, voxels
    anisotropic: bool = False

    @classmethod
    def from_config(cls, section: dict[str, Any], anisotropic: bool) -> AugmentConfig:
        """From the config's checked ``augment`` section."""
        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.items()}
        kw["elastic_spacing"] = tuple(int(v) for v in kw["elastic_spacing"])
        return cls(**kw, anisotropic=anisotropic)

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(flip=False, transpose=False, rotate90=False, elastic=0.0, contrast=0.0,
                   gamma=0.0, noise=0.0, blur=0.0, missing_section=0.0, misalignment=0.0)


@dataclass
class Transform:
    """One draw. ``box`` is the source region (start, shape) relative to the patch's origin;
    ``apply`` turns the arrays read there into patches of ``size``."""

    size: tuple[int, int, int]
    box_start: tuple[int, int, int]
    box_shape: tuple[int, int, int]
    ops: list[tuple[str, Any]] = field(default_factory=list)   # numpy ops, fast path
    coords: np.ndarray | None = None                            # (3, *size) source positions
    intensity: list[tuple[str, Any]] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)

    @property
    def box(self) -> tuple[slice, ...]:
        return tuple(slice(a, a + n) for a, n in zip(self.box_start, self.box_shape))

    def apply(self, raw: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
        """``raw`` (float, intensities in [0, 1]) and label-like arrays, all of ``box_shape``."""
        if self.coords is None:
            out = [_ops(a, self.ops) for a in (raw, *others)]
        else:
            from scipy.ndimage import map_coordinates
            rel = self.coords - np.asarray(self.box_start, np.float32).reshape(3, 1, 1, 1)
            r = map_coordinates(raw.astype(np.float32, copy=False), rel, order=1, mode="nearest",
                                output=np.float32)
            near = tuple(np.clip(np.floor(rel[a] + 0.5).astype(_INDEX), 0, raw.shape[a] - 1)
                         for a in range(3))
            out = [r] + [o[near] for o in others]
        return (self._intensity(out[0]), *out[1:])

    def _intensity(self, x: np.ndarray) -> np.ndarray:
        x = np.array(x, np.float32, copy=True)
        for kind, p in self.intensity:
            if kind == "contrast":
                c, b = p
                m = float(x.mean())
                x = (x - m) * np.float32(c) + np.float32(m + b)
            elif kind == "gamma":
                x = np.clip(x, 0.0, 1.0) ** np.float32(p)
            elif kind == "noise":
                std, seed = p
                x += np.random.default_rng(seed).normal(0.0, std, x.shape).astype(np.float32)
            elif kind == "blur":
                from scipy.ndimage import gaussian_filter
                x = gaussian_filter(x, p, mode="reflect")
        for z in self.missing:
            x[z] = 0.0
        return x


def _ops(a: np.ndarray, ops: list[tuple[str, Any]]) -> np.ndarray:
    for kind, arg in ops:
        if kind == "transpose":
            a = a.transpose(arg)
        elif kind == "flip":
            a = np.flip(a, arg)
        elif kind == "rot90":
            a = np.rot90(a, arg, axes=(1, 2))
    return np.ascontiguousarray(a)


def _perm_of(ops: list[tuple[str, Any]]) -> tuple[int, int, int]:
    """Output axis i shows source axis perm[i]."""
    perm = [0, 1, 2]
    for kind, arg in ops:
        if kind == "transpose":
            perm = [perm[a] for a in arg]
        elif kind == "rot90" and arg % 2:
            perm = [perm[0], perm[2], perm[1]]
    return (perm[0], perm[1], perm[2])


def draw(rng: np.random.Generator, size: tuple[int, int, int], cfg: AugmentConfig) -> Transform:
    """A random transform for a patch of ``size`` (z,y,x)."""
    ops: list[tuple[str, Any]] = []
    if cfg.transpose:
        choices = ([(0, 1, 2), (0, 2, 1)] if cfg.anisotropic else
                   [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])
        ops.append(("transpose", choices[int(rng.integers(len(choices)))]))
    if cfg.rotate90:
        ops.append(("rot90", int(rng.integers(4))))
    if cfg.flip:
        axes = tuple(a for a in range(3) if rng.random() < 0.5)
        if axes:
            ops.append(("flip", axes))
    perm = _perm_of(ops)
    src = [0, 0, 0]
    for i, p in enumerate(perm):
        src[p] = size[i]
    src_shape = (src[0], src[1], src[2])
    t = Transform(size, (0, 0, 0), src_shape, ops)
    displaced = False
    disp = np.zeros((3, *size), np.float32)
    if cfg.elastic and rng.random() < cfg.elastic:
        mags = list(cfg.elastic_magnitude)
        if cfg.anisotropic:
            mags[0] = 0.0
        for a in range(3):
            if mags[a] > 0 and size[a] > 1:
                disp[a] = _smooth_field(rng, size, cfg.elastic_spacing, mags[a])
                displaced = True
    if cfg.misalignment and rng.random() < cfg.misalignment and size[0] > 1:
        z0 = int(rng.integers(1, size[0]))
        dy, dx = (int(v) for v in rng.integers(-cfg.misalignment_shift, cfg.misalignment_shift + 1,
                                                2))
        slip = rng.random() < 0.5   # one section slips, or every section from z0 on shifts
        zs = slice(z0, z0 + 1) if slip else slice(z0, None)
        disp[1, zs] += dy
        disp[2, zs] += dx
        displaced = displaced or dy != 0 or dx != 0
    if displaced:
        t = _with_coords(t, disp)
    if cfg.contrast and rng.random() < cfg.contrast:
        t.intensity.append(("contrast", (float(rng.uniform(*cfg.contrast_range)),
                                         float(rng.uniform(-cfg.brightness, cfg.brightness)))))
    if cfg.gamma and rng.random() < cfg.gamma:
        t.intensity.append(("gamma", float(np.exp(rng.uniform(*np.log(cfg.gamma_range))))))
    if cfg.noise and rng.random() < cfg.noise:
        t.intensity.append(("noise", (float(rng.uniform(0, cfg.noise_std)),
                                      int(rng.integers(2**63)))))
    if cfg.blur and rng.random() < cfg.blur:
        s = float(rng.uniform(*cfg.blur_sigma))
        t.intensity.append(("blur", (0.0 if cfg.anisotropic else s, s, s)))
    if cfg.missing_section:
        t.missing = [z for z in range(size[0]) if rng.random() < cfg.missing_section]
    return t


def _smooth_field(rng: np.random.Generator, size: tuple[int, ...], spacing: tuple[int, ...],
                  magnitude: float) -> np.ndarray:
    """A smooth random displacement along one axis whose largest value is ``magnitude``."""
    from scipy.ndimage import zoom
    coarse = tuple(max(2, -(-n // max(1, s)) + 1) for n, s in zip(size, spacing))
    f = zoom(rng.normal(size=coarse).astype(np.float32), [n / c for n, c in zip(size, coarse)],
             order=3, mode="nearest", grid_mode=True)
    f = f[tuple(slice(0, n) for n in size)]
    peak = float(np.abs(f).max())
    return (f * np.float32(magnitude / peak)) if peak > 0 else f


def _with_coords(t: Transform, disp: np.ndarray) -> Transform:
    """Source positions of every output voxel: the geometric ops on the source's index grid,
    plus the displacement (given along the output's axes) turned into the source's axes."""
    grids = np.indices(t.box_shape, dtype=np.float32)
    base = np.stack([_ops(g, t.ops) for g in grids]).astype(np.float32)   # (3, *size)
    # the linear part of the map: how one output step along axis j moves in the source
    lin = np.zeros((3, 3), np.float32)
    for j in range(3):
        if t.size[j] > 1:
            step = [0, 0, 0]
            step[j] = 1
            lin[:, j] = base[:, step[0], step[1], step[2]] - base[:, 0, 0, 0]
    coords = base + np.einsum("ij,j...->i...", lin, disp).astype(np.float32)
    lo = np.floor(coords.reshape(3, -1).min(axis=1)).astype(int)
    hi = np.floor(coords.reshape(3, -1).max(axis=1)).astype(int) + 2
    return Transform(t.size, (int(lo[0]), int(lo[1]), int(lo[2])),
                     (int(hi[0] - lo[0]), int(hi[1] - lo[1]), int(hi[2] - lo[2])), t.ops, coords)
