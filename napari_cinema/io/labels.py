"""Label maps and the explicit remapping between dataset conventions.

Internal convention (ACDC and CineMA): 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity.
M&Ms and M&Ms-2 store 1 LV cavity, 2 LV myocardium, 3 RV cavity and are remapped on load and save.
"""

from __future__ import annotations

import numpy as np

BACKGROUND, RV, MYO, LV = 0, 1, 2, 3

LABEL_NAMES = {BACKGROUND: "background", RV: "RV", MYO: "MYO", LV: "LV"}

# Fixed display colours (RGBA) so every layer and report shows the same structure the same way.
LABEL_COLORS = {
    BACKGROUND: (0.0, 0.0, 0.0, 0.0),
    RV: (0.20, 0.55, 1.00, 1.0),
    MYO: (0.20, 0.85, 0.35, 1.0),
    LV: (1.00, 0.30, 0.25, 1.0),
}

# dataset label value -> internal label value
CONVENTIONS: dict[str, dict[int, int]] = {
    "acdc": {0: 0, 1: RV, 2: MYO, 3: LV},
    "cinema": {0: 0, 1: RV, 2: MYO, 3: LV},
    "mnms": {0: 0, 1: LV, 2: MYO, 3: RV},
    "mnms2": {0: 0, 1: LV, 2: MYO, 3: RV},
}


def to_internal(labels: np.ndarray, convention: str, source: str | None = None) -> np.ndarray:
    """Remap ``labels`` from a dataset ``convention`` to the internal one.

    Raises ValueError naming ``source`` when a value is not part of the convention.
    """
    mapping = CONVENTIONS[convention]
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError(f"{source or 'labels'}: label map holds non-integer values")
    values = np.unique(labels).astype(np.int64)
    unknown = [int(v) for v in values if int(v) not in mapping]
    if unknown:
        raise ValueError(
            f"{source or 'labels'}: label values {unknown} are not in the {convention} label map "
            f"{sorted(mapping)}"
        )
    lut = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut[labels.astype(np.int64)]


def from_internal(labels: np.ndarray, convention: str) -> np.ndarray:
    """Remap internal labels to a dataset ``convention`` (inverse of :func:`to_internal`)."""
    inverse = {v: k for k, v in CONVENTIONS[convention].items()}
    labels = np.asarray(labels)
    extra = sorted(int(v) for v in np.unique(labels) if int(v) not in inverse)
    if extra:
        raise ValueError(f"label values {extra} are not part of the label map {LABEL_NAMES}")
    lut = np.zeros(max(inverse) + 1, dtype=np.uint8)
    for k, v in inverse.items():
        lut[k] = v
    return lut[labels.astype(np.int64)]
