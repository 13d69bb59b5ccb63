"""A synthetic beating-heart cine MR phantom with exactly known volumes, timing and landmarks.

One analytic heart (see :mod:`._geometry`) is placed obliquely in patient space (RAS mm, the long
axis pointing left, anterior and inferior as in a real chest) and imaged three ways from the same
3-D model: a short-axis (SAX) stack perpendicular to the LV long axis, and single-plane 4-chamber
and 2-chamber long-axis cines through that axis.

Truth is computed from the continuous model, never from the voxels: LV and myocardial volumes in
closed form (spheroids cut by a plane), the RV by a fine quadrature of exact line intersections;
the volume curve, its peak rates, ED/ES, MAPSE and the landmarks analytically.

Rendering integrates the model over every voxel: in-plane by ``supersample`` x ``supersample``
sub-pixels, through the slice *exactly* (each structure's extent along the line through a
sub-pixel is an analytic interval), so the images carry true partial volume. The image integrates
over the acquired slice thickness, the labels over the full slice spacing (a SAX stack tiles the
heart with its spacing, which is what volumetry counts). Labels are iso-contours of those
partial-volume fractions, at the level (near one half) that keeps each slice's area of each nested
region exact, so voxel-count volumes reproduce the truth to well under 1 %.

Display conventions (row down, column right):
- SAX: viewed from the apex, the RV on the left, the anterior wall up; slice 0 is the most apical
  (an empty slice beyond the apex), the last is basal (the affine is right-handed, so DICOM
  readers order the slices the same way).
- 4-chamber: apex up, atria down, RV on the left, LV lateral wall on the right.
- 2-chamber: apex up, anterior wall on the right, inferior wall on the left.
- Landmarks ``mv_1``, ``mv_2``, ``apex`` run clockwise as displayed in the 2-chamber view
  (mv_1 = anterior hinge, mv_2 = inferior hinge) and counter-clockwise in the 4-chamber view
  (mv_1 = septal hinge, mv_2 = lateral hinge). The hinge points are where the AV plane meets the
  endocardium in the image plane (the MYO/LV/atrium junction), the apex is the epicardial apex.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_cinema.io.labels import BACKGROUND, LV, MYO, RV
from napari_cinema.io.study import CineStudy, PatientInfo

from ._geometry import (
    CardiacCycle,
    Ellipsoid,
    HeartFrame,
    Plane,
    build_frames,
    check_nesting,
)

__all__ = [
    "PHANTOM_VERSION",
    "PhantomConfig",
    "make_phantom",
    "phantom_truth",
    "write_phantom",
]

PHANTOM_VERSION = "napari-cinema-phantom 1.0"
VIEWS = ("sax", "lax_2c", "lax_4c")
MYO_DENSITY_G_ML = 1.05
PERICARDIAL_FAT_MM = 2.5

# Signal of each tissue in a bSSFP cine, blood = 1.
SIGNAL = {
    "lv_blood": 1.0,
    "rv_blood": 0.95,
    "atrial_blood": 0.9,
    "myocardium": 0.28,
    "soft_tissue": 0.22,
    "fat": 0.65,
    "pericardial_fat": 0.55,
    "liver": 0.32,
    "lung": 0.04,
    "aorta": 0.85,
    "spine": 0.35,
    "air": 0.0,
}


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that defines a phantom study; the truth records it."""

    frames: int = 25
    slices: int = 10  # SAX only; LAX views are single planes
    lvef: float = 60.0  # %
    edv_ml: float = 140.0
    rvef: float = 55.0  # %
    rvedv_ml: float | None = None  # None: 1.07 x EDV (RV slightly larger, equal stroke volumes)
    lvm_g: float = 125.0  # myocardial mass, constant over the cycle (density 1.05 g/ml)
    mapse_mm: float | None = None  # None: 13 mm scaled with EF / 60 %
    heart_rate_bpm: float = 60.0
    es_fraction: float = 0.35  # end-systole at this fraction of RR (rounded to a frame)
    noise: float = 0.03  # Rician noise sigma, blood = 1
    coil_shading: float = 0.3  # depth of the smooth multiplicative receive-coil bias
    seed: int = 0
    pixel_mm: float = 1.5
    matrix: int = 128
    slice_spacing_mm: float = 10.0  # SAX
    slice_thickness_mm: float = 8.0  # SAX (a 2 mm gap)
    lax_thickness_mm: float = 8.0
    supersample: int = 3  # sub-pixels per pixel side
    height_cm: float = 175.0
    weight_kg: float = 75.0
    sex: str = "M"
    age: float = 50.0

    def __post_init__(self) -> None:
        problems = []
        if self.frames < 4:
            problems.append(f"frames must be >= 4, got {self.frames}")
        if self.slices < 1:
            problems.append(f"slices must be >= 1, got {self.slices}")
        if not 5.0 <= self.lvef <= 85.0:
            problems.append(f"lvef must be within 5-85 %, got {self.lvef}")
        if not 5.0 <= self.rvef <= 85.0:
            problems.append(f"rvef must be within 5-85 %, got {self.rvef}")
        if not 40.0 <= self.edv_ml <= 400.0:
            problems.append(f"edv_ml must be within 40-400 ml, got {self.edv_ml}")
        if not 20.0 <= self.heart_rate_bpm <= 200.0:
            problems.append(f"heart_rate_bpm must be within 20-200, got {self.heart_rate_bpm}")
        if self.noise < 0 or not 0 <= self.coil_shading < 1:
            problems.append("noise must be >= 0 and coil_shading within [0, 1)")
        if self.pixel_mm <= 0 or self.matrix < 16 or self.supersample < 1:
            problems.append("pixel_mm > 0, matrix >= 16 and supersample >= 1 are required")
        if self.slice_spacing_mm <= 0 or not 0 < self.slice_thickness_mm <= self.slice_spacing_mm:
            problems.append("need 0 < slice_thickness_mm <= slice_spacing_mm")
        if problems:
            raise ValueError("PhantomConfig: " + "; ".join(problems))

    # -- derived -----------------------------------------------------------------------------
    @property
    def rr_ms(self) -> float:
        return 60000.0 / self.heart_rate_bpm

    @property
    def esv_ml(self) -> float:
        return self.edv_ml * (1.0 - self.lvef / 100.0)

    @property
    def rvedv(self) -> float:
        return self.rvedv_ml if self.rvedv_ml is not None else 1.07 * self.edv_ml

    @property
    def rvesv(self) -> float:
        return self.rvedv * (1.0 - self.rvef / 100.0)

    @property
    def myo_ml(self) -> float:
        return self.lvm_g / MYO_DENSITY_G_ML

    @property
    def mapse(self) -> float:
        return self.mapse_mm if self.mapse_mm is not None else 13.0 * self.lvef / 60.0

    @property
    def es_frame(self) -> int:
        return int(round(self.es_fraction * self.frames))

    def with_overrides(self, **overrides: Any) -> "PhantomConfig":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown phantom setting(s) {unknown}; known: {sorted(known)}")
        return replace(self, **overrides)


