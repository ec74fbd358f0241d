"""Losses and scores of the published method, as small pure tensor functions.

All take ``logits`` and ``target`` of shape [N, L, H, W] (L labels, target 0/1)
and return tensors, never Python numbers, so a training step never waits for the GPU.

    loss, bce, dice = combined_loss(logits, target, bce_weight=0.75)
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# The Dice smoothing term of the published method; it keeps empty labels at loss 0.
SMOOTH = 1.0


def weighted_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with logits per label, weighted by (n - positives)/n, averaged over labels.

    n and positives count the label's pixels over the whole batch, so a rare label
    (few positives) keeps nearly full weight and a label covering most of the image
    is down-weighted.
    """
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    per_label = per_pixel.mean(dim=(0, 2, 3))
    weight = 1.0 - target.mean(dim=(0, 2, 3))
    return (weight * per_label).mean()


def dice_loss_per_image(logits: torch.Tensor, target: torch.Tensor, smooth: float = SMOOTH) -> torch.Tensor:
    """1 - (2*sum(p*g) + s) / (sum(p^2) + sum(g^2) + s) for each image and label: shape [N, L]."""
    p = torch.sigmoid(logits)
    overlap = (p * target).sum(dim=(2, 3))
    total = (p * p).sum(dim=(2, 3)) + (target * target).sum(dim=(2, 3))
    return 1.0 - (2.0 * overlap + smooth) / (total + smooth)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = SMOOTH) -> torch.Tensor:
    """The soft Dice loss averaged over labels, then over the batch."""
    return dice_loss_per_image(logits, target, smooth).mean(dim=1).mean()


def combined_loss(
    logits: torch.Tensor, target: torch.Tensor, bce_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w*BCE + (1-w)*Dice, BCE, Dice) in float32 whatever the logits' precision."""
    logits = logits.float()
    bce = weighted_bce(logits, target)
    dice = dice_loss(logits, target)
    return bce_weight * bce + (1.0 - bce_weight) * dice, bce, dice


def dice_counts(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-label (2*|P and G|, |P| + |G|) of the thresholded prediction, summed over the batch.

    Sums rather than scores, so that a validation set evaluated in batches adds up
    to the same score as one big batch.
    """
    pred = (logits > 0).float()  # sigmoid(logit) > 0.5
    overlap = 2.0 * (pred * target).sum(dim=(0, 2, 3))
    total = pred.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3))
    return overlap, total


def dice_score(overlap: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Dice score per label from :func:`dice_counts`; 1 where both prediction and truth are empty."""
    return torch.where(total > 0, overlap / total.clamp_min(1e-12), torch.ones_like(total))
