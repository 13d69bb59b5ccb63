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
# views whose segmentation shows the mitral opening that :func:`landmarks_from_labels` reads
SEGMENTATION_LANDMARK_VIEWS = ("lax_2c", "lax_4c")
# the report's landmark source for points that :func:`landmarks_from_labels` read off the labels
READ_OFF_LABELS = "read off the labels (ends of the mitral opening, tip of the LV wall)"


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


def landmarks_from_labels(labels_yx: np.ndarray, view: str = "lax_4c", spacing_yx: tuple[float, float] = (1.0, 1.0),
                          lv: int = 3, myo: int = 2) -> dict[str, np.ndarray] | None:
    """Mitral hinges and apex of one long-axis frame, derived from its LV cavity and myocardium labels.

    The hinges are the two ends of the cavity border that no myocardium covers (the mitral opening:
    where the AV plane meets the endocardium); the apex is the tip of the LV wall on the long axis
    from their midpoint (the epicardial apex), as the phantom defines them (within ~2 mm there). Names follow
    :data:`LANDMARK_NAMES`, ordered so that mv_1 -> mv_2 -> apex turns counter-clockwise on screen in
    4C and clockwise in 2C. Returns ``{name: (y, x)}`` in pixels, or None when the labels have no
    cavity or no open border (e.g. a frame without the valve).
    """
    from scipy import ndimage

    lab = np.asarray(labels_yx)
    cavity = lab == lv
    if not cavity.any():
        return None
    comps, n = ndimage.label(cavity)
    if n > 1:
        cavity = comps == 1 + int(np.argmax(ndimage.sum(cavity, comps, range(1, n + 1))))
    wall = lab == myo
    outside = ~(cavity | wall)
    # cavity pixels with a 4-neighbour that is neither cavity nor wall: the open (valve) border
    open_border = cavity & ndimage.binary_dilation(outside, structure=ndimage.generate_binary_structure(2, 1))
    if open_border.sum() < 2:
        return None
    # the opening's largest stretch, bridging breaks of a few pixels (a stray wall pixel on the valve)
    comps, n = ndimage.label(ndimage.binary_dilation(open_border, iterations=3))
    if n > 1:
        open_border &= comps == 1 + int(np.argmax(ndimage.sum(open_border, comps, range(1, n + 1))))
    scale = np.asarray(spacing_yx, dtype=float)
    pts = np.argwhere(open_border).astype(float)
    mm = pts * scale
    centre = mm.mean(axis=0)
    _, _, vt = np.linalg.svd(mm - centre, full_matrices=False)
    along = (mm - centre) @ vt[0]
    hinges = [pts[int(np.argmin(along))], pts[int(np.argmax(along))]]
    heart = np.argwhere(cavity | (wall & ndimage.binary_dilation(cavity, iterations=8))).astype(float) * scale
    mid = (hinges[0] + hinges[1]) / 2 * scale
    # the long axis: from the valve midpoint to the far end of the LV (the points within 3 mm of the
    # farthest; the valve plane may be tilted); the apex is the wall's tip on that axis
    dist = np.linalg.norm(heart - mid, axis=1)
    axis = heart[dist >= dist.max() - 3.0].mean(axis=0) - mid
    axis /= np.linalg.norm(axis)
    depth = (heart - mid) @ axis
    tip = heart[depth >= depth.max() - 1.5]  # the last 1.5 mm of the wall along the axis
    off_axis = np.abs((tip - mid) @ np.array([-axis[1], axis[0]]))
    apex = tip[int(np.argmin(off_axis))] / scale
    (y1, x1), (y2, x2), (y3, x3) = hinges[0], hinges[1], apex
    clockwise = (x2 - x1) * (y3 - y1) - (y2 - y1) * (x3 - x1) > 0  # rows grow downwards
    if clockwise != (view == "lax_2c"):
        hinges = hinges[::-1]
    return {"mv_1": hinges[0], "mv_2": hinges[1], "apex": apex}


def landmarks_over_frames(labels_tzyx: np.ndarray, view: str, spacing_yx: tuple[float, float],
                          slice_index: int = 0) -> tuple[np.ndarray, list[int]]:
    """(t, 3, 3) landmarks (z, y, x) in :data:`LANDMARK_NAMES` order read off every frame's labels by
    :func:`landmarks_from_labels`, NaN where a frame shows no mitral opening, and the list of those frames."""
    if view not in SEGMENTATION_LANDMARK_VIEWS:
        raise ValueError(f"landmarks are read off 2- and 4-chamber labels, not {view}")
    labels = np.asarray(labels_tzyx)
    if not 0 <= slice_index < labels.shape[1]:
        raise ValueError(f"slice_index {slice_index} outside 0..{labels.shape[1] - 1}")
    out = np.full((labels.shape[0], len(LANDMARK_NAMES), 3), np.nan)
    for t in range(labels.shape[0]):
        found = landmarks_from_labels(labels[t, slice_index], view, spacing_yx)
        if found is not None:
            out[t] = [(slice_index, *found[name]) for name in LANDMARK_NAMES]
    return out, [t for t in range(labels.shape[0]) if np.isnan(out[t]).any()]


def landmarks_by_name(voxels: np.ndarray) -> dict[str, np.ndarray] | None:
    """{name: (t, 3) points} of landmarks (t, 3, 3) in :data:`LANDMARK_NAMES` order, as :func:`mapse`
    takes them; None when no frame has all three (nothing to measure)."""
    voxels = np.asarray(voxels, dtype=float)
    if not np.isfinite(voxels).all(axis=(1, 2)).any():
        return None
    return {name: voxels[:, k] for k, name in enumerate(LANDMARK_NAMES)}
