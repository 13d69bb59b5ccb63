"""Analysis core: volumes, ED/ES, EF, mass, BSA, heart rate, rates, MAPSE, AHA, coverage, reference ranges.

Checked against closed-form synthetic hearts, the phantom's analytic truth (when the phantom module is
present) and the ACDC expert reference volumes (when ../shared/data is present).
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from napari_cinema.analysis import analyze_study
from napari_cinema.analysis.aha import aha_wall_thickness, segment_of
from napari_cinema.analysis.coverage import coverage_warnings
from napari_cinema.analysis.cycle import detect_ed_es, filling_rates, heart_rate, lowpass_weights
from napari_cinema.analysis.landmarks import mapse
from napari_cinema.analysis.measures import bsa_mosteller, ejection_fraction, structure_volumes
from napari_cinema.analysis.reference_ranges import REFERENCE_RANGES, SOURCES, flag_value
from napari_cinema.io.labels import LV, MYO, RV
from napari_cinema.io.study import CineStudy, PatientInfo

# ------------------------------------------------------------------------------------------------
# a closed-form synthetic heart
# ------------------------------------------------------------------------------------------------


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def heart_frame(n: int, dpx: float, r_lv: float, wall, rv: bool = True) -> np.ndarray:
    """One slice: LV cavity disk, myocardial ring of angle-dependent thickness ``wall(theta)`` (mm),
    RV cavity on the +x side (theta = 0 points to the septum). theta is measured in the (u, v) =
    (x*dx, y*dy) plane around the centre."""
    yy, xx = np.mgrid[0:n, 0:n]
    u, v = (xx - n / 2 + 0.5) * dpx, (yy - n / 2 + 0.5) * dpx
    r, th = np.hypot(u, v), np.arctan2(v, u)
    r_epi = r_lv + wall(th)
    lab = np.zeros((n, n), np.uint8)
    if rv:
        lab[(np.hypot(u - (r_lv + 10.0), v) < r_lv + 8.0) & (r >= r_epi + 0.5)] = RV
    lab[(r >= r_lv) & (r < r_epi)] = MYO
    lab[r < r_lv] = LV
    return lab


def make_heart(frames: int = 16, slices: int = 8, n: int = 72, dt: float | None = 50.0, dz: float = 8.0,
               dpx: float = 1.5, wall=None, rv: bool = True, mirrored: bool = False, patient=None) -> CineStudy:
    """A short-axis stack in an anatomically oriented frame: slice index increases towards the base,
    image +x points to the septum (RV), image +y anterior (or, ``mirrored``, posterior with the
    labels flipped accordingly and the slice order reversed by the right-handed affine)."""
    wall = wall or (lambda th: 8.0 + 0 * th)
    t = np.arange(frames)
    squeeze = 0.5 * (1 - np.cos(2 * np.pi * t / frames))  # 0 at ED (frame 0), 1 at mid-cycle
    labels = np.zeros((frames, slices, n, n), np.uint8)
    for k in range(frames):
        for z in range(slices):
            # z = 0 apex ... z = slices-1 base (a truncated ellipsoid)
            taper = math.sqrt(max(0.05, 1 - ((slices - 0.5 - z) / slices) ** 2))
            r_lv = 20.0 * taper * math.sqrt(1 - 0.55 * squeeze[k])
            labels[k, z] = heart_frame(n, dpx, r_lv, lambda th: wall(th) * (1 + 0.35 * squeeze[k]), rv)
    base = _unit([0.55, -0.45, 0.70])  # apex -> base: right, posterior, superior
    septum = _unit(np.cross(base, [0.0, 0.0, 1.0]))  # in the slice plane
    anterior = np.cross(base, septum)
    e_x, e_y = septum, anterior
    if mirrored:  # the same anatomy imaged with rows flipped: the right-handed slice axis then points apically
        labels = labels[:, ::-1, ::-1, :].copy()
        e_y = -anterior
    normal = np.cross(e_x, e_y)
    A = np.eye(4)
    A[:3, 0], A[:3, 1], A[:3, 2] = e_x * dpx, e_y * dpx, normal * dz
    A[:3, 3] = [-30.0, 20.0, 40.0]
    return CineStudy(image=labels.astype(np.float32), spacing=(dt, dz, dpx, dpx), affine=A, view="sax",
                     frame_times_ms=None if dt is None else np.arange(frames) * dt,
                     patient=patient or PatientInfo(height_cm=180.0, weight_kg=80.0, sex="M", age_years=55.0),
                     source="/data/synthetic_heart.nii.gz", labels=labels)


def assert_json_clean(report):
    d = report.to_json_dict()
    json.dumps(d, allow_nan=False)  # NaN never
    for key, value in d.items():
        if value is None and key in ("LVEDV_ml", "LVESV_ml", "LVSV_ml", "LVEF_pct", "RVEDV_ml", "RVESV_ml",
                                     "RVSV_ml", "RVEF_pct", "LVM_g", "ED_frame", "ES_frame", "HR_bpm", "CO_l_min"):
            assert d["null_reasons"].get(key), f"{key} is null without a reason"
    return d


# ------------------------------------------------------------------------------------------------
# measures
# ------------------------------------------------------------------------------------------------


def test_volumes_are_voxel_counts_times_voxel_volume():
    study = make_heart()
    vols = structure_volumes(study.labels, study.spacing)
    vox = 8.0 * 1.5 * 1.5 / 1000.0
    for name, value in (("LV", LV), ("RV", RV), ("MYO", MYO)):
        np.testing.assert_allclose(vols[name], (study.labels == value).sum(axis=(1, 2, 3)) * vox)
    report = analyze_study(study)
    m = report.measures
    assert m["ED_frame"] == 0 and m["ES_frame"] == 8
    assert m["LVEDV_ml"] == pytest.approx(vols["LV"][0], abs=1e-3)
    assert m["LVESV_ml"] == pytest.approx(vols["LV"][8], abs=1e-3)
    assert m["LVEF_pct"] == pytest.approx(100 * (vols["LV"][0] - vols["LV"][8]) / vols["LV"][0], abs=1e-3)
    assert m["LVM_g"] == pytest.approx(1.05 * vols["MYO"][0], abs=1e-3)
    bsa = math.sqrt(180 * 80 / 3600)
    assert m["BSA_m2"] == pytest.approx(bsa, abs=1e-3)
    assert m["LVEDV_ml_m2"] == pytest.approx(m["LVEDV_ml"] / bsa, abs=1e-2)
    assert m["LVM_g_m2"] == pytest.approx(m["LVM_g"] / bsa, abs=1e-2)
    # 16 frames x 50 ms, the curve closes: HR from the frame timing, and it says so
    assert m["HR_bpm"] == pytest.approx(60000 / (16 * 50))
    assert "frame timing" in report.cycle["HR_source"]
    assert m["CO_l_min"] == pytest.approx(m["LVSV_ml"] * m["HR_bpm"] / 1000, abs=1e-3)
    assert_json_clean(report)


def test_bsa_ef_and_body_size_validation():
    assert bsa_mosteller(180, 80) == pytest.approx(2.0)
    assert bsa_mosteller(17, 80) is None and bsa_mosteller(180, 0) is None and bsa_mosteller(None, 70) is None
    assert ejection_fraction(100, 40) == pytest.approx(60.0)
    assert ejection_fraction(0, 0) is None and ejection_fraction(None, 1) is None


def test_ed_es_detection_and_manual_override():
    v = [120, 110, 80, 55, 50, 70, 100, 118]
    assert detect_ed_es(v)[:2] == (0, 4)
    ed, es, source, problems = detect_ed_es(v, ed_frame=1, es_frame=3)
    assert (ed, es) == (1, 3) and "manual" in source and not problems
    ed, es, _, problems = detect_ed_es(v, ed_frame=99)
    assert (ed, es) == (0, 4) and problems  # out-of-range override is reported, detection used
    assert detect_ed_es([np.nan, 80.0, np.nan])[:2] == (None, None)
    assert detect_ed_es([0.0, 0.0])[3]


def test_heart_rate_sources():
    study = make_heart()
    study.patient.heart_rate_bpm = 72.0
    assert heart_rate(study)[0] == 72.0
    study.patient.heart_rate_bpm = None
    study.patient.rr_interval_ms = 750.0
    hr, how = heart_rate(study)
    assert hr == pytest.approx(80.0) and "RR" in how
    study.patient.rr_interval_ms = None
    assert heart_rate(study)[0] is None  # no volume curve to check that the frames span one RR
    no_time = make_heart(dt=None)
    hr, why = heart_rate(no_time, structure_volumes(no_time.labels, no_time.spacing)["LV"])
    assert hr is None and "timing unknown" in why


def test_filling_rates_of_a_band_limited_curve_are_exact():
    # V(t) with harmonics 1..4 only (inside the pass band): the rates are known in closed form.
    T, n = 900.0, 30
    w = 2 * np.pi / T
    amps = [(1, 30.0, 0.3), (2, 12.0, 1.1), (3, 5.0, 2.0), (4, 2.5, 0.2)]

    def vol(t):
        return 100 + sum(a * np.cos(k * w * t + p) for k, a, p in amps)

    def rate(t):
        return -sum(a * k * w * np.sin(k * w * t + p) for k, a, p in amps) * 1000.0

    t = np.arange(n) * T / n
    v = vol(t)
    ed, es = int(np.argmax(v)), int(np.argmin(v))
    res = filling_rates(v, t, ed, es)
    fine = np.linspace(0, T, 200001)
    g = rate(fine)
    # systole: ED -> ES, diastole: ES -> ED (cyclic)
    ted, tes = t[ed], t[es]
    sys_mask = ((fine - ted) % T) <= ((tes - ted) % T)
    assert res.PER_ml_s == pytest.approx(-g[sys_mask].min(), rel=2e-3)
    dia = ~sys_mask
    assert max(res.PFR_early_ml_s, res.PFR_late_ml_s or 0) == pytest.approx(g[dia].max(), rel=2e-3)
    assert lowpass_weights(30)[:6].tolist() == [1.0] * 6 and lowpass_weights(30)[-1] == 0.0


def test_filling_rates_need_timing_and_a_whole_curve():
    v = np.linspace(100, 50, 20)
    assert filling_rates(v, None, 0, 19).reasons["PER_ml_s"] == "frame timing unknown"
    v2 = v.copy()
    v2[3] = np.nan
    assert "not every frame" in filling_rates(v2, np.arange(20) * 40.0, 0, 19).reasons["PFR_early_ml_s"]


def test_mapse_on_an_oblique_plane():
    # A 4-chamber-like single plane with an oblique affine and anisotropic pixels.
    A = np.eye(4)
    A[:3, 0] = _unit([1, 1, 0]) * 1.2  # columns
    A[:3, 1] = _unit([0, 0, -1]) * 1.6  # rows
    A[:3, 2] = _unit(np.cross(A[:3, 0], A[:3, 1])) * 8.0
    study = CineStudy(image=np.zeros((10, 1, 80, 80), np.float32), spacing=(40.0, 8.0, 1.6, 1.2), affine=A,
                      view="lax_4c")
    # apex at row 10, annulus hinges at row 60 (ED) moving up by 12 mm at ES (frame 4), in mm exact
    excursion = 12.0 * np.sin(np.pi * np.arange(10) / 8).clip(0)
    excursion[4] = 12.0
    rows = 60 - excursion / 1.6
    lm = {"mv_1": [[0, r, 25] for r in rows], "mv_2": [[0, r, 55] for r in rows],
          "apex": [[0, 10.0, 40] for _ in rows]}
    out = mapse(study, lm, 0, 4)
    assert out["MAPSE_mm"] == pytest.approx(12.0, abs=1e-6)
    assert out["MAPSE_mv_1_mm"] == pytest.approx(12.0, abs=1e-6)
    assert out["LV_length_ED_mm"] == pytest.approx(50 * 1.6, abs=1e-6)
    assert out["LV_long_axis_shortening_pct"] == pytest.approx(100 * 12 / 80, abs=1e-6)
    missing = mapse(study, {"mv_1": lm["mv_1"], "apex": lm["apex"]}, 0, 4)
    assert missing["MAPSE_mm"] is None and "mv_2" in missing["null_reasons"]["MAPSE_mm"]


# ------------------------------------------------------------------------------------------------
# AHA segments
# ------------------------------------------------------------------------------------------------


def test_aha_segment_numbering():
    assert segment_of(np.array([10.0, 70, 150, 200, 250, 330]), "basal").tolist() == [2, 3, 4, 5, 6, 1]
    assert segment_of(np.array([10.0, 70, 150, 200, 250, 330]), "mid").tolist() == [8, 9, 10, 11, 12, 7]
    assert segment_of(np.array([20.0, 60, 100, 150, 250, 300, 0]), "apical").tolist() == [14, 14, 14, 15, 16, 13, 13]


@pytest.mark.parametrize("mirrored", [False, True])
def test_aha_places_an_anterior_bulge_in_the_anterior_segments(mirrored):
    # 13 mm wall anteriorly (theta = +90 deg in the anatomical frame), 7 mm elsewhere, 10 mm at the septum.
    def wall(th):
        return 7.0 + 6.0 * np.exp(-((th - np.pi / 2) / 0.35) ** 2) + 3.0 * np.exp(-(th / 0.3) ** 2)

    study = make_heart(frames=4, slices=9, wall=wall, mirrored=mirrored)
    res = aha_wall_thickness(study, study.labels, 0, 2)
    assert res["segments"] is not None, res.get("reason")
    th = {s["segment"]: s["thickness_ED_mm"] for s in res["segments"]}
    for anterior, others in ((1, (3, 4, 5)), (7, (9, 10, 11)), (13, (15, 16))):
        assert th[anterior] > max(th[o] for o in others) + 2.0, (anterior, th)
    # the septal bump (at the septum centre, ~60 deg from the anterior insertion) is septal, not lateral
    assert th[2] > max(th[5], th[6]) + 0.7 and th[8] > max(th[11], th[12]) + 0.7
    assert 6.5 < th[4] < 7.5 and 6.5 < th[10] < 7.5  # inferior wall: 7 mm
    assert 90 < res["reference"]["insertion_arc_deg"] < 130
    assert res["slices"]["basal"][0] == (0 if mirrored else 8)  # the basal slice, from the affine
    thick = {s["segment"]: s["thickening_pct"] for s in res["segments"]}
    assert all(20 < v < 50 for v in thick.values())  # the wall thickens by 35 % at frame 2 (squeeze 0.5)


def test_aha_without_rv_gives_a_reason():
    study = make_heart(frames=4, rv=False)
    res = aha_wall_thickness(study, study.labels, 0, 2)
    assert res["segments"] is None and "RV" in res["reason"]


# ------------------------------------------------------------------------------------------------
# coverage
# ------------------------------------------------------------------------------------------------


def test_coverage_warnings():
    study = make_heart(frames=4)
    labels = study.labels.copy()
    assert not [w for w in coverage_warnings(labels, [0, 1, 2, 3], ed_frame=0, es_frame=2) if "gap" in w]
    labels[0, 4][labels[0, 4] == LV] = 0  # LV missing in a middle slice
    w = coverage_warnings(labels, [0, 1, 2, 3], ed_frame=0, es_frame=2)
    assert any("slice(s) 4" in x and "gap" in x for x in w)
    assert any("basal end slice 7" in x for x in w)  # the base slice still holds LV: base not covered
    no_rv = labels.copy()
    no_rv[no_rv == RV] = 0
    assert any("RV cavity is missing from every" in x for x in coverage_warnings(no_rv, [0, 1, 2, 3], ed_frame=0))


# ------------------------------------------------------------------------------------------------
# reference ranges
# ------------------------------------------------------------------------------------------------


def test_reference_table_cites_every_row():
    assert REFERENCE_RANGES
    for row in REFERENCE_RANGES:
        assert row.source in SOURCES and SOURCES[row.source]["citation"] and SOURCES[row.source]["doi"]
        assert row.convention in ("pm_in_blood_pool", "pm_in_myocardium", "unspecified")
        assert row.sex in ("M", "F")
    covered = {r.quantity for r in REFERENCE_RANGES}
    for q in ("LVEDV_ml", "LVESV_ml", "LVEF_pct", "LVM_g", "LVEDV_ml_m2", "LVESV_ml_m2", "LVM_g_m2",
              "RVEDV_ml", "RVEF_pct"):
        assert q in covered, q


def test_flags():
    f = flag_value("LVEF_pct", 35.0, "M", 50)
    assert f["flag"] == "low" and f["source"] == "petersen2017" and f["convention"] == "pm_in_blood_pool"
    assert flag_value("LVEF_pct", 60.0, "F", 50)["flag"] == "normal"
    assert flag_value("LVEDV_ml", 300.0, "F", 40)["flag"] == "high"
    unknown_sex = flag_value("LVM_g_m2", 50.0, None)
    assert unknown_sex["flag"] == "normal" and "sex unknown" in unknown_sex["note"]
    assert flag_value("RVEF_pct", 20.0, "M")["flag"] is None  # no verified limits: no flag
    young = flag_value("LVEF_pct", 60.0, "M", 20)  # UK Biobank covers 45-74: an all-age source is preferred
    assert young["source"] == "kawelboehm2015" and "convention" in young["note"]
    assert "age 80 outside" in flag_value("RVEDV_ml", 150.0, "F", 80)["note"]  # Hudsmith: 21-68


# ------------------------------------------------------------------------------------------------
# bad input: warnings and nulls with reasons, never a crash, never NaN
# ------------------------------------------------------------------------------------------------


def test_labels_without_lv():
    study = make_heart(frames=4)
    labels = study.labels.copy()
    labels[labels == LV] = 0
    d = assert_json_clean(analyze_study(study, labels))
    assert d["LVEDV_ml"] is None and d["LVEF_pct"] is None and d["ED_frame"] is None
    assert "LV cavity" in d["null_reasons"]["ED_frame"]
    assert any("LV cavity is missing" in w for w in d["warnings"])


def test_single_frame():
    study = make_heart(frames=1)
    d = assert_json_clean(analyze_study(study))
    assert d["LVEF_pct"] is None and "one labelled frame" in d["null_reasons"]["LVEF_pct"]
    assert d["volumes"]["LV_ml"][0] > 0
    d = assert_json_clean(analyze_study(study, ed_frame=0))
    assert d["LVEDV_ml"] > 0 and d["LVESV_ml"] is None


def test_unknown_spacing_and_timing_and_nonsense_body_size():
    study = make_heart(frames=6, dt=None, patient=PatientInfo())
    study.spacing = (None, float("nan"), 1.5, 1.5)
    d = assert_json_clean(analyze_study(study, height_cm=17, weight_kg=0))
    assert d["LVEDV_ml"] is None and "invalid voxel size" in d["null_reasons"]["LVEDV_ml"]
    assert d["HR_bpm"] is None and d["CO_l_min"] is None and d["PER_ml_s"] is None
    assert d["BSA_m2"] is None and "implausible" in d["null_reasons"]["BSA_m2"]
    assert any("body size not usable" in w for w in d["warnings"])
    assert d["volumes"]["time_ms"] is None and d["ED_frame"] == 0  # ED/ES still come from voxel counts
    ok = make_heart(frames=6, dt=None, patient=PatientInfo())
    d = assert_json_clean(analyze_study(ok, height_cm=17, weight_kg=0))
    assert d["LVEDV_ml"] > 0 and d["LVEDV_ml_m2"] is None and d["HR_bpm"] is None
    assert "timing" in d["null_reasons"]["HR_bpm"] and d["PER_ml_s"] is None


def test_labels_that_do_not_fit_raise_clearly():
    study = make_heart(frames=2)
    with pytest.raises(ValueError, match="does not match"):
        analyze_study(study, study.labels[:, :3])
    bad = study.labels.copy()
    bad[0, 0, 0, 0] = 7
    with pytest.raises(ValueError, match="label values"):
        analyze_study(study, bad)


# ------------------------------------------------------------------------------------------------
# the phantom: analytic truth
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_sax():
    mod = pytest.importorskip("napari_cinema.sample_data.phantom", reason="phantom generator not installed yet")
    return mod.make_phantom("sax")


@pytest.fixture(scope="module", params=["lax_4c", "lax_2c"])
def phantom_lax(request):
    mod = pytest.importorskip("napari_cinema.sample_data.phantom", reason="phantom generator not installed yet")
    return mod.make_phantom(request.param)


def test_phantom_sax_against_truth(phantom_sax):
    study, truth = phantom_sax
    d = assert_json_clean(analyze_study(study))
    assert d["ED_frame"] == truth["ED_frame"] and d["ES_frame"] == truth["ES_frame"]
    for key in ("LVEDV_ml", "LVESV_ml", "RVEDV_ml", "RVESV_ml"):
        assert d[key] == pytest.approx(truth[key], rel=0.02), key
    assert d["LVEF_pct"] == pytest.approx(truth["LVEF_pct"], abs=1.0)
    assert d["RVEF_pct"] == pytest.approx(truth["RVEF_pct"], abs=1.0)
    assert d["LVM_g"] == pytest.approx(truth["LVM_g"], rel=0.03)
    for key in ("PER_ml_s", "PFR_early_ml_s", "PFR_late_ml_s"):
        assert d[key] == pytest.approx(truth[key], rel=0.05), key
    assert d["HR_bpm"] == pytest.approx(truth["HR_bpm"])
    assert d["CO_l_min"] == pytest.approx(truth["CO_l_min"], rel=0.02)
    assert d["BSA_m2"] == pytest.approx(truth["BSA_m2"], abs=0.01)
    for name in ("LV", "RV", "MYO"):
        np.testing.assert_allclose(d["volumes"][f"{name}_ml"], truth["volumes"][name], rtol=0.03, atol=0.5)
    segs = d["aha"]["segments"]
    assert segs is not None and all(s["thickness_ED_mm"] and s["thickness_ED_mm"] > 2 for s in segs)


def test_phantom_lax_mapse(phantom_lax):
    study, truth = phantom_lax
    d = assert_json_clean(analyze_study(study, landmarks=truth["landmarks"]))
    assert d["ED_frame"] == truth["ED_frame"] and d["ES_frame"] == truth["ES_frame"]
    assert d["MAPSE_mm"] == pytest.approx(truth["MAPSE_mm"], abs=1.0)
    assert d["LVEDV_ml"] is None and "long-axis" in d["null_reasons"]["LVEDV_ml"]
    assert d["landmarks"]["curves"]["displacement_mm"]["mean"][truth["ES_frame"]] == pytest.approx(d["MAPSE_mm"], abs=1e-2)
    assert d["landmarks"]["source"] == "given"


def test_lax_mapse_without_landmarks_reads_them_off_the_labels(phantom_lax):
    study, truth = phantom_lax
    d = assert_json_clean(analyze_study(study))  # no landmarks given (napari-cinema analyze on a 4C cine)
    assert d["landmarks"]["source"].startswith("read off the labels")
    assert d["MAPSE_mm"] == pytest.approx(truth["MAPSE_mm"], abs=1.0)
    assert d["LV_length_ED_mm"] > d["LV_length_ES_mm"] > 0
    empty = np.zeros_like(study.labels)
    d = assert_json_clean(analyze_study(study, empty))  # nothing to read: MAPSE null with the reason
    assert d["MAPSE_mm"] is None and "no long-axis landmarks" in d["null_reasons"]["MAPSE_mm"]


# ------------------------------------------------------------------------------------------------
# ACDC expert labels: the reference volumes of all 70 patients
# ------------------------------------------------------------------------------------------------


def test_acdc_reference_volumes(shared_data):
    from napari_cinema.io import load_study

    ref = shared_data / "acdc" / "reference_volumes.csv"
    rows = list(csv.DictReader(ref.open()))
    assert len(rows) == 70
    worst = {}
    for row in rows:
        study = load_study(shared_data / "acdc" / row["patient"])
        d = analyze_study(study, aha=False).to_json_dict()
        assert (d["ED_frame"], d["ES_frame"]) == (0, 1), row["patient"]
        for ours, theirs in (("LVEDV_ml", "LVEDV_ml"), ("LVESV_ml", "LVESV_ml"), ("LVEF_pct", "LVEF_pct"),
                             ("LVM_g", "MYO_ED_mass_g"), ("RVEDV_ml", "RVEDV_ml"), ("RVEF_pct", "RVEF_pct")):
            err = abs(d[ours] - float(row[theirs])) / float(row[theirs])
            worst[ours] = max(worst.get(ours, 0.0), err)
            assert err < 0.005, (row["patient"], ours, d[ours], row[theirs])
    print("ACDC worst relative error:", {k: f"{100 * v:.2f}%" for k, v in worst.items()})


@pytest.mark.parametrize("view", ["lax_4c", "lax_2c"])
def test_landmarks_derived_from_phantom_labels_match_its_truth(view):
    from napari_cinema.analysis.landmarks import landmarks_from_labels
    from napari_cinema.sample_data import phantom

    study, truth = phantom.make_phantom(view, frames=10)
    mm = np.asarray(study.spacing[2:])
    for t in range(study.n_frames):
        found = landmarks_from_labels(study.labels[t, 0], view, tuple(mm))
        for name, yx in found.items():
            err = np.linalg.norm((yx - np.asarray(truth["landmarks"][name][t])[1:]) * mm)
            assert err < 3.0, (t, name, err)
    assert landmarks_from_labels(np.zeros((8, 8), np.uint8), view) is None
