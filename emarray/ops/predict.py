"""Chunk-aware inference: a 3D U-Net over a volume larger than memory, blended into zarr.

The network's output tiles lie on one grid over the whole volume (:class:`Tiling`): tile ``k``
along an axis starts at ``k * stride`` (``stride = output - overlap``), the last one moved back
to end at the volume's edge, as MONAI's sliding window places them. Each block of the output
reads its region grown by a tile and the network's context (reflected past the volume's
edges), runs every tile that touches it, blends them with the tile weights and keeps its own
region. So the result equals one sliding window over the whole volume, for any chunking;
overlap costs recomputation at block borders, never shared sum or weight arrays.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .._normalize import parse_tuple, whole_number
from ..engine import BlockContext, BlockGrid, Read, RunOptions, Stage, Write, check_aligned, run_job
from ..spec import COMPRESSIONS, ENGINE, INCOMPLETE, REPLACE, Operator, Param, Port
from ..errors import (BackendUnavailableError, EmarrayWarning, InvalidArgumentError,
                      VolumeNotFoundError)
from ..codecs import compressor_codecs
from ..volume import Volume, create_volume, open_volume
from .common import as_volume, job_identity, layout_of

log = logging.getLogger("emarray")

BLENDS = ("gaussian", "bump", "constant")
DTYPES = ("float32", "float16", "uint8")
PRECISIONS = ("auto", "float32", "bfloat16")
MIN_WEIGHT = 1e-3  # MONAI's floor: no voxel's weight sum is ever zero


# -- the tiles and their weights -----------------------------------------------------------------
def tile_weights(size: Sequence[int], blend: str) -> np.ndarray:
    """The weight of each voxel of an output tile (float32), floored at ``MIN_WEIGHT``.

    ``gaussian`` is MONAI's importance map (sigma = size / 8 per axis, centred); ``bump`` the
    smooth bump exp(4 - 1/(u(1-u))) with u = (i+1)/(size+1), which falls to the floor at the
    tile's edges; ``constant`` weighs every voxel alike.

    >>> [round(float(v), 3) for v in tile_weights((1, 1, 4), "bump").ravel()]
    [0.105, 0.846, 0.846, 0.105]
    """
    if blend not in BLENDS:
        raise InvalidArgumentError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    w = np.ones((), np.float32)
    for n in size:
        if blend == "gaussian":
            x = np.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=np.float32)
            sigma = np.float32(n * 0.125)
            axis_w = np.exp(x * x / (np.float32(-2) * sigma * sigma)).astype(np.float32)
        elif blend == "bump":
            u = np.arange(1, n + 1, dtype=np.float64) / (n + 1)
            axis_w = np.exp(4.0 - 1.0 / (u * (1.0 - u))).astype(np.float32)
        else:
            axis_w = np.ones(n, np.float32)
        w = np.multiply.outer(w, axis_w).astype(np.float32)
    return np.maximum(w, np.float32(max(float(w.min()), MIN_WEIGHT))).astype(np.float32)


@dataclass(frozen=True)
class Tiling:
    """Where the network's tiles lie over a volume: the same grid for every block.

    ``out`` is a tile's output size, ``context`` what a valid net eats at each side of its
    input, ``stride`` the step between tiles.
    """

    shape: tuple[int, ...]
    out: tuple[int, ...]
    context: tuple[int, ...]
    stride: tuple[int, ...]

    def starts(self, axis: int) -> np.ndarray:
        """Every tile's first output voxel along ``axis`` (the last one ends at the edge)."""
        n, o, s = self.shape[axis], self.out[axis], self.stride[axis]
        if n <= o:
            return np.zeros(1, np.int64)
        k = -(-(n - o) // s)  # tiles 0..k; tile k is moved back to end at n
        return np.unique(np.minimum(np.arange(k + 1, dtype=np.int64) * s, n - o))

    def touching(self, region: Sequence[slice]) -> list[np.ndarray]:
        """Per axis, the starts of the tiles whose output overlaps ``region``."""
        out = []
        for a, r in enumerate(region):
            st = self.starts(a)
            out.append(st[(st < r.stop) & (st + self.out[a] > r.start)])
        return out

    def count(self, region: Sequence[slice]) -> int:
        return int(np.prod([t.size for t in self.touching(region)]))

    @property
    def halo(self) -> tuple[int, ...]:
        """What a block reads beyond its region: a tile less one voxel, plus the context."""
        return tuple(o - 1 + c for o, c in zip(self.out, self.context))

    @property
    def total(self) -> int:
        """Tiles of one sliding window over the whole volume."""
        return int(np.prod([self.starts(a).size for a in range(len(self.shape))]))


def mc_seed(seed: int, start: Sequence[int], sample: int) -> int:
    """The dropout seed of one tile and sample: fixed by position, not by block or batch."""
    return int(np.random.SeedSequence([int(seed), *map(int, start), int(sample)])
               .generate_state(1, np.uint64)[0] >> 1)


# -- the network on a worker ---------------------------------------------------------------------
class Predictor:
    """The model, loaded once per worker (and device), that runs batches of tiles."""

    def __init__(self, path: str, device: str, precision: str, threads: int | None):
        import torch
        from ..models import load_model
        if threads:
            torch.set_num_threads(int(threads))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("--backend cuda: PyTorch sees no CUDA device on this worker")
        self.device = torch.device(device)
        self.mf = load_model(path, self.device)
        # channels-last puts 3-D convolutions on oneDNN/cuDNN's fast kernels (2.4x on a CPU)
        self.mf.module.to(memory_format=torch.channels_last_3d)
        self.bf16 = (self.device.type == "cuda" and precision in ("auto", "bfloat16")
                     and torch.cuda.is_bf16_supported())
        if precision == "bfloat16" and self.device.type == "cpu":
            self.bf16 = True
        if precision == "float32" and self.device.type == "cuda":  # no TF32 either: the CPU's sums
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False

    def __call__(self, x: np.ndarray, seeds: Sequence[int] | None = None) -> np.ndarray:
        import torch
        from ..models.unet import mc_seeds
        n = x.shape[0]
        if n == 1:  # PyTorch runs a batch of one small 3-D patch on its slow convolution:
            x = np.concatenate([x, x])  # two patches cost less than one there
            seeds = list(seeds) * 2 if seeds is not None else None
        t = torch.from_numpy(x).to(self.device, non_blocking=True)
        t = t.contiguous(memory_format=torch.channels_last_3d)
        amp = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16
               else contextlib.nullcontext())
        mc = mc_seeds(seeds) if seeds is not None else contextlib.nullcontext()
        with torch.inference_mode(), amp, mc:
            y = self.mf.module(t)
        return y[:n].float().cpu().numpy()