# ----------------------------------------------------------------------------------------------
# placement in the patient
# ----------------------------------------------------------------------------------------------

# Heart frame axes in RAS: the base-ward long axis points right, posterior and up (so the apex
# points left, anterior and down, 45 degrees off the sagittal plane and 30 degrees below the axial
# plane); u (towards the septum/RV) points right-anterior; v = w x u is the anterior wall.
_W = np.array([math.cos(math.radians(30)) * math.cos(math.radians(-45)),
               math.cos(math.radians(30)) * math.sin(math.radians(-45)),
               math.sin(math.radians(30))])
_U = np.array([1.0, 1.0, 0.0]) / math.sqrt(2.0)
_V = np.cross(_W, _U)
ROTATION = np.stack([_U, _V, _W], axis=1)  # local (u, v, w) -> RAS direction
LV_MID_RAS = np.array([-25.0, 20.0, 0.0])  # the middle of the LV long axis at ED


@dataclass
class _Model:
    config: PhantomConfig
    cycle: CardiacCycle
    frames: list[HeartFrame]
    scale: float
    apex_ras: np.ndarray  # the epicardial apex (heart-frame origin) in RAS
    la: Ellipsoid
    ra: Ellipsoid

    def to_ras(self, p_local: np.ndarray) -> np.ndarray:
        return np.asarray(p_local) @ ROTATION.T + self.apex_ras


_MODEL_CACHE: dict[PhantomConfig, _Model] = {}


def _model(cfg: PhantomConfig) -> _Model:
    """Solve the heart at every frame (cached per configuration: it is deterministic)."""
    cached = _MODEL_CACHE.get(cfg)
    if cached is not None:
        return cached
    es = cfg.es_frame
    if not 1 <= es < cfg.frames:
        raise ValueError(f"{cfg.frames} frames cannot hold an end-systolic frame")
    cycle = CardiacCycle(es / cfg.frames, cfg.rr_ms)
    phi = np.arange(cfg.frames) / cfg.frames
    ys = cycle.y(phi)
    ys[0], ys[es] = 0.0, 1.0  # exact ED and ES states
    frames, scale = build_frames(
        ys,
        edv_ml=cfg.edv_ml,
        esv_ml=cfg.esv_ml,
        myo_ml=cfg.myo_ml,
        rvedv_ml=cfg.rvedv,
        rvesv_ml=cfg.rvesv,
        mapse_mm=cfg.mapse,
    )
    for fr in frames:
        check_nesting(fr)
    base_ed = frames[0].plane.offset
    apex_ras = LV_MID_RAS - 0.5 * base_ed * _W
    # Atria (image only): blood pools above the AV plane, the LA behind the mitral annulus and the
    # RA beside it, fixed in space, so they grow as the plane descends in systole.
    s = scale
    la = Ellipsoid((-6.0 * s, -4.0 * s, base_ed + 16.0 * s), (25.0 * s, 27.0 * s, 28.0 * s))
    ra = Ellipsoid((50.0 * s, 6.0 * s, base_ed + 2.0 * s), (22.0 * s, 25.0 * s, 28.0 * s))
    model = _Model(cfg, cycle, frames, scale, apex_ras, la, ra)
    if len(_MODEL_CACHE) > 16:
        _MODEL_CACHE.clear()
    _MODEL_CACHE[cfg] = model
    return model


# ----------------------------------------------------------------------------------------------
# imaging geometry
# ----------------------------------------------------------------------------------------------


