"""Label-free centring: where to crop the network input when the field of view is larger than it.

The reference crops around the LV found from ground-truth labels, which do not exist at inference.
Ours: a first pass of the segmentation network over the whole field of view (downsampled so that it
fits one network input, or at full resolution with a sliding window), the largest connected LV
(label 3) component over a few frames, then one crop shared by all frames (no jitter), centred on
the LV centroid and shifted so that the whole heart (the foreground component holding the LV, plus
a margin) is inside; a heart larger than the network input gets a sliding window over its box.
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

    method: str  # 'fov' | 'downsample' | 'sliding' | 'segmentation' | 'given' | 'image-centre'
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


def find_heart(labels_xyz: np.ndarray, axes: tuple[AxisMap, AxisMap, AxisMap], offset=(0, 0, 0),
               min_lv_ml: float = 2.0) -> HeartBox | None:
    """The LV and heart of label maps ``(F, X, Y, Z)`` on a model grid (region offset ``offset``).

    Uses the union over the F frames; None when no LV component of at least ``min_lv_ml`` exists.
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
    best = int(np.argmax(sizes))
    lv_ml = float(sizes[best]) * voxel_ml
    if lv_ml < min_lv_ml:
        return None
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
