"""Analytic geometry and timing of the phantom heart.

Everything here lives in a *heart-local* frame, in millimetres:

- ``w`` is the LV long axis, pointing from the apex towards the base; the epicardial apex is the
  origin and stays put over the cycle (real apices barely move; the base descends onto them);
- ``u`` points from the LV axis towards the septum and the RV centre; ``v = w x u`` points to the
  anterior wall (so ``-u`` is the lateral wall and ``-v`` the inferior wall).

The model (all surfaces analytic, so volumes are closed form or 2-D quadratures of closed-form
line intersections, never voxel counts):

- LV cavity = endocardial prolate spheroid (axis ``w``) below the atrioventricular (AV) plane;
- LV wall = epicardial spheroid below the same plane, minus the cavity. The AV plane is flat and
  tilted against the short-axis planes, rising towards the lateral wall (so the tricuspid annulus
  sits more apically than the mitral one, as in real hearts); it translates along ``w`` towards
  the apex in systole by the MAPSE;
- RV cavity = an axis-aligned ellipsoid beside the septum, below the AV plane, minus the LV
  epicardial spheroid: a crescent wrapped around the septum between two insertion points.

Per frame the endocardium is chosen to give the prescribed LV volume, the epicardium to keep the
myocardial volume constant (incompressible wall) and the RV ellipsoid to give the prescribed RV
volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

# ----------------------------------------------------------------------------------------------
# primitives
# ----------------------------------------------------------------------------------------------


def _unit_ball_part(delta: float) -> float:
    """Volume of {P in the unit ball : n.P <= delta} for a unit normal n."""
    delta = min(1.0, max(-1.0, float(delta)))
    h = 1.0 - delta  # height of the cap cut away
    return 4.0 * math.pi / 3.0 - math.pi * h * h * (3.0 - h) / 3.0


@dataclass(frozen=True)
class Plane:
    """The AV plane ``w = offset + slope * (p . tilt_dir)`` (``tilt_dir`` a unit vector in (u, v)).

    The ventricles lie *below* it (towards the apex), the atria above.
    """

    offset: float  # where it crosses the long axis (u = v = 0)
    slope: float  # tan(tilt angle against the short-axis planes)
    tilt_dir: tuple[float, float]  # (u, v) direction in which the plane rises

    @property
    def m(self) -> np.ndarray:
        """Normal such that ``below`` <=> p . m <= offset."""
        eu, ev = self.tilt_dir
        return np.array([-self.slope * eu, -self.slope * ev, 1.0])

    def height(self, u, v):
        eu, ev = self.tilt_dir
        return self.offset + self.slope * (np.asarray(u) * eu + np.asarray(v) * ev)


@dataclass(frozen=True)
class Ellipsoid:
    """Axis-aligned (in the heart frame) ellipsoid: sum(((p - center) / radii)**2) <= 1."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]

    def volume_below(self, plane: Plane) -> float:
        """Exact volume of the part below ``plane`` (an affine map takes it to a unit-ball cap)."""
        m = plane.m
        c = np.asarray(self.center)
        r = np.asarray(self.radii)
        mr = m * r
        delta = (plane.offset - float(m @ c)) / float(np.linalg.norm(mr))
        return float(np.prod(r)) * _unit_ball_part(delta)

    def radius_at(self, w) -> np.ndarray:
        """Radius of a spheroid (radii[0] == radii[1], centred on the axis) at height w (0 outside)."""
        w = np.asarray(w, dtype=float)
        z = (w - self.center[2]) / self.radii[2]
        return self.radii[0] * np.sqrt(np.clip(1.0 - z * z, 0.0, None))


# ----------------------------------------------------------------------------------------------
# timing: the volume curve over one RR interval
# ----------------------------------------------------------------------------------------------


def _skew(x):
    """Cumulative of the rate 12 x (1-x)^2: a flow that peaks early (at x = 1/3), as ejection and
    early filling do. Peak rate 16/9 per unit duration."""
    x = np.clip(x, 0.0, 1.0)
    return 6 * x**2 - 8 * x**3 + 3 * x**4


def _skew_rate(x):
    x = np.clip(x, 0.0, 1.0)
    return 12 * x * (1 - x) ** 2


def _sym(x):
    """Cumulative of the symmetric rate 6 x (1-x). Peak rate 3/2 per unit duration."""
    x = np.clip(x, 0.0, 1.0)
    return 3 * x**2 - 2 * x**3


def _sym_rate(x):
    x = np.clip(x, 0.0, 1.0)
    return 6 * x * (1 - x)