# -- one block -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Everything a block needs besides its data (small: it travels with every task)."""

    tiling: Tiling
    weights: np.ndarray
    mean: float
    std: float
    channels: tuple[int, ...]
    batch: int
    samples: int
    seed: int
    dtype: str
    var_dtype: str | None
    in_channels_axis: bool

    def batches(self, tiles: list[tuple[int, ...]]) -> Iterator[list[tuple[tuple[int, ...], int]]]:
        items = [(t, k) for t in tiles for k in range(max(1, self.samples))]
        for i in range(0, len(items), self.batch):
            yield items[i:i + self.batch]


def quantise(p: np.ndarray, dtype: str) -> np.ndarray:
    """float32 probabilities to the output dtype (uint8: round(p * 255), clipped)."""
    if dtype == "uint8":
        return np.clip(np.rint(p * np.float32(255)), 0, 255).astype(np.uint8)
    return p.astype(dtype)


def predict_block(ctx: BlockContext, raw: np.ndarray, *, plan: Plan) -> Any:
    """Run every tile touching this block, blend them, return the block's region."""
    tiling = plan.tiling
    region = ctx.region
    read = ctx.reads[0][1:] if plan.in_channels_axis else ctx.reads[0]
    x = (raw.astype(np.float32) - np.float32(plan.mean)) / np.float32(plan.std)
    if not plan.in_channels_axis:
        x = x[None]
    shape = tuple(r.stop - r.start for r in region)
    nch = len(plan.channels)
    acc = np.zeros((nch, *shape), np.float32)
    acc_var = np.zeros((nch, *shape), np.float32) if plan.samples > 1 else None
    wsum = np.zeros(shape, np.float32)
    tiles = list(itertools.product(*(t.tolist() for t in tiling.touching(region))))
    # the per-tile sums of the Monte-Carlo samples (tiles of one batch finish together)
    pending: dict[tuple[int, ...], list[np.ndarray]] = {}
    for items in plan.batches(tiles):
        inputs = np.stack([x[(slice(None),) + tuple(
            slice(t - c - r.start, t + o + c - r.start)
            for t, c, o, r in zip(tile, tiling.context, tiling.out, read))] for tile, _ in items])
        seeds = [mc_seed(plan.seed, tile, k) for tile, k in items] if plan.samples > 1 else None
        y = ctx.state(inputs, seeds)[:, list(plan.channels)]
        for (tile, _), pred in zip(items, y):
            if plan.samples > 1:
                pending.setdefault(tile, []).append(pred)
                if len(pending[tile]) < plan.samples:
                    continue
                stack = np.stack(pending.pop(tile))
                pred = stack.mean(axis=0, dtype=np.float64).astype(np.float32)
                var = stack.var(axis=0, dtype=np.float64).astype(np.float32)
            else:
                var = None
            _blend(acc, acc_var, wsum, pred, var, tile, region, tiling, plan.weights)
    mean = acc / wsum
    out = quantise(mean if nch > 1 else mean[0], plan.dtype)
    if acc_var is None:
        return out
    var = acc_var / wsum
    return out, (var if nch > 1 else var[0]).astype(plan.var_dtype)


