"""The npe2 plugin in a real napari viewer: reader contract, layers' geometry, writer, sample data."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_cinema._reader import get_reader
from napari_cinema.io import load_study


def _nifti(path, shape=(24, 20, 5, 6), zooms=(1.5, 1.25, 8.0, 35.0)):
    img = nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), np.diag([*zooms[:3], 1.0]))
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path


def test_reader_probe_returns_none_and_never_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    for probe in (str(tmp_path / "notes.txt"), str(tmp_path / "empty"), str(tmp_path / "missing.nii"),
                  [str(tmp_path / "a.nii"), str(tmp_path / "b.nii")], "", "\x00bad"):
        assert get_reader(probe) is None
    assert get_reader(str(_nifti(tmp_path / "cine.nii.gz"))) is not None


def test_npe2_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-cinema")
    assert manifest.name == "napari-cinema"
    assert {r.command for r in manifest.contributions.readers} == {"napari-cinema.get_reader"}
    assert len(manifest.contributions.sample_data) == 3


def _assert_geometry(layer, study):
    np.testing.assert_allclose(layer.scale, study.napari_scale())
    assert tuple(layer.axis_labels) == ("t", "z", "y", "x")
    units = [str(u) for u in layer.units]
    assert units[1:] == ["millimeter"] * 3
    # unknown timing: frames are counted, not timed
    assert units[0] == ("millisecond" if study.spacing[0] else "dimensionless")


def test_open_nifti_cine_in_viewer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    path = _nifti(tmp_path / "cine_sax.nii.gz")
    layers = viewer.open(str(path), plugin="napari-cinema")
    study = load_study(path)
    assert len(layers) == 1 and layers[0].data.shape == (6, 5, 20, 24)
    _assert_geometry(layers[0], study)
    assert layers[0].metadata["cinema_study"].view == "sax"


def test_open_acdc_with_labels_and_save_labels(make_napari_viewer, shared_data, tmp_path):
    viewer = make_napari_viewer()
    folder = shared_data / "acdc" / "patient023"
    layers = viewer.open(str(folder), plugin="napari-cinema")
    image, labels = layers
    study = load_study(folder)
    _assert_geometry(image, study)
    _assert_geometry(labels, study)
    assert labels.__class__.__name__ == "Labels"
    np.testing.assert_array_equal(labels.data, study.labels)
    # the labels writer keeps the study's affine and the internal label values
    out = tmp_path / "saved.nii.gz"
    viewer.layers.selection = {labels}
    viewer.layers.save(str(out), selected=True, plugin="napari-cinema")
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, study.affine)
    np.testing.assert_array_equal(np.transpose(np.asarray(back.dataobj), (3, 2, 1, 0)), study.labels)


def test_open_error_names_the_file(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(Exception, match="broken.nii.gz"):
        viewer.open(str(bad), plugin="napari-cinema")


def test_open_dicom_cine_in_viewer(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    folder = shared_data / "sunnybrook" / "SCD0000101" / "dicom"
    (layer,) = viewer.open(str(folder), plugin="napari-cinema")
    study = layer.metadata["cinema_study"]
    assert layer.data.shape == (20, 12, 256, 256)
    _assert_geometry(layer, study)
    assert layer.scale[1] == pytest.approx(10.0) and layer.scale[2] == pytest.approx(1.3672, abs=1e-3)
    assert 30 < layer.scale[0] < 45  # ms per frame from TriggerTime


def test_open_scout_folder_explains_what_it_holds(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="localiser"):
        viewer.open(str(shared_data / "scout" / "SCD0000101"), plugin="napari-cinema")


@pytest.mark.parametrize("key, view", [("phantom_sax", "sax"), ("phantom_lax_4c", "lax_4c"), ("phantom_lax_2c", "lax_2c")])
def test_samples_open_in_viewer(make_napari_viewer, key, view):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cinema", key)
    image = viewer.layers[0]
    study = image.metadata["cinema_study"]
    assert study.view == view
    _assert_geometry(image, study)
    kinds = [layer.__class__.__name__ for layer in viewer.layers]
    assert kinds[:2] == ["Image", "Labels"]
    for layer in viewer.layers:
        _assert_geometry(layer, study)
    truth = image.metadata["truth"]
    labels = viewer.layers[1].data
    lv_ml = np.sum(labels[truth["ED_frame"]] == 3) * study.voxel_volume_ml
    assert lv_ml == pytest.approx(truth["LVEDV_ml"], rel=0.01) if view == "sax" else lv_ml > 0
    if view != "sax":
        points = viewer.layers[2]
        assert kinds[2] == "Points" and len(points.data) == 3 * study.n_frames
        assert set(points.features["name"]) == {"mv_1", "mv_2", "apex"}
