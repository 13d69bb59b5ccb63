"""Reports (report.json, volumes.csv, report.pdf) and label exports (NIfTI + sidecar, DICOM SEG)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_cinema.analysis import analyze_study, write_report
from napari_cinema.analysis.export import export_labels_nifti, read_dicom_seg, sidecar_path, write_dicom_seg
from napari_cinema.analysis.report import CORE_FIELDS, INDEXED_FIELDS
from napari_cinema.io.labels import LV, MYO, RV
from napari_cinema.io.nifti import read_label_nifti

from test_analysis import make_heart  # the closed-form synthetic heart


@pytest.fixture(scope="module")
def report():
    study = make_heart(frames=12, slices=8)
    return analyze_study(study, model_info={"id": "test-model", "sha256": "abc"},
                         probabilities={"NOR": 0.7, "DCM": 0.2, "HCM": 0.1}, ef_regression=58.2)


def test_report_json_has_the_design_fields(report, tmp_path):
    paths = write_report(report, tmp_path, pdf=False)
    d = json.loads(paths["report.json"].read_text())
    for key in CORE_FIELDS + INDEXED_FIELDS + ("HR_bpm", "CO_l_min", "volumes", "model", "warnings", "null_reasons"):
        assert key in d, key
    assert d["model"]["id"] == "test-model"
    assert d["probabilities"]["NOR"] == pytest.approx(0.7) and d["ef_regression"]["LVEF_pct"] == 58.2
    assert len(d["volumes"]["LV_ml"]) == 12 and d["volumes"]["time_ms"][1] == pytest.approx(50.0)
    assert d["flags"]["LVEF_pct"]["citation"]
    json.dumps(d, allow_nan=False)
    rows = list(csv.DictReader(paths["volumes.csv"].open()))
    assert [r["frame"] for r in rows] == [str(i) for i in range(12)]
    assert float(rows[0]["LV_ml"]) == pytest.approx(d["volumes"]["LV_ml"][0], abs=1e-3)
    assert list(rows[0]) == ["frame", "time_ms", "LV_ml", "RV_ml", "MYO_ml"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_unlabelled_frames_are_empty_in_csv_and_null_in_json(tmp_path):
    study = make_heart(frames=10)
    labels = study.labels.copy()
    labels[2:9] = 0  # only frames 0, 1 and 9 labelled
    rep = analyze_study(study, labels)
    paths = write_report(rep, tmp_path, pdf=False)
    d = json.loads(paths["report.json"].read_text())
    assert d["volumes"]["LV_ml"][3] is None
    rows = list(csv.DictReader(paths["volumes.csv"].open()))
    assert rows[3]["LV_ml"] == "" and rows[0]["LV_ml"] != ""
    assert d["PER_ml_s"] is None and "not every frame" in d["null_reasons"]["PER_ml_s"]
    assert any("labels on 3 of 10 frames" in w for w in d["warnings"])


def test_long_axis_cine_without_timing_reports_areas_and_mapse(tmp_path):
    """A 4-chamber cine with no time unit (as the real M&Ms-2 one): volumes.csv has areas and empty times."""
    from dataclasses import replace

    from napari_cinema.sample_data import phantom

    study, truth = phantom.make_phantom("lax_4c", frames=8)
    study = replace(study, spacing=(None, *study.spacing[1:]), frame_times_ms=None)
    rep = analyze_study(study)
    paths = write_report(rep, tmp_path, pdf=True)
    rows = list(csv.DictReader(paths["volumes.csv"].open()))
    assert len(rows) == 8 and rows[0]["time_ms"] == "" and rows[0]["LV_ml"] == ""
    assert float(rows[truth["ED_frame"]]["LV_area_mm2"]) > float(rows[truth["ES_frame"]]["LV_area_mm2"]) > 0
    d = json.loads(paths["report.json"].read_text())
    assert d["MAPSE_mm"] == pytest.approx(truth["MAPSE_mm"], abs=1.0)


def test_pdf_and_png_pages(report, tmp_path):
    paths = write_report(report, tmp_path, pdf=True, png_dir=tmp_path / "png")
    pdf = paths["report.pdf"].read_bytes()
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") >= 1
    pngs = sorted((tmp_path / "png").glob("report_page*.png"))
    # summary, volume curves + rates, bull's-eye, probabilities
    assert len(pngs) == 4
    import matplotlib.image as mpimg

    img = mpimg.imread(pngs[0])
    assert img.shape[0] > 800 and img[..., :3].std() > 0.05  # a real, non-blank page


def test_export_labels_nifti_with_sidecar(tmp_path):
    study = make_heart(frames=3, slices=5)
    nii, side = export_labels_nifti(tmp_path / "labels.nii.gz", study.labels, study,
                                    model_info={"id": "m1", "sha256": "00ff"})
    assert side == sidecar_path(nii) == tmp_path / "labels.json"
    back = read_label_nifti(nii, "cinema", like=study)
    np.testing.assert_array_equal(back, study.labels)
    meta = json.loads(side.read_text())
    assert meta["label_names"] == {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}
    assert meta["provenance"]["model"]["id"] == "m1" and meta["convention"] == "cinema"
    assert meta["labelled_frames"] == [0, 1, 2] and meta["shape_xyzt"] == [72, 72, 5, 3]
    # M&Ms convention on save: values remapped, names follow the file's values
    nii2, side2 = export_labels_nifti(tmp_path / "mnms.nii.gz", study.labels, study, convention="mnms")
    assert json.loads(side2.read_text())["label_names"]["1"] == "LV"
    np.testing.assert_array_equal(read_label_nifti(nii2, "mnms", like=study), study.labels)


def _synthetic_labels(shape, frames, slices):
    lab = np.zeros(shape, np.uint8)
    rows, cols = shape[2:]
    yy, xx = np.mgrid[0:rows, 0:cols]
    for t in frames:
        for z in slices:
            cy, cx = rows * 0.47 + z, cols * 0.5 + t
            r = np.hypot(yy - cy, xx - cx)
            lab[t, z][(np.hypot(yy - cy, xx - cx + 34) < 18) & (r >= 28)] = RV
            lab[t, z][(r >= 19) & (r < 27)] = MYO
            lab[t, z][r < 19] = LV
    return lab


def _check_seg_roundtrip(study, labels, frames, out):
    import highdicom as hd

    files = write_dicom_seg(study, labels, out, model_info={"id": "test-model"})
    assert len(files) == len(frames)  # one SEG instance per cine frame, one SEG series
    segs = [hd.seg.segread(str(f)) for f in files]
    assert len({s.SeriesInstanceUID for s in segs}) == 1
    for seg, t in zip(segs, frames):
        assert [d.SegmentLabel for d in seg.SegmentSequence] == ["RV", "MYO", "LV"]
        assert seg.StudyInstanceUID == study.dicom.study_instance_uid
        uids = [study.dicom.sop_instance_uids[t][z] for z in range(study.n_slices)]
        arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                relabel=False)
        np.testing.assert_array_equal(arr, labels[t])
    back = read_dicom_seg(out, study)
    np.testing.assert_array_equal(back, labels)
    return files


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent")
def test_dicom_seg_roundtrip_on_a_written_cine(tmp_path):
    dicom = pytest.importorskip("napari_cinema.io.dicom", reason="DICOM reader/writer not installed yet")
    small = make_heart(frames=4, slices=4, n=48)
    dicom.write_dicom_cine(small, tmp_path / "cine")
    study = dicom.read_dicom_cine(tmp_path / "cine")
    assert study.dicom is not None
    assert study.shape == small.shape
    labels = np.zeros(study.shape, np.uint8)
    labels[[0, 2]] = small.labels[[0, 2]]  # labels on two frames of the read-back grid
    _check_seg_roundtrip(study, labels, [0, 2], tmp_path / "seg")


def test_dicom_seg_roundtrip_sunnybrook(shared_data, tmp_path):
    dicom = pytest.importorskip("napari_cinema.io.dicom", reason="DICOM reader not installed yet")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Sunnybrook's UIDs have leading zeros; pydicom warns on each
        study = dicom.read_dicom_cine(shared_data / "sunnybrook" / "SCD0000101" / "dicom")
        labels = _synthetic_labels(study.shape, [0, 7], range(3, 9))
        files = _check_seg_roundtrip(study, labels, [0, 7], tmp_path / "seg")
    assert [f.name for f in files] == ["SEG_t000.dcm", "SEG_t007.dcm"]


def test_dicom_seg_needs_dicom_references(tmp_path):
    study = make_heart(frames=2, slices=3)
    with pytest.raises(ValueError, match="not read from DICOM"):
        write_dicom_seg(study, study.labels, tmp_path / "x")