def predict_counting_nan(ctx: BlockContext, raw: np.ndarray, *, plan: Plan) -> tuple:
    """:func:`predict_block` on a float raw volume, with the block's NaN voxels counted: its
    own raw voxels (not the halo) and its output voxels, summed over the job."""
    result = predict_block(ctx, raw, plan=plan)
    arrays = result if isinstance(result, tuple) else (result,)
    own = tuple(slice(w.start - r.start, w.stop - r.start)
                for w, r in zip(ctx.region, ctx.reads[0][-3:]))
    mine = raw[(slice(None),) + own] if plan.in_channels_axis else raw[own]
    out = arrays[0]
    nan_out = int(np.isnan(out).any(axis=0).sum()) if out.ndim == 4 else int(np.isnan(out).sum())
    return (*arrays, np.array([int(np.isnan(mine).sum()), nan_out], np.int64))


def _record_nan(acc: Any, *, vol: Volume) -> dict[str, int]:
    """Driver: keep the NaN counts in the output's metadata (for the warning, and for later)."""
    counts = {"nan_input_voxels": int(acc[0]), "nan_output_voxels": int(acc[1])} \
        if acc is not None else {"nan_input_voxels": 0, "nan_output_voxels": 0}
    g = vol.open_group()
    g.attrs["emarray"] = {**dict(g.attrs.get("emarray") or {}), **counts}
    return counts


def warn_nan(result: Volume, raw: Volume) -> None:
    """One warning line when NaN voxels of the raw volume spread into the prediction."""
    em = result.attrs.get("emarray", {})
    n_in, n_out = int(em.get("nan_input_voxels", 0)), int(em.get("nan_output_voxels", 0))
    if n_in or n_out:
        import warnings
        total = int(np.prod(result.shape[-3:]))
        warnings.warn(
            f"{raw.url} holds {n_in:,} NaN voxels: the network turns every output voxel within "
            f"its reach of one into NaN, here {n_out:,} of {total:,} ({100 * n_out / total:.2g} %); "
            "replace them first (e.g. with the volume's mean)", EmarrayWarning, stacklevel=3)


def _blend(acc: np.ndarray, acc_var: np.ndarray | None, wsum: np.ndarray, pred: np.ndarray,
           var: np.ndarray | None, tile: tuple[int, ...], region: Sequence[slice], tiling: Tiling,
           weights: np.ndarray) -> None:
    """Add one tile's weighted output to the part of the block it covers."""
    dst, src = [], []
    for t, o, r in zip(tile, tiling.out, region):
        lo, hi = max(t, r.start), min(t + o, r.stop)
        dst.append(slice(lo - r.start, hi - r.start))
        src.append(slice(lo - t, hi - t))
    d, s = tuple(dst), tuple(src)
    w = weights[s]
    acc[(slice(None),) + d] += w * pred[(slice(None),) + s]
    if acc_var is not None and var is not None:
        acc_var[(slice(None),) + d] += w * var[(slice(None),) + s]
    wsum[d] += w


# -- checks before any work ----------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """The model file as an input: every worker must read the very file planned for."""

    path: str
    sha256: str

    def check_handle(self) -> None:
        if not os.path.isfile(self.path):
            raise VolumeNotFoundError(f"no model file at {self.path!r}")
        if file_sha256(self.path) != self.sha256:
            raise InvalidArgumentError(f"the model file {self.path!r} differs from the planned one")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def _channels(channels: Any, n: int) -> tuple[int, ...]:
    if channels is None or channels == "all":
        return tuple(range(n))
    vals = channels.split(",") if isinstance(channels, str) else \
        (list(channels) if isinstance(channels, (list, tuple)) else [channels])
    out = tuple(whole_number(c, "channel", 0) for c in vals)
    bad = [c for c in out if c >= n]
    if bad or not out or len(set(out)) != len(out):
        raise InvalidArgumentError(
            f"channels must be distinct output channels of the model (0..{n - 1}), got {channels!r}")
    return out


