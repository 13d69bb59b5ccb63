"""CineMA masked autoencoder (pre-training model, ``pretrained/cinema.safetensors``).

Key layout: ``enc_down_dict``, ``enc_fusion_dict``, ``encoder``, ``dec_linear``,
``dec_embed_dict.<view>.{pos_embed,mask_token}``, ``decoder`` (cross-attention blocks), ``pred_head_dict``.

Training step: each view keeps a random ``1 - mask_ratio`` of its tokens (the conv stages see the
mask too); the encoder runs on the kept tokens of all views; after fusion and ``dec_linear``, the
decoder queries are [cls, mask tokens + positions of the masked patches] and attend to the visible
tokens (+ positions); the head predicts the pixels of each masked patch. Loss: MSE on masked patches
(raw [0, 1] pixels), averaged over views.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .encoder import ViTDecoder, ViTEncoder, scale_fusions, set_grad_ckpt, view_encoders
from .layers import (
    Size,
    as_tuple,
    fixed_pos_embed,
    init_transformer_weights,
    patchify,
    random_patch_mask,
    resize_pos_embed,
    unpatchify,
)


class DecoderEmbedding(nn.Module):
    """Per-view decoder positions (fixed sin-cos ``pos_embed``) and learnable ``mask_token``."""

    def __init__(self, grid_size: Size, dim: int) -> None:
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.pos_embed = fixed_pos_embed(dim, grid_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, visible: torch.Tensor, mask: torch.Tensor, grid: Size) -> tuple[torch.Tensor, torch.Tensor]:
        """Visible tokens + their positions, mask tokens + the masked positions (token order kept)."""
        b, n_keep, dim = visible.shape
        pe = resize_pos_embed(self.pos_embed, self.grid_size, grid).expand(b, -1, -1)
        vis_pe = pe[~mask].reshape(b, n_keep, dim)
        mask_pe = pe[mask].reshape(b, -1, dim)
        return visible + vis_pe, self.mask_token + mask_pe


class CineMAE(nn.Module):
    """Multi-view masked autoencoder.

    ``forward(image_dict, mask_ratio=0.75)`` returns ``(loss, pred_dict, mask_dict, metrics)`` where
    ``pred_dict[view]`` is (B, n_masked, prod(patch) * C) for the masked patches (in token order) and
    ``mask_dict[view]`` (B, n_patches) is True for masked patches. ``feature_forward`` / ``encode``
    give unmasked features ``{'cls': (B, 1, dim), view: (B, n_patches, dim)}``.
    """

    def __init__(
        self,
        image_size_dict: Mapping[str, Sequence[int]],
        in_chans_dict: Mapping[str, int],
        enc_patch_size_dict: Mapping[str, Sequence[int]],
        enc_scale_factor_dict: Mapping[str, Sequence[int]],
        enc_conv_chans: Sequence[int],
        enc_conv_n_blocks: int,
        enc_embed_dim: int,
        enc_depth: int,
        enc_n_heads: int,
        dec_embed_dim: int,
        dec_depth: int,
        dec_n_heads: int,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_target: bool = False,
    ) -> None:
        super().__init__()
        self.views = list(image_size_dict)
        self.image_size_dict = {v: tuple(int(s) for s in image_size_dict[v]) for v in self.views}
        self.in_chans_dict = {v: int(in_chans_dict[v]) for v in self.views}
        self.mask_ratio = float(mask_ratio)
        self.norm_target = bool(norm_target)
        self.grad_ckpt = False
        enc_conv_chans = [int(c) for c in enc_conv_chans]
        n_dims = {v: len(self.image_size_dict[v]) for v in self.views}
        enc_patch = {v: as_tuple(enc_patch_size_dict[v], n_dims[v]) for v in self.views}
        enc_scale = {v: as_tuple(enc_scale_factor_dict[v], n_dims[v]) for v in self.views}

        self.enc_down_dict = view_encoders(self.views, self.image_size_dict, self.in_chans_dict, enc_patch,
                                           enc_scale, enc_conv_chans, enc_conv_n_blocks, enc_embed_dim)
        self.size_multiple_dict = {v: self.enc_down_dict[v].eff_patch_size for v in self.views}
        self.enc_fusion_dict = scale_fusions(self.views, n_dims, enc_patch, enc_scale, enc_conv_chans, enc_embed_dim)
        self.encoder = ViTEncoder(enc_embed_dim, enc_depth, enc_n_heads, mlp_ratio=mlp_ratio)
        self.dec_linear = nn.Linear(enc_embed_dim, dec_embed_dim)
        self.dec_embed_dict = nn.ModuleDict(
            {v: DecoderEmbedding(self.enc_down_dict[v].grid_size, dec_embed_dim) for v in self.views}
        )
        self.decoder = ViTDecoder(dec_embed_dim, dec_depth, dec_n_heads, mlp_ratio=mlp_ratio)
        # pixels predicted per token: the encoder's total stride x channels
        self.patch_size_dict: dict[str, Size] = {v: self.enc_down_dict[v].eff_patch_size for v in self.views}
        self.pred_head_dict = nn.ModuleDict(
            {
                v: nn.Linear(dec_embed_dim, math.prod(self.patch_size_dict[v]) * self.in_chans_dict[v])
                for v in self.views
            }
        )
        init_transformer_weights(self.dec_linear)
        init_transformer_weights(self.pred_head_dict)

    def set_grad_ckpt(self, enable: bool = True) -> None:
        """Activation checkpointing of transformer and conv blocks while training."""
        set_grad_ckpt(self, enable)

    def _check_views(self, views: Sequence[str]) -> None:
        unknown = [v for v in views if v not in self.enc_down_dict]
        if unknown:
            raise ValueError(f"views {unknown} are not among the model's views {self.views}")

    def feature_forward(self, image_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unmasked fused features ``{'cls': (B, 1, dim), view: (B, n_patches_view, dim)}``."""
        views = list(image_dict)
        self._check_views(views)
        skips, tokens = [], []
        for v in views:
            s, t = self.enc_down_dict[v](image_dict[v])
            skips.append(s)
            tokens.append(t)
        x = self.encoder(torch.cat(tokens, dim=1))
        parts = torch.split(x, [1, *(t.shape[1] for t in tokens)], dim=1)
        out = {"cls": parts[0]}
        for v, s, t in zip(views, skips, parts[1:], strict=True):
            out[v] = self.enc_fusion_dict[v](s, t)
        return out

    encode = feature_forward

    def sample_masks(
        self, image_dict: Mapping[str, torch.Tensor], mask_ratio: float | None = None
    ) -> dict[str, torch.Tensor]:
        """Random token masks (True = masked) for each view of ``image_dict``."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        masks = {}
        for v, image in image_dict.items():
            grid = self.enc_down_dict[v].grid_for(image.shape[2:])
            masks[v] = random_patch_mask(image.shape[0], math.prod(grid), ratio, device=image.device)
        return masks

    def forward(
        self,
        image_dict: Mapping[str, torch.Tensor],
        mask_ratio: float | None = None,
        mask_dict: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Masked reconstruction.

        Args:
            image_dict: ``{view: (B, C, *spatial)}`` with pixels in [0, 1].
            mask_ratio: fraction of tokens masked per view (default ``self.mask_ratio``, 0.75).
            mask_dict: explicit masks (B, n_patches), True = masked, the same count in every sample.

        Returns:
            loss (scalar), pred_dict, mask_dict, metrics (per-view losses).
        """
        views = list(image_dict)
        self._check_views(views)
        masks = dict(mask_dict) if mask_dict is not None else self.sample_masks(image_dict, mask_ratio)
        b = next(iter(image_dict.values())).shape[0]

        skips, kept, grids, n_keep, n_masked = [], [], [], [], []
        for v in views:
            image, mask = image_dict[v], masks[v].bool()
            enc = self.enc_down_dict[v]
            grids.append(enc.grid_for(image.shape[2:]))
            s, t = enc(image, mask)
            t = t[~mask].reshape(b, -1, t.shape[-1])
            skips.append(s)
            kept.append(t)
            n_keep.append(t.shape[1])
            n_masked.append(mask.shape[1] - t.shape[1])
        x = self.encoder(torch.cat(kept, dim=1))
        parts = list(torch.split(x, [1, *n_keep], dim=1))
        for i, v in enumerate(views):
            parts[i + 1] = self.enc_fusion_dict[v](skips[i], parts[i + 1], masks[v].bool())
        x = self.dec_linear(torch.cat(parts, dim=1))
        parts = torch.split(x, [1, *n_keep], dim=1)

        visible, queries = [], [parts[0]]
        for i, v in enumerate(views):
            vis, msk = self.dec_embed_dict[v](parts[i + 1], masks[v].bool(), grids[i])
            visible.append(vis)
            queries.append(msk)
        x = self.decoder(torch.cat(queries, dim=1), torch.cat(visible, dim=1), sum(n_masked))
        decoded = torch.split(x, n_masked, dim=1)

        preds: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        losses = []
        for i, v in enumerate(views):
            pred = self.pred_head_dict[v](decoded[i])
            preds[v] = pred
            target = patchify(image_dict[v], self.patch_size_dict[v])
            if self.norm_target:
                mean = target.mean(dim=-1, keepdim=True)
                std = target.var(dim=-1, keepdim=True) ** 0.5
                target = (target - mean) / (std + 1e-6)
            target = target[masks[v].bool()].reshape(pred.shape)
            if pred.shape[1] > 0:
                loss_v = F.mse_loss(pred, target.detach())
                metrics[f"{v}_mse_loss"] = loss_v.detach()
                losses.append(loss_v)
        loss = torch.stack(losses).mean() if losses else torch.full((), float("nan"), device=x.device)
        metrics["loss"] = loss.detach()
        return loss, preds, masks, metrics

    def reconstruct(
        self,
        image_dict: Mapping[str, torch.Tensor],
        pred_dict: Mapping[str, torch.Tensor],
        mask_dict: Mapping[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Images with the masked patches replaced by their predictions (for display)."""
        out = {}
        for v, image in image_dict.items():
            p = self.patch_size_dict[v]
            grid = self.enc_down_dict[v].grid_for(image.shape[2:])
            patches = patchify(image, p).clone()
            mask = mask_dict[v].bool()
            patches[mask] = pred_dict[v].reshape(-1, patches.shape[-1]).to(patches.dtype)
            out[v] = unpatchify(patches, p, grid)
        return out
