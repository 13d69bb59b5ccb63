"""ConvUNetR: multi-view conv + ViT encoder with a per-view U-Net decoder (segmentation, heat-maps).

Key layout (published CineMA checkpoints): ``enc_down_dict``, ``encoder``,
``dec_image_conv_block_dict``, ``dec_down_blocks_dict``, ``dec_conv_blocks_dict``, ``decoder_dict``,
``pred_head_dict``. No fusion module; the cls token is dropped and the ViT tokens are reshaped to
their grid. With the reference settings (enc 4/2/2, dec_chans 32..512, dec 2/2/...):

- levels of the decoder, fine to coarse: /1 image block (32), /2 nothing (32), /4 conv skip (64),
  /8 conv skip (128), /16 ViT tokens (256), /32 ViT tokens down-sampled (512);
- ``dec_conv_blocks_dict.<view>.<i>`` adapts the widths of the /4, /8, /16, /32 features;
- ``decoder_dict.<view>.blocks.<i>``: transposed conv up one level, add the skip, 2 residual blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .encoder import ViTEncoder, set_grad_ckpt, view_encoders
from .layers import ResConvBlock, Size, as_tuple, conv_cls, conv_transpose_cls


def unetr_layout(
    enc_patch_size: Sequence[int],
    enc_scale_factor: Sequence[int],
    enc_n_conv: int,
    dec_depth: int,
    dec_patch_size: Sequence[int],
    dec_scale_factor: Sequence[int],
) -> tuple[int, int]:
    """Match decoder levels to encoder features.

    Decoder level i (0 = finest) sits at stride ``dec_patch_size * dec_scale_factor ** i``.

    Returns:
        n_levels_without_skip: decoder levels finer than the first conv stage (they get no skip).
        n_down: extra strided convs applied to the ViT feature map to reach the coarsest level.
    """
    if enc_n_conv >= dec_depth:
        raise ValueError(f"{enc_n_conv} encoder conv stages need more than {dec_depth} decoder levels")
    enc_patch = tuple(enc_patch_size)
    vit_stride = enc_patch
    for _ in range(enc_n_conv):
        vit_stride = tuple(a * b for a, b in zip(vit_stride, enc_scale_factor, strict=True))
    stride = tuple(dec_patch_size)
    n_wo_skip = n_down = None
    for i in range(dec_depth):
        if stride == enc_patch:
            n_wo_skip = i
        if stride == vit_stride:
            n_down = dec_depth - 1 - i
        stride = tuple(a * b for a, b in zip(stride, dec_scale_factor, strict=True))
    if n_wo_skip is None or n_down is None:
        raise ValueError(
            f"decoder strides (patch {tuple(dec_patch_size)} x scale {tuple(dec_scale_factor)}^i) must hit the first "
            f"conv stride {enc_patch} and the ViT stride {vit_stride}"
        )
    return n_wo_skip, n_down


class UpStage(nn.Module):
    """Transposed conv up one level, add the skip, residual blocks. Keys: ``up``, ``conv.<i>``."""

    def __init__(
        self, n_dims: int, in_chans: int, out_chans: int, factor: Size, n_blocks: int, kernel_size: int
    ) -> None:
        super().__init__()
        self.up = conv_transpose_cls(n_dims)(in_chans, out_chans, kernel_size=factor, stride=factor)
        self.conv = nn.ModuleList([ResConvBlock(n_dims, out_chans, out_chans, kernel_size) for _ in range(n_blocks)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = x + skip
        for block in self.conv:
            x = block(x)
        return x


class UpDecoder(nn.Module):
    """U-Net decoder from the coarsest level to full resolution. Keys: ``blocks.<i>``."""

    def __init__(
        self,
        n_dims: int,
        chans: Sequence[int],
        patch_size: Size,
        scale_factor: Size,
        n_blocks: int = 2,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        chans = [int(c) for c in chans]
        self.blocks = nn.ModuleList()
        for i in range(len(chans)):  # coarse -> fine
            last = i == len(chans) - 1
            c_in = chans[-1 - i]
            c_out = c_in if last else chans[-2 - i]
            factor = patch_size if last else scale_factor
            self.blocks.append(UpStage(n_dims, c_in, c_out, factor, n_blocks, kernel_size))

    def forward(self, features: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """``features[0]`` is the finest (full resolution) level, ``features[-1]`` the coarsest input."""
        x = features[-1]
        assert x is not None
        for block, skip in zip(self.blocks, reversed(features[:-1]), strict=True):
            x = block(x, skip)
        return x


class ConvUNetR(nn.Module):
    """Multi-view UNetR with ConvMAE-style encoder.

    ``forward({view: (B, C, x, y[, z])}) -> {view: (B, out_chans, x, y[, z])}`` (logits). Inputs must be
    divisible by the coarsest decoder stride (32 in-plane with the reference settings).
    """

    def __init__(
        self,
        image_size_dict: Mapping[str, Sequence[int]],
        in_chans_dict: Mapping[str, int],
        out_chans: int,
        enc_patch_size_dict: Mapping[str, Sequence[int]],
        enc_scale_factor_dict: Mapping[str, Sequence[int]],
        enc_conv_chans: Sequence[int],
        enc_conv_n_blocks: int,
        enc_embed_dim: int,
        enc_depth: int,
        enc_n_heads: int,
        dec_chans: Sequence[int],
        dec_patch_size_dict: Mapping[str, Sequence[int]],
        dec_scale_factor_dict: Mapping[str, Sequence[int]],
        dec_kernel_size: int = 3,
        dec_n_blocks: int = 2,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.views = list(image_size_dict)
        self.out_chans = int(out_chans)
        self.image_size_dict = {v: tuple(int(s) for s in image_size_dict[v]) for v in self.views}
        self.in_chans_dict = {v: int(in_chans_dict[v]) for v in self.views}
        self.grad_ckpt = False
        dec_chans = [int(c) for c in dec_chans]
        enc_conv_chans = [int(c) for c in enc_conv_chans]
        n_dims = {v: len(self.image_size_dict[v]) for v in self.views}
        enc_patch = {v: as_tuple(enc_patch_size_dict[v], n_dims[v]) for v in self.views}
        enc_scale = {v: as_tuple(enc_scale_factor_dict[v], n_dims[v]) for v in self.views}
        dec_patch = {v: as_tuple(dec_patch_size_dict[v], n_dims[v]) for v in self.views}
        dec_scale = {v: as_tuple(dec_scale_factor_dict[v], n_dims[v]) for v in self.views}

        layouts = {
            unetr_layout(enc_patch[v], enc_scale[v], len(enc_conv_chans), len(dec_chans), dec_patch[v], dec_scale[v])
            for v in self.views
        }
        if len(layouts) != 1:
            raise ValueError(f"all views must share one decoder layout, got {layouts}")
        self.n_levels_without_skip, n_down = layouts.pop()
        # inputs must be multiples of the coarsest decoder stride
        self.size_multiple_dict: dict[str, Size] = {}
        for v in self.views:
            stride = dec_patch[v]
            for _ in range(len(dec_chans) - 1):
                stride = tuple(a * b for a, b in zip(stride, dec_scale[v], strict=True))
            self.size_multiple_dict[v] = stride

        self.enc_down_dict = view_encoders(self.views, self.image_size_dict, self.in_chans_dict, enc_patch,
                                           enc_scale, enc_conv_chans, enc_conv_n_blocks, enc_embed_dim)
        self.encoder = ViTEncoder(enc_embed_dim, enc_depth, enc_n_heads, mlp_ratio=mlp_ratio, drop_path=drop_path)

        self.dec_image_conv_block_dict = nn.ModuleDict()
        self.dec_down_blocks_dict = nn.ModuleDict()
        self.dec_conv_blocks_dict = nn.ModuleDict()
        self.decoder_dict = nn.ModuleDict()
        self.pred_head_dict = nn.ModuleDict()
        first = self.n_levels_without_skip
        for v in self.views:
            nd = n_dims[v]
            conv = conv_cls(nd)
            # raw image -> finest level; its first LayerNorm spans in_chans (1) channels, as the reference
            self.dec_image_conv_block_dict[v] = ResConvBlock(
                nd, self.in_chans_dict[v], dec_chans[0], dec_kernel_size, dropout=dropout
            )
            self.dec_down_blocks_dict[v] = nn.ModuleList(
                [
                    conv(enc_embed_dim, enc_embed_dim, kernel_size=dec_scale[v], stride=dec_scale[v])
                    for _ in range(n_down)
                ]
            )
            adapters = nn.ModuleList()
            for i, chans in enumerate(enc_conv_chans):
                adapters.append(ResConvBlock(nd, chans, dec_chans[first + i], dec_kernel_size, dropout=dropout))
            for i in range(n_down + 1):
                level = first + len(enc_conv_chans) + i
                adapters.append(ResConvBlock(nd, enc_embed_dim, dec_chans[level], dec_kernel_size, dropout=dropout))
            self.dec_conv_blocks_dict[v] = adapters
            self.decoder_dict[v] = UpDecoder(nd, dec_chans, dec_patch[v], dec_scale[v], dec_n_blocks, dec_kernel_size)
            self.pred_head_dict[v] = conv(dec_chans[0], self.out_chans, kernel_size=1)

    def set_grad_ckpt(self, enable: bool = True) -> None:
        """Activation checkpointing of transformer and conv blocks while training."""
        set_grad_ckpt(self, enable)

    def forward(self, image_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-view logits ``{view: (batch, out_chans, *spatial)}``."""
        views = list(image_dict)
        unknown = [v for v in views if v not in self.enc_down_dict]
        if unknown:
            raise ValueError(f"views {unknown} are not among the model's views {self.views}")
        skips, tokens, grids = [], [], []
        for v in views:
            image = image_dict[v]
            enc = self.enc_down_dict[v]
            multiple = self.size_multiple_dict[v]
            if image.ndim != 2 + len(multiple) or any(s % m for s, m in zip(image.shape[2:], multiple, strict=True)):
                raise ValueError(
                    f"{v}: input {tuple(image.shape)} must be (batch, chans, *spatial) "
                    f"with spatial a multiple of {multiple}"
                )
            grids.append(enc.grid_for(image.shape[2:]))
            s, t = enc(image)
            skips.append(s)
            tokens.append(t)
        x = self.encoder(torch.cat(tokens, dim=1))
        per_view = torch.split(x, [1, *(t.shape[1] for t in tokens)], dim=1)[1:]  # drop cls

        out = {}
        for v, s, t, grid in zip(views, skips, per_view, grids, strict=True):
            fmap = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)
            feats = [*s, fmap]
            for down in self.dec_down_blocks_dict[v]:
                fmap = down(fmap)
                feats.append(fmap)
            levels: list[torch.Tensor | None] = [self.dec_image_conv_block_dict[v](image_dict[v])]
            levels += [None] * self.n_levels_without_skip
            levels += [adapter(f) for adapter, f in zip(self.dec_conv_blocks_dict[v], feats, strict=True)]
            out[v] = self.pred_head_dict[v](self.decoder_dict[v](levels))
        return out
