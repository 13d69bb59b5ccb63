"""NIfTI loading: plain files, 4-D cines, the ACDC and M&Ms layouts, and bad input."""

from __future__ import annotations

import csv
import gzip

import nibabel as nib
import numpy as np
import pytest

from napari_cinema.io import CineLoadError, load_study
from napari_cinema.io.labels import LV, MYO, RV
from napari_cinema.io.nifti import read_nifti, view_from_name
from napari_cinema.io.writers import write_labels_nifti


def _save(path, data, affine=None, zooms=None, units=("mm", "msec")):
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    img.header.set_xyzt_units(*units)
    if zooms is not None:
        img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path


def test_4d_cine_axes_spacing_and_timing(tmp_path):
    x, y, z, t = 20, 16, 6, 12
    data = np.random.default_rng(0).random((x, y, z, t)).astype(np.float32)
    affine = np.diag([1.25, 1.5, 8.0, 1.0])
    affine[:3, 3] = [-10, 20, 30]
    p = _save(tmp_path / "cine_sax.nii.gz", data, affine, zooms=(1.25, 1.5, 8.0, 40.0))
    study = load_study(p)
    assert study.image.shape == (t, z, y, x)
    np.testing.assert_array_equal(study.image[3, 2, 5, 7], data[7, 5, 2, 3])
    assert study.spacing == (40.0, 8.0, 1.5, 1.25)
    assert study.view == "sax"
    np.testing.assert_allclose(study.affine, affine)
    # voxel (z, y, x) = (2, 5, 7) lands where the NIfTI affine puts (7, 5, 2)
    np.testing.assert_allclose(study.world_coordinates(np.array([2, 5, 7])), (affine @ [7, 5, 2, 1])[:3])


def test_frame_interval_in_seconds_and_implausible_timing(tmp_path):
    data = np.zeros((8, 8, 1, 5), np.float32)
    assert read_nifti(_save(tmp_path / "a.nii.gz", data, zooms=(1, 1, 1, 0.03), units=("mm", "sec"))).spacing[0] == pytest.approx(30.0)
    # M&Ms-2 style: 1.0 with unknown units is no timing at all
    assert read_nifti(_save(tmp_path / "b.nii.gz", data, zooms=(1, 1, 1, 1.0), units=("unknown", "unknown"))).spacing[0] is None


def test_single_frame_3d_and_2d(tmp_path):
    s3 = read_nifti(_save(tmp_path / "one.nii.gz", np.ones((10, 12, 4), np.int16)))
    assert s3.image.shape == (1, 4, 12, 10) and s3.image.dtype == np.float32
    s2 = read_nifti(_save(tmp_path / "two_4ch.nii.gz", np.ones((10, 12), np.float32)))
    assert s2.image.shape == (1, 1, 12, 10) and s2.view == "lax_4c"


@pytest.mark.parametrize("name, view", [
    ("patient001_sa_ED.nii.gz", "sax"), ("001_LA_CINE.nii.gz", "lax_4c"), ("x_2ch.nii", "lax_2c"),
    ("study_lax_3c.nii.gz", "lax_3c"), ("brain.nii.gz", "unknown"), ("lsax.nii", "unknown"),
])
def test_view_from_name(name, view):
    assert view_from_name(name) == view


def test_nan_voxels_are_a_clear_error(tmp_path):
    data = np.ones((8, 8, 2), np.float32)
    data[1, 1, 1] = np.nan
    p = _save(tmp_path / "nan.nii.gz", data)
    with pytest.raises(CineLoadError, match=r"nan\.nii\.gz: 1 voxels are NaN"):
        load_study(p)


def test_not_an_image_and_truncated_files(tmp_path):
    txt = tmp_path / "notes.nii.gz"
    txt.write_text("hello")
    with pytest.raises(CineLoadError, match="notes.nii.gz: not a readable NIfTI"):
        load_study(txt)
    good = _save(tmp_path / "cut.nii.gz", np.random.default_rng(1).random((32, 32, 8, 4)).astype(np.float32))
    raw = gzip.decompress(good.read_bytes())
    good.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(CineLoadError, match="cut.nii.gz: not a readable NIfTI"):
        load_study(good)
    with pytest.raises(CineLoadError, match="no such file"):
        load_study(tmp_path / "missing.nii.gz")
    other = tmp_path / "photo.png"
    other.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(CineLoadError, match="photo.png: neither a NIfTI"):
        load_study(other)


