"""The command line's foundation commands: info (text and JSON), phantom, and npe2 validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_cinema.cli import main


def info_json(path: Path, capsys) -> dict:
    assert main(["info", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_info_json_sunnybrook(shared_data, capsys):
    info = info_json(shared_data / "sunnybrook" / "SCD0000101" / "dicom", capsys)
    assert (info["slices"], info["frames"], info["view"]) == (12, 20, "sax")
    assert info["slice_spacing_mm"] == pytest.approx(10.0, abs=0.01)
    assert info["pixel_spacing_mm"] == pytest.approx([1.367, 1.367], abs=0.001)
    assert info_json(shared_data / "sunnybrook" / "SCD0000201" / "dicom", capsys)["slices"] == 13


def test_info_on_scout_exits_nonzero_naming_what_it_holds(shared_data, capsys):
    assert main(["info", str(shared_data / "scout" / "SCD0000101"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "localiser" in captured.err and "axial" in captured.err and "SCD0000101" in captured.err


def test_info_text_for_acdc(shared_data, capsys):
    assert main(["info", str(shared_data / "acdc" / "patient023")]) == 0
    out = capsys.readouterr().out
    assert "group=HCM" in out and "height_cm=166.0" in out and "ED / ES" in out


def test_phantom_command_writes_a_study_info_can_read(tmp_path, capsys):
    assert main(["phantom", str(tmp_path), "--view", "lax_4c", "--frames", "8", "--lvef", "45", "--seed", "3"]) == 0
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["LVEF_pct"] == pytest.approx(45.0, abs=0.1) and truth["frames"] == 8
    capsys.readouterr()
    info = info_json(tmp_path / "phantom_lax_4c.nii.gz", capsys)
    assert (info["view"], info["frames"], info["slices"]) == ("lax_4c", 8, 1)
    assert info["has_labels"]


def test_not_an_image_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "scan.nii"
    bad.write_text("definitely not a NIfTI")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scan.nii" in err[0] and "not a readable NIfTI" in err[0]


def test_python_dash_m_and_npe2_validate():
    run = subprocess.run([sys.executable, "-m", "napari_cinema", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "phantom" in run.stdout
    npe2 = Path(sys.executable).with_name("npe2")
    run = subprocess.run([str(npe2), "validate", "napari-cinema", "--imports"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "valid" in run.stdout