_PROFILES = {"skew": (_skew, _skew_rate, 16.0 / 9.0), "sym": (_sym, _sym_rate, 1.5)}


@dataclass(frozen=True)
class Phase:
    name: str
    start: float  # fraction of RR
    end: float
    change: float  # change of the shortening fraction y over the phase (+ in systole)
    profile: str


class CardiacCycle:
    """The shortening fraction ``y(phi) = (EDV - V) / SV`` over one RR interval (phi in [0, 1)).

    ``y`` is 0 at end-diastole (phi = 0, the R wave) and 1 at end-systole. Phases: nearly
    isovolumic contraction (mitral closure displaces ~1 % of the stroke volume), ejection with an
    early-peaking flow, nearly isovolumic relaxation, rapid (E) filling, slow filling in diastasis
    and the atrial (A) kick that ends exactly at the next R wave.
    """

    # Phase durations as fractions of RR (at 60 bpm: 50, 80, 200 and 160 ms).
    IVC = 0.05
    IVR = 0.08
    E_WAVE = 0.20
    A_WAVE = 0.16
    ISOVOLUMIC_FRACTION = 0.01  # of SV, during each isovolumic phase
    E_FRACTION = 0.64  # of SV, filled in the E wave
    DIASTASIS_FRACTION = 0.07  # of SV, in diastasis; the A wave brings the rest

    def __init__(self, es_phase: float, rr_ms: float):
        ivc, ivr, e, a = self.IVC, self.IVR, self.E_WAVE, self.A_WAVE
        if not (ivc + 0.1 < es_phase < 1.0 - ivr - e - a - 0.02):
            raise ValueError(f"end-systole at {es_phase:.3f} of the cycle leaves no room for the phases")
        d = self.ISOVOLUMIC_FRACTION
        fe, fd = self.E_FRACTION, self.DIASTASIS_FRACTION
        fa = 1.0 - d - fe - fd
        t_ivr = es_phase + ivr
        t_e = t_ivr + e
        t_a = 1.0 - a
        self.es_phase = es_phase
        self.rr_ms = rr_ms
        self.phases = (
            Phase("isovolumic contraction", 0.0, ivc, d, "sym"),
            Phase("ejection", ivc, es_phase, 1.0 - d, "skew"),
            Phase("isovolumic relaxation", es_phase, t_ivr, -d, "sym"),
            Phase("rapid filling", t_ivr, t_e, -fe, "skew"),
            Phase("diastasis", t_e, t_a, -fd, "sym"),
            Phase("atrial contraction", t_a, 1.0, -fa, "sym"),
        )

    def y(self, phi) -> np.ndarray:
        phi = np.mod(np.asarray(phi, dtype=float), 1.0)
        out = np.zeros_like(phi)
        for p in self.phases:
            f = _PROFILES[p.profile][0]
            out = out + p.change * f((phi - p.start) / (p.end - p.start))
        # guard the round-off at the ES plateau (sum of the systolic changes is exactly 1)
        return np.clip(out, 0.0, 1.0)

    def y_rate(self, phi) -> np.ndarray:
        """dy/dphi."""
        phi = np.mod(np.asarray(phi, dtype=float), 1.0)
        out = np.zeros_like(phi)
        for p in self.phases:
            r = _PROFILES[p.profile][1]
            x = (phi - p.start) / (p.end - p.start)
            inside = (x >= 0) & (x <= 1)
            out = out + np.where(inside, p.change / (p.end - p.start) * r(x), 0.0)
        return out

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    def peak_rate(self, name: str) -> float:
        """Peak |dy/dt| of a phase in 1/s (analytic: |change| * peak profile rate / duration)."""
        p = self.phase(name)
        dur_s = (p.end - p.start) * self.rr_ms / 1000.0
        return abs(p.change) * _PROFILES[p.profile][2] / dur_s


# ----------------------------------------------------------------------------------------------
# the heart at one instant
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeartFrame:
    y: float  # shortening fraction (0 at ED, 1 at ES)
    plane: Plane
    endo: Ellipsoid
    epi: Ellipsoid
    rv: Ellipsoid
    rv_outer: Ellipsoid  # RV free-wall outer surface (image only)
    lv_ml: float
    myo_ml: float
    rv_ml: float


