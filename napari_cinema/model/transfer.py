"""Initialise a task model (ConvUNetR / ConvViT) from MAE pre-trained weights.

Rules (as the reference fine-tuning): keep the encoder of the task model's views only; drop the MAE
decoder side (``dec_linear``, ``dec_embed_dict`` with its ``mask_token``, ``decoder``, ``pred_head_dict``),
every ``pos_embed`` (the task model's own fixed sin-cos one stays) and, for a model without fusion
(ConvUNetR), ``enc_fusion_dict``. The first conv weight is repeated along its input-channel axis when
the task model takes more channels (e.g. ED + ES frames: 1 -> 2), without rescaling.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

_DECODER_PREFIXES = ("dec_linear.", "dec_embed_dict.", "decoder.", "pred_head_dict.")
_PER_VIEW_PREFIXES = ("enc_down_dict.", "enc_fusion_dict.")


def _first_conv_key(view: str) -> str:
    return f"enc_down_dict.{view}.conv_blocks.0.patch_embed.conv.weight"


def mae_to_task_state_dict(mae_sd: Mapping[str, torch.Tensor], task_model: nn.Module) -> dict[str, torch.Tensor]:
    """The part of an MAE state dict that initialises ``task_model``, adapted to its shapes.

    Raises ``ValueError`` when a kept tensor cannot be matched to the task model's shape (a different
    ViT size or conv width).
    """
    target = task_model.state_dict()
    views = list(getattr(task_model, "views", []))
    has_fusion = hasattr(task_model, "enc_fusion_dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in mae_sd.items():
        if key.startswith(_DECODER_PREFIXES) or "mask_token" in key or key.endswith("pos_embed"):
            continue
        if key.startswith(_PER_VIEW_PREFIXES):
            view = key.split(".")[1]
            if view not in views:
                continue
            if key.startswith("enc_fusion_dict.") and not has_fusion:
                continue
        if key not in target:
            continue  # e.g. a model variant without this module
        want = tuple(target[key].shape)
        if tuple(value.shape) != want:
            is_first_conv = any(key == _first_conv_key(v) for v in views)
            ok = (
                is_first_conv
                and value.ndim == len(want)
                and value.shape[0] == want[0]
                and tuple(value.shape[2:]) == want[2:]
                and want[1] % value.shape[1] == 0
            )
            if not ok:
                raise ValueError(f"{key}: MAE shape {tuple(value.shape)} does not fit the task model's {want}")
            reps = [1] * value.ndim
            reps[1] = want[1] // value.shape[1]
            value = value.repeat(*reps)
        out[key] = value
    return out


def load_mae_weights(task_model: nn.Module, mae_sd: Mapping[str, torch.Tensor], freeze: bool = False) -> list[str]:
    """Load MAE weights into ``task_model`` (in place); returns the task keys left at their init.

    Those are the ``pos_embed`` of each view and the task-specific decoder/head/fusion parameters.
    With ``freeze`` the loaded parameters get ``requires_grad = False``.
    """
    sd = mae_to_task_state_dict(mae_sd, task_model)
    result = task_model.load_state_dict(sd, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"unexpected keys: {result.unexpected_keys}")
    if not any(k.startswith("encoder.blocks.") for k in sd):
        raise ValueError("no transformer weights were transferred: is this an MAE state dict of a matching size?")
    if freeze:
        for name, param in task_model.named_parameters():
            if name in sd:
                param.requires_grad_(False)
    return list(result.missing_keys)