@dataclass
class _Grid:
    """A view's voxel grid in the heart frame. Every view's axes are heart-frame axes (the SAX
    stack is perpendicular to w; the LAX planes contain w), so each voxel line through the slice
    runs along one heart axis and every structure's extent on it is an analytic interval."""

    view: str
    axes: tuple[int, int, int]  # heart axis index of (column x, row y, slice z)
    signs: tuple[int, int, int]  # +1/-1: direction of x, y, z along those axes
    shape: tuple[int, int, int]  # (nz, ny, nx)
    spacing: tuple[float, float, float]  # (dz, dy, dx)
    origin: np.ndarray  # heart-frame position of voxel (0, 0, 0)
    label_halfwidth: float  # half the slab along z that a label integrates over
    image_halfwidth: float  # half the acquired slice thickness

    def unit(self, i: int) -> np.ndarray:
        e = np.zeros(3)
        e[self.axes[i]] = self.signs[i]
        return e

    def local_matrix(self) -> np.ndarray:
        """4x4 voxel (x, y, z) -> heart frame."""
        dz, dy, dx = self.spacing
        m = np.eye(4)
        m[:3, 0] = self.unit(0) * dx
        m[:3, 1] = self.unit(1) * dy
        m[:3, 2] = self.unit(2) * dz
        m[:3, 3] = self.origin
        return m

    def to_voxel_zyx(self, p_local: np.ndarray) -> np.ndarray:
        xyz = np.linalg.solve(self.local_matrix(), np.append(p_local, 1.0))[:3]
        return xyz[::-1]


def _labelled_top(fr: HeartFrame) -> float:
    """Highest point of any labelled structure (the AV plane tilts, so it is off-axis)."""
    u = np.linspace(-80, 120, 201) * 1.0
    v = np.linspace(-100, 100, 201) * 1.0
    uu, vv = np.meshgrid(u, v, indexing="ij")
    top = fr.plane.height(uu, vv)
    best = -np.inf
    for e in (fr.epi, fr.rv):
        q = ((uu - e.center[0]) / e.radii[0]) ** 2 + ((vv - e.center[1]) / e.radii[1]) ** 2
        upper = e.center[2] + e.radii[2] * np.sqrt(np.clip(1 - q, 0, None))
        lower = e.center[2] - e.radii[2] * np.sqrt(np.clip(1 - q, 0, None))
        h = np.where((q < 1) & (lower < top), np.minimum(upper, top), -np.inf)
        best = max(best, float(h.max()))
    return best + 1.0  # the grid step


def _grid(view: str, m: _Model) -> tuple[_Grid, bool]:
    cfg, s = m.config, m.scale
    n, px = cfg.matrix, cfg.pixel_mm
    half = (n - 1) / 2.0 * px
    ed = m.frames[0]
    base_ed = ed.plane.offset
    if view == "sax":
        dz = cfg.slice_spacing_mm
        nz = cfg.slices
        top = max(_labelled_top(fr) for fr in {id(f): f for f in m.frames}.values())
        bottom = 0.0  # the epicardial apex is the lowest labelled point
        stack = nz * dz
        need = top - bottom + dz + 1.0  # plus one empty slice beyond the apex
        complete = stack >= need
        if complete:
            start = bottom - dz - 1.0 - (stack - need) / 2.0
        else:
            start = 0.5 * (top + bottom) - stack / 2.0
            complete = False
        w0 = start + dz / 2.0  # centre of slice 0
        uc, vc = 14.0 * s, 0.0
        # x -> -u (lateral), y -> -v (inferior), z -> +w (towards the base): right-handed.
        origin = np.array([uc + half, vc + half, w0])
        g = _Grid(view, (0, 1, 2), (-1, -1, 1), (nz, n, n), (dz, px, px), origin,
                  dz / 2.0, cfg.slice_thickness_mm / 2.0)
        return g, complete
    wc = 0.5 * base_ed + 22.0 * s  # from beyond the apex to the top of the atria
    th = cfg.lax_thickness_mm
    if view == "lax_4c":
        # x -> -u (lateral wall right, RV left), y -> +w (apex up), z = x cross y = +v.
        origin = np.array([14.0 * s + half, 0.0, wc - half])
        return _Grid(view, (0, 2, 1), (-1, 1, 1), (1, n, n), (th, px, px), origin, th / 2, th / 2), True
    if view == "lax_2c":
        # x -> +v (anterior wall right), y -> +w (apex up), z = x cross y = +u.
        origin = np.array([0.0, -half, wc - half])
        return _Grid(view, (1, 2, 0), (1, 1, 1), (1, n, n), (th, px, px), origin, th / 2, th / 2), True
    raise ValueError(f"phantom view must be one of {VIEWS}, got {view!r}")


def affine_ras(g: _Grid, m: _Model) -> np.ndarray:
    world = np.eye(4)
    world[:3, :3] = ROTATION
    world[:3, 3] = m.apex_ras
    return world @ g.local_matrix()


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------


