"""Translate between CineStudy and napari layer data (plain tuples; no napari import here)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .io.labels import LABEL_COLORS, LABEL_NAMES
from .io.study import CineStudy

AXIS_LABELS = ("t", "z", "y", "x")
LANDMARK_NAMES = ("mv_1", "mv_2", "apex")

LayerData = tuple[Any, dict[str, Any], str]


def _common(study: CineStudy) -> dict[str, Any]:
    return {
        "scale": study.napari_scale(),
        "units": study.napari_units(),
        "axis_labels": AXIS_LABELS,
    }


def contrast_limits(image: np.ndarray) -> tuple[float, float]:
    """Robust window (0.5th-99.5th percentile of a subsample) so one bright pixel cannot wash it out."""
    sample = image[:: max(1, image.shape[0] // 4)].ravel()
    if sample.size > 2_000_000:
        sample = sample[:: sample.size // 1_000_000]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
        if hi <= lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def label_colormap() -> dict[int | None, tuple[float, ...]]:
    colors: dict[int | None, tuple[float, ...]] = {k: v for k, v in LABEL_COLORS.items()}
    colors[None] = (1.0, 1.0, 0.0, 1.0)  # anything unexpected shows up bright
    return colors


def image_layer_data(study: CineStudy, name: str | None = None) -> LayerData:
    return (
        study.image,
        {
            "name": name or study.name,
            "colormap": "gray",
            "contrast_limits": contrast_limits(study.image),
            "metadata": {"cinema_study": study.header()},
            **_common(study),
        },
        "image",
    )


def labels_layer_data(study: CineStudy, labels: np.ndarray, name: str, metadata: dict | None = None) -> LayerData:
    meta = {"label_names": dict(LABEL_NAMES), "cinema_study": study.header()}
    meta.update(metadata or {})
    return (
        labels,
        {"name": name, "colormap": label_colormap(), "opacity": 0.5, "metadata": meta, **_common(study)},
        "labels",
    )


def points_layer_data(study: CineStudy, points_tzyx: np.ndarray, names: list[str], name: str,
                      metadata: dict | None = None) -> LayerData:
    """Landmarks as one napari Points layer: rows (t, z, y, x) in voxel units, a ``name`` feature."""
    return (
        np.asarray(points_tzyx, dtype=float),
        {
            "name": name,
            "features": {"name": list(names)},
            "text": {"string": "{name}", "size": 9, "color": "yellow", "anchor": "upper_left"},
            "face_color": "yellow",
            "border_color": "black",
            "size": 4.0,
            "metadata": dict(metadata or {}),
            **_common(study),
        },
        "points",
    )


def study_layer_data(study: CineStudy) -> list[LayerData]:
    """The layers a reader returns: the cine and, when the study carries them, its labels."""
    layers = [image_layer_data(study)]
    if study.labels is not None:
        layers.append(
            labels_layer_data(
                study,
                study.labels,
                f"{study.name} labels",
                {"labelled_frames": list(study.labelled_frames), "provenance": "dataset labels"},
            )
        )
    return layers


def study_from_layer(layer: Any) -> CineStudy | None:
    """The CineStudy a napari-cinema layer was made from (or None for foreign layers)."""
    return getattr(layer, "metadata", {}).get("cinema_study")
