"""The synthetic phantom: its truth is analytic and its voxels agree with it.

Everything the app measures is checked against this phantom, so these tests pin the phantom itself:
voxel-count volumes against the continuous-model truth, the timing of the volume curve, the
landmarks against the rendered labels, the files it writes.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from napari_cinema.io.labels import LV, MYO, RV
from napari_cinema.sample_data import _geometry as geo
from napari_cinema.sample_data.phantom import PhantomConfig, make_phantom, phantom_truth, write_phantom

STRUCTURES = {"LV": LV, "MYO": MYO, "RV": RV}


def voxel_volumes(study) -> dict[str, np.ndarray]:
    flat = study.labels.reshape(study.n_frames, -1)
    return {k: (flat == v).sum(axis=1) * study.voxel_volume_ml for k, v in STRUCTURES.items()}


@pytest.fixture(scope="module")
def sax():
    return make_phantom("sax")


@pytest.fixture(scope="module")
def lax_4c():
    return make_phantom("lax_4c")


@pytest.fixture(scope="module")
def lax_2c():
    return make_phantom("lax_2c")


# -- volumes -----------------------------------------------------------------------------------


def test_sax_voxel_volumes_match_truth_in_every_frame(sax):
    study, truth = sax
    vox = voxel_volumes(study)
    for name in STRUCTURES:
        true = np.asarray(truth["volumes"][name])
        err = np.abs(vox[name] / true - 1.0)
        assert err.max() < 0.01, f"{name}: worst frame {int(err.argmax())} off by {100 * err.max():.2f} %"
        for frame in (truth["ED_frame"], truth["ES_frame"]):
            assert err[frame] < 0.01


def test_truth_ef_frames_and_derived_values(sax):
    study, truth = sax
    cfg = PhantomConfig()
    lv = np.asarray(truth["volumes"]["LV"])
    assert truth["LVEF_pct"] == pytest.approx(cfg.lvef, abs=0.1)
    assert truth["RVEF_pct"] == pytest.approx(cfg.rvef, abs=0.1)
    assert truth["LVEDV_ml"] == pytest.approx(cfg.edv_ml, abs=1e-3)
    assert truth["ED_frame"] == int(np.argmax(lv)) == 0
    assert truth["ES_frame"] == int(np.argmin(lv))
    assert np.sum(lv == lv.max()) == 1 and np.sum(lv == lv.min()) == 1  # unambiguous ED and ES
    es_time = truth["frame_times_ms"][truth["ES_frame"]]
    assert 0.3 <= es_time / truth["rr_ms"] <= 0.4
    assert (study.ed_frame, study.es_frame) == (truth["ED_frame"], truth["ES_frame"])
    assert truth["LVSV_ml"] == pytest.approx(truth["LVEDV_ml"] - truth["LVESV_ml"], abs=1e-3)
    assert truth["LVM_g"] == pytest.approx(truth["volumes"]["MYO"][0] * 1.05, abs=1e-3)
    # the voxel counts give the same clinical numbers
    vox = voxel_volumes(study)["LV"]
    ef_vox = 100 * (vox[0] - vox[truth["ES_frame"]]) / vox[0]
    assert ef_vox == pytest.approx(truth["LVEF_pct"], abs=1.0)


def test_truth_does_not_depend_on_rendering():
    base = phantom_truth("sax")
    other = phantom_truth("sax", pixel_mm=1.2, matrix=160, supersample=2, slice_spacing_mm=8.0, slices=13)
    for name in STRUCTURES:
        assert other["volumes"][name] == base["volumes"][name]
    assert other["MAPSE_mm"] == base["MAPSE_mm"]


def test_closed_form_volumes_agree_with_quadrature():
    """The LV and epicardial volumes are closed form; check them against the line quadrature."""
    truth = phantom_truth("sax")
    from napari_cinema.sample_data.phantom import _model

    m = _model(PhantomConfig())
    for t in (truth["ED_frame"], truth["ES_frame"]):
        fr = m.frames[t]
        for e in (fr.endo, fr.epi):
            exact = e.volume_below(fr.plane)
            numeric = geo.overlap_volume(e, e, fr.plane, 0.1)
            assert numeric == pytest.approx(exact, rel=2e-4)


def test_myocardial_volume_is_conserved(sax):
    study, truth = sax
    myo = np.asarray(truth["volumes"]["MYO"])
    assert np.ptp(myo) / myo.mean() < 1e-6  # incompressible by construction
    vox = voxel_volumes(study)["MYO"]
    assert np.ptp(vox) / vox.mean() < 0.02


def test_volume_curve_has_diastasis_and_atrial_kick(sax):
    study, truth = sax
    es = truth["ES_frame"]
    for lv in (np.asarray(truth["volumes"]["LV"]), voxel_volumes(study)["LV"]):
        filling = np.diff(np.append(lv[es:], lv[0]))  # ml per frame from ES back to the next ED
        sv = lv[0] - lv[es]
        e_peak = int(np.argmax(filling))
        slowest = e_peak + int(np.argmin(filling[e_peak:]))
        a_peak = slowest + int(np.argmax(filling[slowest:]))
        assert e_peak < slowest < a_peak  # early filling, then diastasis, then the atrial kick
        assert filling[slowest] < 0.25 * filling[e_peak]
        assert filling[a_peak] > 2 * max(filling[slowest], 0.01 * sv)
        assert filling[slowest:].sum() > 0.2 * sv  # late filling matters
        assert filling[-1] > 0  # still rising into end-diastole
    rates = (truth["PER_ml_s"], truth["PFR_early_ml_s"], truth["PFR_late_ml_s"])
    assert all(r > 0 for r in rates) and truth["PFR_early_ml_s"] > truth["PFR_late_ml_s"]


def test_peak_rates_match_the_curve():
    truth = phantom_truth("sax")
    cfg = PhantomConfig()
    cyc = geo.CardiacCycle(truth["ES_frame"] / cfg.frames, cfg.rr_ms)
    phi = np.linspace(0, 1, 200_001)
    sv = truth["LVSV_ml"]
    dv_dt = -sv * np.gradient(cyc.y(phi), phi) / (cfg.rr_ms / 1000.0)  # ml/s
    assert -dv_dt.min() == pytest.approx(truth["PER_ml_s"], rel=1e-3)
    early = (phi > cyc.phase("rapid filling").start) & (phi < cyc.phase("rapid filling").end)
    late = phi > cyc.phase("atrial contraction").start
    assert dv_dt[early].max() == pytest.approx(truth["PFR_early_ml_s"], rel=1e-3)
    assert dv_dt[late].max() == pytest.approx(truth["PFR_late_ml_s"], rel=1e-3)
    # the analytic rate agrees with the differentiated curve
    np.testing.assert_allclose(-sv * cyc.y_rate(phi[1:-1]) / (cfg.rr_ms / 1000.0), dv_dt[1:-1], atol=0.5)


def test_stack_covers_the_heart_with_an_empty_slice_beyond_the_apex(sax):
    study, truth = sax
    assert truth["geometry"]["coverage_complete"]
    assert study.labels[:, 0].max() == 0  # slice 0 lies beyond the apex
    lv_area = (study.labels[truth["ED_frame"]] == LV).sum(axis=(1, 2))
    assert lv_area[-1] < 0.5 * lv_area.max()  # the last slice is at/above the base


def test_lvef_override():
    study, truth = make_phantom("sax", lvef=35)
    assert truth["LVEF_pct"] == pytest.approx(35.0, abs=0.1)
    assert truth["config"]["lvef"] == 35
    lv = voxel_volumes(study)["LV"]
    ef = 100 * (lv[truth["ED_frame"]] - lv[truth["ES_frame"]]) / lv[truth["ED_frame"]]
    assert ef == pytest.approx(35.0, abs=1.0)
    assert truth["MAPSE_mm"] < phantom_truth("sax")["MAPSE_mm"]  # a weaker heart shortens less


# -- long-axis views and landmarks ------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["lax_4c", "lax_2c"])
def test_landmarks_lie_on_the_myocardium_boundary(fixture, request):
    study, truth = request.getfixturevalue(fixture)
    assert study.shape[1] == 1
    for name in ("mv_1", "mv_2", "apex"):
        pts = np.asarray(truth["landmarks"][name])
        assert pts.shape == (study.n_frames, 3)
        for t, (z, y, x) in enumerate(pts):
            assert z == pytest.approx(0.0, abs=1e-9)
            iy, ix = int(round(y)), int(round(x))
            win = study.labels[t, 0, max(iy - 1, 0): iy + 2, max(ix - 1, 0): ix + 2]
            assert (win == MYO).any() and (win != MYO).any(), f"{name} frame {t} at {(y, x)}"


@pytest.mark.parametrize("fixture", ["lax_4c", "lax_2c"])
def test_landmark_voxel_and_ras_coordinates_agree(fixture, request):
    study, truth = request.getfixturevalue(fixture)
    for name in ("mv_1", "mv_2", "apex"):
        vox = np.asarray(truth["landmarks"][name])
        ras = np.asarray(truth["landmarks_ras"][name])
        np.testing.assert_allclose(study.world_coordinates(vox), ras, atol=1e-6)


def test_landmark_orientation_as_displayed(lax_4c, lax_2c):
    """mv_1 -> mv_2 -> apex: clockwise in 2C, counter-clockwise in 4C (rows down, columns right)."""

    def turn(truth, t):
        (_, y1, x1), (_, y2, x2), (_, y3, x3) = (truth["landmarks"][n][t] for n in ("mv_1", "mv_2", "apex"))
        return (x2 - x1) * (y3 - y1) - (y2 - y1) * (x3 - x1)  # > 0: clockwise on screen

    for t in range(lax_2c[1]["frames"]):
        assert turn(lax_2c[1], t) > 0
        assert turn(lax_4c[1], t) < 0
    # the apex is displayed above the valve (smaller row)
    for _, truth in (lax_4c, lax_2c):
        rows = {n: truth["landmarks"][n][0][1] for n in ("mv_1", "mv_2", "apex")}
        assert rows["apex"] < min(rows["mv_1"], rows["mv_2"])


def test_rv_shows_in_4c_and_not_in_2c(lax_4c, lax_2c):
    assert (lax_4c[0].labels == RV).any(axis=(1, 2, 3)).all()
    assert not (lax_2c[0].labels == RV).any()
    for study, _ in (lax_4c, lax_2c):
        assert (study.labels == LV).any(axis=(1, 2, 3)).all()
        assert (study.labels == MYO).any(axis=(1, 2, 3)).all()


@pytest.mark.parametrize("fixture", ["lax_4c", "lax_2c"])
def test_mapse_from_landmarks(fixture, request):
    study, truth = request.getfixturevalue(fixture)
    ed, es = truth["ED_frame"], truth["ES_frame"]
    ras = {k: np.asarray(v) for k, v in truth["landmarks_ras"].items()}
    mid = (ras["mv_1"] + ras["mv_2"]) / 2
    travel = float(np.linalg.norm(mid[ed] - mid[es]))
    assert travel == pytest.approx(truth["MAPSE_mm"], abs=1.0)
    assert 8.0 <= truth["MAPSE_mm"] <= 16.0
    # the apex stays put; the base descends onto it
    assert np.ptp(ras["apex"], axis=0).max() < 1e-9
    assert np.linalg.norm(mid[es] - ras["apex"][es]) < np.linalg.norm(mid[ed] - ras["apex"][ed])


def test_views_share_one_heart(sax, lax_4c, lax_2c):
    """The three views are cut from one model: same truth volumes and the same apex in space."""
    for _, truth in (lax_4c, lax_2c):
        assert truth["volumes"] == sax[1]["volumes"]
        assert truth["geometry"]["apex_ras"] == sax[1]["geometry"]["apex_ras"]
    # the long axis lies in both LAX planes and is perpendicular to the SAX planes
    axis = np.asarray(sax[1]["geometry"]["long_axis_ras"])
    sax_normal = sax[0].affine[:3, 2] / np.linalg.norm(sax[0].affine[:3, 2])
    assert abs(float(axis @ sax_normal)) == pytest.approx(1.0, abs=1e-5)  # truth rounds to 1e-6
    for study, _ in (lax_4c, lax_2c):
        normal = study.affine[:3, 2] / np.linalg.norm(study.affine[:3, 2])
        assert abs(float(axis @ normal)) < 1e-5
    # oblique to the scanner axes, like a real heart
    assert np.abs(axis).max() < 0.9


# -- determinism, files ------------------------------------------------------------------------


def test_deterministic_with_a_seed():
    a, ta = make_phantom("lax_2c", frames=5, seed=7)
    b, tb = make_phantom("lax_2c", frames=5, seed=7)
    c, _ = make_phantom("lax_2c", frames=5, seed=8)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert ta == tb
    assert not np.array_equal(a.image, c.image)
    np.testing.assert_array_equal(a.labels, c.labels)  # the seed moves the noise only


def test_truth_is_json_ready():
    truth = phantom_truth("lax_4c")
    text = json.dumps(truth, allow_nan=False)
    back = json.loads(text)
    for key in ("view", "frames", "rr_ms", "frame_times_ms", "ED_frame", "ES_frame", "LVEDV_ml", "LVESV_ml",
                "LVSV_ml", "LVEF_pct", "RVEDV_ml", "RVESV_ml", "RVSV_ml", "RVEF_pct", "LVM_g", "volumes",
                "landmarks", "landmarks_ras", "MAPSE_mm", "PER_ml_s", "PFR_early_ml_s", "PFR_late_ml_s",
                "config", "version"):
        assert key in back, key
    assert set(back["volumes"]) == {"LV", "RV", "MYO"}
    assert "landmarks" not in phantom_truth("sax")


def test_nifti_written_and_read_back(tmp_path):
    overrides = dict(frames=4, seed=3, slices=4, matrix=48)
    path = write_phantom(tmp_path, view="sax", fmt="nifti", **overrides)
    study, truth = make_phantom("sax", **overrides)
    assert path == tmp_path / "phantom_sax.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    assert data.shape == tuple(reversed(study.shape[1:])) + (study.n_frames,)  # (x, y, z, t)
    np.testing.assert_array_equal(np.transpose(data, (3, 2, 1, 0)), study.image)
    np.testing.assert_allclose(img.affine, study.affine, atol=1e-5)
    assert img.header.get_xyzt_units() == ("mm", "msec")
    assert float(img.header["pixdim"][4]) == pytest.approx(study.spacing[0])
    gt = nib.load(tmp_path / "phantom_sax_gt.nii.gz")
    np.testing.assert_array_equal(np.transpose(np.asarray(gt.dataobj), (3, 2, 1, 0)), study.labels)
    saved = json.loads((tmp_path / "truth.json").read_text())
    assert saved["volumes"] == truth["volumes"] and saved["LVEF_pct"] == truth["LVEF_pct"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left

    from napari_cinema.io.load import load_study

    loaded = load_study(path)
    assert loaded.view == "sax"
    np.testing.assert_array_equal(loaded.labels, study.labels)


def test_dicom_round_trip(tmp_path):
    dicom = pytest.importorskip("napari_cinema.io.dicom", reason="DICOM I/O not available yet")
    if not all(hasattr(dicom, n) for n in ("write_dicom_cine", "read_dicom_cine")):
        pytest.skip("napari_cinema.io.dicom lacks write_dicom_cine/read_dicom_cine")
    overrides = dict(frames=4, seed=1, slices=4, matrix=48)
    path = write_phantom(tmp_path, view="sax", fmt="dicom", **overrides)
    assert path == tmp_path / "dicom" and path.is_dir()
    study, truth = make_phantom("sax", **overrides)
    back = dicom.read_dicom_cine(path)
    assert back.shape == study.shape
    assert back.view == "sax"
    span = float(study.image.max() - study.image.min())
    assert np.abs(back.image - study.image).max() <= 1e-3 * span
    np.testing.assert_allclose(back.affine, study.affine, atol=1e-3)
    np.testing.assert_allclose(back.spacing[1:], study.spacing[1:], rtol=1e-6)
    assert back.spacing[0] == pytest.approx(study.spacing[0], rel=1e-3)
    assert (tmp_path / "phantom_sax_gt.nii.gz").is_file() and (tmp_path / "truth.json").is_file()


def test_config_validation():
    with pytest.raises(ValueError):
        PhantomConfig(lvef=120)
    with pytest.raises(TypeError):
        make_phantom("sax", not_a_setting=1)
    with pytest.raises(ValueError):
        make_phantom("lax_3c")


def test_napari_samples():
    from napari_cinema.sample_data.napari_samples import lax_2c_sample

    layers = lax_2c_sample()
    assert [kind for _, _, kind in layers] == ["image", "labels", "points"]
    (img, meta, _), (lab, lmeta, _), (pts, pmeta, _) = layers
    study = meta["metadata"]["cinema_study"]
    assert study.labels is None and meta["metadata"]["truth"]["view"] == "lax_2c"
    assert meta["colormap"] == "gray" and meta["axis_labels"] == ("t", "z", "y", "x")
    assert meta["scale"] == study.napari_scale() and lmeta["scale"] == study.napari_scale()
    assert lmeta["name"] == "lax_2c truth labels" and lab.shape == img.shape
    assert pmeta["name"] == "landmarks truth" and pts.shape == (3 * img.shape[0], 4)
    assert pmeta["features"]["name"][:3] == ["mv_1", "mv_2", "apex"]
    assert math.isclose(pts[0, 2], meta["metadata"]["truth"]["landmarks"]["mv_1"][0][1])