def spheroid_below(apex_w: float, base_w: float, k: float, plane: Plane, volume: float) -> Ellipsoid:
    """The axis spheroid whose apex is at ``apex_w``, whose centre sits so that the AV plane crosses
    the axis at ``k`` semi-axes above it, and whose part below ``plane`` holds ``volume`` mm^3."""
    c = (base_w - apex_w) / (1.0 + k)
    w0 = apex_w + c

    def f(a: float) -> float:
        return Ellipsoid((0.0, 0.0, w0), (a, a, c)).volume_below(plane) - volume

    a = brentq(f, 1e-3, 20.0 * c + 200.0, xtol=1e-12, rtol=1e-14, maxiter=200)
    return Ellipsoid((0.0, 0.0, w0), (a, a, c))


def _w_interval(e: Ellipsoid, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w-interval of the lines (u, v, .) inside ``e`` on the grid u[:, None], v[None, :]."""
    q = ((u[:, None] - e.center[0]) / e.radii[0]) ** 2 + ((v[None, :] - e.center[1]) / e.radii[1]) ** 2
    half = e.radii[2] * np.sqrt(np.clip(1.0 - q, 0.0, None))
    inside = q < 1.0
    return np.where(inside, e.center[2] - half, np.inf), np.where(inside, e.center[2] + half, -np.inf)


def overlap_volume(e1: Ellipsoid, e2: Ellipsoid, plane: Plane, h: float) -> float:
    """Volume of e1 & e2 below ``plane`` by midpoint quadrature over (u, v) of the exact lengths of
    the lines along w (a continuous integrand; h = 0.1 mm gives about 1e-5 relative accuracy)."""
    lo_u = max(e1.center[0] - e1.radii[0], e2.center[0] - e2.radii[0])
    hi_u = min(e1.center[0] + e1.radii[0], e2.center[0] + e2.radii[0])
    lo_v = max(e1.center[1] - e1.radii[1], e2.center[1] - e2.radii[1])
    hi_v = min(e1.center[1] + e1.radii[1], e2.center[1] + e2.radii[1])
    if hi_u <= lo_u or hi_v <= lo_v:
        return 0.0
    # A lattice anchored at multiples of h (not at the box), so the sum varies continuously with
    # the shapes: the RV search needs a smooth function of its size.
    u = (np.arange(math.floor(lo_u / h), math.ceil(hi_u / h)) + 0.5) * h
    v = (np.arange(math.floor(lo_v / h), math.ceil(hi_v / h)) + 0.5) * h
    hu = hv = h
    lo1, hi1 = _w_interval(e1, u, v)
    lo2, hi2 = _w_interval(e2, u, v)
    top = plane.height(u[:, None], v[None, :])
    seg = np.minimum(np.minimum(hi1, hi2), top) - np.maximum(lo1, lo2)
    return float(np.clip(seg, 0.0, None).sum()) * hu * hv


def rv_volume(rv: Ellipsoid, epi: Ellipsoid, plane: Plane, h: float = 0.1) -> float:
    """RV cavity = RV ellipsoid below the AV plane minus the LV epicardial spheroid (mm^3)."""
    return rv.volume_below(plane) - overlap_volume(rv, epi, plane, h)


def secant(f, x0: float, x1: float, tol: float, maxiter: int = 30) -> float:
    f0, f1 = f(x0), f(x1)
    for _ in range(maxiter):
        if abs(f1) < tol:
            return x1
        if f1 == f0:
            break
        x0, x1, f0 = x1, x1 - f1 * (x1 - x0) / (f1 - f0), f1
        f1 = f(x1)
    if abs(f1) < tol:
        return x1
    raise RuntimeError("phantom geometry: RV size did not converge")


# ----------------------------------------------------------------------------------------------
# anatomy
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """Shape constants of a 140 ml heart (lengths scale with (EDV / 140 ml)^(1/3)).

    Lengths are in mm along the heart frame; see the module docstring for the axes.
    """

    endo_length_ed: float = 70.0  # endocardial apex to the AV plane, on the axis, at ED
    apex_wall_ed: float = 6.0  # apical wall (epicardial to endocardial apex) at ED
    apex_wall_es: float = 9.0  # ... and at ES (the wall thickens)
    k_endo: float = 0.5  # the AV plane crosses the axis k semi-axes above the spheroid centre:
    k_epi: float = 0.5  # the base is narrower than the widest level, as in a real LV
    tilt_deg: float = 10.0  # AV plane against the short-axis planes
    tilt_dir: tuple[float, float] = (-1.0, 0.0)  # it rises towards the lateral wall (-u)
    # RV ellipsoid at ED, relative to the AV-plane height B_ED on the axis (u offset, radii).
    # Its centre sits inside the LV, so what shows outside the epicardium is a crescent whose
    # horns (the RV insertion points) meet the LV about 70 degrees either side of the septum.
    rv_u: float = 35.0
    rv_center_w: float = 0.65  # * B_ED
    rv_radii: tuple[float, float, float] = (32.0, 50.0, 0.58)  # ru, rv (mm) and rw (* B_ED)
    rv_width_coupling: float = 0.4  # how much of the free-wall shrinkage the RV width follows
    rv_wall: float = 3.0  # RV free wall thickness (image only)


def build_frames(
    ys: np.ndarray,
    *,
    edv_ml: float,
    esv_ml: float,
    myo_ml: float,
    rvedv_ml: float,
    rvesv_ml: float,
    mapse_mm: float,
    anatomy: Anatomy = Anatomy(),
    rv_h: float = 0.15,
    rv_h_search: float = 0.4,
) -> tuple[list[HeartFrame], float]:
    """The heart at each shortening fraction in ``ys``; returns the frames and the length scale."""
    a = anatomy
    scale = (edv_ml / 140.0) ** (1.0 / 3.0)
    base_ed = (a.apex_wall_ed + a.endo_length_ed) * scale
    slope = math.tan(math.radians(a.tilt_deg))
    td = np.asarray(a.tilt_dir, dtype=float)
    td = tuple(float(v) for v in td / np.linalg.norm(td))
    rv_c = (a.rv_u * scale, 0.0, a.rv_center_w * base_ed)
    rv_r0 = (a.rv_radii[0] * scale, a.rv_radii[1] * scale, a.rv_radii[2] * base_ed)

    frames: list[HeartFrame] = []
    s_prev: tuple[float, float] | None = None
    cache: dict[float, HeartFrame] = {}
    for y in np.asarray(ys, dtype=float):
        key = round(float(y), 12)
        if key in cache:
            frames.append(cache[key])
            continue
        lv = (edv_ml - (edv_ml - esv_ml) * y) * 1000.0
        rv_target = (rvedv_ml - (rvedv_ml - rvesv_ml) * y) * 1000.0
        base = base_ed - mapse_mm * y
        apex_wall = (a.apex_wall_ed + (a.apex_wall_es - a.apex_wall_ed) * y) * scale
        plane = Plane(base, slope, td)
        endo = spheroid_below(apex_wall, base, a.k_endo, plane, lv)
        epi = spheroid_below(0.0, base, a.k_epi, plane, lv + myo_ml * 1000.0)

        def rv_of(s: float) -> Ellipsoid:
            width = 1.0 - a.rv_width_coupling * (1.0 - s)
            return Ellipsoid(rv_c, (rv_r0[0] * s, rv_r0[1] * width, rv_r0[2]))

        def f(s: float) -> float:
            return rv_volume(rv_of(s), epi, plane, rv_h_search) - rv_target

        # Search on a coarse quadrature, then one Newton step on the fine one (the truth's).
        x0, x1 = s_prev if s_prev is not None else (1.0, 0.95)
        s = secant(f, x0, x1, tol=1e-5 * rv_target)
        dvds = (f(s * 1.001) - f(s)) / (0.001 * s)
        s -= (rv_volume(rv_of(s), epi, plane, rv_h) - rv_target) / dvds
        s_prev = (s, s * 0.999)
        rv = rv_of(s)
        rv_outer = Ellipsoid(rv_c, tuple(r + a.rv_wall * scale for r in rv.radii))
        fr = HeartFrame(
            y=float(y),
            plane=plane,
            endo=endo,
            epi=epi,
            rv=rv,
            rv_outer=rv_outer,
            lv_ml=endo.volume_below(plane) / 1000.0,
            myo_ml=(epi.volume_below(plane) - endo.volume_below(plane)) / 1000.0,
            rv_ml=rv_volume(rv, epi, plane, rv_h) / 1000.0,
        )
        cache[key] = fr
        frames.append(fr)
    return frames, scale


def check_nesting(fr: HeartFrame, min_wall: float = 2.0) -> float:
    """Smallest radial wall (epi - endo radius) below the AV plane; raises if the cavity pokes out."""
    top = fr.plane.offset + fr.plane.slope * fr.epi.radii[0]
    w = np.linspace(fr.endo.center[2] - fr.endo.radii[2], top, 2000)
    r_endo = fr.endo.radius_at(w)
    r_epi = fr.epi.radius_at(w)
    inside = r_endo > 0
    wall = float(np.min((r_epi - r_endo)[inside]))
    if wall < min_wall:
        raise ValueError(f"phantom geometry: LV wall only {wall:.2f} mm thick; check EDV/EF/mass")
    return wall
