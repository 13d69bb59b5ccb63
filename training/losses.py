"""Losses of the reference recipe, built on MONAI, with partial labels.

* :class:`PartialDiceCELoss` - softmax Dice + cross-entropy (MONAI ``DiceLoss`` for the Dice term).
  Per sample, ``labelled`` (B, C) says which classes are annotated; the probability of an
  unlabelled class is merged into the background (a pixel labelled background may be that class:
  Sunnybrook has no RV), and its Dice term is skipped. ``valid`` (B, 1, ...) masks out voxels
  without annotation. With every class labelled and every voxel valid this is MONAI's DiceCELoss.
* :class:`HeatmapLoss` - sigmoid Dice (MONAI) + BCE against Gaussian target maps.
* classification: cross-entropy with label smoothing; regression: MSE on z-scored targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from monai.losses import DiceLoss
from torch import nn

__all__ = ["HeatmapLoss", "PartialDiceCELoss", "merge_unlabelled"]


def merge_unlabelled(probs: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Move the probability of unlabelled classes (``labelled[b, c] == 0``) into channel 0."""
    m = labelled.to(probs.dtype).reshape(*labelled.shape, *([1] * (probs.ndim - 2)))
    kept = probs * m
    spill = (probs * (1 - m)).sum(dim=1, keepdim=True)
    return torch.cat([kept[:, :1] + spill, kept[:, 1:]], dim=1)


class PartialDiceCELoss(nn.Module):
    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, smooth: float = 1e-5):
        super().__init__()
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self.dice = DiceLoss(include_background=True, to_onehot_y=False, softmax=False, reduction="none",
                             smooth_nr=smooth, smooth_dr=smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """``logits`` (B, C, ...), ``target`` (B, 1, ...) integer, ``labelled`` (B, C), ``valid`` (B, 1, ...)."""
        logits = logits.float()
        n_cls = logits.shape[1]
        if labelled is None:
            labelled = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
        labelled = labelled.bool().clone()
        labelled[:, 0] = True
        probs = merge_unlabelled(torch.softmax(logits, dim=1), labelled)
        tgt = target.long()
        if tgt.ndim == logits.ndim:
            tgt = tgt[:, 0]
        onehot = F.one_hot(tgt.clamp(0, n_cls - 1), n_cls).movedim(-1, 1).to(probs.dtype)
        if valid is None:
            valid_f = torch.ones_like(probs[:, :1])
        else:
            valid_f = valid.to(probs.dtype)
            if valid_f.ndim == logits.ndim - 1:
                valid_f = valid_f[:, None]
        # cross-entropy on the merged probabilities, over valid voxels
        picked = (probs * onehot).sum(dim=1, keepdim=True).clamp_min(1e-8)
        ce = -(torch.log(picked) * valid_f).sum() / valid_f.sum().clamp_min(1.0)
        # Dice per (sample, class), mean over labelled pairs
        d = self.dice(probs * valid_f, onehot * valid_f)  # (B, C, 1, ...)
        d = d.reshape(d.shape[0], d.shape[1])
        w = labelled.to(d.dtype)
        dice = (d * w).sum() / w.sum().clamp_min(1.0)
        return self.lambda_dice * dice + self.lambda_ce * ce


class HeatmapLoss(nn.Module):
    """Sigmoid Dice + binary cross-entropy against soft Gaussian targets."""

    def __init__(self, lambda_dice: float = 1.0, lambda_bce: float = 1.0):
        super().__init__()
        self.lambda_dice = float(lambda_dice)
        self.lambda_bce = float(lambda_bce)
        self.dice = DiceLoss(sigmoid=True, include_background=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target = target.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return self.lambda_dice * self.dice(logits, target) + self.lambda_bce * bce