class _Lines:
    """The sub-pixel lines of a view: in-plane coordinates on a separable (rows, cols) grid and the
    slabs along the line (in heart-frame coordinates of the line's axis). Only the pixel box
    ``rows x cols`` that the heart can reach is traced; the rest is surroundings only."""

    def __init__(self, g: _Grid, ss: int, rows: slice, cols: slice):
        nz, ny, nx = g.shape
        dz, dy, dx = g.spacing
        off = (np.arange(ss) + 0.5) / ss - 0.5
        jx = (np.arange(cols.start, cols.stop)[:, None] + off[None, :]).ravel()
        iy = (np.arange(rows.start, rows.stop)[:, None] + off[None, :]).ravel()
        ax, ay, az = g.axes
        sx, sy, sz = g.signs
        self.ss = ss
        self.g = g
        self.box = (rows, cols)
        self.shape = (nz, rows.stop - rows.start, cols.stop - cols.start)
        self.col_axis, self.row_axis, self.line_axis = ax, ay, az
        self.col = g.origin[ax] + sx * dx * jx  # heart coordinate along the column axis
        self.row = g.origin[ay] + sy * dy * iy
        centres = g.origin[az] + sz * dz * np.arange(nz)
        lo = np.minimum(centres - sz * g.label_halfwidth, centres + sz * g.label_halfwidth)
        self.lab = (lo.astype(np.float32), (lo + 2 * g.label_halfwidth).astype(np.float32))
        lo = np.minimum(centres - sz * g.image_halfwidth, centres + sz * g.image_halfwidth)
        self.img = (lo.astype(np.float32), (lo + 2 * g.image_halfwidth).astype(np.float32))

    def coords(self) -> dict[int, np.ndarray]:
        """Heart coordinates of the in-plane axes, broadcastable to (rows, cols)."""
        return {self.row_axis: self.row[:, None], self.col_axis: self.col[None, :]}

    def ellipsoid(self, e: Ellipsoid) -> tuple[np.ndarray, np.ndarray]:
        c = self.coords()
        q = sum(((c[k] - e.center[k]) / e.radii[k]) ** 2 for k in c)
        k = self.line_axis
        half = e.radii[k] * np.sqrt(np.clip(1.0 - q, 0.0, None))
        inside = q < 1.0
        lo = np.where(inside, e.center[k] - half, np.inf).astype(np.float32)
        hi = np.where(inside, e.center[k] + half, -np.inf).astype(np.float32)
        return lo, hi

    def below(self, p: Plane) -> tuple[np.ndarray, np.ndarray]:
        """Interval of each line below the AV plane: w <= offset + slope * (u eu + v ev)."""
        c = self.coords()
        k = self.line_axis
        eu, ev = p.tilt_dir
        coef = {0: -p.slope * eu, 1: -p.slope * ev, 2: 1.0}  # p . m <= offset
        rest = sum(coef[a] * c[a] for a in c)
        rest = np.broadcast_to(rest, (self.row.size, self.col.size))
        a = coef[k]
        inf = np.float32(np.inf)
        if abs(a) < 1e-12:  # the line runs parallel to the plane: all or nothing
            inside = rest <= p.offset
            return np.where(inside, -inf, inf), np.where(inside, inf, -inf)
        lim = ((p.offset - rest) / a).astype(np.float32)
        if a > 0:
            return np.full_like(lim, -inf), lim
        return lim, np.full_like(lim, inf)

    @staticmethod
    def above(below: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = below
        # below is (-inf, hi], [lo, inf), everything or nothing: take the complementary half-line.
        full = np.isneginf(lo) & np.isposinf(hi)
        none = np.isposinf(lo)
        lo2 = np.where(np.isneginf(lo), hi, -np.inf)
        hi2 = np.where(np.isneginf(lo), np.inf, lo)
        lo2 = np.where(full, np.inf, np.where(none, -np.inf, lo2)).astype(np.float32)
        hi2 = np.where(full, -np.inf, np.where(none, np.inf, hi2)).astype(np.float32)
        return lo2, hi2

    def fraction(self, terms: list[tuple[float, tuple[np.ndarray, np.ndarray]]], label: bool) -> np.ndarray:
        """sum(weight * fraction of each voxel covered by the interval) over ``terms``, as
        (nz, rows, cols) of the box: exact through the slice, averaged over the sub-pixels.
        Linear, so sums of structures cost one in-plane reduction."""
        s0, s1 = self.lab if label else self.img
        acc = None
        for w, (lo, hi) in terms:
            seg = np.minimum(hi[..., None], s1)
            seg -= np.maximum(lo[..., None], s0)
            np.clip(seg, 0.0, None, out=seg)
            if w != 1.0:
                seg *= np.float32(w)
            if acc is None:
                acc = seg
            else:
                acc += seg
        nz, ny, nx = self.shape
        ss = self.ss
        vox = acc.reshape(ny, ss, nx, ss, nz).sum(axis=(1, 3))
        return np.moveaxis(vox, -1, 0) / ((s1 - s0)[:, None, None] * ss * ss)


def _area_preserving(frac: np.ndarray, inner: np.ndarray | None) -> np.ndarray:
    """Per slice, the round(sum(frac)) voxels of highest fraction (and every voxel of ``inner``,
    the nested region inside this one): an iso-contour of the fraction that keeps the slab's area.

    A plain 0.5 threshold is biased where a surface runs nearly parallel to the slices (apex cap,
    the basal shoulder and AV plane): there a 10 mm slab holds columns of every coverage and
    rounding them does not average out. Ties are broken in a fixed (raster) order.
    """
    nz = frac.shape[0]
    out = np.zeros(frac.shape, bool)
    for z in range(nz):
        fz = frac[z].ravel()
        n = int(round(float(fz.sum(dtype=np.float64))))
        forced = inner[z].ravel() if inner is not None else np.zeros(fz.shape, bool)
        key = np.where(forced, np.float32(2.0), fz)
        n = max(n, int(forced.sum()))
        if n == 0:
            continue
        cand = np.flatnonzero(key > 0)
        if n >= cand.size:
            sel = cand
        else:
            order = np.argsort(-key[cand], kind="stable")
            sel = cand[order[:n]]
        oz = out[z].ravel()
        oz[sel] = True
        out[z] = oz.reshape(frac.shape[1:])
    return out


def _isect(*ivs):
    lo, hi = ivs[0]
    for a, b in ivs[1:]:
        lo = np.maximum(lo, a)
        hi = np.minimum(hi, b)
    return lo, hi


def _render_frame(lines: _Lines, fr: HeartFrame, m: _Model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, the heart's signal and the fraction of each voxel the heart covers (box only)."""
    below = lines.below(fr.plane)
    above = lines.above(below)
    lv = _isect(lines.ellipsoid(fr.endo), below)
    epi = _isect(lines.ellipsoid(fr.epi), below)
    rv = _isect(lines.ellipsoid(fr.rv), below)
    rv_epi = _isect(rv, epi)
    rvo = _isect(lines.ellipsoid(fr.rv_outer), below)
    rvo_epi = _isect(rvo, epi)
    # Pericardial fat: a thin bright layer around both ventricles (image only).
    grow = PERICARDIAL_FAT_MM * m.scale
    fat_lv = _isect(lines.ellipsoid(Ellipsoid(fr.epi.center, tuple(r + grow for r in fr.epi.radii))), below)
    fat_rv = _isect(lines.ellipsoid(Ellipsoid(fr.rv_outer.center, tuple(r + grow for r in fr.rv_outer.radii))), below)
    fat_both = _isect(fat_lv, fat_rv)
    la = _isect(lines.ellipsoid(m.la), above)
    ra = _isect(lines.ellipsoid(m.ra), above)
    la_ra = _isect(la, ra)

    # Labels. The nested regions LV cavity < inside the epicardium < inside the epicardium or the
    # RV are voxelised slice by slice at the iso-contour of their partial-volume fraction whose
    # area equals the region's exact volume in that slab (a level near one half; see
    # _area_preserving), so voxel counts reproduce the true volumes. Structures are differences of
    # nested regions: MYO = epicardium - LV, RV = heart - epicardium.
    f = lines.fraction
    f_lv = f([(1.0, lv)], True)
    f_epi = f([(1.0, epi)], True)
    f_heart = f([(1.0, epi), (1.0, rv), (-1.0, rv_epi)], True)
    in_lv = _area_preserving(f_lv, None)
    in_epi = _area_preserving(f_epi, in_lv)
    in_heart = _area_preserving(f_heart, in_epi)
    labels = np.where(in_lv, LV, np.where(in_epi, MYO, np.where(in_heart, RV, BACKGROUND))).astype(np.uint8)

    # Image: the heart's signal (blood pools, walls, pericardial fat, atria) and the fraction of
    # each voxel they cover; the surroundings fill the rest. With env = RV outer wall | epicardium
    # and fat = fat shell - env, the signal is linear in the interval lengths:
    b_lv, b_rv, b_atria = SIGNAL["lv_blood"], SIGNAL["rv_blood"], SIGNAL["atrial_blood"]
    b_myo, b_fat = SIGNAL["myocardium"], SIGNAL["pericardial_fat"]
    heart = f([
        (b_lv - b_myo, lv),
        (b_rv - b_myo, rv), (b_myo - b_rv, rv_epi),
        (b_myo - b_fat, epi), (b_myo - b_fat, rvo), (b_fat - b_myo, rvo_epi),
        (b_fat, fat_lv), (b_fat, fat_rv), (-b_fat, fat_both),
        (b_atria, la), (b_atria, ra), (-b_atria, la_ra),
    ], False)
    covered = f([(1.0, fat_lv), (1.0, fat_rv), (-1.0, fat_both), (1.0, la), (1.0, ra), (-1.0, la_ra)], False)
    return labels, heart, np.clip(covered, 0.0, 1.0)


# Static surroundings in RAS (x right, y anterior, z up): body outline with subcutaneous fat,
# lungs either side of the heart, the liver dome below it, the descending aorta and the spine.
_BODY = ((0.0, -20.0), (160.0, 115.0))
_FAT_MM = 12.0
_LUNGS = (((-88.0, -25.0, 20.0), (58.0, 78.0, 120.0)), ((88.0, -25.0, 20.0), (62.0, 78.0, 120.0)))
_LIVER = ((55.0, -5.0, -115.0), (115.0, 95.0, 75.0))
_AORTA = ((-25.0, -72.0), 12.0)
_SPINE = ((0.0, -98.0), 18.0)


def _surroundings(p: np.ndarray) -> np.ndarray:
    """Signal of the static (breath-held) surroundings at RAS points (..., 3)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    (bx, by), (ra, rb) = _BODY
    rho = np.sqrt(((x - bx) / ra) ** 2 + ((y - by) / rb) ** 2)
    out = np.full(x.shape, SIGNAL["air"])
    out = np.where(rho <= 1.0, SIGNAL["fat"], out)
    inner = np.sqrt(((x - bx) / (ra - _FAT_MM)) ** 2 + ((y - by) / (rb - _FAT_MM)) ** 2)
    out = np.where(inner <= 1.0, SIGNAL["soft_tissue"], out)

    def ell(c, r):
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0

    for c, r in _LUNGS:
        out = np.where(ell(c, r), SIGNAL["lung"], out)
    out = np.where(ell(*_LIVER) & (inner <= 1.0), SIGNAL["liver"], out)
    for (cx, cy), r, name in ((*_AORTA, "aorta"), (*_SPINE, "spine")):
        out = np.where((x - cx) ** 2 + (y - cy) ** 2 <= r * r, SIGNAL[name], out)
    return out


def _coil_field(p: np.ndarray, depth: float) -> np.ndarray:
    """Smooth receive-coil sensitivity: anterior and posterior arrays, 1 at the heart."""

    def g(q):
        a = np.exp(-np.sum((q - np.array([0.0, 150.0, 0.0])) ** 2, axis=-1) / (2 * 130.0**2))
        b = np.exp(-np.sum((q - np.array([0.0, -170.0, 0.0])) ** 2, axis=-1) / (2 * 130.0**2))
        return a + 0.8 * b

    return (1.0 - depth) + depth * g(p) / g(LV_MID_RAS)


def _static_background(g: _Grid, m: _Model) -> np.ndarray:
    """The surroundings averaged over each voxel (2 x 2 in-plane x 3 through the slice)."""
    nz, ny, nx = g.shape
    dz, dy, dx = g.spacing
    out = np.zeros((nz, ny, nx))
    offs = np.array([-0.25, 0.25])
    through = np.array([-1.0, 0.0, 1.0]) * g.image_halfwidth * 2 / 3
    jj, ii = np.meshgrid(np.arange(nx), np.arange(ny))
    for z in range(nz):
        for oy in offs:
            for ox in offs:
                for oz in through:
                    xyz = np.stack([jj + ox, ii + oy, np.full(jj.shape, z + oz / dz)], axis=-1)
                    local = (xyz @ g.local_matrix()[:3, :3].T) + g.origin
                    out[z] += _surroundings(m.to_ras(local))
    return out / (len(offs) ** 2 * len(through))


def _heart_box(g: _Grid, m: _Model) -> tuple[slice, slice]:
    """Pixel rows and columns that any part of the heart (atria included) can project onto."""
    ells = [m.la, m.ra] + [e for fr in {id(f): f for f in m.frames}.values() for e in (fr.epi, fr.rv_outer)]
    margin = PERICARDIAL_FAT_MM * m.scale  # the fat layer grows the ventricles' ellipsoids
    out = []
    for i, n in ((1, g.shape[1]), (0, g.shape[2])):  # rows, then columns
        k, sgn, d = g.axes[i], g.signs[i], g.spacing[2 - i]
        lo = min(e.center[k] - e.radii[k] for e in ells) - margin
        hi = max(e.center[k] + e.radii[k] for e in ells) + margin
        idx = sorted(((lo - g.origin[k]) / (sgn * d), (hi - g.origin[k]) / (sgn * d)))
        out.append(slice(int(np.clip(math.floor(idx[0]) - 1, 0, n)), int(np.clip(math.ceil(idx[1]) + 2, 0, n))))
    return out[0], out[1]


def _render(view: str, m: _Model) -> tuple[np.ndarray, np.ndarray, _Grid, bool]:
    cfg = m.config
    g, complete = _grid(view, m)
    rows, cols = _heart_box(g, m)
    lines = _Lines(g, cfg.supersample, rows, cols)
    rest = _static_background(g, m)
    nz, ny, nx = g.shape
    jj, ii, zz = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="xy")
    vox = np.stack([jj, ii, zz], axis=-1).astype(float).transpose(2, 0, 1, 3)  # (z, y, x, 3)
    aff = affine_ras(g, m)
    field = _coil_field(vox @ aff[:3, :3].T + aff[:3, 3], cfg.coil_shading)
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), VIEWS.index(view)]))
    image = np.empty((cfg.frames, nz, ny, nx), np.float32)
    labels = np.zeros((cfg.frames, nz, ny, nx), np.uint8)
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for t, fr in enumerate(m.frames):
        key = id(fr)
        if key not in done:
            lab, heart, covered = _render_frame(lines, fr, m)
            clean = rest.copy()
            clean[:, rows, cols] = heart + (1.0 - covered) * rest[:, rows, cols]
            full = np.zeros((nz, ny, nx), np.uint8)
            full[:, rows, cols] = lab
            done[key] = (full, (clean * field).astype(np.float32))
        lab, clean = done[key]
        labels[t] = lab
        if cfg.noise > 0:
            n1 = rng.normal(0.0, cfg.noise, clean.shape).astype(np.float32)
            n2 = rng.normal(0.0, cfg.noise, clean.shape).astype(np.float32)
            image[t] = np.sqrt((clean + n1) ** 2 + n2**2)  # magnitude image: Rician noise
        else:
            image[t] = clean
    return image, labels, g, complete


# ----------------------------------------------------------------------------------------------
# truth
# ----------------------------------------------------------------------------------------------


def _hinges(fr: HeartFrame, direction: np.ndarray) -> list[np.ndarray]:
    """Where the AV plane meets the endocardium in the plane through the axis along ``direction``
    (a unit (u, v) vector): the two roots of a quadratic in the in-plane distance from the axis."""
    a, c, w0 = fr.endo.radii[0], fr.endo.radii[2], fr.endo.center[2]
    p = fr.plane
    gdir = float(direction @ np.asarray(p.tilt_dir))
    b0 = p.offset - w0
    qa = 1.0 / a**2 + (p.slope * gdir) ** 2 / c**2
    qb = 2.0 * p.slope * gdir * b0 / c**2
    qc = b0**2 / c**2 - 1.0
    disc = qb * qb - 4 * qa * qc
    if disc <= 0:
        raise ValueError("phantom geometry: the AV plane misses the endocardium")
    out = []
    for lam in ((-qb - math.sqrt(disc)) / (2 * qa), (-qb + math.sqrt(disc)) / (2 * qa)):
        out.append(np.array([lam * direction[0], lam * direction[1], p.offset + p.slope * lam * gdir]))
    return out


def _landmarks(view: str, m: _Model, g: _Grid) -> tuple[dict, dict, dict]:
    direction = np.array([1.0, 0.0]) if view == "lax_4c" else np.array([0.0, 1.0])
    apex = np.zeros(3)  # the epicardial apex is the heart-frame origin and does not move
    first = _hinges(m.frames[0], direction)
    # Order the hinges so that mv_1 -> mv_2 -> apex turns clockwise on screen in 2C and
    # counter-clockwise in 4C (rows grow downwards, so a positive cross product is clockwise).
    yx = [g.to_voxel_zyx(p)[1:] for p in (*first, apex)]
    (y1, x1), (y2, x2), (y3, x3) = yx
    cross = (x2 - x1) * (y3 - y1) - (y2 - y1) * (x3 - x1)
    want_clockwise = view == "lax_2c"
    swap = (cross > 0) != want_clockwise
    vox: dict[str, list] = {"mv_1": [], "mv_2": [], "apex": []}
    ras: dict[str, list] = {"mv_1": [], "mv_2": [], "apex": []}
    local: dict[str, list] = {"mv_1": [], "mv_2": [], "apex": []}
    for fr in m.frames:
        h = _hinges(fr, direction)
        if swap:
            h = h[::-1]
        for name, p in (("mv_1", h[0]), ("mv_2", h[1]), ("apex", apex)):
            local[name].append(p)
            vox[name].append([float(v) for v in g.to_voxel_zyx(p)])
            ras[name].append([float(v) for v in m.to_ras(p)])
    return vox, ras, local


def _round(x: float, nd: int = 4) -> float:
    return float(round(float(x), nd))


def phantom_truth(view: str = "sax", config: PhantomConfig | None = None, **overrides: Any) -> dict:
    """The truth of a phantom study, without rendering it (cheap)."""
    cfg = (config or PhantomConfig()).with_overrides(**overrides)
    m = _model(cfg)
    g, complete = _grid(view, m)
    return _truth(view, m, g, complete)


def _truth(view: str, m: _Model, g: _Grid, complete: bool) -> dict:
    cfg, cyc = m.config, m.cycle
    frames = m.frames
    lv = np.array([fr.lv_ml for fr in frames])
    rv = np.array([fr.rv_ml for fr in frames])
    myo = np.array([fr.myo_ml for fr in frames])
    ed, es = int(np.argmax(lv)), int(np.argmin(lv))
    rv_ed, rv_es = int(np.argmax(rv)), int(np.argmin(rv))
    dt = cfg.rr_ms / cfg.frames
    lv_sv = cfg.edv_ml - cfg.esv_ml
    rv_sv = cfg.rvedv - cfg.rvesv
    truth: dict[str, Any] = {
        "version": PHANTOM_VERSION,
        "view": view,
        "frames": cfg.frames,
        "rr_ms": _round(cfg.rr_ms),
        "HR_bpm": _round(cfg.heart_rate_bpm),
        "frame_interval_ms": _round(dt, 6),
        "frame_times_ms": [_round(t * dt) for t in range(cfg.frames)],
        "ED_frame": ed,
        "ES_frame": es,
        "LVEDV_ml": _round(lv[ed]),
        "LVESV_ml": _round(lv[es]),
        "LVSV_ml": _round(lv[ed] - lv[es]),
        "LVEF_pct": _round(100.0 * (lv[ed] - lv[es]) / lv[ed]),
        "RVEDV_ml": _round(rv[rv_ed]),
        "RVESV_ml": _round(rv[rv_es]),
        "RVSV_ml": _round(rv[rv_ed] - rv[rv_es]),
        "RVEF_pct": _round(100.0 * (rv[rv_ed] - rv[rv_es]) / rv[rv_ed]),
        "RV_ED_frame": rv_ed,
        "RV_ES_frame": rv_es,
        "LVM_g": _round(myo[ed] * MYO_DENSITY_G_ML),
        "CO_l_min": _round((lv[ed] - lv[es]) * cfg.heart_rate_bpm / 1000.0),
        "volumes": {
            "LV": [_round(v) for v in lv],
            "RV": [_round(v) for v in rv],
            "MYO": [_round(v) for v in myo],
        },
        # The AV plane's descent along the long axis between ED and ES (the 3-D model's MAPSE).
        "MAPSE_mm": _round(frames[ed].plane.offset - frames[es].plane.offset),
        # Peak rates of the analytic volume curve (ml/s).
        "PER_ml_s": _round(lv_sv * cyc.peak_rate("ejection"), 3),
        "PFR_early_ml_s": _round(lv_sv * cyc.peak_rate("rapid filling"), 3),
        "PFR_late_ml_s": _round(lv_sv * cyc.peak_rate("atrial contraction"), 3),
        "RV_PER_ml_s": _round(rv_sv * cyc.peak_rate("ejection"), 3),
        "phases_ms": {p.name: [_round(p.start * cfg.rr_ms), _round(p.end * cfg.rr_ms)] for p in cyc.phases},
        "geometry": {
            "apex_ras": [_round(v) for v in m.apex_ras],
            "long_axis_ras": [_round(v, 6) for v in _W],  # apex -> base
            "septal_axis_ras": [_round(v, 6) for v in _U],
            "av_plane_tilt_deg": _round(math.degrees(math.atan(frames[0].plane.slope)), 3),
            "shape": list(g.shape),
            "spacing_mm": [_round(v, 6) for v in g.spacing],
            "voxel_volume_ml": _round(float(np.prod(g.spacing)) / 1000.0, 8),
            "coverage_complete": bool(complete),
        },
        "BSA_m2": _round(math.sqrt(cfg.height_cm * cfg.weight_kg / 3600.0)),  # Mosteller
        "config": asdict(cfg),
        "label_map": {"0": "background", "1": "RV", "2": "MYO", "3": "LV"},
    }
    if view in ("lax_2c", "lax_4c"):
        vox, ras, local = _landmarks(view, m, g)
        truth["landmarks"] = vox
        truth["landmarks_ras"] = ras
        mid = [(np.asarray(a) + np.asarray(b)) / 2 for a, b in zip(local["mv_1"], local["mv_2"])]
        truth["MAPSE_view_mm"] = _round(np.linalg.norm(mid[ed] - mid[es]))  # hinge midpoint travel
        truth["hinge_travel_mm"] = {
            k: _round(np.linalg.norm(local[k][ed] - local[k][es])) for k in ("mv_1", "mv_2")
        }
        truth["landmark_convention"] = (
            "(z, y, x) voxel coordinates; mv_1 -> mv_2 -> apex clockwise as displayed in 2C "
            "(mv_1 anterior hinge), counter-clockwise in 4C (mv_1 septal hinge)"
        )
    return truth


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def make_phantom(view: str = "sax", config: PhantomConfig | None = None, **overrides: Any
                 ) -> tuple[CineStudy, dict]:
    """Render a phantom cine of ``view`` ('sax', 'lax_2c' or 'lax_4c') and return it with its truth.

    ``overrides`` replace fields of ``config`` (default :class:`PhantomConfig`), e.g. ``lvef=35``.
    """
    if view not in VIEWS:
        raise ValueError(f"phantom view must be one of {VIEWS}, got {view!r}")
    cfg = (config or PhantomConfig()).with_overrides(**overrides)
    m = _model(cfg)
    image, labels, g, complete = _render(view, m)
    truth = _truth(view, m, g, complete)
    dz, dy, dx = g.spacing
    dt = cfg.rr_ms / cfg.frames
    study = CineStudy(
        image=image,
        spacing=(dt, dz, dy, dx),
        affine=affine_ras(g, m),
        view=view,
        frame_times_ms=np.arange(cfg.frames) * dt,
        patient=PatientInfo(
            patient_id=f"PHANTOM{cfg.seed:04d}",
            height_cm=cfg.height_cm,
            weight_kg=cfg.weight_kg,
            sex=cfg.sex,
            age_years=cfg.age,
            heart_rate_bpm=cfg.heart_rate_bpm,
            rr_interval_ms=cfg.rr_ms,
        ),
        source=f"phantom:{view}",
        description=(
            f"napari-cinema phantom {view}: LVEDV {truth['LVEDV_ml']:.1f} ml, LVEF {truth['LVEF_pct']:.1f} %, "
            f"seed {cfg.seed}"
        ),
        labels=labels,
        ed_frame=truth["ED_frame"],
        es_frame=truth["ES_frame"],
    )
    return study, truth


def write_phantom(out_dir: str | Path, view: str = "sax", fmt: str = "nifti", **overrides: Any) -> Path:
    """Write a phantom study, its labels and ``truth.json`` into ``out_dir``.

    NIfTI: ``phantom_<view>.nii.gz`` (x, y, z, t; pixdim[4] = frame interval in ms) and
    ``phantom_<view>_gt.nii.gz`` (labels, internal convention); DICOM: ``dicom/`` (one file per
    slice and frame) plus the label NIfTI. Every file appears atomically. Returns the path to open.
    """
    if fmt not in ("nifti", "dicom"):
        raise ValueError(f"fmt must be 'nifti' or 'dicom', got {fmt!r}")
    from napari_cinema.io.writers import atomic_dir, atomic_write_text, write_image_nifti, write_labels_nifti

    study, truth = make_phantom(view, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"phantom_{view}"
    dt = study.spacing[0]
    write_labels_nifti(out / f"{name}_gt.nii.gz", study.labels, study.affine, frame_interval_ms=dt)
    if fmt == "nifti":
        target = out / f"{name}.nii.gz"
        write_image_nifti(target, study)
    else:
        from pydicom.uid import generate_uid

        from napari_cinema.io.dicom import write_dicom_cine

        cfg_key = json.dumps(truth["config"], sort_keys=True)
        target = out / "dicom"
        with atomic_dir(target) as tmp:
            write_dicom_cine(
                study,
                tmp,
                series_description=f"phantom cine {view}",
                patient_id=study.patient.patient_id,
                patient_name=f"PHANTOM^{view.upper()}",
                # Stable identifiers: the same configuration gives the same study (all views).
                study_instance_uid=generate_uid(entropy_srcs=["napari-cinema phantom study", cfg_key]),
                series_instance_uid=generate_uid(entropy_srcs=["napari-cinema phantom", view, cfg_key]),
            )
    truth = dict(truth, files={"image": target.name, "labels": f"{name}_gt.nii.gz", "format": fmt})
    atomic_write_text(out / "truth.json", json.dumps(truth, indent=1))
    return target
