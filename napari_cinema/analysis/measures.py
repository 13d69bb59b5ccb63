"""Volumes, mass, EF and body size from labels and study geometry.

Volumes are voxel counts times the voxel volume of the study (dz x dy x dx mm^3 / 1000 = ml); this is
the summation-of-discs method of CMR volumetry with the slice spacing as disc height (what ACDC, UK
Biobank and the reference CSVs of this project use). The labels decide the contouring convention:
whatever the label map puts in the LV cavity (papillary muscles and trabeculae in ACDC-style labels)
counts as blood pool.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..io.labels import LV, MYO, RV

# Myocardial density used for LV mass (g/ml), as in ACDC, UK Biobank and the SCMR recommendations.
MYO_DENSITY_G_PER_ML = 1.05

STRUCTURES = {"LV": LV, "RV": RV, "MYO": MYO}

# Plausible adult and paediatric body size; outside these a typed-in value is taken for a mistake.
HEIGHT_RANGE_CM = (40.0, 250.0)
WEIGHT_RANGE_KG = (2.0, 350.0)


def spacing_problem(spacing: Sequence[float | None]) -> str | None:
    """Why the voxel size of ``spacing`` (dt, dz, dy, dx) cannot give volumes, or None."""
    _, dz, dy, dx = spacing
    for name, v in (("slice spacing dz", dz), ("row spacing dy", dy), ("column spacing dx", dx)):
        if v is None or not np.isfinite(v) or v <= 0:
            return f"invalid voxel size: {name} = {v}"
    return None


def voxel_volume_ml(spacing: Sequence[float | None]) -> float | None:
    if spacing_problem(spacing):
        return None
    _, dz, dy, dx = spacing
    return float(dz) * float(dy) * float(dx) / 1000.0


def labelled_frames(labels: np.ndarray, declared: Sequence[int] | None = None) -> list[int]:
    """Frames that hold labels: the ``declared`` ones (a study's ``labelled_frames``) when given,
    otherwise every frame with at least one foreground voxel (an all-background frame means "not
    labelled", as in ACDC and Sunnybrook where only ED and ES are contoured)."""
    labels = np.asarray(labels)
    nonempty = [t for t in range(labels.shape[0]) if labels[t].any()]
    if declared:
        declared = sorted({int(t) for t in declared if 0 <= int(t) < labels.shape[0]})
        return [t for t in declared if t in nonempty] or declared
    return nonempty


def voxel_counts(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Voxels per frame of each structure, {name: (t,) int64}."""
    labels = np.asarray(labels)
    flat = labels.reshape(labels.shape[0], -1)
    return {name: np.count_nonzero(flat == value, axis=1).astype(np.int64) for name, value in STRUCTURES.items()}


def structure_volumes(labels: np.ndarray, spacing: Sequence[float | None],
                      frames: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Per-frame LV cavity, RV cavity and LV myocardium volumes in ml, {name: (t,) float}.

    Frames not in ``frames`` (default: :func:`labelled_frames`) are NaN; the caller turns NaN into
    null. Raises ValueError for an invalid voxel size.
    """
    labels = np.asarray(labels)
    if labels.ndim == 3:
        labels = labels[None]
    if labels.ndim != 4:
        raise ValueError(f"labels must be (t, z, y, x), got shape {labels.shape}")
    problem = spacing_problem(spacing)
    if problem:
        raise ValueError(problem)
    vox = voxel_volume_ml(spacing)
    frames = labelled_frames(labels) if frames is None else list(frames)
    counts = voxel_counts(labels)
    out: dict[str, np.ndarray] = {}
    for name, c in counts.items():
        v = np.full(labels.shape[0], np.nan)
        idx = np.asarray(frames, dtype=int)
        if idx.size:
            v[idx] = c[idx] * vox
        out[name] = v
    return out


def slice_areas_mm2(labels_frame: np.ndarray, spacing: Sequence[float | None], value: int) -> np.ndarray:
    """Area in mm^2 of label ``value`` on each slice of one (z, y, x) frame."""
    _, _, dy, dx = spacing
    return np.count_nonzero(np.asarray(labels_frame) == value, axis=(1, 2)) * float(dy) * float(dx)


def ejection_fraction(edv: float | None, esv: float | None) -> float | None:
    """(EDV - ESV) / EDV in percent; None when not computable (missing or zero EDV)."""
    if edv is None or esv is None or not np.isfinite(edv) or not np.isfinite(esv) or edv <= 0:
        return None
    return 100.0 * (edv - esv) / edv


def lv_mass_g(myo_ml: float | None) -> float | None:
    """LV myocardial mass: myocardial volume x 1.05 g/ml."""
    if myo_ml is None or not np.isfinite(myo_ml):
        return None
    return MYO_DENSITY_G_PER_ML * myo_ml


def body_size_problems(height_cm: float | None, weight_kg: float | None) -> list[str]:
    """Reasons the body size cannot be used (missing or implausible values)."""
    problems = []
    for name, v, (lo, hi), unit in (("height", height_cm, HEIGHT_RANGE_CM, "cm"),
                                     ("weight", weight_kg, WEIGHT_RANGE_KG, "kg")):
        if v is None:
            problems.append(f"{name} unknown")
            continue
        try:
            fv = float(v)
        except (TypeError, ValueError):
            problems.append(f"{name} {v!r} is not a number")
            continue
        if not math.isfinite(fv) or not lo <= fv <= hi:
            problems.append(f"{name} {v} {unit} is implausible (expected {lo:g}-{hi:g} {unit})")
    return problems


def bsa_mosteller(height_cm: float | None, weight_kg: float | None) -> float | None:
    """Body surface area (m^2) by Mosteller: sqrt(height_cm x weight_kg / 3600).

    Mosteller RD, N Engl J Med 1987;317:1098. None when either value is missing or implausible
    (see :func:`body_size_problems`).
    """
    if body_size_problems(height_cm, weight_kg):
        return None
    return math.sqrt(float(height_cm) * float(weight_kg) / 3600.0)
