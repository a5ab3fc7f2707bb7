"""Synthetic neurites with known centre lines, for the skeleton tests and benchmarks: tubes
of a given radius around polylines (a branch is a polyline from a point of another)."""
from __future__ import annotations

import numpy as np

VOXEL = (12.0, 8.0, 8.0)  # z, y, x nanometres: anisotropic, as EM is
RADIUS = 30.0             # nanometres

#: object id -> polylines (z, y, x voxel indices); one object's polylines meet
NEURITES: dict[int, list[list[tuple[float, float, float]]]] = {
    1: [[(8, 10, 10), (26, 50, 50)], [(26, 50, 50), (40, 86, 40)], [(26, 50, 50), (18, 62, 88)]],
    2: [[(6, 88, 6), (42, 60, 60)]],
    3: [[(32, 8, 64), (32, 88, 64)]],          # along y in the planes z=32 and x=64
    4: [[(40, 12, 86), (40, 40, 86), (10, 40, 70)]],
}


def segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each of ``points`` (n, 3) to the segment ``a``-``b`` (same units)."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def centre_distance(points: np.ndarray, lines: list, voxel=VOXEL) -> np.ndarray:
    """Physical distance of ``points`` (voxel indices, z, y, x) to the polylines ``lines``."""
    s = np.asarray(voxel, np.float64)
    p = np.asarray(points, np.float64) * s
    out = np.full(len(p), np.inf)
    for line in lines:
        q = np.asarray(line, np.float64) * s
        for a, b in zip(q[:-1], q[1:]):
            out = np.minimum(out, segment_distance(p, a, b))
    return out


def neurites(shape=(48, 96, 96), objects=NEURITES, radius=RADIUS, voxel=VOXEL,
             dtype=np.uint32, offset=(0, 0, 0)) -> np.ndarray:
    """The label volume: each object's voxels within ``radius`` of its polylines (the first
    object wins where two would meet), plus a speck of 7 voxels (id 9) below any dust
    threshold."""
    lab = np.zeros(shape, dtype)
    grid = np.stack(np.indices(shape), -1).reshape(-1, 3) + np.asarray(offset)
    for i, lines in objects.items():
        d = centre_distance(grid, lines, voxel).reshape(shape)
        lab[(d <= radius) & (lab == 0)] = i
    if shape == (48, 96, 96):
        lab[44, 4:6, 4:6] = 9
        lab[45, 4, 4:7] = 9
    return lab
