"""ConvViT: multi-view conv + ViT encoder with linear heads (classification, regression, landmarks).

Key layout (published CineMA checkpoints): ``enc_down_dict``, ``enc_fusion_dict``, ``encoder``,
``pred_head_dict.<view>`` and ``pred_head_dict.cls`` (one Linear(dim, out_chans) each).
Output = mean over [head_view(mean of the view's fused tokens) for each view, head_cls(cls token)].
Frames (ED, ES) are stacked on the channel axis: ``in_chans = n_frames * in_chans``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .encoder import ViTEncoder, scale_fusions, set_grad_ckpt, view_encoders
from .layers import as_tuple


class ConvViT(nn.Module):
    """Multi-view ConvViT. ``forward({view: (B, n_frames*C, x, y[, z])}) -> (B, out_chans)``."""

    def __init__(
        self,
        image_size_dict: Mapping[str, Sequence[int]],
        in_chans_dict: Mapping[str, int],
        n_frames: int,
        out_chans: int,
        enc_patch_size_dict: Mapping[str, Sequence[int]],
        enc_scale_factor_dict: Mapping[str, Sequence[int]],
        enc_conv_chans: Sequence[int],
        enc_conv_n_blocks: int,
        enc_embed_dim: int,
        enc_depth: int,
        enc_n_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.views = list(image_size_dict)
        self.n_frames = int(n_frames)
        self.out_chans = int(out_chans)
        self.image_size_dict = {v: tuple(int(s) for s in image_size_dict[v]) for v in self.views}
        self.in_chans_dict = {v: int(in_chans_dict[v]) for v in self.views}  # per frame
        self.grad_ckpt = False
        enc_conv_chans = [int(c) for c in enc_conv_chans]
        n_dims = {v: len(self.image_size_dict[v]) for v in self.views}
        enc_patch = {v: as_tuple(enc_patch_size_dict[v], n_dims[v]) for v in self.views}
        enc_scale = {v: as_tuple(enc_scale_factor_dict[v], n_dims[v]) for v in self.views}

        # (ED, ES) frames are stacked as input channels
        frame_chans = {v: self.n_frames * self.in_chans_dict[v] for v in self.views}
        self.enc_down_dict = view_encoders(self.views, self.image_size_dict, frame_chans, enc_patch, enc_scale,
                                           enc_conv_chans, enc_conv_n_blocks, enc_embed_dim)
        self.size_multiple_dict = {v: self.enc_down_dict[v].eff_patch_size for v in self.views}
        self.enc_fusion_dict = scale_fusions(self.views, n_dims, enc_patch, enc_scale, enc_conv_chans, enc_embed_dim)
        self.encoder = ViTEncoder(enc_embed_dim, enc_depth, enc_n_heads, mlp_ratio=mlp_ratio, drop_path=drop_path)
        # heads keep PyTorch's default Linear init, as the reference
        self.pred_head_dict = nn.ModuleDict({v: nn.Linear(enc_embed_dim, self.out_chans) for v in [*self.views, "cls"]})

    def set_grad_ckpt(self, enable: bool = True) -> None:
        """Activation checkpointing of transformer and conv blocks while training."""
        set_grad_ckpt(self, enable)

    def feature_forward(
        self,
        image_dict: Mapping[str, torch.Tensor],
        mask_dict: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Fused features ``{'cls': (B, 1, dim), view: (B, n_patches_view, dim)}``.

        ``mask_dict`` (True = masked, per token) only masks the conv stages; no token is removed.
        """
        views = list(image_dict)
        unknown = [v for v in views if v not in self.enc_down_dict]
        if unknown:
            raise ValueError(f"views {unknown} are not among the model's views {self.views}")
        skips, tokens = [], []
        for v in views:
            s, t = self.enc_down_dict[v](image_dict[v], None if mask_dict is None else mask_dict[v])
            skips.append(s)
            tokens.append(t)
        x = self.encoder(torch.cat(tokens, dim=1))
        parts = torch.split(x, [1, *(t.shape[1] for t in tokens)], dim=1)
        out = {"cls": parts[0]}
        for v, s, t in zip(views, skips, parts[1:], strict=True):
            out[v] = self.enc_fusion_dict[v](s, t)
        return out

    def forward(
        self,
        image_dict: Mapping[str, torch.Tensor],
        mask_dict: Mapping[str, torch.Tensor] | None = None,
        reduce: str = "all",
    ) -> torch.Tensor:
        """Logits / regression outputs (B, out_chans).

        ``reduce``: 'all' (reference default: mean of the per-view heads and the cls head), 'patch'
        (per-view heads only) or 'cls' (cls head only).
        """
        feats = self.feature_forward(image_dict, mask_dict)
        views = [v for v in image_dict]
        outs = [self.pred_head_dict[v](feats[v].mean(dim=1)) for v in views]
        if reduce == "cls":
            return self.pred_head_dict["cls"](feats["cls"][:, 0])
        if reduce == "all":
            outs.append(self.pred_head_dict["cls"](feats["cls"][:, 0]))
        elif reduce != "patch":
            raise ValueError(f"reduce must be 'all', 'patch' or 'cls', got {reduce!r}")
        return torch.stack(outs, dim=1).mean(dim=1)
