"""Geometry and augmentation for training samples.

* :func:`prepare_case` resamples a :class:`~.datasets.CaseRecord` once to the network's spacing with
  the inference engine's axis convention (voxel centres aligned on the field-of-view centre, linear
  for images, one-hot linear + argmax for labels, nearest for validity masks), and finds the heart
  centre of every frame.
* :func:`crop_window` takes a fixed-size window around a centre, zero-filled outside the image
  (random crop + end padding when the centre is jittered).
* :func:`minmax` scales an input to [0, 1] as the engine does ('input' scope).
* :func:`make_augment` builds the MONAI dict-transform pipeline: random in-plane flips and quarter turns
  (opt-in: orientation invariance), random affine (in-plane rotation, translation, scale), contrast
  gamma, Gaussian noise, coarse dropout. Randomness comes only from an
  explicit seed per sample (``set_random_state``), so a resumed run draws exactly what an
  uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .datasets import CaseRecord

__all__ = [
    "AUGMENT_DEFAULTS",
    "PreparedCase",
    "axis_matrix",
    "crop_window",
    "gaussian_heatmaps",
    "make_augment",
    "minmax",
    "prepare_case",
    "to_plain_tensor",
]

AUGMENT_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    # in-plane flips and quarter turns: a slice stored in another orientation than the training data's
    # (scanners and converters differ; a NIfTI may carry no orientation at all) looks like one seen in
    # training. Off by default: it drops the left-right prior (RV beside LV) that a model otherwise
    # learns, and it would swap the two mitral hinges of landmark heat-maps. Needs a square in-plane patch.
    "flip_prob": 0.0,  # per in-plane axis
    "rot90_prob": 0.0,  # a quarter, half or three-quarter turn
    "crop_jitter_mm": 20.0,  # random shift of the crop centre around the heart (uniform, per axis)
    "affine_prob": 0.8,
    "rotate_deg": 15.0,  # in-plane
    "translate_px": 8.0,
    "scale": 0.15,
    "gamma_prob": 0.3,
    "gamma": [0.7, 1.5],
    "noise_prob": 0.2,
    "noise_std": 0.03,
    "dropout_prob": 0.2,
    "dropout_holes": 4,
    "dropout_size": 8,
    "dropout_max_size": 20,
}


def axis_matrix(n: int, s: float, t: float, order: int = 1) -> np.ndarray:
    """(m, n) resampling matrix of one axis: ``n`` voxels of ``s`` mm -> ``m = round(n s / t)`` of ``t`` mm.

    Output voxel j sits at study coordinate ``(n-1)/2 + (j - (m-1)/2) t / s`` (centres aligned, as the
    engine's AxisMap); order 1 interpolates linearly (clamped at the borders), 0 takes the nearest.
    """
    m = max(1, int(round(n * s / t)))
    c = (n - 1) / 2.0 + (np.arange(m) - (m - 1) / 2.0) * t / s
    c = np.clip(c, 0, n - 1)
    mat = np.zeros((m, n), np.float32)
    if order == 0:
        mat[np.arange(m), np.clip(np.round(c).astype(int), 0, n - 1)] = 1.0
        return mat
    lo = np.floor(c).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (c - lo).astype(np.float32)
    mat[np.arange(m), lo] += 1.0 - w
    mat[np.arange(m), hi] += w
    return mat


def _apply(arr: np.ndarray, mats: Sequence[np.ndarray | None], axes: Sequence[int]) -> np.ndarray:
    out = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    for mat, ax in zip(mats, axes):
        if mat is None:
            continue
        out = torch.movedim(torch.tensordot(out, torch.from_numpy(mat), dims=([ax], [1])), -1, ax)
    return out.numpy()


@dataclass
class PreparedCase:
    """A record on the network grid: arrays (t, z, y, x) and per-frame facts."""

    record: CaseRecord
    image: np.ndarray
    labels: np.ndarray | None
    valid: np.ndarray | None  # (t, z) bool, None = all slices of labelled frames
    spacing: tuple[float, float, float]  # (dz, dy, dx) of the network grid
    centres: np.ndarray  # (t, 3) heart centre (z, y, x) on the network grid
    landmarks: dict[str, np.ndarray] | None = None  # name -> (t, 3) (z, y, x) on the network grid
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.image.shape[0])


def prepare_case(record: CaseRecord, spacing_xy_z: Sequence[float], ndim: int) -> PreparedCase:
    """Resample ``record`` to the network spacing (x, y[, z]) in mm; z only for 3-D networks."""
    dz, dy, dx = record.spacing
    t_n, z_n, y_n, x_n = record.image.shape
    sx, sy = float(spacing_xy_z[0]), float(spacing_xy_z[1])
    sz = float(spacing_xy_z[2]) if ndim == 3 and len(spacing_xy_z) > 2 else dz
    resample_z = ndim == 3 and z_n > 1 and abs(sz - dz) > 1e-6
    mats = [
        axis_matrix(z_n, dz, sz, 1) if resample_z else None,
        None if abs(sy - dy) < 1e-6 else axis_matrix(y_n, dy, sy, 1),
        None if abs(sx - dx) < 1e-6 else axis_matrix(x_n, dx, sx, 1),
    ]
    axes = [1, 2, 3]
    image = _apply(record.image, mats, axes) if any(m is not None for m in mats) else record.image.astype(np.float32)
    image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    labels = None
    if record.labels is not None:
        n_cls = int(max(record.label_map)) + 1
        labels = np.zeros(image.shape, np.uint8)
        for t in record.labelled_frames:
            lab = record.labels[t]
            if all(m is None for m in mats):
                labels[t] = lab
                continue
            onehot = (lab[None] == np.arange(n_cls)[:, None, None, None]).astype(np.float32)
            res = _apply(onehot, mats, axes)
            labels[t] = np.argmax(res, axis=0).astype(np.uint8)
    valid = None
    if record.valid is not None:
        valid = record.valid.copy()
        if resample_z:
            zmat = axis_matrix(z_n, dz, sz, 0)
            valid = (valid.astype(np.float32) @ zmat.T) > 0.5
    new_spacing = (sz if resample_z else dz, sy, sx)
    # heart centres: centroid of the labelled structures per frame, else their mean, else the image centre
    grid_centre = np.array([(image.shape[1] - 1) / 2, (image.shape[2] - 1) / 2, (image.shape[3] - 1) / 2])
    centres = np.tile(grid_centre, (t_n, 1))
    found = []
    if labels is not None:
        for t in record.labelled_frames:
            fg = np.argwhere(labels[t] > 0)
            if len(fg):
                centres[t] = fg.mean(axis=0)
                found.append(t)
        if found:
            mean = centres[found].mean(axis=0)
            for t in range(t_n):
                if t not in found:
                    centres[t] = mean
    landmarks = None
    if record.landmarks:
        def to_model(i: np.ndarray, n: int, s: float, tt: float) -> np.ndarray:
            m = max(1, int(round(n * s / tt)))
            return (m - 1) / 2.0 + (i - (n - 1) / 2.0) * s / tt

        landmarks = {}
        for name, pts in record.landmarks.items():
            pts = np.asarray(pts, np.float64).copy()
            pts[:, 0] = to_model(pts[:, 0], z_n, dz, sz) if resample_z else pts[:, 0]
            pts[:, 1] = to_model(pts[:, 1], y_n, dy, sy)
            pts[:, 2] = to_model(pts[:, 2], x_n, dx, sx)
            landmarks[name] = pts
        if labels is None or not found:
            allpts = np.stack(list(landmarks.values()), axis=1)  # (t, k, 3)
            centres = allpts.mean(axis=1)
    return PreparedCase(record=record, image=image.astype(np.float32, copy=False), labels=labels, valid=valid,
                        spacing=new_spacing, centres=centres, landmarks=landmarks)


def crop_window(arr: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float = 0) -> np.ndarray:
    """``arr[..., start:start+size]`` over its last len(size) axes, filled with ``fill`` outside."""
    k = len(size)
    lead = arr.shape[:-k]
    out = np.full(lead + tuple(int(s) for s in size), fill, dtype=arr.dtype)
    src, dst = [slice(None)] * len(lead), [slice(None)] * len(lead)
    for n, st, sz in zip(arr.shape[-k:], start, size):
        a, b = max(0, int(st)), min(int(n), int(st) + int(sz))
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - int(st), b - int(st)))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def window_start(centre: Sequence[float], size: Sequence[int]) -> list[int]:
    return [int(round(c - (s - 1) / 2.0)) for c, s in zip(centre, size)]


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the whole array; a constant array becomes zeros (engine convention)."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def gaussian_heatmaps(points: np.ndarray, size: Sequence[int], sigma: float = 3.0) -> np.ndarray:
    """(K, *size) maps with a unit-peak Gaussian of ``sigma`` px at each of the K points (grid coords)."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in size], indexing="ij")
    out = np.zeros((len(points), *size), np.float32)
    for k, p in enumerate(points):
        d2 = sum((g - float(c)) ** 2 for g, c in zip(grids, p))
        out[k] = np.exp(-d2 / (2.0 * sigma * sigma))
    return out


def make_augment(ndim: int, keys: Mapping[str, str], options: Mapping[str, Any] | None = None):
    """A MONAI Compose for one sample dict, or None when augmentation is off.

    ``keys`` maps each dict key to its kind: 'image' (intensity + spatial, bilinear), 'label'
    (spatial, nearest), 'map' (spatial, bilinear: heat-maps, validity).
    Spatial arrays are channel-first (C, x, y[, z]); rotation is in-plane (about the z axis in 3-D).
    """
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandCoarseDropoutd,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
    )

    opt = dict(AUGMENT_DEFAULTS)
    opt.update(dict(options or {}))
    if not opt.get("enabled", True):
        return None
    images = [k for k, v in keys.items() if v == "image"]
    spatial = list(keys)
    modes = ["nearest" if keys[k] == "label" else "bilinear" for k in spatial]
    rot = math.radians(float(opt["rotate_deg"]))
    tr = float(opt["translate_px"])
    sc = float(opt["scale"])
    if ndim == 2:
        rotate, translate, scale = (rot,), (tr, tr), (sc, sc)
    else:
        rotate, translate, scale = (0.0, 0.0, rot), (tr, tr, 0.0), (sc, sc, 0.0)
    ts = []
    for axis in (0, 1):  # x, y: in-plane in 2-D and 3-D alike (channel-first (C, x, y[, z]))
        if opt["flip_prob"] > 0:
            ts.append(RandFlipd(keys=spatial, prob=float(opt["flip_prob"]), spatial_axis=axis))
    if opt["rot90_prob"] > 0:
        ts.append(RandRotate90d(keys=spatial, prob=float(opt["rot90_prob"]), max_k=3, spatial_axes=(0, 1)))
    if opt["affine_prob"] > 0:
        ts.append(RandAffined(keys=spatial, prob=float(opt["affine_prob"]), rotate_range=rotate,
                              translate_range=translate, scale_range=scale, mode=modes, padding_mode="zeros"))
    if opt["gamma_prob"] > 0:
        ts.append(RandAdjustContrastd(keys=images, prob=float(opt["gamma_prob"]), gamma=tuple(opt["gamma"])))
    if opt["noise_prob"] > 0:
        ts.append(RandGaussianNoised(keys=images, prob=float(opt["noise_prob"]), mean=0.0, std=float(opt["noise_std"])))
    if opt["dropout_prob"] > 0:
        size = int(opt["dropout_size"])
        max_size = int(opt["dropout_max_size"])
        spatial_size = (size,) * ndim if ndim == 2 else (size, size, 1)
        max_spatial = (max_size,) * ndim if ndim == 2 else (max_size, max_size, 1)
        ts.append(RandCoarseDropoutd(keys=images, holes=int(opt["dropout_holes"]), spatial_size=spatial_size,
                                     max_spatial_size=max_spatial, fill_value=0.0, prob=float(opt["dropout_prob"])))
    return Compose(ts) if ts else None


def to_plain_tensor(x: Any) -> torch.Tensor:
    """A plain (non-Meta) contiguous tensor."""
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    t = torch.as_tensor(x)
    return t.contiguous()


def apply_augment(aug, sample: dict[str, np.ndarray], seed: int) -> dict[str, torch.Tensor]:
    """Run ``aug`` on ``sample`` with a per-sample seed; returns plain tensors."""
    if aug is None:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sample.items()}
    aug.set_random_state(seed=int(seed) % (2**32))
    out = aug({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sample.items()})
    return {k: to_plain_tensor(v) for k, v in out.items()}
