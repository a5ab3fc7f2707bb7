"""Training losses on logits: BCE (cross-entropy for softmax nets), Dice, and their sum.

Every loss takes the net's logits (N, C, *S) and the target (N, *S) of class indices, where
:data:`~emarray.training.sampler.IGNORE` marks voxels that count nowhere (ignore label, outside
the annotated mask). ``class_weights`` weigh each class's voxels; online hard negative mining
(``ohem``) keeps every positive voxel and only the ``ohem`` times as many negatives with the
highest loss (at least ``ohem_min`` of them), so a sparse class is not drowned by easy
background.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

KINDS = ("bce", "dice", "bce+dice", "affinities")


@dataclass(frozen=True)
class LossConfig:
    kind: str = "bce+dice"
    class_weights: tuple[float, ...] | None = None
    ohem: float | None = None
    ohem_min: int = 1024
    dice_smooth: float = 1.0


def _probabilities(logits: Any, softmax: bool) -> Any:
    import torch
    return torch.softmax(logits, 1) if softmax else torch.sigmoid(logits)


def voxel_ce(logits: Any, target: Any, softmax: bool) -> Any:
    """Per-voxel cross-entropy (N, *S); ignored voxels give 0."""
    import torch
    import torch.nn.functional as F
    valid = target >= 0
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    if softmax:
        ce = F.cross_entropy(logits, safe, reduction="none")
    else:
        ce = F.binary_cross_entropy_with_logits(logits[:, 0], safe.to(logits.dtype), reduction="none")
    return ce * valid


def _weights(target: Any, class_weights: Sequence[float] | None) -> Any:
    import torch
    valid = (target >= 0).float()
    if not class_weights:
        return valid
    w = torch.as_tensor(list(class_weights), dtype=torch.float32, device=target.device)
    return w[target.clamp(min=0).long()] * valid


def _ohem(ce: Any, target: Any, weights: Any, ratio: float, minimum: int) -> Any:
    """Weights that keep every positive voxel and the hardest ``ratio`` times as many negatives."""
    import torch
    pos = (target > 0) & (weights > 0)
    neg = (target == 0) & (weights > 0)
    n_neg = int(neg.sum())
    keep = min(n_neg, max(int(ratio * int(pos.sum())), minimum))
    if keep >= n_neg:
        return weights
    hard = torch.where(neg, ce.detach(), torch.full_like(ce, -1.0)).flatten()
    cut = torch.topk(hard, keep).values[-1]
    chosen = neg & (ce.detach() >= cut)
    return weights * (pos | chosen)


def dice_loss(prob: Any, target: Any, weights: Any, classes: int, softmax: bool,
              smooth: float = 1.0) -> Any:
    """1 - soft Dice, averaged over the foreground classes (all classes of a softmax net)."""
    import torch
    losses = []
    for c in (range(classes) if softmax else (1,)):
        p = prob[:, c] if softmax else prob[:, 0]
        t = (target == c).to(p.dtype)
        w = weights if weights.dtype == p.dtype else weights.to(p.dtype)
        inter = (p * t * w).sum()
        denom = (p * w).sum() + (t * w).sum()
        losses.append(1 - (2 * inter + smooth) / (denom + smooth))
    return torch.stack(losses).mean()


def affinity_loss(logits: Any, target: Any) -> Any:
    """BCE of three nearest-neighbour affinity channels (N, 3, *S) against their targets
    (1 connected, 0 cut, :data:`~emarray.training.sampler.IGNORE` not counted), averaged over
    the counted voxel-channels.

    >>> import torch
    >>> t = torch.tensor([[[[[1, 0, -1]]]]] * 3).reshape(1, 3, 1, 1, 3)
    >>> round(float(affinity_loss(torch.zeros(1, 3, 1, 1, 3), t)), 4)   # log 2 on 6 counted
    0.6931
    """
    import torch
    valid = target >= 0
    t = torch.where(valid, target, torch.zeros_like(target)).float()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
    w = valid.float()
    return (ce * w).sum() / w.sum().clamp(min=1e-6)


def loss(logits: Any, target: Any, cfg: LossConfig, softmax: bool, classes: int) -> Any:
    """The configured loss of one batch (a scalar tensor)."""
    import torch
    if cfg.kind == "affinities":
        return affinity_loss(logits, target)
    logits = logits.float()
    ce = voxel_ce(logits, target, softmax)
    w = _weights(target, cfg.class_weights)
    if cfg.ohem:
        w = _ohem(ce, target, w, cfg.ohem, cfg.ohem_min)
    total = torch.zeros((), device=logits.device)
    if "bce" in cfg.kind:
        total = total + (ce * w).sum() / w.sum().clamp(min=1e-6)
    if "dice" in cfg.kind:
        total = total + dice_loss(_probabilities(logits, softmax), target, w, classes, softmax,
                                  cfg.dice_smooth)
    return total
