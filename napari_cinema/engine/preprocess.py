"""Geometry between a study's voxel grid and the network's grid, and intensity scaling.

Everything is separable: the study grid and the model grid share axes (the model is fed the study's
own x, y, z axes resampled to the model spacing; no reorientation), so resampling is one linear
interpolation matrix per axis. The same per-axis maps run forward (study -> model, images) and
backward (model -> study, class probabilities), which keeps the round trip exact by construction.

Conventions:
* internal tensors are ``(B, C, X, Y, Z)``: a study's ``(t, z, y, x)`` array is transposed to the
  model's ``(x, y, z)`` order (CINEMA_COMPAT: tensor layout (B, C, x, y, z));
* both grids are centred on the same point: study voxel ``i`` has centre ``(i - (n-1)/2) * s`` mm
  and model voxel ``j`` has centre ``(j - (m-1)/2) * t`` mm along each axis, ``m = round(n s / t)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AxisMap:
    """One axis: ``n`` study voxels of ``s`` mm resampled to ``m`` model voxels of ``t`` mm."""

    n: int
    s: float
    t: float
    m: int

    @classmethod
    def make(cls, n: int, s: float, t: float) -> "AxisMap":
        m = max(1, int(round(n * s / t)))
        return cls(int(n), float(s), float(t), m)

    @classmethod
    def identity(cls, n: int, s: float) -> "AxisMap":
        return cls(int(n), float(s), float(s), int(n))

    @property
    def is_identity(self) -> bool:
        return self.m == self.n and self.t == self.s

    def to_study(self, j):
        """Study voxel coordinate of model coordinate ``j`` (float or array)."""
        return (self.n - 1) / 2.0 + (np.asarray(j, dtype=np.float64) - (self.m - 1) / 2.0) * self.t / self.s

    def to_model(self, i):
        """Model coordinate of study voxel coordinate ``i``."""
        return (self.m - 1) / 2.0 + (np.asarray(i, dtype=np.float64) - (self.n - 1) / 2.0) * self.s / self.t

    def study_mm(self, i):
        """Centred millimetres of study voxel coordinate ``i``."""
        return (np.asarray(i, dtype=np.float64) - (self.n - 1) / 2.0) * self.s

    def mm(self, j):
        """Centred millimetres of model coordinate ``j``."""
        return (np.asarray(j, dtype=np.float64) - (self.m - 1) / 2.0) * self.t

    def from_mm(self, p):
        return (self.m - 1) / 2.0 + np.asarray(p, dtype=np.float64) / self.t

    def rescaled(self, t: float) -> "AxisMap":
        """The same study axis at another model spacing."""
        return AxisMap.make(self.n, self.s, t)


@dataclass(frozen=True)
class Region:
    """A box ``[start, stop)`` per axis of the model grid (x, y, z): what the network is run on."""

    axes: tuple[AxisMap, AxisMap, AxisMap]
    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    def __post_init__(self) -> None:
        for ax, a, b in zip(self.axes, self.start, self.stop):
            if not (0 <= a < b <= ax.m):
                raise ValueError(f"region [{a}, {b}) is outside the model grid of {ax.m} voxels")

    @classmethod
    def full(cls, axes) -> "Region":
        axes = tuple(axes)
        return cls(axes, (0, 0, 0), tuple(ax.m for ax in axes))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(ax.m for ax in self.axes)  # type: ignore[return-value]

    def to_study(self, w: np.ndarray) -> np.ndarray:
        """Study voxel coordinates (x, y, z) of region coordinates ``w`` (..., 3)."""
        w = np.asarray(w, dtype=np.float64)
        return np.stack([ax.to_study(w[..., k] + a) for k, (ax, a) in enumerate(zip(self.axes, self.start))], -1)

    def describe(self) -> dict:
        return {
            "model_grid_xyz": list(self.grid_shape),
            "start_xyz": list(self.start),
            "stop_xyz": list(self.stop),
            "model_spacing_xyz_mm": [ax.t for ax in self.axes],
        }


def interp_matrix(coords: np.ndarray, n: int, clamp_lo: bool = True, clamp_hi: bool = True) -> np.ndarray:
    """Linear interpolation weights ``(len(coords), n)`` sampling ``n`` samples at ``coords``.

    Coordinates beyond a clamped side take the edge value; beyond an unclamped side the samples
    fade to zero (a virtual zero sample just outside), so rows may sum to less than one.
    """
    c = np.asarray(coords, dtype=np.float64).copy()
    if clamp_lo:
        c = np.maximum(c, 0.0)
    if clamp_hi:
        c = np.minimum(c, n - 1.0)
    i0 = np.floor(c).astype(np.int64)
    f = c - i0
    w = np.zeros((c.size, n), dtype=np.float64)
    rows = np.arange(c.size)
    for idx, weight in ((i0, 1.0 - f), (i0 + 1, f)):
        ok = (idx >= 0) & (idx < n) & (weight > 0)
        np.add.at(w, (rows[ok], idx[ok]), weight[ok])
    return w


def _apply_axes(x: torch.Tensor, mats: list[torch.Tensor | None]) -> torch.Tensor:
    """Apply per-axis ``(out, in)`` matrices to the spatial axes 2, 3, 4 of ``x``."""
    # Shrinking axes first keeps the intermediate tensors small.
    order = sorted(range(3), key=lambda k: 0 if mats[k] is None else mats[k].shape[0] / mats[k].shape[1])
    for k in order:
        w = mats[k]
        if w is None:
            continue
        x = torch.movedim(torch.matmul(torch.movedim(x, 2 + k, -1), w.T), -1, 2 + k)
    return x


def forward_matrices(region: Region, device: torch.device) -> list[torch.Tensor | None]:
    """Per axis ``(L, n)`` matrices sampling the study axis on the region's model voxels."""
    mats: list[torch.Tensor | None] = []
    for ax, a, b in zip(region.axes, region.start, region.stop):
        if ax.is_identity and a == 0 and b == ax.n:
            mats.append(None)
            continue
        w = interp_matrix(ax.to_study(np.arange(a, b)), ax.n, True, True)
        mats.append(torch.as_tensor(w, dtype=torch.float32, device=device))
    return mats


