"""Chunk-aware patch sampling from zarr: random locations, decoded chunks kept for reuse.

A :class:`ChunkCache` keeps decoded storage chunks (least recently used out first, within a
byte budget), so patches that overlap, or land in chunks read before, decode nothing again. A
:class:`PatchSampler` picks label windows (uniform, toward foreground, or class-balanced;
inside the annotated mask; outside a held-out region), reads each window's input around it
(grown by the network's context and by what the augmentation needs, reflected past the
volume's edges) and returns a batch that depends only on ``(seed, step)``: a resumed run gets
the same patches, whatever thread made them.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.contract import read_padded
from ..errors import InvalidArgumentError
from .augment import AugmentConfig, draw

Region = tuple[slice, ...]
IGNORE = -1   # the target value of a voxel that counts nowhere
CELL = 32     # the sampling index counts classes per cell of CELL^3 voxels


class ArraySource:
    """An in-RAM array with the interface the sampler reads (``shape``, ``dtype``, ``read``)."""

    def __init__(self, array: np.ndarray, name: str = "array"):
        self.array, self.url = array, name
        self.shape, self.dtype = tuple(array.shape), array.dtype
        self.chunks = tuple(min(64, n) for n in self.shape)

    def read(self, region: Region) -> np.ndarray:
        return self.array[region]


class ChunkCache:
    """Decoded storage chunks of one volume within ``budget`` bytes, least recently used out."""

    def __init__(self, volume: Any, budget: int):
        self.volume, self.budget = volume, int(budget)
        self.shape, self.dtype, self.url = tuple(volume.shape), volume.dtype, volume.url
        self.chunks = tuple(volume.chunks)
        self._chunks: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _chunk(self, idx: tuple[int, ...]) -> np.ndarray:
        with self._lock:
            got = self._chunks.get(idx)
            if got is not None:
                self._chunks.move_to_end(idx)
                self.hits += 1
                return got
            self.misses += 1
        region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in
                       zip(idx, self.chunks, self.shape))
        data = np.asarray(self.volume.read(region))
        with self._lock:
            if idx not in self._chunks:
                self._chunks[idx] = data
                self._bytes += data.nbytes
                while self._bytes > self.budget and len(self._chunks) > 1:
                    self._bytes -= self._chunks.popitem(last=False)[1].nbytes
        return data

    def read(self, region: Region) -> np.ndarray:
        """``region`` (inside the volume) assembled from cached chunks."""
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, self.chunks)]
        if all(len(r) == 1 for r in ranges):   # inside one chunk: a view of it
            idx = tuple(r[0] for r in ranges)
            ch = self._chunk(idx)
            return ch[tuple(slice(s.start - i * c, s.stop - i * c)
                            for s, i, c in zip(region, idx, self.chunks))]
        out = np.empty(tuple(s.stop - s.start for s in region), self.dtype)
        for idx in np.ndindex(*(len(r) for r in ranges)):
            ci = tuple(r[k] for r, k in zip(ranges, idx))
            lo = [max(s.start, i * c) for s, i, c in zip(region, ci, self.chunks)]
            hi = [min(s.stop, (i + 1) * c) for s, i, c in zip(region, ci, self.chunks)]
            ch = self._chunk(ci)
            out[tuple(slice(a - s.start, b - s.start) for a, b, s in zip(lo, hi, region))] = \
                ch[tuple(slice(a - i * c, b - i * c) for a, b, i, c in zip(lo, hi, ci, self.chunks))]
        return out


@dataclass
class Target:
    """How label values become the loss's classes: binary (foreground or not) for a sigmoid
    net, the label value itself for a softmax net of ``classes`` classes. ``ignore`` labels and
    voxels outside the mask become :data:`IGNORE`."""

    classes: int = 2
    foreground: tuple[int, ...] | None = None   # None: every label > 0
    ignore: int | None = None
    binary: bool = True
    affinities: bool = False   # the net learns 3 nearest-neighbour affinities of the instances

    def affinity(self, labels: np.ndarray, mask: np.ndarray | None,
                 low: tuple[bool, ...]) -> np.ndarray:
        """(3, *S) int8: channel k is 1 where a voxel and its neighbour one lower along axis k
        hold the same instance id (not 0), 0 where they differ or either is background, IGNORE
        where either is ignored, outside the mask, or (``low[k]`` false) outside the patch.
        ``labels`` holds one extra layer below ``S`` along each axis where ``low`` says so.

        >>> Target(affinities=True).affinity(np.array([[[0, 5, 5, 7]]]), None,
        ...                                  (False, False, True))[2].tolist()
        [[[0, 1, 0]]]
        """
        own = tuple(slice(1 if lo else 0, None) for lo in low)
        cur = labels[own]
        out = np.empty((3, *cur.shape), np.int8)
        bad = np.zeros(labels.shape, bool)
        if self.ignore is not None:
            bad |= labels == self.ignore
        if mask is not None:
            bad |= mask == 0
        for k in range(3):
            if low[k]:
                prev_sl = list(own)
                prev_sl[k] = slice(0, -1)
                prev, prev_bad = labels[tuple(prev_sl)], bad[tuple(prev_sl)]
            else:
                shifted = [slice(None)] * 3
                shifted[k] = slice(0, -1)
                prev = np.empty_like(cur)
                prev_bad = np.ones(cur.shape, bool)
                dst = [slice(None)] * 3
                dst[k] = slice(1, None)
                prev[tuple(dst)] = cur[tuple(shifted)]
                prev_bad[tuple(dst)] = bad[own][tuple(shifted)]
            a = ((cur == prev) & (cur != 0)).astype(np.int8)
            a[prev_bad | bad[own]] = IGNORE
            out[k] = a
        return out

    def __call__(self, labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if self.binary:
            fg = np.isin(labels, self.foreground) if self.foreground else labels > 0
            t = fg.astype(np.int8)
        else:
            t = labels.astype(np.int16)
        if self.ignore is not None:
            t[labels == self.ignore] = IGNORE
        if mask is not None:
            t[mask == 0] = IGNORE
        return t

    def check(self, labels: np.ndarray, where: str) -> None:
        if self.binary:
            return
        valid = labels if self.ignore is None else labels[labels != self.ignore]
        if valid.size and (valid.min() < 0 or valid.max() >= self.classes):
            bad = int(valid.max() if valid.max() >= self.classes else valid.min())
            raise InvalidArgumentError(
                f"label value {bad} in {where} is not a class of this {self.classes}-class net "
                f"(classes are 0..{self.classes - 1}; set data.ignore_label for unlabelled voxels)")


@dataclass
class Pair:
    """One training volume: raw, labels, optional mask, and a region held out (validation)."""

    raw: Any
    labels: Any
    mask: Any = None
    exclude: Region | None = None


class PatchSampler:
    """Random training patches from volumes that stay on disk.

    Parameters
    ----------
    pairs : list of Pair
        Sources are Volumes (read through a :class:`ChunkCache`) or :class:`ArraySource`.
    patch : z,y,x
        The network's input size; ``output`` its output size (smaller for valid nets: labels
        are cropped to it).
    mode : {"uniform", "foreground", "balanced"}
        uniform: every label window inside the mask equally likely (near enough: a window is
        placed around a random annotated voxel); foreground: a ``foreground_fraction`` of
        patches centred near a random foreground voxel; balanced: a class drawn uniformly, then
        a voxel of it.
    """

    def __init__(self, pairs: Sequence[Pair], patch: Sequence[int], output: Sequence[int], *,
                 target: Target, augment: AugmentConfig | None = None, mode: str = "uniform",
                 foreground_fraction: float = 0.5, cache_bytes: int = 1 << 30, seed: int = 0,
                 scale: float = 255.0, normalize: tuple[float, float] = (0.0, 1.0),
                 threads: int = 2, patches_per_region: int = 0,
                 region: Sequence[int] | None = None):
        self.patch = tuple(int(p) for p in patch)
        self.output = tuple(int(o) for o in output)
        self.margin = tuple((p - o) // 2 for p, o in zip(self.patch, self.output))
        self.target, self.mode, self.seed = target, mode, int(seed)
        self.augment = augment or AugmentConfig.off()
        self.fg_fraction = float(foreground_fraction)
        self.scale, self.normalize = float(scale), normalize
        n_sources = sum(2 + (p.mask is not None) for p in pairs)
        each = max(1 << 20, int(cache_bytes) // max(1, n_sources))

        def wrap(v: Any) -> Any:
            return v if isinstance(v, ArraySource) or v is None else ChunkCache(v, each)

        self.pairs = [Pair(wrap(p.raw), wrap(p.labels), wrap(p.mask), p.exclude) for p in pairs]
        for p in self.pairs:
            if any(o > n for o, n in zip(self.output, p.labels.shape)):
                raise InvalidArgumentError(
                    f"the net's output size {','.join(map(str, self.output))} (of patch "
                    f"{','.join(map(str, self.patch))}) is larger than {p.labels.url}, shape "
                    f"{','.join(map(str, p.labels.shape))}")
        self.counts = [self._index(p, threads) for p in self.pairs]
        # what every draw weighs by, summed once: annotated voxels per cell, class voxels per volume
        self.annotated = [c.sum(axis=-1) for c in self.counts]
        self.per_volume = np.array([c.reshape(-1, c.shape[-1]).sum(axis=0) for c in self.counts])
        self._zone: tuple[int, Any] = (-1, None)   # the last zone drawn, for its next patches
        # several patches per region: consecutive patches come from one region of whole cells
        # (2x the output per axis by default), so a volume larger than the cache decodes each
        # of its chunks for many patches, not one
        self.per_region = int(patches_per_region)
        want = region if region is not None else tuple(2 * o for o in self.output)
        self.region_cells = tuple(max(1, -(-int(w) // CELL)) for w in want)
        total = self.class_voxels = self.per_volume.sum(axis=0)
        if total.sum() == 0:
            raise InvalidArgumentError("no annotated voxel to train on (the mask and ignore label "
                                       "leave nothing)")
        if mode in ("foreground", "balanced") and total[1:].sum() == 0:
            raise InvalidArgumentError(f"sampling {mode!r} needs foreground, and the labels have none")

    # -- the index: voxels of each class per cell of a fixed grid (not the storage chunks, so
    #    the same seed draws the same patches from any chunking) ------------------------------
    def _index(self, p: Pair, threads: int) -> np.ndarray:
        shape, ncls = p.labels.shape, self.target.classes
        cells = tuple(-(-n // CELL) for n in shape)
        counts = np.zeros((*cells, ncls), np.int64)
        chunks = tuple(max(CELL, c - c % CELL) for c in p.labels.chunks)  # whole cells per read

        def one(idx: tuple[int, ...]) -> np.ndarray:
            region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, chunks, shape))
            t = self._region_target(p, region, check=True)
            ids = np.zeros(t.shape, np.int64)
            for a, r in enumerate(region):
                axis = np.arange(r.start, r.stop) // CELL
                ids = ids * cells[a] + axis.reshape([-1 if b == a else 1 for b in range(3)])
            ok = t >= 0
            return np.bincount(ids[ok] * ncls + t[ok], minlength=counts.size)

        grid = tuple(-(-n // c) for n, c in zip(shape, chunks))
        with ThreadPoolExecutor(max(1, threads)) as ex:
            for part in ex.map(one, np.ndindex(*grid)):
                counts += part.reshape(counts.shape)
        return counts

    def _region_target(self, p: Pair, region: Region, check: bool = False) -> np.ndarray:
        """The target classes of ``region``: IGNORE outside the mask and in the held-out region."""
        lab = p.labels.read(region)
        if check:
            self.target.check(lab, p.labels.url)
        t = self.target(lab, None if p.mask is None else p.mask.read(region))
        if p.exclude is not None:
            t = t.copy()
            t[_local(p.exclude, region)] = IGNORE
        return t

    @staticmethod
    def _cell_region(p: Pair, idx: Sequence[int]) -> Region:
        return tuple(slice(i * CELL, min((i + 1) * CELL, n)) for i, n in zip(idx, p.labels.shape))

    # -- locations ----------------------------------------------------------------------------
    def zone(self, group: int) -> tuple[int, Region] | None:
        """The region (volume, cells) patch group ``group`` draws from; None: anywhere."""
        if not self.per_region:
            return None
        last = self._zone
        if last[0] == group:
            return last[1]
        rng = np.random.default_rng([self.seed, int(group), 0x5EED])
        w = self.per_volume.sum(axis=1).astype(np.float64)
        k = int(rng.choice(len(self.pairs), p=w / w.sum()))
        c = self.annotated[k]
        flat = c.ravel().astype(np.float64)
        centre = np.unravel_index(int(rng.choice(flat.size, p=flat / flat.sum())), c.shape)
        box = []
        for i, r, n in zip(centre, self.region_cells, c.shape):
            lo = int(np.clip(int(i) - r // 2, 0, max(0, n - r)))
            box.append(slice(lo, min(n, lo + r)))
        zone = (k, tuple(box))
        self._zone = (group, zone)
        return zone

    def location(self, rng: np.random.Generator, zone: tuple[int, Region] | None = None
                 ) -> tuple[int, tuple[int, ...]]:
        """(volume, start of the label window) for one patch (inside ``zone`` when it can be)."""
        cls: int | None = None
        if self.mode == "balanced":
            present = np.flatnonzero(self.class_voxels > 0)
            cls = int(rng.choice(present))
        elif self.mode == "foreground" and rng.random() < self.fg_fraction:
            present = np.flatnonzero(self.class_voxels[1:] > 0) + 1
            cls = int(rng.choice(present))
        for attempt in range(1000):
            k, start = self._candidate(rng, cls, zone if attempt < 100 else None)
            if self._acceptable(self.pairs[k], start):
                return k, start
        raise InvalidArgumentError(
            f"found no label window of {','.join(map(str, self.output))} voxels inside the mask "
            "and outside the validation region in 1000 tries: the patch is too large for the "
            "annotated regions")

    def _candidate(self, rng: np.random.Generator, cls: int | None,
                   zone: tuple[int, Region] | None = None) -> tuple[int, tuple[int, ...]]:
        if zone is not None:
            got = self._in_zone(rng, cls, *zone)
            if got is not None:
                return got
        if cls is None and all(p.mask is None and p.exclude is None for p in self.pairs):
            sizes = np.array([np.prod(p.labels.shape, dtype=np.float64) for p in self.pairs])
            k = int(rng.choice(len(self.pairs), p=sizes / sizes.sum()))
            shape = self.pairs[k].labels.shape
            return k, tuple(int(rng.integers(0, n - o + 1)) for n, o in zip(shape, self.output))
        # a random voxel of the class (or of any annotated class), then a window around it
        w = (self.per_volume[:, cls] if cls is not None else self.per_volume.sum(axis=1))
        w = w.astype(np.float64)
        k = int(rng.choice(len(self.pairs), p=w / w.sum()))
        c = self.counts[k][..., cls] if cls is not None else self.annotated[k]
        return self._around(rng, k, cls, c, (slice(None),) * 3)

    def _in_zone(self, rng: np.random.Generator, cls: int | None, k: int, box: Region
                 ) -> tuple[int, tuple[int, ...]] | None:
        if cls is not None and self.counts[k][box][..., cls].any():
            return self._around(rng, k, cls, self.counts[k][box][..., cls], box)
        c = self.annotated[k][box]   # no voxel of the class here: any annotated one
        return self._around(rng, k, None, c, box) if c.any() else None

    def _around(self, rng: np.random.Generator, k: int, cls: int | None, c: np.ndarray,
                box: Region) -> tuple[int, tuple[int, ...]]:
        """A window around a random voxel of class ``cls`` (any annotated one: None) in a cell
        drawn by ``c`` (counts over the cells ``box``), kept inside the box where it fits."""
        flat = c.ravel().astype(np.float64)
        pick = np.unravel_index(int(rng.choice(flat.size, p=flat / flat.sum())), c.shape)
        p = self.pairs[k]
        region = self._cell_region(p, [int(i) + (b.start or 0) for i, b in zip(pick, box)])
        t = self._region_target(p, region)
        hits = np.flatnonzero(t == cls) if cls is not None else np.flatnonzero(t >= 0)
        v = np.unravel_index(int(hits[int(rng.integers(hits.size))]), t.shape)
        start = []
        for a in range(3):
            n, o = p.labels.shape[a], self.output[a]
            voxel = region[a].start + int(v[a])
            lo = voxel - int(rng.integers(0, o))
            z0 = (box[a].start or 0) * CELL
            z1 = min(n, box[a].stop * CELL) if box[a].stop is not None else n
            if z1 - z0 >= o:
                lo = int(np.clip(lo, z0, z1 - o))
            start.append(int(np.clip(lo, 0, n - o)))
        return k, tuple(start)

    def _acceptable(self, p: Pair, start: Sequence[int]) -> bool:
        window = tuple(slice(s, s + o) for s, o in zip(start, self.output))
        if p.exclude is not None and all(w.start < e.stop and e.start < w.stop
                                         for w, e in zip(window, p.exclude)):
            return False
        return p.mask is None or bool(np.all(p.mask.read(window)))

    # -- patches ------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, zone: tuple[int, Region] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """One (input, target) pair: float32 (1, *patch) and int8/int16 (*output)."""
        k, start = self.location(rng, zone)
        p = self.pairs[k]
        t = draw(rng, self.patch, self.augment)  # type: ignore[arg-type]
        origin = [s - m for s, m in zip(start, self.margin)]
        box = tuple(slice(o + b.start, o + b.stop) for o, b in zip(origin, t.box))
        raw = read_padded(p.raw, box, "reflect").astype(np.float32) / np.float32(self.scale)
        if p.raw.dtype.kind == "f" and not np.isfinite(raw).all():
            bad = np.argwhere(~np.isfinite(raw))[0]
            at = ",".join(str(int(b) + int(s.start)) for b, s in zip(bad, box))
            raise InvalidArgumentError(
                f"the raw volume {getattr(p.raw, 'url', '')} holds NaN or infinite values "
                f"(one at z,y,x {at}): a network cannot learn from them; replace them first")
        lab = read_padded(p.labels, box, "reflect")
        arrays = [lab] + ([read_padded(p.mask, box, "reflect")] if p.mask is not None else [])
        x, *rest = t.apply(raw, *arrays)
        if self.target.affinities:  # one layer more below, where the patch has it
            low = tuple(m > 0 for m in self.margin)
            crop = tuple(slice(m - lo, m + o) for m, o, lo in zip(self.margin, self.output, low))
            target = self.target.affinity(rest[0][crop], rest[1][crop] if p.mask is not None
                                          else None, low)
        else:
            crop = tuple(slice(m, m + o) for m, o in zip(self.margin, self.output))
            target = self.target(rest[0][crop], rest[1][crop] if p.mask is not None else None)
        mean, std = self.normalize
        x = (x * np.float32(self.scale) - np.float32(mean)) / np.float32(std)
        return x[None].astype(np.float32, copy=False), target

    def batch(self, step: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch of ``step``: the same for the same ``(seed, step)``, on any run."""
        rng = np.random.default_rng([self.seed, int(step)])
        first = int(step) * size
        xs, ys = zip(*(self.sample(rng, self.zone((first + i) // self.per_region)
                                   if self.per_region else None) for i in range(size)))
        return np.stack(xs), np.stack(ys)

    def cache_stats(self) -> dict[str, int]:
        caches = [c for p in self.pairs for c in (p.raw, p.labels, p.mask) if isinstance(c, ChunkCache)]
        return {"hits": sum(c.hits for c in caches), "misses": sum(c.misses for c in caches)}


def _local(region: Region, within: Region) -> Region:
    """``region`` clipped to ``within``, in ``within``'s coordinates."""
    return tuple(slice(min(max(r.start - w.start, 0), w.stop - w.start),
                       min(max(r.stop - w.start, 0), w.stop - w.start)) for r, w in zip(region, within))


class Prefetcher:
    """Batches for steps ``first, first+1, ...`` made ahead by background threads, in order."""

    def __init__(self, sampler: PatchSampler, batch: int, first: int, workers: int = 1,
                 ahead: int = 4):
        self.sampler, self.size = sampler, batch
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="emarray-sampler")
        self.next_step, self.ahead = first, max(1, ahead)
        self.pending: list[Any] = []

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        while len(self.pending) < self.ahead:
            self.pending.append(self.pool.submit(self.sampler.batch, self.next_step, self.size))
            self.next_step += 1
        return self.pending.pop(0).result()

    def close(self) -> None:
        for f in self.pending:
            f.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
