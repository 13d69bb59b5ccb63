"""napari reader contributions. Probing returns None for what we cannot read and never raises."""

from __future__ import annotations

from pathlib import Path

from .io.load import load_studies, study_kind
from .layers import study_layer_data


def _single_path(path: str | list[str]) -> str | None:
    if isinstance(path, list):
        return path[0] if len(path) == 1 else None
    return path


def get_reader(path: str | list[str]):
    """npe2 reader hook for NIfTI and DICOM files and folders."""
    try:
        p = _single_path(path)
        if p is None or study_kind(Path(p)) is None:
            return None
    except Exception:  # the contract: never raise while probing
        return None
    return read_path


def read_path(path: str | list[str]):
    """Read every cine at ``path``; errors (CineLoadError) name the file and the problem."""
    p = _single_path(path)
    if p is None:
        raise ValueError("napari-cinema opens one study at a time")
    layers = []
    for study in load_studies(p):
        layers.extend(study_layer_data(study))
    return layers
