"""Multi-view conv + ViT encoder of the CineMA family.

Per view (``enc_down_dict.<view>``, :class:`ViewEncoder`): conv stages at /4 and /8 with masked conv
blocks, then a linear patch embedding to the ViT grid (/16) plus a fixed sin-cos ``pos_embed``.
Shared (``encoder``, :class:`ViTEncoder`): a ``cls_token`` and pre-norm transformer blocks over the
tokens of all views concatenated. ``enc_fusion_dict.<view>`` (:class:`ScaleFusion`) adds the conv skips,
projected to the token grid, to the ViT output (ConvViT and MAE only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .layers import (
    VIT_NORM_EPS,
    ConvNormAct,
    MaskedConvBlock,
    Size,
    TransformerBlock,
    as_tuple,
    conv_cls,
    fixed_pos_embed,
    init_transformer_weights,
    patchify,
    resize_pos_embed,
    upsample_mask,
)


def _mul(a: Sequence[int], b: Sequence[int]) -> Size:
    return tuple(int(x) * int(y) for x, y in zip(a, b, strict=True))


class ConvStage(nn.Module):
    """Strided conv embedding followed by masked conv blocks. Keys: ``patch_embed``, ``conv.<i>``."""

    def __init__(self, n_dims: int, in_chans: int, chans: int, patch_size: Size, n_blocks: int) -> None:
        super().__init__()
        self.patch_embed = ConvNormAct(n_dims, in_chans, chans, patch_size)
        self.conv = nn.ModuleList([MaskedConvBlock(n_dims, chans) for _ in range(n_blocks)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(x)
        for block in self.conv:
            x = block(x, mask)
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping patches flattened in (*patch, chans) order -> Linear. Key: ``proj``."""

    def __init__(self, in_chans: int, patch_size: Size, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Linear(in_chans * math.prod(patch_size), embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(x, self.patch_size))


class ViewEncoder(nn.Module):
    """Per-view down-sampling encoder producing conv skips and ViT input tokens.

    Args:
        image_size: network input size of this view, (x, y) or (x, y, z); fixes ``pos_embed``.
        in_chans: input channels (frames x channels).
        patch_size: kernel = stride of the first conv stage, e.g. (4, 4, 1).
        scale_factor: kernel = stride of every later stage and of the patch embedding, e.g. (2, 2, 1).
        conv_chans: widths of the conv stages, e.g. (64, 128); may be empty.
        conv_n_blocks: masked conv blocks per stage.
        embed_dim: ViT width.
    """

    def __init__(
        self,
        image_size: Sequence[int],
        in_chans: int,
        patch_size: Sequence[int],
        scale_factor: Sequence[int],
        conv_chans: Sequence[int],
        conv_n_blocks: int,
        embed_dim: int,
    ) -> None:
        super().__init__()
        self.image_size = tuple(int(s) for s in image_size)
        self.n_dims = n_dims = len(self.image_size)
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        # kernel = stride of each stage; the last one is the ViT patch embedding
        first, later = as_tuple(patch_size, n_dims), as_tuple(scale_factor, n_dims)
        self.patch_sizes: list[Size] = [first] + [later] * len(conv_chans)
        self.conv_blocks = nn.ModuleList()
        chans_in = in_chans
        for stage_patch, chans in zip(self.patch_sizes[:-1], conv_chans, strict=True):
            self.conv_blocks.append(ConvStage(n_dims, chans_in, int(chans), stage_patch, conv_n_blocks))
            chans_in = int(chans)
        self.patch_embed = PatchEmbed(chans_in, self.patch_sizes[-1], embed_dim)
        self.linear = nn.Linear(embed_dim, embed_dim)
        self.eff_patch_size: Size = (1,) * n_dims
        for p in self.patch_sizes:
            self.eff_patch_size = _mul(self.eff_patch_size, p)
        self.grid_size: Size = self.grid_for(self.image_size)
        self.pos_embed = fixed_pos_embed(embed_dim, self.grid_size)
        init_transformer_weights(self)

    @property
    def n_patches(self) -> int:
        return math.prod(self.grid_size)

    def grid_for(self, spatial: Sequence[int]) -> Size:
        """Token grid of an input of spatial size ``spatial`` (must be divisible by the total stride)."""
        spatial = tuple(int(s) for s in spatial)
        if len(spatial) != self.n_dims or any(s % p for s, p in zip(spatial, self.eff_patch_size, strict=True)):
            raise ValueError(
                f"input size {spatial} must be {self.n_dims}-D and divisible by the encoder stride "
                f"{self.eff_patch_size}"
            )
        return tuple(s // p for s, p in zip(spatial, self.eff_patch_size, strict=True))

    def pos_embed_for(self, grid: Size) -> torch.Tensor:
        """``pos_embed`` for ``grid``, interpolated when it differs from the build-time grid."""
        return resize_pos_embed(self.pos_embed, self.grid_size, grid)

    def conv_masks(self, mask: torch.Tensor, grid: Size) -> list[torch.Tensor]:
        """Visible-masks (1 = visible) at each conv stage's resolution from a token mask (True = masked)."""
        visible = ~mask.reshape(mask.shape[0], *grid).bool()
        masks: list[torch.Tensor] = []
        for factor in self.patch_sizes[:0:-1]:  # from the ViT grid up to the first stage
            visible = upsample_mask(visible, factor)
            masks.insert(0, visible)
        return masks

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Encode one view.

        Args:
            image: (batch, in_chans, *spatial).
            mask: optional (batch, n_patches) token mask, True = masked (MAE pre-training).

        Returns:
            skips: the conv stage outputs, (batch, chans_i, *spatial_i) each.
            tokens: (batch, n_patches, embed_dim), all patches (masked ones are not removed here).
        """
        if image.ndim != self.n_dims + 2 or image.shape[1] != self.in_chans:
            raise ValueError(
                f"expected input (batch, {self.in_chans}, *{self.n_dims}-D spatial), got {tuple(image.shape)}"
            )
        grid = self.grid_for(image.shape[2:])
        masks: list[torch.Tensor | None]
        masks = [None] * len(self.conv_blocks) if mask is None else list(self.conv_masks(mask, grid))
        skips = []
        x = image
        for stage, stage_mask in zip(self.conv_blocks, masks, strict=True):
            x = stage(x, stage_mask)
            skips.append(x)
        tokens = self.linear(self.patch_embed(x)) + self.pos_embed_for(grid)
        return skips, tokens


class ScaleFusion(nn.Module):
    """Adds the conv skips, projected onto the token grid (k = s), to ViT tokens, then LayerNorm.

    Keys: ``down_convs.<i>``, ``norm``.
    """

    def __init__(
        self,
        n_dims: int,
        patch_size: Sequence[int],
        scale_factor: Sequence[int],
        conv_chans: Sequence[int],
        embed_dim: int,
    ) -> None:
        super().__init__()
        patch_sizes = [as_tuple(patch_size, n_dims)] + [as_tuple(scale_factor, n_dims)] * len(conv_chans)
        conv = conv_cls(n_dims)
        self.down_convs = nn.ModuleList()
        for i, chans in enumerate(conv_chans):
            kernel: Size = (1,) * n_dims
            for p in patch_sizes[i + 1 :]:
                kernel = _mul(kernel, p)
            self.down_convs.append(conv(int(chans), embed_dim, kernel_size=kernel, stride=kernel))
        self.norm = nn.LayerNorm(embed_dim, eps=VIT_NORM_EPS)

    def forward(
        self, skips: Sequence[torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``tokens`` (batch, n, dim); with ``mask`` (True = masked) only visible tokens are present."""
        for skip, conv in zip(skips, self.down_convs, strict=True):
            down = conv(skip).flatten(2).transpose(1, 2)
            if mask is not None:
                down = down[~mask].reshape(tokens.shape[0], -1, tokens.shape[-1])
            tokens = tokens + down
        return self.norm(tokens)


def view_encoders(views: Sequence[str], image_size_dict: dict, in_chans_dict: dict, enc_patch: dict,
                  enc_scale: dict, enc_conv_chans: Sequence[int], enc_conv_n_blocks: int,
                  enc_embed_dim: int) -> nn.ModuleDict:
    """One conv + patch-embedding encoder per view (``enc_down_dict`` of every model)."""
    return nn.ModuleDict(
        {
            v: ViewEncoder(image_size_dict[v], in_chans_dict[v], enc_patch[v], enc_scale[v], enc_conv_chans,
                           enc_conv_n_blocks, enc_embed_dim)
            for v in views
        }
    )


def scale_fusions(views: Sequence[str], n_dims: dict, enc_patch: dict, enc_scale: dict,
                  enc_conv_chans: Sequence[int], enc_embed_dim: int) -> nn.ModuleDict:
    """Per view, the projection of the conv skips onto the token grid (``enc_fusion_dict``)."""
    return nn.ModuleDict(
        {v: ScaleFusion(n_dims[v], enc_patch[v], enc_scale[v], enc_conv_chans, enc_embed_dim) for v in views}
    )


class ViTEncoder(nn.Module):
    """Shared transformer: prepends ``cls_token``; ``blocks``; final ``norm``."""

    def __init__(
        self, embed_dim: int, depth: int, n_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList(
            [TransformerBlock(embed_dim, n_heads, mlp_ratio=mlp_ratio, drop_path=drop_path) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=VIT_NORM_EPS)
        init_transformer_weights(self)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, n, dim) -> (batch, 1 + n, dim), cls token first."""
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class ViTDecoder(nn.Module):
    """MAE decoder: cross-attention blocks (queries attend to ``context``) and final ``norm``."""

    def __init__(self, embed_dim: int, depth: int, n_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([TransformerBlock(embed_dim, n_heads, mlp_ratio=mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=VIT_NORM_EPS)
        init_transformer_weights(self)

    def forward(self, queries: torch.Tensor, context: torch.Tensor | None, n_out: int) -> torch.Tensor:
        """Returns the normalised last ``n_out`` query tokens, (batch, n_out, dim)."""
        x = queries
        for block in self.blocks:
            x = block(x, context)
        return self.norm(x[:, x.shape[1] - n_out :])


def set_grad_ckpt(model: nn.Module, enable: bool = True) -> None:
    """Turn activation checkpointing on/off in every transformer and conv block of ``model``.

    It only takes effect in training mode with gradients enabled; inference is unaffected.
    """
    for m in model.modules():
        if hasattr(m, "grad_ckpt"):
            m.grad_ckpt = bool(enable)
