"""napari sample-data contributions: the phantom cines with their truth as layers.

Each function returns napari LayerData tuples (no napari import): the cine, its truth labels and,
for the long-axis views, the truth landmarks as a Points layer in (t, z, y, x) voxel coordinates.
Every layer carries ``metadata['cinema_study']`` (the study header, without labels) and
``metadata['truth']`` (the truth dict of :func:`.phantom.make_phantom`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_cinema.layers import LANDMARK_NAMES, image_layer_data, labels_layer_data, points_layer_data

from .phantom import make_phantom

LayerData = tuple[Any, dict[str, Any], str]


def _landmark_points(truth: dict) -> tuple[np.ndarray, list[str]]:
    rows, names = [], []
    for t in range(truth["frames"]):
        for name in LANDMARK_NAMES:
            z, y, x = truth["landmarks"][name][t]
            rows.append([float(t), z, y, x])
            names.append(name)
    return np.asarray(rows, dtype=float), names


def phantom_layers(view: str, **overrides: Any) -> list[LayerData]:
    """Layer data for a phantom of ``view`` (overrides as for :func:`.phantom.make_phantom`)."""
    study, truth = make_phantom(view, **overrides)
    header = study.header()
    image = image_layer_data(study, name=f"phantom {view}")
    image[1]["metadata"] = {"cinema_study": header, "truth": truth}
    image[1]["colormap"] = "gray"
    labels = labels_layer_data(
        study,
        study.labels,
        f"{view} truth labels",
        {"truth": truth, "provenance": "phantom truth", "labelled_frames": list(study.labelled_frames)},
    )
    layers = [image, labels]
    if "landmarks" in truth:
        pts, names = _landmark_points(truth)
        layers.append(
            points_layer_data(study, pts, names, "landmarks truth",
                              {"cinema_study": header, "truth": truth, "provenance": "phantom truth"})
        )
    return layers


def sax_sample() -> list[LayerData]:
    return phantom_layers("sax")


def lax_4c_sample() -> list[LayerData]:
    return phantom_layers("lax_4c")


def lax_2c_sample() -> list[LayerData]:
    return phantom_layers("lax_2c")
