"""The zoo's 3D U-Net in PyTorch (imported only when a model is built or loaded).

Its sizes follow :mod:`emarray.models.geometry`. Dropout is channel dropout whose masks come
from seeds the caller gives per patch (:func:`mc_seeds`), so Monte-Carlo predictions are the
same for any chunking and any batching, and a resumed job redraws exactly what it lost.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .geometry import KERNEL, UNetConfig

_MC = threading.local()  # per-thread: the seeds of the patches in the batch being run


@contextlib.contextmanager
def mc_seeds(seeds: Sequence[int]) -> Iterator[None]:
    """Sample dropout in this thread's forward passes, one seed per batch element."""
    _MC.seeds = list(seeds)
    try:
        yield
    finally:
        _MC.seeds = None


class SeededDropout(nn.Module):
    """Channel dropout (a whole feature map at a time) drawn from per-patch seeds.

    Off (the identity) unless the forward runs inside :func:`mc_seeds`; the mask of batch
    element ``i`` in layer ``layer`` depends on ``(seeds[i], layer)`` only.
    """

    def __init__(self, p: float, layer: int):
        super().__init__()
        self.p, self.layer = p, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seeds = getattr(_MC, "seeds", None)
        if not seeds or self.p == 0:
            return x
        keep = 1.0 - self.p
        masks = []
        for s in seeds:
            g = torch.Generator().manual_seed((int(s) * 1_000_003 + self.layer) % (2**63))
            masks.append((torch.rand(x.shape[1], generator=g) < keep).to(torch.float32) / keep)
        m = torch.stack(masks).to(device=x.device, dtype=x.dtype)
        return x * m.view(x.shape[0], x.shape[1], 1, 1, 1)


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(ch)
    if kind == "instance":
        return nn.InstanceNorm3d(ch, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, ch), ch)
    return nn.Identity()


def _crop_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The centre of ``x`` with spatial ``shape`` (the geometry guarantees even margins)."""
    idx = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], shape):
        m = (have - want) // 2
        idx.append(slice(m, m + want))
    return x[tuple(idx)]


class ConvBlock(nn.Module):
    """Two 3x3x3 convolutions with normalisation and ReLU; optionally residual."""

    def __init__(self, cin: int, cout: int, cfg: UNetConfig):
        super().__init__()
        pad = KERNEL // 2 if cfg.padding == "same" else 0
        self.body = nn.Sequential(
            nn.Conv3d(cin, cout, KERNEL, padding=pad), _norm(cfg.norm, cout), nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, KERNEL, padding=pad), _norm(cfg.norm, cout))
        self.skip = (nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()) if cfg.residual \
            else None
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.skip is not None:
            y = y + _crop_to(self.skip(x), y.shape[2:])
        return self.act(y)


class UNet3d(nn.Module):
    """A 3D U-Net built from a :class:`~emarray.models.geometry.UNetConfig`."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        f = [cfg.filters * 2**i for i in range(cfg.depth)]
        layer = iter(range(10_000))
        drop = cfg.dropout

        def dropout() -> nn.Module:
            return SeededDropout(drop, next(layer)) if drop > 0 else nn.Identity()

        self.down = nn.ModuleList([ConvBlock(cfg.in_channels, f[0], cfg)])
        self.down_drop = nn.ModuleList([nn.Identity()])
        self.pools = nn.ModuleList()
        for i, p in enumerate(cfg.pool, start=1):
            self.pools.append(nn.MaxPool3d(p, p))
            self.down_drop.append(dropout())
            self.down.append(ConvBlock(f[i - 1], f[i], cfg))
        self.ups = nn.ModuleList()
        self.up_drop = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(1, cfg.depth)):
            p = cfg.pool[i - 1]
            self.ups.append(nn.ConvTranspose3d(f[i], f[i - 1], p, p))
            self.up_drop.append(dropout())
            self.up.append(ConvBlock(2 * f[i - 1], f[i - 1], cfg))
        self.head = nn.Conv3d(f[0], cfg.out_channels, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The output before the activation (what training's losses take)."""
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = self.pools[i - 1](x)
            x = block(self.down_drop[i](x))
            skips.append(x)
        skips.pop()
        for upconv, drop, block in zip(self.ups, self.up_drop, self.up):
            x = upconv(x)
            skip = skips.pop()
            x = block(drop(torch.cat([_crop_to(skip, x.shape[2:]), x], dim=1)))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.logits(x)
        if self.cfg.activation == "sigmoid":
            return torch.sigmoid(x)
        if self.cfg.activation == "softmax":
            return torch.softmax(x, dim=1)
        return x


def build(cfg: UNetConfig, seed: int | None = None) -> UNet3d:
    """A freshly initialised network (seeded: the same ``seed`` gives the same weights)."""
    if seed is None:
        return UNet3d(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return UNet3d(cfg)


def parameter_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
