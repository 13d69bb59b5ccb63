"""Batch analysis and the ``analyze`` command: discovery, resuming, failures, processes, ranks, label sources."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_cinema.analysis.batch import (
    StudyLabels,
    discover_studies,
    run_batch,
    study_name,
    unique_names,
    write_summary,
)
from napari_cinema.analysis.commands import register


def analyze(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="napari-cinema")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", *argv])
    return args.handler(args)


def summary(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "summary.csv").open()))


@pytest.fixture(scope="module")
def one_phantom(tmp_path_factory) -> Path:
    """A small NIfTI phantom (image + _gt labels), written once."""
    phantom = pytest.importorskip("napari_cinema.sample_data.phantom", reason="phantom generator not installed yet")
    src = tmp_path_factory.mktemp("phantom")
    phantom.write_phantom(src, view="sax", frames=10, slices=6, matrix=64, supersample=1)
    return src


def make_folder(root: Path, one: Path, n: int, broken: int | None = None) -> Path:
    studies = root / "studies"
    for i in range(n):
        d = studies / f"p{i:02d}"
        d.mkdir(parents=True)
        for name in ("phantom_sax.nii.gz", "phantom_sax_gt.nii.gz"):
            shutil.copy(one / name, d / name)
    if broken is not None:
        f = studies / f"p{broken:02d}" / "phantom_sax.nii.gz"
        f.write_bytes(f.read_bytes()[:2000])  # a truncated download
    return studies


def test_folder_of_20_with_a_broken_study_then_resume(tmp_path, one_phantom, capsys):
    studies = make_folder(tmp_path, one_phantom, 20, broken=7)
    out = tmp_path / "out"
    rc = analyze(str(studies), "--out", str(out), "--labels", "auto", "--no-pdf", "--quiet")
    assert rc == 1  # finished, but one study failed
    rows = summary(out)
    assert [r["study"] for r in rows] == [f"p{i:02d}" for i in range(20)]
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["study"] for r in failed] == ["p07"] and "p07" in capsys.readouterr().err
    assert "CineLoadError" in failed[0]["error"] or "readable" in failed[0]["error"]
    assert (out / "p07" / "error.txt").is_file() and not (out / "p07" / "report.json").exists()
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 19 and all(float(r["LVEF_pct"]) > 40 for r in ok)
    d = json.loads((out / "p03" / "report.json").read_text())
    assert d["model"]["id"] == "study-labels" and (out / "p03" / "volumes.csv").is_file()

    # second run: the 19 finished studies are skipped (untouched), the broken one is tried again
    stamp = (out / "p03" / "report.json").stat().st_mtime_ns
    rc = analyze(str(studies), "--out", str(out), "--labels", "auto", "--no-pdf", "--quiet")
    assert rc == 1 and "skipped 19" in capsys.readouterr().out
    assert (out / "p03" / "report.json").stat().st_mtime_ns == stamp

    # repaired: the third run analyses only p07 and clears its error
    shutil.copy(one_phantom / "phantom_sax.nii.gz", studies / "p07" / "phantom_sax.nii.gz")
    assert analyze(str(studies), "--out", str(out), "--labels", "auto", "--no-pdf", "--quiet") == 0
    assert not (out / "p07" / "error.txt").exists()
    assert {r["status"] for r in summary(out)} == {"ok"}


def _fake_segmenter(study):
    return study.labels, {"id": "fake-model", "sha256": "0" * 64}


def test_processes_shards_and_a_segmenter(tmp_path, one_phantom):
    studies = make_folder(tmp_path, one_phantom, 4)
    out = tmp_path / "pool"
    res = run_batch([studies], out, labels_for=StudyLabels(), processes=2, progress=False, pdf=False)
    assert res.n_ok == 4 and {r["status"] for r in summary(out)} == {"ok"}

    # two torchrun ranks: each takes every other study; summary.csv is whole after the last one
    out2 = tmp_path / "ranks"
    r0 = run_batch([studies], out2, segmenter=_fake_segmenter, rank=0, world_size=2, progress=False, pdf=False)
    assert [r["study"] for r in r0.rows] == ["p00", "p02"]
    assert [r["status"] for r in summary(out2)] == ["ok", "pending", "ok", "pending"]
    r1 = run_batch([studies], out2, segmenter=_fake_segmenter, rank=1, world_size=2, progress=False, pdf=False)
    assert [r["study"] for r in r1.rows] == ["p01", "p03"]
    assert [r["status"] for r in summary(out2)] == ["ok"] * 4
    assert len(list(csv.DictReader((out2 / "summary_rank1.csv").open()))) == 2
    # the segmenter's labels are kept with their provenance
    meta = json.loads((out2 / "p01" / "labels.json").read_text())
    assert meta["provenance"]["model"]["id"] == "fake-model" and (out2 / "p01" / "labels.nii.gz").is_file()
    assert json.loads((out2 / "p01" / "report.json").read_text())["model"]["id"] == "fake-model"
    assert write_summary(out2).is_file()


def test_environment_rank_and_pdf(tmp_path, one_phantom, monkeypatch):
    studies = make_folder(tmp_path, one_phantom, 2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = run_batch([studies], tmp_path / "o", labels_for=StudyLabels(), progress=False)
    assert [r["study"] for r in res.rows] == ["p01"] and (tmp_path / "o" / "p01" / "report.pdf").is_file()


def test_labels_file_folder_and_usage_errors(tmp_path, one_phantom, capsys):
    image = one_phantom / "phantom_sax.nii.gz"
    gt = one_phantom / "phantom_sax_gt.nii.gz"
    out = tmp_path / "a"
    assert analyze(str(image), "--out", str(out), "--labels", str(gt), "--no-pdf", "--quiet",
                   "--height", "170", "--weight", "65", "--ed", "0") == 0
    d = json.loads((out / "phantom_sax" / "report.json").read_text())
    assert d["model"]["id"] == "labels:phantom_sax_gt.nii.gz"
    assert d["BSA_m2"] == pytest.approx(np.sqrt(170 * 65 / 3600), abs=1e-3) and d["ED_frame"] == 0
    assert "manual" in d["cycle"]["ed_es_source"]

    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    shutil.copy(gt, labels_dir / "phantom_sax.nii.gz")
    assert analyze(str(image), "--out", str(tmp_path / "b"), "--labels", str(labels_dir), "--no-pdf", "--quiet") == 0

    studies = make_folder(tmp_path, one_phantom, 2)
    assert analyze(str(studies), "--out", str(tmp_path / "c"), "--labels", str(gt), "--quiet") == 2
    assert "one study" in capsys.readouterr().err
    assert analyze(str(image), "--out", str(tmp_path / "d"), "--labels", str(tmp_path / "nope"), "--quiet") == 2


def test_model_without_engine_is_a_clear_error(tmp_path, one_phantom, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "napari_cinema.engine", None)  # import fails
    rc = analyze(str(one_phantom / "phantom_sax.nii.gz"), "--out", str(tmp_path / "m"), "--model", "x", "--quiet")
    assert rc == 2 and "segmentation model support not installed" in capsys.readouterr().err


def test_discovery_and_names(tmp_path):
    acdc = tmp_path / "acdc" / "patient001"
    acdc.mkdir(parents=True)
    (acdc / "Info.cfg").write_text("ED: 1\nES: 5\n")
    mnms = tmp_path / "mnms"
    mnms.mkdir()
    for n in ("A1_sa_ED.nii.gz", "A1_sa_ES.nii.gz", "A1_sa_ED_gt.nii.gz", "A1_sa_ES_gt.nii.gz", "notes.txt"):
        (mnms / n).write_bytes(b"x")
    found = discover_studies([tmp_path / "acdc", mnms])
    assert found == [acdc, mnms / "A1_sa_ED.nii.gz"]  # the ES file opens with its ED pair; no label files
    assert study_name(tmp_path / "SCD0000101" / "dicom") == "SCD0000101_dicom"
    assert study_name(tmp_path / "cine_sax.nii.gz") == "cine_sax"
    assert unique_names([tmp_path / "a" / "x.nii.gz", tmp_path / "b" / "x.nii.gz"]) == ["a_x", "b_x"]
    res = run_batch([tmp_path / "missing.nii.gz"], tmp_path / "o", progress=False)
    assert res.n_failed == 1 and "no such file" in res.rows[0]["error"]