def backward_matrices(region: Region, device: torch.device) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    """Per axis ``(n, L)`` matrices mapping region values back onto study voxels, and the covered weight.

    Region sides that coincide with the image border are clamped (edge voxels keep the network's
    answer); sides inside the image fade to zero, i.e. to "not covered" (the caller fills in
    background). Returns the matrices and ``coverage`` ``(n_x, n_y, n_z)`` (1 inside the region).
    """
    mats: list[torch.Tensor | None] = []
    cover = []
    for ax, a, b in zip(region.axes, region.start, region.stop):
        if ax.is_identity and a == 0 and b == ax.n:
            mats.append(None)
            cover.append(torch.ones(ax.n, dtype=torch.float32, device=device))
            continue
        w = interp_matrix(ax.to_model(np.arange(ax.n)) - a, b - a, clamp_lo=(a == 0), clamp_hi=(b == ax.m))
        t = torch.as_tensor(w, dtype=torch.float32, device=device)
        mats.append(t)
        cover.append(t.sum(dim=1))
    coverage = cover[0][:, None, None] * cover[1][None, :, None] * cover[2][None, None, :]
    return mats, coverage


def study_to_region(frames: torch.Tensor, region: Region,
                    mats: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Resample ``(B, C, n_x, n_y, n_z)`` study frames onto the region ``(B, C, L_x, L_y, L_z)``."""
    if mats is None:
        mats = forward_matrices(region, frames.device)
    return _apply_axes(frames, mats)


def region_to_study(values: torch.Tensor, region: Region, background_channel: int | None = 0,
                    mats: tuple[list[torch.Tensor | None], torch.Tensor] | None = None) -> torch.Tensor:
    """Map region values ``(B, K, L...)`` (probabilities) back onto the study grid ``(B, K, n...)``.

    Study voxels outside the region get probability 1 for ``background_channel`` (0 for all
    channels when it is None); at inner region borders the two blend linearly.
    """
    if mats is None:
        mats = backward_matrices(region, values.device)
    m, coverage = mats
    out = _apply_axes(values, m)
    if background_channel is not None:
        out[:, background_channel] += 1.0 - coverage
    return out


def study_frames_tensor(image_tzyx: np.ndarray, device: torch.device) -> torch.Tensor:
    """``(t, z, y, x)`` numpy frames as a ``(t, 1, x, y, z)`` float32 tensor on ``device``."""
    arr = np.asarray(image_tzyx, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    t = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
    return t.permute(0, 3, 2, 1)[:, None]


def minmax_scale(x: torch.Tensor, per_slice: bool) -> torch.Tensor:
    """Scale each item of ``(B, C, X, Y, Z)`` to [0, 1] over C, X, Y (and Z unless ``per_slice``).

    A constant input becomes all zeros (as MONAI's ScaleIntensity does).
    """
    dims = (1, 2, 3) if per_slice else (1, 2, 3, 4)
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    rng = hi - lo
    safe = torch.where(rng > 0, rng, torch.ones_like(rng))
    return torch.where(rng > 0, (x - lo) / safe, torch.zeros_like(x))


def pad_to(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Zero-pad ``(B, C, X, Y, Z)`` at the end of each spatial axis up to at least ``size``."""
    pads = []
    for k in (4, 3, 2):
        pads += [0, max(0, size[k - 2] - x.shape[k])]
    if any(pads):
        x = torch.nn.functional.pad(x, pads)
    return x


def model_axes(study_shape_tzyx, study_spacing, spec_spacing, spec_ndim: int) -> tuple[AxisMap, AxisMap, AxisMap]:
    """The (x, y, z) axis maps of a study for a model with ``spec_spacing`` (x, y[, z])."""
    _t, nz, ny, nx = study_shape_tzyx
    _dt, dz, dy, dx = study_spacing
    ax_x = AxisMap.make(nx, dx, spec_spacing[0])
    ax_y = AxisMap.make(ny, dy, spec_spacing[1])
    ax_z = AxisMap.make(nz, dz, spec_spacing[2]) if spec_ndim == 3 else AxisMap.identity(nz, dz)
    return ax_x, ax_y, ax_z


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def fit_spacing(axes: tuple[AxisMap, ...], patch: tuple[int, ...]) -> float:
    """The smallest isotropic in-plane spacing at which the whole field of view fits ``patch``."""
    fov = max(axes[0].n * axes[0].s / patch[0], axes[1].n * axes[1].s / patch[1])
    return max(axes[0].t, axes[1].t, fov)
