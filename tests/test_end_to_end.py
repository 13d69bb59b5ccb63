"""The command line end to end with a real (small, untrained) CineMA-family network from the registry:
segment and analyze a phantom study by model id. Checks plumbing and provenance, not accuracy."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_cinema.cli import main
from napari_cinema.io import load_study
from napari_cinema.model.checkpoint import save_checkpoint, sha256_file
from napari_cinema.model.factory import build_model
from napari_cinema.model.registry import register_model

TINY_SAX_2D = {
    "task": "segmentation",
    "data": {"sax": {"patch_size": [64, 64], "spacing": [3.0, 3.0], "in_chans": 1}},
    "model": {
        "name": "convunetr",
        "views": "sax",
        "out_chans": 4,
        "convunetr": {"size": "tiny", "enc_conv_chans": [8, 16], "enc_conv_n_blocks": 1,
                      "dec_chans": [8, 8, 16, 16, 16], "dec_n_blocks": 1},
    },
}


@pytest.fixture()
def registered_model(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_CINEMA_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    weights = save_checkpoint(build_model(TINY_SAX_2D), tmp_path / "run" / "model.safetensors",
                              config=TINY_SAX_2D)
    register_model(tmp_path / "run", "test-tiny-sax")
    return "test-tiny-sax", sha256_file(weights)


@pytest.fixture(scope="module")
def phantom_path(tmp_path_factory):
    from napari_cinema.sample_data.phantom import write_phantom

    return write_phantom(tmp_path_factory.mktemp("ph"), view="sax", frames=6, slices=6, matrix=64, supersample=1)


def test_models_list_shows_the_registered_model(registered_model, capsys):
    model_id, _ = registered_model
    assert main(["models", "list", "--json"]) == 0
    ids = [m["id"] for m in json.loads(capsys.readouterr().out)]
    assert model_id in ids


def test_segment_by_model_id_writes_labels_on_the_study_grid(registered_model, phantom_path, tmp_path):
    model_id, _ = registered_model
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(phantom_path), "--out", str(out), "--model", model_id, "--device", "cpu"]) == 0
    study = load_study(phantom_path)
    img = nib.load(str(out))
    assert img.shape == (study.shape[3], study.shape[2], study.shape[1], study.shape[0])
    np.testing.assert_allclose(img.affine, study.affine, atol=1e-5)
    assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1, 2, 3}


def test_analyze_by_model_id_records_provenance(registered_model, phantom_path, tmp_path):
    model_id, sha = registered_model
    out = tmp_path / "reports"
    code = main(["analyze", str(phantom_path), "--out", str(out), "--model", model_id])
    assert code in (0, 1)
    (report_path,) = out.glob("*/report.json")
    text = report_path.read_text()
    report = json.loads(text)  # strict JSON: NaN would not parse back as a number
    assert "NaN" not in text
    assert report["model"]["model_id"] == model_id and report["model"]["sha256"] == sha
    assert len(report["volumes"]["LV_ml"] if isinstance(report["volumes"], dict) else report["volumes"]) == 6


def test_unknown_model_id_is_one_clear_line(phantom_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NAPARI_CINEMA_HOME", str(tmp_path / "home"))
    assert main(["segment", str(phantom_path), "--out", str(tmp_path / "x.nii.gz"), "--model", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
