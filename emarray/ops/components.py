"""Connected components inside one block: local labels, per-component facts, face pairs.

These are the block functions of :mod:`emarray.ops.label`. Local labels are numbered 1..n in
C order of each component's first voxel (cc3d's order; the CUDA kernel is renumbered to it),
so a block labelled twice gets the same numbers, and the numbering of the whole volume can
be derived from per-block facts without holding any block's labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: 1 is a face neighbour, 2 an edge neighbour, 3 a corner neighbour
CONNECTIVITY_ORDER = {6: 1, 18: 2, 26: 3}
#: one face-touching piece of a component in one block
PIECE = np.dtype([("node", "<i8"), ("key", "<i8"), ("size", "<i8"), ("before", "<i8"),
                  ("value", "<i8")])


def node_ids(block_flat: int, local: np.ndarray) -> np.ndarray:
    """A piece's id across the volume: its block's flat index and its local label."""
    return (np.int64(block_flat) << np.int64(32)) | local.astype(np.int64)


def foreground(block: np.ndarray, *, binary: bool, background: Any) -> np.ndarray:
    """What cc3d labels: a 0/1 uint8 mask (binary), or the values with ``background`` moved
    to 0 (multilabel: each distinct value its own components).

    The mask is uint8, not bool: cc3d 4.1's 26-connected path fails on bool arrays one voxel
    thick (a 1x3x1 block holding 1,0,1).
    """
    if binary:
        return np.not_equal(block, background).view(np.uint8)
    if block.dtype == np.bool_:
        block = block.view(np.uint8)
    if background == 0:
        return block
    out = block.copy()
    out[block == background] = 0
    out[block == 0] = block.dtype.type(background)  # swapping keeps the values distinct
    return out


def label_block_cpu(block: np.ndarray, *, connectivity: int, binary: bool,
                    background: Any) -> np.ndarray:
    """cc3d's labels of one block (uint32, 1..n in C order of first voxel, 0 = background)."""
    import cc3d
    fg = foreground(block, binary=binary, background=background)
    if fg.dtype == np.uint64 and fg.size and int(fg.max()) >= 2**63:
        # cc3d reads uint64 values through a C long and fails at 2**63 and above; components
        # only depend on which values are equal, so dense ids (0 kept) label the same
        import fastremap
        fg = fastremap.renumber(np.array(fg, order="C"), preserve_zero=True)[0]
    labels: np.ndarray = cc3d.connected_components(  # type: ignore[call-overload]
        np.ascontiguousarray(fg), connectivity=connectivity, out_dtype=np.uint32)
    return labels


def _stats_kernel():
    from numba import njit

    @njit(cache=True, nogil=True)
    def stats(labels, n, faces):  # pragma: no cover - compiled
        nz, ny, nx = labels.shape
        size = np.zeros(n + 1, np.int64)
        first = np.full(n + 1, -1, np.int64)
        flat = labels.reshape(-1)
        for i in range(flat.size):
            lab = flat[i]
            if lab:
                size[lab] += 1
                if first[lab] < 0:
                    first[lab] = i
        touch = np.zeros(n + 1, np.bool_)
        for side in range(6):
            if not faces[side]:
                continue
            axis, hi = side // 2, side % 2
            if axis == 0:
                k = nz - 1 if hi else 0
                for y in range(ny):
                    for x in range(nx):
                        touch[labels[k, y, x]] = True
            elif axis == 1:
                k = ny - 1 if hi else 0
                for z in range(nz):
                    for x in range(nx):
                        touch[labels[z, k, x]] = True
            else:
                k = nx - 1 if hi else 0
                for z in range(nz):
                    for y in range(ny):
                        touch[labels[z, y, k]] = True
        touch[0] = False
        return size, first, touch

    return stats


_STATS: Any = None
_APPLY: Any = None


