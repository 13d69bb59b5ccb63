"""Slice-coverage and label-sanity checks, reported as warnings (never errors).

Checked on the short-axis stack at ED (and ES where stated):

- missing structures: no LV cavity, myocardium or RV in a labelled frame;
- base coverage: LV cavity on the first/last slice of the stack at its basal end means the base may lie
  beyond the stack (volumes then underestimate);
- apex coverage: a large LV cavity on the apical end slice means the apex may be cut off;
- gaps: a slice without LV between slices with LV ("LV missing in a middle slice"), the typical
  segmentation failure that ukbb_cardiac's quality control rejects;
- discontinuities: an LV cavity area that jumps by more than half the largest slice area between
  neighbouring interior slices (the end slices are partial volumes and may legitimately be small).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..io.labels import LV, MYO, RV

MIN_PIXELS = 10


def coverage_warnings(labels: np.ndarray, frames: Sequence[int], *, ed_frame: int | None = None,
                      es_frame: int | None = None, view: str = "sax",
                      spacing: Sequence[float | None] | None = None) -> list[str]:
    """Human-readable warnings about coverage and label sanity; empty when all is well."""
    labels = np.asarray(labels)
    out: list[str] = []
    frames = list(frames)
    if not frames:
        return ["no labelled frame"]
    names = {LV: "LV cavity", MYO: "LV myocardium", RV: "RV cavity"}
    for value, name in names.items():
        lacking = [t for t in frames if (labels[t] == value).sum() == 0]
        if len(lacking) == len(frames):
            out.append(f"{name} is missing from every labelled frame")
        elif lacking:
            out.append(f"{name} is missing in frame(s) {_short_list(lacking)}")
    if view != "sax" or labels.shape[1] < 2:
        return out
    for which, t in (("ED", ed_frame), ("ES", es_frame)):
        if t is None or t not in frames:
            continue
        lv_area = (labels[t] == LV).sum(axis=(1, 2)).astype(float)
        present = np.flatnonzero(lv_area >= MIN_PIXELS)
        if present.size == 0:
            continue
        gaps = [int(z) for z in range(present[0], present[-1] + 1) if lv_area[z] < MIN_PIXELS]
        if gaps:
            out.append(f"{which}: LV cavity missing on slice(s) {_short_list(gaps)} between slices with LV "
                       f"(segmentation gap)")
        amax = lv_area.max()
        # Interior pairs only: the basal and apical end slices are partial volumes and legitimately small.
        jumps = [int(z) for z in range(present[0] + 1, present[-1] - 1)
                 if abs(lv_area[z + 1] - lv_area[z]) > 0.5 * amax and z + 1 not in gaps and z not in gaps]
        if jumps:
            out.append(f"{which}: LV cavity area changes abruptly between slices "
                       f"{', '.join(f'{z}-{z + 1}' for z in jumps)} (discontinuity)")
        if which != "ED":
            continue
        n = labels.shape[1]
        # Which end is the base: the end where the cavity is larger.
        first, last = present[0], present[-1]
        base_end, apex_end = (first, last) if lv_area[first] >= lv_area[last] else (last, first)
        edge_base = 0 if base_end == first else n - 1
        edge_apex = n - 1 if base_end == first else 0
        if lv_area[edge_base] >= MIN_PIXELS:
            out.append(f"ED: the LV cavity reaches the basal end slice {edge_base} of the stack: check that the "
                       f"stack reaches the mitral valve plane (base coverage cannot be confirmed from the "
                       f"labels; a missing base underestimates volumes)")
        if lv_area[edge_apex] >= MIN_PIXELS and lv_area[edge_apex] > 0.3 * amax:
            out.append(f"ED: a large LV cavity ({100 * lv_area[edge_apex] / amax:.0f}% of the largest slice) on "
                       f"the apical end slice {edge_apex}: the apex may not be covered")
        if present.size < 3:
            out.append(f"ED: LV cavity on {present.size} slice(s) only")
    return out


def _short_list(items: Sequence[int], limit: int = 12) -> str:
    items = list(items)
    s = ", ".join(str(i) for i in items[:limit])
    return s + (f", ... ({len(items)} in all)" if len(items) > limit else "")
