"""AHA 16-segment wall thickness and thickening from short-axis labels, and the bull's-eye plot.

Method (after Cerqueira et al. Circulation 2002 for the segment model; slice parts and axes as in
ukbb_cardiac ``common/cardiac_utils.py``, Bai et al. JCMR 2018):

- The slices with LV cavity and myocardium at ED are ordered base -> apex and split into thirds
  (basal, mid-cavity, apical; ceil(n/3) and ceil(2n/3) as in ukbb_cardiac).
- Base -> apex: the base is superior to the apex, so the slice normal pointing superior (RAS +S) is the
  apex -> base axis when the affine carries a real orientation; with an orientation-free affine
  (a diagonal one, as in ACDC) the end of the stack with the larger LV cavity is taken for the base.
- On the mid-cavity slice (with RV) the RV insertion points are the ends of the arc of epicardium that
  touches the RV. The anterior one (on the anterior side: inferior->anterior = apex->base x LV->septum)
  is the boundary between segments 1 and 2 (7 and 8); from it the segments follow each other every 60
  degrees through the septum (2, 3 septal, 4 inferior, 5, 6 lateral, 1 anterior); apical segments are 90
  degrees wide with 14 (septal) centred on the septum (60 degrees from the anterior insertion).
- Thickness: on each slice, rays from the LV cavity centroid every few degrees; the length of the ray
  inside the myocardium (largest connected piece, bilinear sub-pixel sampling, in mm with the
  in-plane spacing) is the local wall thickness; a segment's value is the mean over its rays on all its
  slices. Thickening = (ES - ED) / ED in %, with the ED segment geometry applied to the ES labels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from ..io.labels import LV, MYO, RV

AHA_SEGMENT_NAMES = {
    1: "basal anterior", 2: "basal anteroseptal", 3: "basal inferoseptal", 4: "basal inferior",
    5: "basal inferolateral", 6: "basal anterolateral",
    7: "mid anterior", 8: "mid anteroseptal", 9: "mid inferoseptal", 10: "mid inferior",
    11: "mid inferolateral", 12: "mid anterolateral",
    13: "apical anterior", 14: "apical septal", 15: "apical inferior", 16: "apical lateral",
}
PARTS = ("basal", "mid", "apical")
MIN_PIXELS = 10


def segment_of(phi_deg: np.ndarray, part: str) -> np.ndarray:
    """AHA segment ids for angles ``phi_deg`` measured from the anterior RV insertion towards the
    septum (0-360)."""
    phi = np.mod(phi_deg, 360.0)
    if part in ("basal", "mid"):
        base = 1 if part == "basal" else 7
        # [0, 60) -> 2 (anteroseptal), [60, 120) -> 3, ..., [300, 360) -> 1 (anterior)
        k = (np.floor(phi / 60.0).astype(int) + 1) % 6  # 0..5 with 0 = anterior
        return base + k
    # apical: 14 septal centred at 60 deg: [15, 105) septal, [105, 195) inferior, [195, 285) lateral
    k = np.floor(np.mod(phi - 15.0, 360.0) / 90.0).astype(int)  # 0 septal, 1 inferior, 2 lateral, 3 anterior
    return np.array([14, 15, 16, 13])[k]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def _is_orientation_free(affine: np.ndarray) -> bool:
    r = np.asarray(affine)[:3, :3]
    return bool(np.allclose(r - np.diag(np.diag(r)), 0.0))


def _insertion_arc(slice_labels: np.ndarray, centre_uv: np.ndarray, dy: float, dx: float):
    """(start, end) angles (rad, in the u=x*dx, v=y*dy plane) of the epicardial arc touching the RV,
    going from start to end with increasing angle; None when the RV does not touch the LV."""
    epi = _largest_component((slice_labels == LV) | (slice_labels == MYO))
    epi = ndimage.binary_fill_holes(epi)
    boundary = epi & ~ndimage.binary_erosion(epi)
    rv = _largest_component(slice_labels == RV)
    if rv.sum() < MIN_PIXELS:
        return None
    contact = np.zeros_like(boundary)
    for it in range(1, 6):
        contact = boundary & ndimage.binary_dilation(rv, iterations=it)
        if contact.sum() >= 3:
            break
    if contact.sum() < 3:
        return None
    ys, xs = np.nonzero(contact)
    ang = np.sort(np.arctan2(ys * dy - centre_uv[1], xs * dx - centre_uv[0]))
    gaps = np.diff(np.concatenate([ang, ang[:1] + 2 * np.pi]))
    j = int(np.argmax(gaps))
    start = ang[(j + 1) % len(ang)]
    end = ang[j]
    return float(start), float(end)


def _centroid_uv(mask: np.ndarray, dy: float, dx: float) -> np.ndarray | None:
    if mask.sum() == 0:
        return None
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean() * dx, ys.mean() * dy])


def _ray_thickness(myo: np.ndarray, centre_uv: np.ndarray, angles: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Length (mm) of each ray from ``centre_uv`` inside ``myo`` (bilinear, threshold 0.5)."""
    ys, xs = np.nonzero(myo)
    if ys.size == 0:
        return np.zeros(len(angles))
    r_max = float(np.max(np.hypot(xs * dx - centre_uv[0], ys * dy - centre_uv[1]))) + 2 * max(dx, dy)
    step = min(dx, dy) / 8.0
    r = np.arange(0.0, r_max, step)
    u = centre_uv[0] + np.cos(angles)[:, None] * r[None, :]
    v = centre_uv[1] + np.sin(angles)[:, None] * r[None, :]
    vals = ndimage.map_coordinates(myo.astype(np.float32), [v.ravel() / dy, u.ravel() / dx], order=1,
                                   mode="constant", cval=0.0).reshape(u.shape)
    return (vals >= 0.5).sum(axis=1) * step


