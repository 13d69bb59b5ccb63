"""Label-free centring: where to crop the network input when the field of view is larger than it.

The reference crops around the LV found from ground-truth labels, which do not exist at inference.
Ours: the heart is what moves in a cine, so a motion prior (the temporal standard deviation of the
image, smoothed at the scale of a ventricle) says where to look; a first pass of the segmentation
network on one network input around it (the scale the network was trained at) finds the LV (the
connected LV component nearest the motion peak); then one crop shared by all frames (no jitter),
centred on the LV centroid and shifted so that the whole heart (the foreground component holding
the LV, plus a margin) is inside; a heart larger than the network input gets a sliding window over
its box. When that finds no LV (a single frame, no motion), the first pass runs over the whole field
of view (downsampled to one network input, then at full resolution with a sliding window).

Why the motion prior first: a network trained on crops around the heart is not trained to reject
the rest of the field of view; on 3 of the 15 held-out ACDC patients a whole-field first pass
found a false LV outside the heart, which the motion prior avoids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .preprocess import AxisMap, Region

LV_LABEL = 3


@dataclass
class HeartBox:
    """LV centroid and heart bounding box in centred millimetres (x, y, z)."""

    centre_mm: np.ndarray
    lo_mm: np.ndarray
    hi_mm: np.ndarray
    lv_volume_ml: float


@dataclass
class CentringInfo:
    """How the crop was chosen, for provenance."""

    method: str  # 'fov' | 'motion' | 'downsample' | 'sliding' | 'segmentation' | 'given' | 'image-centre'
    region: dict = field(default_factory=dict)
    frames: list[int] = field(default_factory=list)
    centre_voxel_zyx: list[float] | None = None
    lv_volume_ml: float | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "region": self.region,
            "frames": list(self.frames),
            "centre_voxel_zyx": self.centre_voxel_zyx,
            "lv_volume_ml": self.lv_volume_ml,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }


def motion_centre(image_tzyx: np.ndarray, spacing_zyx, sigma_mm: float = 15.0,
                  min_contrast: float = 1.5) -> tuple[float, float, float] | None:
    """Study voxel ``(z, y, x)`` where the cine moves most, or None when nothing stands out.

    The temporal standard deviation of every pixel (intensities scaled by the image's 99th
    percentile), averaged over slices, smoothed with a Gaussian of ``sigma_mm``; its peak must be
    ``min_contrast`` times the median of the smoothed map (else: no usable motion, e.g. one frame).
    """
    image = np.asarray(image_tzyx)
    if image.ndim != 4 or image.shape[0] < 2:
        return None
    img = np.asarray(image, dtype=np.float32)  # no copy for the usual float32 cine
    scale = float(np.percentile(img[:, img.shape[1] // 2], 99)) or 1.0
    std = img.std(axis=0) / scale  # (z, y, x); std is linear in the scale, so scale the small result
    per_slice = std.mean(axis=(1, 2))
    motion = std.mean(axis=0)
    dz, dy, dx = (float(v) for v in spacing_zyx)
    smooth = ndimage.gaussian_filter(motion, (sigma_mm / dy, sigma_mm / dx), mode="constant")
    floor = float(np.median(smooth))
    peak = float(smooth.max())
    if peak <= 0 or peak < min_contrast * floor:
        return None
    y, x = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    # the slice through the moving region: weighted mean of slices by their motion there
    w = std[:, max(0, y - 2):y + 3, max(0, x - 2):x + 3].mean(axis=(1, 2)) + 1e-6 * per_slice
    z = float((w * np.arange(len(w))).sum() / w.sum())
    return (z, float(y), float(x))


def find_heart(labels_xyz: np.ndarray, axes: tuple[AxisMap, AxisMap, AxisMap], offset=(0, 0, 0),
               min_lv_ml: float = 2.0, near_xyz=None, near_mm: float = 50.0) -> HeartBox | None:
    """The LV and heart of label maps ``(F, X, Y, Z)`` on a model grid (region offset ``offset``).

    Uses the union over the F frames; the LV is the largest connected LV component of at least
    ``min_lv_ml``; given ``near_xyz`` (region voxel coordinates), the one with the largest volume
    times a Gaussian (sigma ``near_mm``) of its in-plane distance to that point. None when there is none.
    """
    labels_xyz = np.asarray(labels_xyz)
    if labels_xyz.ndim == 3:
        labels_xyz = labels_xyz[None]
    lv = np.any(labels_xyz == LV_LABEL, axis=0)
    if not lv.any():
        return None
    voxel_ml = float(np.prod([ax.t for ax in axes])) / 1000.0
    cc, n = ndimage.label(lv)
    sizes = np.bincount(cc.ravel(), minlength=n + 1)
    sizes[0] = 0
    big = [i for i in range(1, n + 1) if sizes[i] * voxel_ml >= min_lv_ml]
    if not big:
        return None
    if near_xyz is None:
        best = int(np.argmax(sizes))
    else:
        centroids = ndimage.center_of_mass(lv, cc, big)
        near = np.asarray(near_xyz, dtype=np.float64)[:2]
        mm = np.array([axes[0].t, axes[1].t])
        dist = np.array([float(np.linalg.norm((np.asarray(c[:2]) - near) * mm)) for c in centroids])
        # size weighted by closeness: the motion peak can sit on the RV or the diaphragm, tens of mm
        # from the LV, while false LVs far away are often larger than the real one
        score = sizes[big] * np.exp(-0.5 * (dist / near_mm) ** 2)
        best = big[int(np.argmax(score))]
    lv_ml = float(sizes[best]) * voxel_ml
    lv_mask = cc == best
    fg = np.any(labels_xyz > 0, axis=0)
    fcc, _ = ndimage.label(fg)
    heart_ids = np.unique(fcc[lv_mask])
    heart = np.isin(fcc, heart_ids[heart_ids > 0])
    idx = np.argwhere(lv_mask).astype(np.float64)
    centre = idx.mean(axis=0)
    hidx = np.argwhere(heart)
    lo, hi = hidx.min(axis=0) - 0.5, hidx.max(axis=0) + 0.5
    off = np.asarray(offset, dtype=np.float64)
    to_mm = lambda v: np.array([ax.mm(v[k] + off[k]) for k, ax in enumerate(axes)])  # noqa: E731
    return HeartBox(to_mm(centre), to_mm(lo), to_mm(hi), lv_ml)


def region_around(axes: tuple[AxisMap, AxisMap, AxisMap], patch: tuple[int, int, int],
                  centre_mm: np.ndarray | None, lo_mm: np.ndarray | None = None, hi_mm: np.ndarray | None = None,
                  margin_mm: float = 10.0) -> Region:
    """The region to run on: one network input centred on ``centre_mm`` holding ``[lo, hi]`` + margin.

    Axes that fit the network input are kept whole. Along an axis where the heart box (with margin)
    is longer than the input, the region is that box (the caller slides windows over it). With no
    centre, the input is centred on the image.
    """
    start, stop = [], []
    for k, (ax, p) in enumerate(zip(axes, patch)):
        if ax.m <= p:
            start.append(0)
            stop.append(ax.m)
            continue
        c = (ax.m - 1) / 2.0 if centre_mm is None else float(ax.from_mm(centre_mm[k]))
        a = int(round(c - (p - 1) / 2.0))
        if lo_mm is not None and hi_mm is not None:
            h0 = float(ax.from_mm(lo_mm[k] - margin_mm))
            h1 = float(ax.from_mm(hi_mm[k] + margin_mm))
            h0, h1 = max(0.0, h0), min(float(ax.m), h1)
            if h1 - h0 > p:
                a0, b0 = int(np.floor(h0)), int(np.ceil(h1))
                start.append(max(0, a0))
                stop.append(min(ax.m, b0))
                continue
            a = min(max(a, int(np.ceil(h1)) - p), int(np.floor(h0)))
        a = min(max(a, 0), ax.m - p)
        start.append(a)
        stop.append(a + p)
    return Region(tuple(axes), tuple(start), tuple(stop))  # type: ignore[arg-type]


def centring_frames(n_frames: int, ed: int | None = None, es: int | None = None, k: int = 3) -> list[int]:
    """Frames for the first pass: ED and ES when known, else ``k`` evenly spaced frames."""
    known = [f for f in (ed, es) if f is not None and 0 <= f < n_frames]
    if known:
        return sorted(set(known))
    k = max(1, min(k, n_frames))
    return sorted({int(round(v)) for v in np.linspace(0, n_frames - 1, k)})
