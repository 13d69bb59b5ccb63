"""Long-axis landmarks over the cycle: MAPSE and LV long-axis shortening.

Landmarks are points per frame, named ``mv_1`` and ``mv_2`` (the two mitral valve hinge points) and
``apex`` (the epicardial or endocardial LV apex), in voxel (z, y, x) array coordinates of the study
(LAX: z = 0). They are converted to RAS millimetres with the study affine, so anisotropic pixels and
oblique planes are handled.

MAPSE (mitral annular plane systolic excursion) = the displacement of each hinge from ED to ES projected
on the LV long axis at ED (apex -> annulus midpoint), positive towards the apex; the mean of the two
hinges is ``MAPSE_mm``. Long-axis length = distance apex -> annulus midpoint; its shortening in % is
(L_ED - L_ES) / L_ED.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

LANDMARK_NAMES = ("mv_1", "mv_2", "apex")


def landmarks_array(points: Any, n_frames: int) -> np.ndarray:
    """(t, 3) float array of one landmark's (z, y, x) per frame; NaN for a missing frame.

    Accepts a (t, 3) or (t, 2) array (2-D points (y, x) get z = 0), a list with None for missing frames,
    or a {frame: point} mapping.
    """
    out = np.full((n_frames, 3), np.nan)
    if points is None:
        return out
    if isinstance(points, Mapping):
        items = [(int(k), v) for k, v in points.items()]
    else:
        items = list(enumerate(points))
    for t, p in items:
        if p is None or not 0 <= t < n_frames:
            continue
        a = np.asarray(p, dtype=float).ravel()
        if a.size == 2:
            a = np.array([0.0, a[0], a[1]])
        if a.size != 3:
            raise ValueError(f"landmark point {p!r} at frame {t} is not (z, y, x)")
        out[t] = a
    return out


def mapse(study, landmarks: Mapping[str, Any], ed_frame: int | None, es_frame: int | None) -> dict[str, Any]:
    """MAPSE per hinge and mean, long-axis lengths and shortening, and per-frame curves.

    Returns a dict with ``MAPSE_mm``, ``MAPSE_mv_1_mm``, ``MAPSE_mv_2_mm``, ``LV_length_ED_mm``,
    ``LV_length_ES_mm``, ``LV_long_axis_shortening_pct`` (None when not computable, the reason in
    ``null_reasons``) and ``curves``: ``displacement_mm`` {mv_1, mv_2, mean} and ``length_mm`` per frame
    (None where a landmark is missing).
    """
    keys = ("MAPSE_mm", "MAPSE_mv_1_mm", "MAPSE_mv_2_mm", "LV_length_ED_mm", "LV_length_ES_mm",
            "LV_long_axis_shortening_pct")
    out: dict[str, Any] = {k: None for k in keys}
    out["null_reasons"] = reasons = {}
    n = study.n_frames
    missing = [name for name in LANDMARK_NAMES if name not in landmarks or landmarks[name] is None]
    if missing:
        for k in keys:
            reasons[k] = f"landmarks {', '.join(missing)} not given"
        return out
    mm = {name: study.world_coordinates(landmarks_array(landmarks[name], n)) for name in LANDMARK_NAMES}
    mid = 0.5 * (mm["mv_1"] + mm["mv_2"])
    length = np.linalg.norm(mid - mm["apex"], axis=1)
    if ed_frame is None or es_frame is None:
        for k in keys:
            reasons[k] = "ED/ES frames unknown"
        return out
    have = {name: np.all(np.isfinite(mm[name][[ed_frame, es_frame]])) for name in LANDMARK_NAMES}
    if not all(have.values()):
        lacking = [k for k, ok in have.items() if not ok]
        for k in keys:
            reasons[k] = f"landmarks {', '.join(lacking)} missing at ED or ES"
        return out
    axis = mid[ed_frame] - mm["apex"][ed_frame]  # apex -> base at ED
    norm = np.linalg.norm(axis)
    if not norm > 0:
        for k in keys:
            reasons[k] = "apex and mitral annulus coincide at ED"
        return out
    axis = axis / norm
    disp = {}
    for hinge in ("mv_1", "mv_2"):
        disp[hinge] = (mm[hinge][ed_frame] - mm[hinge]) @ axis  # towards the apex is positive
    disp["mean"] = 0.5 * (disp["mv_1"] + disp["mv_2"])
    out["MAPSE_mv_1_mm"] = float(disp["mv_1"][es_frame])
    out["MAPSE_mv_2_mm"] = float(disp["mv_2"][es_frame])
    out["MAPSE_mm"] = float(disp["mean"][es_frame])
    out["LV_length_ED_mm"] = float(length[ed_frame])
    out["LV_length_ES_mm"] = float(length[es_frame])
    out["LV_long_axis_shortening_pct"] = float(100.0 * (length[ed_frame] - length[es_frame]) / length[ed_frame])

    def clean(a: np.ndarray) -> list[float | None]:
        return [float(x) if np.isfinite(x) else None for x in a]

    out["curves"] = {
        "displacement_mm": {k: clean(v) for k, v in disp.items()},
        "length_mm": clean(length),
    }
    return out