def aha_wall_thickness(study, labels: np.ndarray, ed_frame: int | None, es_frame: int | None, *,
                       n_rays: int = 120) -> dict[str, Any]:
    """Segmental wall thickness at ED and ES (mm) and thickening (%) for the AHA 16 segments.

    Returns {"segments": [{segment, name, part, thickness_ED_mm, thickness_ES_mm, thickening_pct}],
    "slices": {part: [slice indices]}, "reference": {...}, "warnings": [...]} or
    {"segments": None, "reason": ...} when it cannot be computed.
    """
    labels = np.asarray(labels)
    if study.view != "sax":
        return {"segments": None, "reason": f"AHA segments need a short-axis stack (view is {study.view})"}
    if ed_frame is None:
        return {"segments": None, "reason": "ED frame unknown"}
    _, _, dy, dx = study.spacing
    warnings: list[str] = []
    ed = labels[ed_frame]
    slices = [z for z in range(ed.shape[0])
              if (ed[z] == LV).sum() >= MIN_PIXELS and (ed[z] == MYO).sum() >= MIN_PIXELS]
    if len(slices) < 3:
        return {"segments": None,
                "reason": f"{len(slices)} slice(s) with LV cavity and myocardium at ED; 3 or more needed"}

    # -- base -> apex ------------------------------------------------------------------------------
    A = np.asarray(study.affine, dtype=float)
    e_x = A[:3, 0] / np.linalg.norm(A[:3, 0])
    e_y = A[:3, 1] / np.linalg.norm(A[:3, 1])
    normal = np.cross(e_x, e_y)
    if normal @ A[:3, 2] < 0:
        normal = -normal  # the direction of increasing slice index
    areas = np.array([(ed[z] == LV).sum() for z in slices], dtype=float)
    third = max(1, len(slices) // 3)
    base_is_high_index = areas[-third:].mean() > areas[:third].mean()
    by_area = normal if base_is_high_index else -normal
    if _is_orientation_free(A) or abs(normal[2]) < 0.2:
        apex_to_base = by_area
        how = "LV cavity areas (larger end = base); the affine holds no usable orientation"
        if _is_orientation_free(A):
            warnings.append("AHA: the affine carries no orientation (diagonal); anterior and inferior segments "
                            "assume its axes are anatomical and may be mirrored")
    else:
        apex_to_base = normal if normal[2] > 0 else -normal
        how = "affine (base is superior)"
        if apex_to_base @ by_area < 0:
            warnings.append("AHA: the base from the affine (superior end) is the stack end with the smaller "
                            "LV cavity; check the slice order")
    pos = [float((A @ np.array([0.0, 0.0, z, 1.0]))[:3] @ apex_to_base) for z in slices]
    order = [z for _, z in sorted(zip(pos, slices), reverse=True)]  # base first
    n = len(order)
    i1, i2 = int(math.ceil(n / 3.0)), int(math.ceil(2 * n / 3.0))
    part_of = {z: ("basal" if i < i1 else "mid" if i < i2 else "apical") for i, z in enumerate(order)}

    # -- reference direction from the RV insertion points ---------------------------------------
    centroid_z = float(np.mean(np.nonzero(ed == LV)[0]))
    candidates = sorted(slices, key=lambda z: abs(z - centroid_z))
    ref = None
    for z in candidates:
        c = _centroid_uv(_largest_component(ed[z] == LV), dy, dx)
        arc = _insertion_arc(ed[z], c, dy, dx)
        if arc is not None:
            ref = (z, c, arc)
            break
    if ref is None:
        return {"segments": None, "reason": "the RV does not touch the LV on any slice at ED: no RV insertion "
                                            "points to place the AHA segments"}
    z_ref, c_ref, (start, end) = ref
    arc_len = (end - start) % (2 * np.pi)
    sep_mid = start + arc_len / 2

    def world(theta: float) -> np.ndarray:
        return math.cos(theta) * e_x + math.sin(theta) * e_y

    inf_to_ant = np.cross(apex_to_base, world(sep_mid))
    if world(start) @ inf_to_ant >= world(end) @ inf_to_ant:
        theta_a, sign = start, 1.0  # going with increasing angle from start reaches the septum
    else:
        theta_a, sign = end, -1.0
    if abs(math.degrees(arc_len) - 120.0) > 60.0:
        warnings.append(f"AHA: the RV insertion points are {math.degrees(arc_len):.0f} degrees apart on the "
                        f"reference slice {z_ref} (about 120 expected); segments are 60 degrees from the "
                        f"anterior insertion")

    angles = np.linspace(0.0, 2 * np.pi, n_rays, endpoint=False)
    phi = np.degrees(sign * (angles - theta_a))

    def thickness_at(frame: int) -> dict[int, list[float]]:
        lab = labels[frame]
        per_seg: dict[int, list[float]] = {k: [] for k in AHA_SEGMENT_NAMES}
        for z in order:
            myo = _largest_component(lab[z] == MYO)
            if myo.sum() < MIN_PIXELS:
                continue
            cav = lab[z] == LV
            c = _centroid_uv(_largest_component(cav), dy, dx) if cav.sum() >= 3 else \
                _centroid_uv(ndimage.binary_fill_holes(myo), dy, dx)
            th = _ray_thickness(myo, c, angles, dy, dx)
            seg = segment_of(phi, part_of[z])
            for s, t in zip(seg, th):
                if t > 0:
                    per_seg[int(s)].append(float(t))
        return per_seg

    ed_th = thickness_at(ed_frame)
    es_th = thickness_at(es_frame) if es_frame is not None and es_frame != ed_frame else None
    segments = []
    for k, name in AHA_SEGMENT_NAMES.items():
        t_ed = float(np.mean(ed_th[k])) if ed_th[k] else None
        t_es = float(np.mean(es_th[k])) if es_th is not None and es_th[k] else None
        thick = 100.0 * (t_es - t_ed) / t_ed if t_ed and t_es is not None else None
        segments.append({"segment": k, "name": name, "part": name.split()[0],
                         "thickness_ED_mm": t_ed, "thickness_ES_mm": t_es, "thickening_pct": thick})
    empty = [s["segment"] for s in segments if s["thickness_ED_mm"] is None]
    if empty:
        warnings.append(f"AHA: no myocardium at ED in segment(s) {empty}")
    return {
        "segments": segments,
        "slices": {p: [int(z) for z in order if part_of[z] == p] for p in PARTS},
        "reference": {
            "slice": int(z_ref),
            "anterior_insertion_deg": float(np.degrees(theta_a)),
            "insertion_arc_deg": float(np.degrees(arc_len)),
            "base_apex_from": how,
            "method": f"radial rays ({n_rays}) from the LV cavity centroid, mm",
        },
        "warnings": warnings,
    }


def plot_bullseye(ax, values: dict[int, float | None], *, title: str = "", cmap: str = "viridis",
                  vmin: float | None = None, vmax: float | None = None, unit: str = "", fmt: str = "{:.1f}"):
    """Draw the AHA 16-segment bull's-eye of ``values`` {segment: value} on a matplotlib axes.

    Standard orientation: anterior (1, 7, 13) at the top, septum on the left, lateral on the right.
    Segments without a value are hatched grey. Returns the ScalarMappable for a colour bar.
    """
    import matplotlib as mpl
    from matplotlib.patches import Wedge

    finite = [v for v in values.values() if v is not None and np.isfinite(v)]
    lo = vmin if vmin is not None else (min(finite) if finite else 0.0)
    hi = vmax if vmax is not None else (max(finite) if finite else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    norm = mpl.colors.Normalize(lo, hi)
    cm = mpl.colormaps[cmap]
    rings = {"basal": (0.75, 1.0), "mid": (0.5, 0.75), "apical": (0.2, 0.5)}
    for seg, name in AHA_SEGMENT_NAMES.items():
        part = name.split()[0]
        r0, r1 = rings[part]
        if part == "apical":
            centre = {13: 90, 14: 180, 15: 270, 16: 0}[seg]
            half = 45
        else:
            i = (seg - 1) % 6
            centre = 90 + 60 * i
            half = 30
        v = values.get(seg)
        ok = v is not None and np.isfinite(v)
        w = Wedge((0, 0), r1, centre - half, centre + half, width=r1 - r0,
                  facecolor=cm(norm(v)) if ok else "0.85", edgecolor="white", lw=1.5,
                  hatch=None if ok else "//")
        ax.add_patch(w)
        rm = 0.5 * (r0 + r1)
        x, y = rm * math.cos(math.radians(centre)), rm * math.sin(math.radians(centre))
        txt = f"{seg}\n" + (fmt.format(v) if ok else "-")
        rgba = cm(norm(v)) if ok else (0.85, 0.85, 0.85, 1)
        lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
        ax.text(x, y, txt, ha="center", va="center", fontsize=7, color="black" if lum > 0.5 else "white")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.text(0, 1.07, "anterior", ha="center", va="bottom", fontsize=7, color="0.3")
    ax.text(-1.07, 0, "septal", ha="right", va="center", fontsize=7, color="0.3", rotation=90)
    ax.text(1.07, 0, "lateral", ha="left", va="center", fontsize=7, color="0.3", rotation=270)
    if title:
        ax.set_title(title + (f" ({unit})" if unit else ""), fontsize=10, pad=14)
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=cm)
    return sm
