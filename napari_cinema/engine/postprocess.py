"""Label clean-up after the network: one connected piece per blood pool.

A cavity (LV, RV, and LA/RA on long-axis views) is one connected body in every frame; smaller pieces
of the same label elsewhere are false positives (a bright vessel, the stomach, the other ventricle's
outflow). Keeping the largest 3-D piece of each (full 26-neighbour connectivity, so slices 10 mm apart
still join where their in-plane outlines overlap diagonally) is nnU-Net's post-processing, kept here
because it helped on held-out data: the third-stage default-sax-seg on the ACDC held-out split, mean
Dice 0.866 -> 0.868 and HD95 6.2 -> 5.7 mm (M&Ms and Sunnybrook unchanged). The myocardium is left
alone: its basal slices are open arcs whose pieces are real (keeping only the largest lowered its Dice).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from scipy import ndimage

BLOOD_POOLS = ("LV", "RV", "LA", "RA")
_FULL_3D = np.ones((3, 3, 3), dtype=bool)


def blood_pool_labels(label_map: Mapping[int, str] | None) -> list[int]:
    """The label values of a model's label map whose names are blood pools (:data:`BLOOD_POOLS`)."""
    return sorted(int(k) for k, name in (label_map or {}).items() if str(name) in BLOOD_POOLS and int(k) > 0)


def keep_largest_pieces(labels_tzyx: np.ndarray, label_values: Iterable[int]) -> int:
    """Per frame and label value, set every piece but the largest to background, in place.

    ``labels_tzyx``: integer labels ``(t, z, y, x)``. Returns the number of voxels removed.
    """
    if labels_tzyx.ndim != 4:
        raise ValueError(f"labels must be (t, z, y, x), got shape {labels_tzyx.shape}")
    removed = 0
    for frame in labels_tzyx:
        for value in label_values:
            mask = frame == value
            pieces, n = ndimage.label(mask, structure=_FULL_3D)
            if n <= 1:
                continue
            sizes = np.bincount(pieces.ravel(), minlength=n + 1)
            sizes[0] = 0
            stray = mask & (pieces != int(np.argmax(sizes)))
            removed += int(stray.sum())
            frame[stray] = 0
    return removed