def test_sibling_gt_labels_and_labels_writer_round_trip(tmp_path):
    img = np.random.default_rng(2).random((12, 10, 3, 4)).astype(np.float32)
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    _save(tmp_path / "case.nii.gz", img, affine, zooms=(1.5, 1.5, 10.0, 30.0))
    labels_tzyx = np.random.default_rng(3).integers(0, 4, (4, 3, 10, 12)).astype(np.uint8)
    write_labels_nifti(tmp_path / "case_gt.nii.gz", labels_tzyx, affine, 30.0)
    study = load_study(tmp_path / "case.nii.gz")
    np.testing.assert_array_equal(study.labels, labels_tzyx)
    back = nib.load(str(tmp_path / "case_gt.nii.gz"))
    np.testing.assert_allclose(back.affine, affine)
    assert back.header.get_zooms()[3] == pytest.approx(30.0)
    # no temporary files are left behind by the atomic write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz", "case_gt.nii.gz"]
    with pytest.raises(ValueError, match=r"label values \[7\]"):
        write_labels_nifti(tmp_path / "bad.nii.gz", np.full((1, 2, 2, 2), 7), affine)
    assert not (tmp_path / "bad.nii.gz").exists()


def test_acdc_patient_folder(shared_data):
    folder = shared_data / "acdc" / "patient023"
    study = load_study(folder)
    assert study.view == "sax" and study.n_frames == 2
    assert (study.ed_frame, study.es_frame) == (0, 1)
    assert study.frame_numbers == (0, 8)  # Info.cfg: ED 1, ES 9 (1-based)
    assert study.patient.group == "HCM"
    assert study.patient.height_cm == 166.0 and study.patient.weight_kg == 74.0
    assert study.spacing[1:] == pytest.approx((10.0, 1.4453125, 1.4453125))
    assert set(np.unique(study.labels)) == {0, RV, MYO, LV}
    # opening one of its frame files opens the patient
    assert load_study(folder / "patient023_frame01.nii.gz").n_frames == 2


def test_acdc_labels_give_reference_volumes(shared_data):
    """ACDC's 1=RV, 3=LV survive loading: voxel-count LV/RV EDV equal the shared reference table."""
    rows = {r["patient"]: r for r in csv.DictReader(open(shared_data / "acdc" / "reference_volumes.csv"))}
    for pid in ("patient023", "patient001") if (shared_data / "acdc" / "patient001").exists() else ("patient023",):
        study = load_study(shared_data / "acdc" / pid)
        ed = study.labels[study.ed_frame]
        assert np.sum(ed == LV) * study.voxel_volume_ml == pytest.approx(float(rows[pid]["LVEDV_ml"]), rel=0.005)
        assert np.sum(ed == RV) * study.voxel_volume_ml == pytest.approx(float(rows[pid]["RVEDV_ml"]), rel=0.005)


def test_mnms_files_are_remapped(shared_data):
    p = shared_data / "mnms" / "G1K1V3_sa_ED.nii.gz"
    study = load_study(p)
    raw = np.asarray(nib.load(str(shared_data / "mnms" / "G1K1V3_sa_ED_gt.nii.gz")).dataobj)
    raw_tzyx = np.transpose(raw, (2, 1, 0))
    assert study.n_frames == 2 and study.view == "sax"
    # M&Ms 1 = LV becomes internal 3 = LV; 3 = RV becomes 1
    np.testing.assert_array_equal(study.labels[0] == LV, raw_tzyx == 1)
    np.testing.assert_array_equal(study.labels[0] == RV, raw_tzyx == 3)
    np.testing.assert_array_equal(study.labels[0] == MYO, raw_tzyx == 2)


def test_mnms2_lax_cine_places_labels_on_ed_and_es(shared_data):
    study = load_study(shared_data / "mnms2" / "001")
    assert study.view == "lax_4c" and study.n_frames == 25 and study.n_slices == 1
    assert (study.ed_frame, study.es_frame) == (23, 8)  # as the data README states
    assert study.spacing[0] is None  # no usable time unit in that header
    assert sorted(study.labelled_frames) == [8, 23]
    assert np.sum(study.labels[23] == LV) > np.sum(study.labels[8] == LV) > 0