def apply_lut(lut: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``lut[labels]`` in one compiled loop that releases the GIL (NumPy's gather measured
    9x slower on a 64x256x256 block, and holds the GIL)."""
    global _APPLY
    if _APPLY is None:
        from numba import njit

        @njit(cache=True, nogil=True)
        def apply(lut, flat, out):  # pragma: no cover - compiled
            for i in range(flat.size):
                out[i] = lut[flat[i]]

        _APPLY = apply
    out = np.empty(labels.shape, lut.dtype)
    _APPLY(lut, np.ascontiguousarray(labels).reshape(-1), out.reshape(-1))
    return out


@dataclass
class BlockComponents:
    """The facts of one labelled block that the whole-volume numbering needs."""

    labels: np.ndarray          # local labels (uint32)
    size: np.ndarray            # [n+1] voxels per local label
    first: np.ndarray           # [n+1] local C-order index of its first voxel
    face: np.ndarray            # [n+1] touches a block face inside the volume
    origin: tuple[int, ...]     # the block's first voxel in the volume
    vshape: tuple[int, ...]     # the volume's shape

    @property
    def n(self) -> int:
        return self.size.size - 1

    def interior_kept(self, min_size: int) -> np.ndarray:
        """Local labels wholly inside the block and at least ``min_size`` voxels, by first voxel
        (their numbering is decided here; pieces on faces are decided across blocks)."""
        ids = np.flatnonzero(~self.face & (self.size >= max(min_size, 1)))
        ids = ids[ids > 0]
        return ids[np.argsort(self.first[ids], kind="stable")]

    def rows(self, local_first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(z, y) within the block of local C-order indices."""
        _, ny, nx = self.labels.shape
        r = local_first // nx
        return r // ny, r % ny

    def keys(self, local_first: np.ndarray) -> np.ndarray:
        """Global C-order index (in the whole volume) of local C-order indices."""
        _, ny, nx = self.labels.shape
        lz, rest = np.divmod(local_first, ny * nx)
        ly, lx = np.divmod(rest, nx)
        Z, Y, X = self.vshape
        z0, y0, x0 = self.origin
        return ((lz + z0) * Y + (ly + y0)) * X + (lx + x0)

    def before_in_row(self, kept_first: np.ndarray, local_first: np.ndarray) -> np.ndarray:
        """How many interior components kept in this block start earlier in the same row."""
        nx = self.labels.shape[2]
        row_start = (local_first // nx) * nx
        return (np.searchsorted(kept_first, local_first, "left")
                - np.searchsorted(kept_first, row_start, "left"))


def block_components(labels: np.ndarray, region: tuple[slice, ...],
                     vshape: tuple[int, ...]) -> BlockComponents:
    """Sizes, first voxels and face contact of each local label of a block at ``region``."""
    global _STATS
    if _STATS is None:
        _STATS = _stats_kernel()
    n = int(labels.max()) if labels.size else 0
    faces = np.array([s.start > 0 if hi == 0 else s.stop < v
                      for s, v in zip(region, vshape) for hi in (0, 1)], np.bool_)
    size, first, touch = _STATS(np.ascontiguousarray(labels), n, faces)
    return BlockComponents(labels, size, first, touch, tuple(s.start for s in region),
                           tuple(vshape))


def face_pairs(own: np.ndarray, neighbour: np.ndarray, *, own_block: int, axis: int,
               own_index: tuple[int, ...], origin: tuple[int, ...], block: tuple[int, ...],
               counts: tuple[int, ...], connectivity: int) -> np.ndarray:
    """Pairs of piece ids that touch across the low face of a block along ``axis``.

    ``own`` is the block's first plane along ``axis`` (2-D, local labels); ``neighbour`` the
    last plane of the blocks below along ``axis``, over the same in-plane range grown by one
    voxel on each side (0 past the volume). Every in-plane offset the connectivity allows is
    tried, so edge and corner neighbours count for 18 and 26.
    """
    order = CONNECTIVITY_ORDER[connectivity]
    inplane = [a for a in range(3) if a != axis]
    h, w = own.shape
    out = []
    for db in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if 1 + abs(db) + abs(dc) > order:
                continue
            nb = neighbour[1 + db:1 + db + h, 1 + dc:1 + dc + w]
            hit = (own != 0) & (nb != 0)
            if not hit.any():
                continue
            ii, jj = np.nonzero(hit)
            gb = origin[inplane[0]] + ii + db  # global in-plane coordinates of the neighbour
            gc = origin[inplane[1]] + jj + dc
            bidx: list[Any] = [0, 0, 0]
            bidx[axis] = own_index[axis] - 1
            bidx[inplane[0]] = gb // block[inplane[0]]
            bidx[inplane[1]] = gc // block[inplane[1]]
            nb_flat = np.ravel_multi_index(tuple(np.broadcast_to(b, ii.shape) for b in bidx),
                                           counts)
            a = node_ids(own_block, own[ii, jj])
            b = (nb_flat.astype(np.int64) << np.int64(32)) | nb[ii, jj].astype(np.int64)
            out.append(np.stack([a, b], axis=1))
    if not out:
        return np.empty((0, 2), np.int64)
    return np.unique(np.concatenate(out), axis=0)
