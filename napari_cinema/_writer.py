"""napari writer contribution: a Labels layer as NIfTI on the study's own grid."""

from __future__ import annotations

from typing import Any

import numpy as np

from .io.writers import write_labels_nifti


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    study = meta.get("metadata", {}).get("cinema_study")
    if study is not None:
        affine, dt = study.affine, study.spacing[0]
    else:
        # A foreign layer: build the affine from its scale (t, z, y, x) so spacing survives.
        scale = list(meta.get("scale") or [1.0] * np.ndim(data))
        scale = [1.0] * (4 - len(scale)) + scale
        affine, dt = np.diag([scale[3], scale[2], scale[1], 1.0]), None
    write_labels_nifti(path, np.asarray(data), affine, dt)
    return [path]

