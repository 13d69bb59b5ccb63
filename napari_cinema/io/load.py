"""One entry point to read any supported study: NIfTI files and dataset folders, DICOM files and folders."""

from __future__ import annotations

import os
from pathlib import Path

from .nifti import NIFTI_SUFFIXES, is_acdc_patient, is_nifti, read_nifti_study
from .study import CineLoadError, CineStudy


def looks_like_dicom(path: Path) -> bool:
    """Cheap probe: the DICM magic at byte 128, or a .dcm suffix. Never raises."""
    try:
        if path.suffix.lower() in (".dcm", ".ima"):
            return True
        with open(path, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def folder_kind(folder: Path, max_probe: int = 200) -> str | None:
    """'nifti', 'dicom' or None for a folder, from its name layout and a bounded look at its files."""
    try:
        if is_acdc_patient(folder):
            return "nifti"
        n = 0
        has_nifti = False
        # os.walk stops early; rglob would list a whole tree before we could stop.
        for root, _dirs, files in os.walk(folder):
            for name in files:
                p = Path(root) / name
                if is_nifti(p):
                    has_nifti = True
                elif looks_like_dicom(p):
                    return "dicom"
                n += 1
                if n >= max_probe:
                    return "nifti" if has_nifti else None
        return "nifti" if has_nifti else None
    except OSError:
        return None


def study_kind(path: str | Path) -> str | None:
    """'nifti', 'dicom' or None when napari-cinema cannot read ``path`` (never raises)."""
    path = Path(path)
    if path.is_dir():
        return folder_kind(path)
    if not path.is_file():
        return None
    if str(path).lower().endswith(NIFTI_SUFFIXES):
        return "nifti"
    if looks_like_dicom(path):
        return "dicom"
    return None


def load_study(path: str | Path, *, series: str | None = None) -> CineStudy:
    """Read the study at ``path``; raises CineLoadError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise CineLoadError(path, "no such file or folder")
    kind = study_kind(path)
    if kind == "nifti":
        return read_nifti_study(path)
    if kind == "dicom":
        from .dicom import read_dicom_cine

        return read_dicom_cine(path, series=series)
    raise CineLoadError(path, "neither a NIfTI file (.nii, .nii.gz) nor DICOM, nor a folder holding them")


def load_studies(path: str | Path) -> list[CineStudy]:
    """Every cine at ``path``: one for a NIfTI study, one per series/orientation for a DICOM folder."""
    path = Path(path)
    if study_kind(path) == "dicom":
        from .dicom import read_dicom_cines

        return read_dicom_cines(path)
    return [load_study(path)]