def _per_axis(value: Any, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    if value is None:
        return default
    return parse_tuple(value, name, 3, positive=False)


BLOCK_VOXELS = 32 * 2**20  # a default block's budget: ~0.5 GB of float32 maps per task


def default_block(shape: Sequence[int], chunks: Sequence[int], out: Sequence[int]) -> tuple[int, ...]:
    """Whole chunks, at least four tiles per axis, grown (x, then y, then z) to up to eight
    tiles while the block stays within :data:`BLOCK_VOXELS`: tiles crossing a block border run
    once per block they touch, so bigger blocks recompute less.

    >>> default_block((128, 1024, 1024), (32, 128, 128), (32, 64, 64))
    (128, 512, 512)
    """
    def fit(n: int, c: int, want: int) -> int:
        return min(-(-min(n, want) // c) * c, -(-n // c) * c)

    blk = [fit(n, c, 4 * o) for n, c, o in zip(shape, chunks, out)]
    for axis in reversed(range(len(blk))):
        grown = fit(shape[axis], chunks[axis], 8 * out[axis])
        trial = blk[:axis] + [grown] + blk[axis + 1:]
        if int(np.prod(trial)) <= BLOCK_VOXELS:
            blk = trial
    return tuple(blk)


# -- the operator --------------------------------------------------------------------------------
def _says(v: Volume, args: dict[str, Any]) -> list[str]:
    about = v.attrs.get("emarray", {}).get("prediction", {})
    samples = int(args.get("mc_samples") or 0)
    tiles = about.get("tiles", 0) * max(1, samples)
    lines = [f"wrote {v.url}: {v.shape} {v.dtype} ({tiles:,} patches of a whole-volume sliding "
             "window)"]
    if samples > 1:
        lines.append(f"wrote {v.url}/variance: the variance of {samples} dropout samples")
    return lines


def _channel_list(value: Any, name: str) -> Any:
    if value in (None, "all"):
        return None
    vals = value.split(",") if isinstance(value, str) else (
        list(value) if isinstance(value, (list, tuple)) else [value])
    return tuple(whole_number(c, name, 0) for c in vals)


SPEC = Operator(
    "predict", "a 3D U-Net run over a volume into OME-Zarr, equal to one sliding window over "
               "the whole volume for any chunking",
    needs=("torch",),
    inputs=(Port("raw", "volume", "z,y,x (or c,z,y,x for a model of several input channels)"),
            Port("model", "model", "a model file (emarray model new, emarray train) or an "
                                   "emarray TorchScript archive")),
    output=Port("out", "volume", "the prediction: z,y,x, or c,z,y,x when several channels are "
                                 "written"),
    params=(Param("patch", "zyx", "the network's input size (default: the model file's); a "
                                  "valid net's must be admissible", unit="voxels"),
            Param("overlap", "zyx", "overlap of neighbouring output tiles (default: a quarter "
                                    "tile; 0 for valid nets)", positive=False, unit="voxels"),
            Param("blend", "choice", "tile weights (default gaussian; constant for valid nets)",
                  choices=BLENDS),
            Param("dtype", "choice", "output dtype (uint8: round(p*255), a quarter of the store)",
                  choices=DTYPES),
            Param("channels", "text", "the output channels to write, e.g. 0,2 (default all)",
                  parse=_channel_list),
            Param("batch", "int", "patches per forward pass", minimum=1),
            Param("mc_samples", "int", "Monte-Carlo dropout samples per patch: mean in out, "
                                       "variance in out/variance", minimum=0),
            Param("seed", "int", "seed of the Monte-Carlo dropout samples", minimum=0),
            Param("block", "zyx", "voxels per task, whole output chunks (default: four to eight "
                                  "tiles per axis, up to 32 Mi voxels)", unit="voxels"),
            Param("chunks", "zyx", "output chunk shape (default: raw's)", unit="voxels"),
            Param("compression", "choice", "output compression", choices=COMPRESSIONS),
            Param("precision", "choice", "auto: bfloat16 autocast on CUDA where the device has it, "
                                         "else float32", choices=PRECISIONS),
            Param("threads", "int", "PyTorch threads per worker process (default: its share of "
                                    "the cores)", minimum=1)),
    run=ENGINE + REPLACE + INCOMPLETE + ("backend",), says=_says,
    examples=("emarray predict raw.zarr model.pt prob.zarr",
              "emarray predict raw.zarr model.pt prob.zarr --dtype uint8 --mc-samples 8"))


@SPEC.function
def predict(raw: Volume | str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike, *,
            patch: Any = None, overlap: Any = None, blend: str | None = None,
            dtype: str = "float32", channels: Any = None, batch: int = 4, mc_samples: int = 0,
            seed: int = 0, block: Any = None, chunks: Any = None, compression: str = "zstd",
            precision: str = "auto", threads: int | None = None,
            options: RunOptions | None = None, **run: Any) -> Volume:
    """Predict ``raw`` with the network in the model file ``model`` into the OME-Zarr ``out``.

    Equals a sliding window over the whole volume with the same tiles and weights (see
    :class:`Tiling`, :func:`tile_weights`), for any chunking. Past the volume's edges the input
    is reflected. Monte-Carlo samples are seeded by tile position and ``seed``, so they do not
    depend on the chunking either. ``backend`` picks the device: auto, cpu or cuda.

    Returns
    -------
    Volume
        The prediction.

    Examples
    --------
    >>> import emarray, numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> m = emarray.models.new_model(os.path.join(d, "m.pt"), depth=2, filters=2, patch=(8, 8, 8))
    >>> raw = emarray.create_volume(os.path.join(d, "raw.zarr"), (12, 12, 12), "uint8", 6)
    >>> raw.write((slice(0, 12),) * 3, np.arange(12**3, dtype=np.uint8).reshape(12, 12, 12))
    >>> p = emarray.predict(raw, m, os.path.join(d, "p.zarr"))
    >>> p.shape, p.dtype.name
    ((12, 12, 12), 'float32')
    """
    from ..models import load_model, require_torch
    require_torch()
    opts = RunOptions.make(options, **run)
    src = as_volume(raw, opts.allow_incomplete)
    model_path = os.path.realpath(os.fspath(model))
    mf = load_model(model_path)
    cfg = mf.config
    # -- the input and the network agree --
    if src.ndim == 4 and src.axes[0] == "c":
        have = src.shape[0]
        channel_axis = True
    elif src.ndim == 3:
        have, channel_axis = 1, False
    else:
        raise InvalidArgumentError(f"raw must be z,y,x or c,z,y,x, got axes {','.join(src.axes)}")
    if have != cfg.in_channels:
        raise InvalidArgumentError(
            f"the model expects {cfg.in_channels} input channel(s); {src.url} has {have}")
    spatial = tuple(src.shape[1:]) if channel_axis else tuple(src.shape)
    src_chunks = tuple(src.chunks[1:]) if channel_axis else tuple(src.chunks)
    # -- tiles --
    patch = tuple(parse_tuple(patch, "patch", 3)) if patch is not None else mf.patch
    out_tile = cfg.check_patch(patch)
    if mf.torchscript and patch != mf.patch:
        raise InvalidArgumentError(
            f"this TorchScript archive was traced at patch {','.join(map(str, mf.patch))} and takes "
            "no other size")
    valid = cfg.padding == "valid"
    overlap = _per_axis(overlap, "overlap", tuple(0 if valid else o // 4 for o in out_tile))
    bad = [(v, o) for v, o in zip(overlap, out_tile) if not 0 <= v < o]
    if bad:
        raise InvalidArgumentError(
            f"overlap must be >= 0 and less than the output tile ({','.join(map(str, out_tile))}) on "
            f"every axis, got {','.join(map(str, overlap))}")
    blend = blend or ("constant" if valid else "gaussian")
    weights = tile_weights(out_tile, blend)
    tiling = Tiling(spatial, out_tile, cfg.context(), tuple(o - v for o, v in zip(out_tile, overlap)))
    # -- output --
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "uint8" and cfg.activation == "none":
        raise InvalidArgumentError(
            "dtype uint8 stores probabilities as 0..255; this model's output has no sigmoid or "
            "softmax (activation none): use float16 or float32")
    chans = _channels(channels, cfg.out_channels)
    batch = whole_number(batch, "batch", 1)
    samples = whole_number(mc_samples, "mc-samples", 0)
    if samples > 1 and (cfg.dropout == 0 or mf.torchscript):
        raise InvalidArgumentError(
            "--mc-samples needs a model with dropout (emarray model new --dropout P); this one "
            + ("is a TorchScript archive, traced without it" if mf.torchscript else "has none"))
    seed = whole_number(seed, "seed", 0)
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    backend = str(opts.backend).lower()
    if backend == "cuda":
        import torch
        if not torch.cuda.is_available() and opts.scheduler in (None, "threads", "processes",
                                                                 "synchronous"):
            raise BackendUnavailableError("--backend cuda: PyTorch sees no CUDA device here")
    if threads is not None:
        threads = whole_number(threads, "threads", 1)
    out_chunks = parse_tuple(chunks, "chunks", 3) if chunks is not None else src_chunks
    out_chunks = tuple(min(c, n) for c, n in zip(out_chunks, spatial))
    blk = (parse_tuple(block, "block", 3) if block is not None
           else default_block(spatial, out_chunks, out_tile))
    grid = BlockGrid(spatial, tuple(min(b, n) for b, n in zip(blk, spatial)))
    compressor_codecs(compression)
    check_aligned(grid, out_chunks)
    nch = len(chans)
    var_dtype = (None if samples <= 1 else "float32" if dtype == "float32" else "float16")
    plan = Plan(tiling, weights, mf.normalize["mean"], mf.normalize["std"], chans, batch, samples,
                seed, dtype, var_dtype, channel_axis)
    ref = ModelRef(model_path, file_sha256(model_path))
    shape = ((nch,) if nch > 1 else ()) + spatial
    axes = (("c",) if nch > 1 else ()) + tuple(src.axes[-3:])
    vol_chunks = ((nch,) if nch > 1 else ()) + tuple(out_chunks)
    ident = job_identity("predict", {
        "model": ref.sha256, "patch": list(patch), "overlap": list(overlap), "blend": blend,
        "dtype": dtype, "channels": list(chans), "mc_samples": samples, "seed": seed,
        "block": list(grid.block), "precision": precision, "backend": backend}, [src],
        layout_of(vol_chunks, None, compression))
    about = {"model": model_path, "patch": list(patch), "output_tile": list(out_tile),
             "overlap": list(overlap), "blend": blend, "mc_samples": samples,
             "tiles": tiling.total}

    def create(path: str) -> Volume:
        v = create_volume(path, shape, dtype, vol_chunks, compression=compression,
                          voxel_size=src.voxel_size, unit=src.unit, axes=axes,
                          translation=src.translation, attrs={"job": ident, "prediction": about})
        if samples > 1:
            create_volume(os.path.join(path, "variance"), shape, var_dtype, vol_chunks,
                          compression=compression, voxel_size=src.voxel_size, unit=src.unit,
                          translation=src.translation, axes=axes,
                          attrs={"job": ident, "prediction": {**about, "map": "variance"}})
        return v

    with opts.runner("predict") as runner:
        # PyTorch's threads: this machine's cores shared among the blocks that run at once
        at_once = runner.processes_per_device() if runner.distributed else \
            min(runner.n_workers(), len(grid))
        torch_threads = threads or max(1, (os.cpu_count() or 1) // max(1, at_once))
        setup = partial(Predictor, model_path, backend, precision, torch_threads)
        key = f"predict:{ref.sha256}:{backend}:{precision}:{torch_threads}"
        runner.check_volumes([ref])
        log.info("predict: %d tiles of %s (output %s) in %d blocks of %s", tiling.total, patch,
                 out_tile, len(grid), grid.block)

        def stages(vol: Volume) -> list[Stage]:
            writes = [Write(vol, channels="all" if nch > 1 else "same")]
            if samples > 1:
                var = open_volume(os.path.join(vol.url, "variance"))
                writes.append(Write(var, channels="all" if nch > 1 else "same"))
            reads = [Read(src, halo=tiling.halo, boundary="reflect",
                          channels="all" if channel_axis else "same")]
            fold: dict[str, Any] = {}
            fn: Any = predict_block
            if src.dtype.kind == "f":  # NaN can only come from a float raw volume
                fn = predict_counting_nan
                fold = {"combine": np.add, "finalize": partial(_record_nan, vol=vol)}
            return [Stage("predict", partial(fn, plan=plan), grid, reads, writes,
                          setup=setup, setup_key=key,
                          work=lambda i: tiling.count(grid.region(i)) * max(1, samples),
                          unit="patch", **fold)]

        result = run_job(out, create, job=ident, stages=stages, options=opts, inputs=[src],
                         runner=runner)
    warn_nan(result, src)
    return result
