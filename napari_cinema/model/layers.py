"""Building blocks shared by the CineMA-compatible networks.

Written for napari-cinema; the parameter names (``norm1``, ``dw_conv``, ``attn.q``, ``attn.kv``, ...)
follow the published CineMA checkpoints so that their safetensors load with ``strict=True``
(see ``shared/spec/CINEMA_COMPAT.md``).

Tensor layouts: images and conv features are channels-first, ``(batch, chans, *spatial)`` with
spatial axes ``(x, y[, z])``; token sequences are ``(batch, n_tokens, dim)`` with tokens ordered
row-major over the patch grid (the order of ``Tensor.flatten(2)`` on a conv feature map).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.checkpoint import checkpoint

Size = tuple[int, ...]

CONV_NORM_EPS = 1e-6  # channels-last LayerNorm of the conv blocks
VIT_NORM_EPS = 1e-5  # LayerNorm of the transformer and the fusion


def as_tuple(value: int | Sequence[int], n: int) -> Size:
    """``value`` as an ``n``-tuple of ints (an int is repeated)."""
    if isinstance(value, int):
        return (value,) * n
    out = tuple(int(v) for v in value)
    if len(out) != n:
        raise ValueError(f"expected {n} values, got {out}")
    return out


def conv_cls(n_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    if n_dims == 2:
        return nn.Conv2d
    if n_dims == 3:
        return nn.Conv3d
    raise ValueError(f"only 2-D and 3-D convolutions are supported, got n_dims={n_dims}")


def conv_transpose_cls(n_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    if n_dims == 2:
        return nn.ConvTranspose2d
    if n_dims == 3:
        return nn.ConvTranspose3d
    raise ValueError(f"only 2-D and 3-D convolutions are supported, got n_dims={n_dims}")


def _use_ckpt(module: nn.Module) -> bool:
    return bool(getattr(module, "grad_ckpt", False)) and module.training and torch.is_grad_enabled()


def maybe_checkpoint(module: nn.Module, fn: Callable[..., torch.Tensor], *args: torch.Tensor | None) -> torch.Tensor:
    """Run ``fn(*args)``, through activation checkpointing when ``module.grad_ckpt`` is set and we train."""
    if _use_ckpt(module):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample (kept samples are rescaled)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a channels-first tensor (computed channels-last)."""

    def __init__(self, n_chans: int, eps: float = CONV_NORM_EPS) -> None:
        super().__init__(n_chans, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.movedim(1, -1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.movedim(-1, 1).contiguous()


class ConvNormAct(nn.Module):
    """Strided (patchifying) conv -> channels LayerNorm -> GELU. Keys: ``conv``, ``norm``."""

    def __init__(self, n_dims: int, in_chans: int, out_chans: int, kernel_size: Size) -> None:
        super().__init__()
        kernel_size = as_tuple(kernel_size, n_dims)
        self.conv = conv_cls(n_dims)(in_chans, out_chans, kernel_size=kernel_size, stride=kernel_size)
        self.norm = ChannelLayerNorm(out_chans)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ConvMlp(nn.Module):
    """1x1-conv MLP C -> hidden -> C with GELU. Keys: ``fc1``, ``fc2``."""

    def __init__(self, n_dims: int, chans: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        conv = conv_cls(n_dims)
        self.fc1 = conv(chans, hidden, kernel_size=1)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = conv(hidden, chans, kernel_size=1)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class MaskedConvBlock(nn.Module):
    """ConvMAE-style block: ``x += conv2(dwconv5(mask * conv1(LN(x))))``; ``x += MLP(LN(x))``.

    The optional mask, (batch, *spatial) with 1 = visible, is only used in MAE pre-training: it
    stops the depth-wise conv from leaking information out of masked patches.
    """

    def __init__(
        self,
        n_dims: int,
        chans: int,
        mlp_ratio: int = 4,
        dw_kernel: int = 5,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        conv = conv_cls(n_dims)
        self.grad_ckpt = False
        self.norm1 = ChannelLayerNorm(chans)
        self.norm2 = ChannelLayerNorm(chans)
        self.conv1 = conv(chans, chans, kernel_size=1)
        self.conv2 = conv(chans, chans, kernel_size=1)
        self.dw_conv = conv(chans, chans, kernel_size=dw_kernel, padding="same", groups=chans)
        self.drop_path = DropPath(drop_path)
        self.mlp = ConvMlp(n_dims, chans, chans * mlp_ratio, dropout=dropout)

    def _forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        if mask is not None:
            h = h * mask.unsqueeze(1).to(h.dtype)
        x = x + self.drop_path(self.conv2(self.dw_conv(h)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return maybe_checkpoint(self, self._forward, x, mask)


class ResConvBlock(nn.Module):
    """Pre-activation residual block LN-GELU-conv-LN-GELU-dropout-conv + shortcut.

    Keys: ``norm1`` (spans ``in_chans``), ``conv1``, ``norm2``, ``conv2`` and, when the width
    changes, a 1x1 ``shortcut``.
    """

    def __init__(self, n_dims: int, in_chans: int, out_chans: int, kernel_size: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        conv = conv_cls(n_dims)
        self.grad_ckpt = False
        self.norm1 = ChannelLayerNorm(in_chans)
        self.norm2 = ChannelLayerNorm(out_chans)
        self.conv1 = conv(in_chans, out_chans, kernel_size=kernel_size, padding="same")
        self.conv2 = conv(out_chans, out_chans, kernel_size=kernel_size, padding="same")
        self.dropout = nn.Dropout(dropout)
        self.act = nn.GELU()
        self.shortcut = conv(in_chans, out_chans, kernel_size=1) if in_chans != out_chans else nn.Identity()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return h + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self, self._forward, x)


class Mlp(nn.Module):
    """Token MLP dim -> hidden -> dim with GELU. Keys: ``fc1``, ``fc2``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head attention with separate ``q`` and ``kv`` projections (self- or cross-attention)."""

    def __init__(self, dim: int, n_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (batch, n_q, dim) attends to ``context`` (batch, n_k, dim), default ``x`` itself."""
        context = x if context is None else context
        b, n_q, dim = x.shape
        n_k = context.shape[1]
        q = self.q(x).reshape(b, n_q, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).reshape(b, n_k, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n_q, dim))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block; with ``context`` the attention is cross-attention to it.

    Keys: ``norm1``, ``attn.{q,kv,proj}``, ``norm2``, ``mlp.{fc1,fc2}``.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = VIT_NORM_EPS,
    ) -> None:
        super().__init__()
        self.grad_ckpt = False
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, n_heads, qkv_bias=qkv_bias)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def _attn_branch(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        return self.attn(self.norm1(x), context)

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path1(maybe_checkpoint(self, self._attn_branch, x, context))
        return x + self.drop_path2(maybe_checkpoint(self, self._mlp_branch, x))


# --------------------------------------------------------------------------------------------------
# fixed sin-cos positional embedding
# --------------------------------------------------------------------------------------------------


def sincos_pos_embed(embed_dim: int, grid_size: Sequence[int], max_period: float = 10000.0) -> torch.Tensor:
    """N-D sin-cos positional embedding, (prod(grid_size), embed_dim) float32.

    Each of the n axes gets ``embed_dim // n`` channels rounded down to even (half sin, half cos
    with frequencies ``max_period ** (-i / half)``), concatenated axis by axis and zero padded to
    ``embed_dim``. The coordinates come from a meshgrid with 'xy' indexing (the first two axes
    swapped, as numpy's default), flattened row-major: this reproduces the published checkpoints.
    Created on the current default device (so also on ``meta``).
    """
    grid_size = tuple(int(s) for s in grid_size)
    n_axes = len(grid_size)
    d = embed_dim // n_axes
    d -= d % 2
    half = d // 2
    coords = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in grid_size], indexing="xy")
    parts = []
    if half > 0:
        omega = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        for c in coords:
            angles = c.reshape(-1, 1) * omega.reshape(1, -1)
            parts += [torch.sin(angles), torch.cos(angles)]
    n_tokens = math.prod(grid_size)
    pad = embed_dim - d * n_axes
    if pad > 0:
        parts.append(torch.zeros(n_tokens, pad, dtype=torch.float64))
    return torch.cat(parts, dim=1).to(torch.float32)


def fixed_pos_embed(embed_dim: int, grid_size: Sequence[int]) -> nn.Parameter:
    """Sin-cos embedding as a non-trainable parameter (1, N, embed_dim) (it is in the state dict)."""
    return nn.Parameter(sincos_pos_embed(embed_dim, grid_size).unsqueeze(0), requires_grad=False)


def resize_pos_embed(pos_embed: torch.Tensor, old_grid: Size, new_grid: Size) -> torch.Tensor:
    """Interpolate a (1, N, E) grid embedding to another grid (bicubic in 2-D, trilinear in 3-D)."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    mode = {2: "bicubic", 3: "trilinear"}[len(old_grid)]
    dim = pos_embed.shape[-1]
    pe = pos_embed.float().reshape(1, *old_grid, dim).movedim(-1, 1)
    pe = F.interpolate(pe, size=tuple(new_grid), mode=mode)
    return pe.movedim(1, -1).reshape(1, -1, dim).to(pos_embed.dtype)


# --------------------------------------------------------------------------------------------------
# patches and masks
# --------------------------------------------------------------------------------------------------


def patchify(image: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """(batch, C, *S) -> (batch, prod(S // p), prod(p) * C); features ordered (*p, C)."""
    b, c, *spatial = image.shape
    n = len(spatial)
    patch_size = as_tuple(patch_size, n)
    if any(s % p for s, p in zip(spatial, patch_size, strict=True)):
        raise ValueError(f"image size {tuple(spatial)} is not divisible by patch size {patch_size}")
    grid = [s // p for s, p in zip(spatial, patch_size, strict=True)]
    x = image.reshape(b, c, *[v for g, p in zip(grid, patch_size, strict=True) for v in (g, p)])
    # axes: 0 batch, 1 chans, then (g0, p0, g1, p1, ...)
    perm = [0, *[2 + 2 * i for i in range(n)], *[3 + 2 * i for i in range(n)], 1]
    return x.permute(*perm).reshape(b, math.prod(grid), math.prod(patch_size) * c)


def unpatchify(x: torch.Tensor, patch_size: Sequence[int], grid_size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: (batch, prod(grid), prod(p) * C) -> (batch, C, *(grid * p))."""
    n = len(grid_size)
    patch_size = as_tuple(patch_size, n)
    b, n_tokens, feat = x.shape
    if n_tokens != math.prod(grid_size) or feat % math.prod(patch_size):
        raise ValueError(f"cannot unpatchify {tuple(x.shape)} to grid {tuple(grid_size)} x patch {patch_size}")
    c = feat // math.prod(patch_size)
    x = x.reshape(b, *grid_size, *patch_size, c)
    # axes: 0 batch, 1..n grid, n+1..2n patch, 2n+1 chans -> (b, c, g0, p0, g1, p1, ...)
    perm = [0, 2 * n + 1, *[v for i in range(n) for v in (1 + i, 1 + n + i)]]
    return x.permute(*perm).reshape(b, c, *[g * p for g, p in zip(grid_size, patch_size, strict=True)])


def upsample_mask(mask: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """Nearest upsampling of a (batch, *grid) mask by an integer factor per axis."""
    for axis, f in enumerate(factor):
        if f != 1:
            mask = mask.repeat_interleave(int(f), dim=axis + 1)
    return mask


def random_patch_mask(
    batch_size: int, n_patches: int, mask_ratio: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """Per-sample random mask (batch, n_patches), True = masked; every sample keeps the same count."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_keep = int(n_patches * (1 - mask_ratio))
    noise = torch.rand(batch_size, n_patches, device=device)
    rank = noise.argsort(dim=1).argsort(dim=1)  # rank of each patch's noise; smallest are kept
    return rank >= n_keep


def init_transformer_weights(module: nn.Module) -> None:
    """Xavier-uniform Linear layers with zero bias, unit LayerNorms (as the reference ViT)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
