"""``evaluate``: dataset layouts, label conventions, metrics fields (DESIGN.md), the CLI twin."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_cinema.training import commands
from napari_cinema.training.evaluate import ORIENTATIONS, EvaluationError, evaluate, load_dataset, reorient

PH = dict(frames=4, slices=4, matrix=48, pixel_mm=4.0, supersample=1)
DESIGN_FIELDS = {"n_cases", "dice", "hd95_mm", "LVEF_mae_pct", "LVEDV_mae_ml", "LVESV_mae_ml", "per_case"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NAPARI_CINEMA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def phantom_pair(tmp_path: Path) -> Path:
    from napari_cinema.sample_data.phantom import write_phantom

    out = tmp_path / "pairs"
    write_phantom(out, view="sax", seed=3, **PH)
    return out


def oracle(rec):
    return rec.labels


def test_oracle_scores_perfectly_with_the_design_fields(phantom_pair: Path) -> None:
    res = evaluate(phantom_pair, predict=oracle)
    assert DESIGN_FIELDS <= set(res)
    assert res["n_cases"] == 1
    assert res["dice"] == {"LV": 1.0, "MYO": 1.0, "RV": 1.0, "mean": 1.0}
    assert res["hd95_mm"] == {"LV": 0.0, "MYO": 0.0, "RV": 0.0, "mean": 0.0}
    assert res["LVEF_mae_pct"] == 0.0 and res["LVEDV_mae_ml"] == 0.0 and res["LVESV_mae_ml"] == 0.0
    row = res["per_case"][0]
    assert row["LVEDV_ml"]["true"] > row["LVESV_ml"]["true"] > 0
    assert [f["phase"] for f in row["frames"]].count("ED") == 1
    json.dumps(res, allow_nan=False)  # never NaN


def test_errors_are_measured_and_unlabelled_structures_left_out(phantom_pair: Path) -> None:
    def shrink_lv(rec):
        pred = rec.labels.copy()
        pred[rec.es_frame][pred[rec.es_frame] == 3] = 2  # lose the LV at ES
        return pred

    res = evaluate(phantom_pair, predict=shrink_lv)
    row = res["per_case"][0]
    assert res["dice"]["LV"] < 1.0 and res["dice"]["RV"] == 1.0
    assert res["LVESV_mae_ml"] == pytest.approx(row["LVESV_ml"]["true"])
    assert res["LVEF_mae_pct"] == pytest.approx(100.0 - row["LVEF_pct"]["true"])  # predicted ESV 0: EF 100 %
    json.dumps(res, allow_nan=False)


def test_orientations_store_the_same_heart_another_way(phantom_pair: Path, capsys) -> None:
    from dataclasses import replace

    _, (rec,) = load_dataset(phantom_pair)
    rec = replace(rec, spacing=(rec.spacing[0], 1.0, 2.0))  # (dz, dy, dx): rectangular pixels
    seen = set()
    for name in ORIENTATIONS:
        r = reorient(rec, name)
        swapped = name in ("rot90", "rot270", "transpose", "antitranspose")
        assert r.spacing == ((rec.spacing[0], 2.0, 1.0) if swapped else rec.spacing)
        assert r.image.shape[-2:] == (rec.image.shape[-1:-3:-1] if swapped else rec.image.shape[-2:])
        assert r.lv_volume_ml(rec.ed_frame) == pytest.approx(rec.lv_volume_ml(rec.ed_frame))
        assert np.array_equal(r.labels > 0, ORIENTATIONS[name](rec.labels) > 0)
        seen.add(r.image.tobytes())
    assert len(seen) == 8  # eight different ways to store one slice
    np.testing.assert_array_equal(reorient(rec, "rot90").labels[0, 0], np.rot90(rec.labels[0, 0]))
    res = evaluate(phantom_pair, predict=oracle, orientation="flip_x")
    assert res["orientation"] == "flip_x" and res["dice"]["mean"] == 1.0
    stored = rec.labels
    assert evaluate(phantom_pair, predict=lambda r: stored, orientation="flip_x")["dice"]["mean"] < 0.9
    with pytest.raises(EvaluationError, match="orientation 'sideways': expected one of stored, rot90"):
        evaluate(phantom_pair, predict=oracle, orientation="sideways")
    with pytest.raises(SystemExit):
        commands.main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ORIENTATIONS), out


def test_label_convention_override(tmp_path: Path) -> None:
    img = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    lab = np.zeros((16, 16, 3), np.uint8)
    lab[2:6, 2:6] = 1  # M&Ms: 1 = LV cavity
    lab[10:14, 10:14] = 3  # M&Ms: 3 = RV cavity
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(tmp_path / "case.nii.gz"))
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "case_gt.nii.gz"))
    _, (rec,) = load_dataset(tmp_path, labels="mnms")
    assert rec.labels[0, 0, 3, 3] == 3 and rec.labels[0, 0, 12, 12] == 1
    _, (rec,) = load_dataset(tmp_path)
    assert rec.labels[0, 0, 3, 3] == 1
    lab[0, 0] = 9
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "case_gt.nii.gz"))
    with pytest.raises(EvaluationError, match=r"label values \[9\]"):
        load_dataset(tmp_path, labels="mnms")


def test_correction_store_scores_original_against_final(tmp_path: Path) -> None:
    from napari_cinema.annotations.store import CorrectionStore
    from napari_cinema.sample_data.phantom import make_phantom

    study, _ = make_phantom("sax", **PH)
    final = study.labels
    original = final.copy()
    original[study.ed_frame][original[study.ed_frame] == 1] = 0  # the model missed the RV at ED
    CorrectionStore(tmp_path / "store").save(study, original, final, model_id="m1", model_sha256=None,
                                             edited_frames=[study.ed_frame, study.es_frame])
    res = evaluate(tmp_path / "store")
    assert res["layout"] == "store" and res["model"]["id"] == "m1" and res["n_cases"] == 1
    assert res["dice"]["LV"] == 1.0 and res["dice"]["RV"] < 1.0
    assert res["LVEF_mae_pct"] == 0.0 and res["RVEDV_mae_ml"] > 0
    turned = evaluate(tmp_path / "store", orientation="rot90")  # the stored model output turns with its case
    assert turned["dice"] == res["dice"] and turned["LVEF_mae_pct"] == 0.0


def test_cli_with_a_model_file_and_run_folder(tmp_path: Path, phantom_pair: Path, capsys) -> None:
    from napari_cinema.model.checkpoint import save_checkpoint
    from napari_cinema.model.factory import build_model

    cfg = {"task": "segmentation", "data": {"sax": {"patch_size": [32, 32], "spacing": [4.0, 4.0], "in_chans": 1}},
           "model": {"name": "convunetr", "views": "sax", "out_chans": 4,
                     "convunetr": {"size": "tiny", "enc_conv_chans": [8, 8], "enc_conv_n_blocks": 1,
                                   "dec_chans": [8, 8, 8, 16, 16], "dec_n_blocks": 1}}}
    torch.manual_seed(0)
    save_checkpoint(build_model(cfg), tmp_path / "run" / "model.safetensors", config=cfg)
    out = tmp_path / "eval.json"
    rc = commands.main(["evaluate", str(phantom_pair), "--out", str(out), "--model", str(tmp_path / "run"),
                        "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert DESIGN_FIELDS <= set(res) and res["task"] == "segmentation" and res["n_cases"] == 1
    assert set(res["dice"]) == {"LV", "MYO", "RV", "mean"} and set(res["hd95_mm"]) == {"LV", "MYO", "RV", "mean"}
    assert res["model"]["sha256"] and "wrote" in capsys.readouterr().out
    assert res["model"]["shift_passes"] == 3  # as the app segments
    single = tmp_path / "single.json"
    rc = commands.main(["evaluate", str(phantom_pair), "--out", str(single), "--model", str(tmp_path / "run"),
                        "--device", "cpu", "--quiet", "--shift-passes", "1"])
    assert rc == 0 and json.loads(single.read_text())["model"]["shift_passes"] == 1
    assert commands.main(["evaluate", str(phantom_pair), "--out", str(out), "--model", str(tmp_path / "run"),
                          "--shift-passes", "0"]) == 2
    assert "shift_passes must be at least 1" in capsys.readouterr().err
    assert commands.main(["evaluate", str(phantom_pair), "--out", str(out), "--model", "no/such-model"]) == 2


def test_acdc_volumes_match_the_reference_table(shared_data: Path, tmp_path: Path) -> None:
    subset = tmp_path / "acdc"
    subset.mkdir()
    for pid in ("patient003", "patient088"):
        (subset / pid).symlink_to(shared_data / "acdc" / pid)
    res = evaluate(subset, predict=oracle)
    assert res["layout"] == "acdc" and res["n_cases"] == 2 and res["dice"]["mean"] == 1.0
    ref = {r["patient"]: r for r in csv.DictReader((shared_data / "acdc" / "reference_volumes.csv").open())}
    for row in res["per_case"]:
        assert row["LVEDV_ml"]["true"] == pytest.approx(float(ref[row["case"]]["LVEDV_ml"]), abs=0.1)
        assert row["LVEF_pct"]["true"] == pytest.approx(float(ref[row["case"]]["LVEF_pct"]), abs=0.1)


def test_sunnybrook_scores_only_what_is_contoured(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "sb").mkdir()
    (tmp_path / "sb" / "SCD0000101").symlink_to(shared_data / "sunnybrook" / "SCD0000101")
    res = evaluate(tmp_path / "sb", predict=lambda rec: np.where(rec.labels == 0, 1, rec.labels))  # RV everywhere
    assert res["dice"]["LV"] == 1.0 and res["dice"]["MYO"] == 1.0
    assert res["dice"]["RV"] is None and "dice.RV" in res["notes"]
    assert res["LVEF_mae_pct"] == 0.0


def test_landmark_model_is_scored_against_landmarks_derived_from_labels(tmp_path: Path, capsys) -> None:
    """A LAX pair without landmark files: the reference comes from its LV cavity and myocardium labels."""
    from napari_cinema.model.checkpoint import save_checkpoint
    from napari_cinema.model.factory import build_model
    from napari_cinema.sample_data.phantom import write_phantom

    pairs = tmp_path / "lax"
    write_phantom(pairs, view="lax_4c", seed=3, frames=4, matrix=64, pixel_mm=3.0, supersample=1)
    cfg = {"task": "landmark_heatmap",
           "data": {"lax": {"patch_size": [32, 32], "spacing": [3.0, 3.0], "in_chans": 1},
                    "landmark_names": ["mv_1", "mv_2", "apex"]},
           "model": {"name": "convunetr", "views": "lax_4c", "out_chans": 3,
                     "convunetr": {"size": "tiny", "enc_conv_chans": [8, 8], "enc_conv_n_blocks": 1,
                                   "dec_chans": [8, 8, 8, 16, 16], "dec_n_blocks": 1}}}
    torch.manual_seed(0)
    save_checkpoint(build_model(cfg), tmp_path / "lm" / "model.safetensors", config=cfg)
    res = evaluate(pairs, model=str(tmp_path / "lm"), device="cpu")
    assert res["task"] == "landmark_heatmap" and res["n_cases"] == 1
    assert set(res["landmark_error_mm"]) == {"mv_1", "mv_2", "apex", "mean"}
    assert all(np.isfinite(v) and v >= 0 for v in res["landmark_error_mm"].values())
    assert "derived from the expert" in res["notes"]["landmark_error_mm"]
    frame = res["per_case"][0]["frames"][0]
    assert set(frame["reference_yx"]) == {"mv_1", "mv_2", "apex"}
