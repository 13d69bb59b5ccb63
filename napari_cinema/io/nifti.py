"""NIfTI cine loading: single frames, 4-D cines, and the ACDC and M&Ms dataset layouts.

NIfTI stores (x, y, z[, t]); CineStudy holds (t, z, y, x), so the array is transposed and the NIfTI
affine (voxel (x, y, z) -> RAS mm) is kept as is.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from .labels import to_internal
from .study import CineLoadError, CineStudy, PatientInfo

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Plausible cine frame intervals; a header outside this range carries no usable timing
# (M&Ms-2 writes 1.0 with unknown units, ACDC 4-D files 1 "second").
_FRAME_INTERVAL_RANGE_MS = (5.0, 200.0)
_TIME_UNIT_TO_MS = {"sec": 1000.0, "msec": 1.0, "usec": 0.001}

_ACDC_FRAME = re.compile(r"^(patient\d+)_frame(\d+)\.nii(\.gz)?$")
_MNMS_PHASE = re.compile(r"^(?P<id>.+?)_(?P<view>sa|SA|la|LA)_(?P<phase>ED|ES)(?P<gt>_gt)?\.nii(\.gz)?$")
_MNMS2_CINE = re.compile(r"^(?P<id>.+?)_(?P<view>SA|LA)_CINE\.nii(\.gz)?$", re.IGNORECASE)


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    for s in NIFTI_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def view_from_name(name: str) -> str:
    """Guess the view from a file or folder name (M&Ms 'sa'/'LA', 'sax', '4ch', ...)."""
    n = strip_nifti_suffix(Path(name).name).lower()
    tokens = set(re.split(r"[^a-z0-9]+", n))
    if tokens & {"2c", "2ch", "2cv", "lax_2c", "vla"} or "lax_2c" in n:
        return "lax_2c"
    if tokens & {"3c", "3ch", "lvot"} or "lax_3c" in n:
        return "lax_3c"
    if tokens & {"4c", "4ch", "hla"} or "lax_4c" in n:
        return "lax_4c"
    if tokens & {"sa", "sax", "shortaxis"} or "short_axis" in n:
        return "sax"
    if tokens & {"la", "lax"}:
        # M&Ms-2 'LA' cines are 4-chamber views.
        return "lax_4c"
    return "unknown"


def _load_array(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a NIfTI file into (x, y, z, t) with clear errors for what napari users meet."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise CineLoadError(path, "file not found") from None
    except Exception as exc:  # nibabel raises many types for truncated/garbled files
        raise CineLoadError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 5 and data.shape[3] == 1:  # (x, y, z, 1, c)-style files with one channel
        data = data[:, :, :, 0]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise CineLoadError(path, f"expected a 2-D, 3-D or 4-D image, got {data.ndim}-D shape {data.shape}")
    if data.dtype.kind not in "iufb":
        raise CineLoadError(path, f"unsupported voxel type {data.dtype}")
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            raise CineLoadError(path, f"{int(bad.sum())} voxels are NaN or infinite")
    return data, img


def _frame_interval_ms(img: nib.Nifti1Image) -> float | None:
    zooms = img.header.get_zooms()
    if len(zooms) < 4:
        return None
    _, t_unit = img.header.get_xyzt_units()
    factor = _TIME_UNIT_TO_MS.get(t_unit)
    if factor is None:
        return None
    dt = float(zooms[3]) * factor
    lo, hi = _FRAME_INTERVAL_RANGE_MS
    return dt if lo <= dt <= hi else None


def _to_tzyx(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)))


def _spacing_xyz(img: nib.Nifti1Image) -> tuple[float, float, float]:
    zooms = img.header.get_zooms()
    dx, dy = float(zooms[0]), float(zooms[1])
    dz = float(zooms[2]) if len(zooms) > 2 else 1.0
    for name, v in (("x", dx), ("y", dy), ("z", dz)):
        if not np.isfinite(v) or v <= 0:
            raise CineLoadError(img.get_filename(), f"invalid voxel size {v} along {name}")
    return dx, dy, dz


def read_nifti(path: str | Path, *, view: str | None = None) -> CineStudy:
    """Read one NIfTI image (2-D, 3-D single frame or 4-D cine) as a CineStudy."""
    path = Path(path)
    data, img = _load_array(path)
    dx, dy, dz = _spacing_xyz(img)
    image = _to_tzyx(data).astype(np.float32)
    return CineStudy(
        image=image,
        spacing=(_frame_interval_ms(img), dz, dy, dx),
        affine=img.affine,
        view=view or view_from_name(path.name),
        source=str(path),
        description=strip_nifti_suffix(path.name),
    )


def read_label_nifti(path: str | Path, convention: str = "acdc", like: CineStudy | None = None) -> np.ndarray:
    """Read a label NIfTI as (t, z, y, x) uint8 in the internal convention."""
    data, _ = _load_array(Path(path))
    labels = to_internal(_to_tzyx(data), convention, source=str(path))
    if like is not None and labels.shape[1:] != like.image.shape[1:]:
        raise CineLoadError(path, f"labels shape {labels.shape[1:]} does not match image {like.image.shape[1:]}")
    return labels


# -- ACDC ------------------------------------------------------------------------------------------

def is_acdc_patient(folder: Path) -> bool:
    return folder.is_dir() and (folder / "Info.cfg").is_file()


def read_acdc_info(cfg: Path) -> dict[str, str]:
    info: dict[str, str] = {}
    for line in cfg.read_text(errors="replace").splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def _float_or_none(value: str | None) -> float | None:
    try:
        v = float(value) if value is not None else None
    except ValueError:
        return None
    return v if v is not None and np.isfinite(v) and v > 0 else None


def read_acdc_patient(folder: str | Path) -> CineStudy:
    """Read an ACDC patient folder: ED and ES frames with expert labels, group, height and weight.

    With the 4-D cine (``patientNNN_4d.nii.gz``) present, the whole cycle is loaded and the labels sit
    on the ED and ES frames; otherwise the study holds the two labelled frames only (ED, then ES).
    """
    folder = Path(folder)
    cfg = folder / "Info.cfg"
    if not cfg.is_file():
        raise CineLoadError(folder, "not an ACDC patient folder (no Info.cfg)")
    info = read_acdc_info(cfg)
    try:
        ed, es = int(info["ED"]), int(info["ES"])
    except (KeyError, ValueError):
        raise CineLoadError(cfg, "Info.cfg lacks integer ED and ES entries") from None
    pid = folder.name
    patient = PatientInfo(
        patient_id=pid,
        height_cm=_float_or_none(info.get("Height")),
        weight_kg=_float_or_none(info.get("Weight")),
        group=info.get("Group"),
    )

    def frame_file(n: int, gt: bool = False) -> Path:
        p = folder / f"{pid}_frame{n:02d}{'_gt' if gt else ''}.nii.gz"
        if not p.is_file():
            raise CineLoadError(folder, f"missing {p.name} (Info.cfg names frame {n})")
        return p

    cine_file = folder / f"{pid}_4d.nii.gz"
    ed_study = read_nifti(frame_file(ed), view="sax")
    ed_labels = read_label_nifti(frame_file(ed, gt=True), "acdc", like=ed_study)
    es_study = read_nifti(frame_file(es), view="sax")
    es_labels = read_label_nifti(frame_file(es, gt=True), "acdc", like=es_study)
    if es_study.image.shape != ed_study.image.shape:
        raise CineLoadError(folder, f"ED and ES frames differ in shape {ed_study.shape} vs {es_study.shape}")

    if cine_file.is_file():
        study = read_nifti(cine_file, view="sax")
        if not (1 <= ed <= study.n_frames and 1 <= es <= study.n_frames):
            raise CineLoadError(cine_file, f"ED {ed} / ES {es} outside the {study.n_frames} frames")
        labels = np.zeros(study.image.shape, np.uint8)
        labels[ed - 1], labels[es - 1] = ed_labels[0], es_labels[0]
        study.labels, study.labelled_frames = labels, (ed - 1, es - 1)
        study.ed_frame, study.es_frame = ed - 1, es - 1
        study.frame_numbers = tuple(range(study.n_frames))
    else:
        study = CineStudy(
            image=np.concatenate([ed_study.image, es_study.image]),
            spacing=ed_study.spacing,
            affine=ed_study.affine,
            view="sax",
            labels=np.concatenate([ed_labels, es_labels]),
            labelled_frames=(0, 1),
            ed_frame=0,
            es_frame=1,
            frame_numbers=(ed - 1, es - 1),
        )
    study.patient = patient
    study.source = str(folder)
    study.description = f"ACDC {pid} ({info.get('Group', '?')}), {info.get('NbFrame', '?')} frames acquired"
    return study


# -- M&Ms and M&Ms-2 -----------------------------------------------------------------------------

def mnms_phase_files(path: Path) -> tuple[str, str, Path] | None:
    """(subject id, view token, folder) for an M&Ms-style ED/ES file name, else None."""
    m = _MNMS_PHASE.match(path.name)
    if not m:
        return None
    return m.group("id"), m.group("view"), path.parent


def read_mnms_phases(path: str | Path) -> CineStudy:
    """Read an M&Ms ``<ID>_sa_ED.nii.gz`` (or M&Ms-2 ``<ID>_SA_ED``/``_LA_ED``) with its ES pair and
    labels, remapped from the M&Ms convention (1 LV, 3 RV) to the internal one."""
    path = Path(path)
    found = mnms_phase_files(path)
    if found is None:
        raise CineLoadError(path, "not an M&Ms <ID>_sa_ED/ES file name")
    sid, view_token, folder = found
    view = view_from_name(view_token)
    images, labels = [], []
    for phase in ("ED", "ES"):
        img_path = _first_existing(folder, f"{sid}_{view_token}_{phase}")
        if img_path is None:
            raise CineLoadError(folder, f"missing {sid}_{view_token}_{phase}.nii.gz")
        s = read_nifti(img_path, view=view)
        images.append(s)
        gt = _first_existing(folder, f"{sid}_{view_token}_{phase}_gt")
        labels.append(read_label_nifti(gt, "mnms", like=s) if gt else None)
    ed, es = images
    if ed.image.shape != es.image.shape:
        raise CineLoadError(folder, f"ED and ES of {sid} differ in shape {ed.shape} vs {es.shape}")
    study = CineStudy(
        image=np.concatenate([ed.image, es.image]),
        spacing=ed.spacing,
        affine=ed.affine,
        view=view,
        ed_frame=0,
        es_frame=1,
        patient=PatientInfo(patient_id=sid),
        source=str(path),
        description=f"M&Ms {sid} {view_token} ED/ES",
    )
    present = [i for i, lab in enumerate(labels) if lab is not None]
    if present:
        study.labels = np.concatenate([lab if lab is not None else np.zeros_like(ed.image, np.uint8)
                                       for lab in labels])
        study.labelled_frames = tuple(present)
    return study


def read_mnms2_cine(path: str | Path) -> CineStudy:
    """Read an M&Ms-2 ``<ID>_LA_CINE`` / ``_SA_CINE`` file; labels of the ED/ES files are placed on
    the cine frames whose pixels equal those files (M&Ms-2 ships no frame table)."""
    path = Path(path)
    m = _MNMS2_CINE.match(path.name)
    study = read_nifti(path)
    if not m:
        return study
    sid, token = m.group("id"), m.group("view")
    study.patient = PatientInfo(patient_id=sid)
    study.description = f"M&Ms-2 {sid} {token} cine"
    labels = np.zeros(study.image.shape, np.uint8)
    labelled: list[int] = []
    for phase in ("ED", "ES"):
        img_path = _first_existing(path.parent, f"{sid}_{token}_{phase}")
        gt_path = _first_existing(path.parent, f"{sid}_{token}_{phase}_gt")
        if img_path is None or gt_path is None:
            continue
        frame = read_nifti(img_path).image[0]
        if frame.shape != study.image.shape[1:]:
            continue
        diffs = np.abs(study.image - frame[None]).reshape(study.n_frames, -1).max(axis=1)
        t = int(np.argmin(diffs))
        if diffs[t] > 1e-3 * max(1.0, float(np.abs(frame).max())):
            warnings.warn(f"{img_path}: no frame of {path.name} matches it; its labels are not placed")
            continue
        labels[t] = read_label_nifti(gt_path, "mnms2", like=study)[0]
        labelled.append(t)
        if phase == "ED":
            study.ed_frame = t
        else:
            study.es_frame = t
    if labelled:
        study.labels, study.labelled_frames = labels, tuple(sorted(labelled))
    return study


def _first_existing(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


# -- dispatch ------------------------------------------------------------------------------------

def is_label_file(path: Path) -> bool:
    return strip_nifti_suffix(path.name).endswith("_gt")


def read_nifti_study(path: str | Path) -> CineStudy:
    """Read a NIfTI file or dataset folder, recognising the ACDC and M&Ms layouts by name."""
    path = Path(path)
    if path.is_dir():
        if is_acdc_patient(path):
            return read_acdc_patient(path)
        cines = sorted(p for p in path.iterdir() if _MNMS2_CINE.match(p.name))
        if len(cines) == 1:
            return read_mnms2_cine(cines[0])
        niftis = sorted(p for p in path.iterdir() if is_nifti(p) and not is_label_file(p))
        if len(niftis) == 1:
            return read_nifti(niftis[0])
        what = f"{len(niftis)} NIfTI images ({', '.join(p.name for p in niftis[:4])}{', ...' if len(niftis) > 4 else ''})"
        raise CineLoadError(path, f"not a single study: holds {what}; open one file")
    if is_label_file(path):
        raise CineLoadError(path, "this is a label map (_gt); open the image it belongs to")
    m = _ACDC_FRAME.match(path.name)
    if m and is_acdc_patient(path.parent):
        return read_acdc_patient(path.parent)
    if mnms_phase_files(path) and not is_label_file(path):
        return read_mnms_phases(path)
    if _MNMS2_CINE.match(path.name):
        return read_mnms2_cine(path)
    study = read_nifti(path)
    # Our own exports and the phantom keep labels beside the image as <stem>_gt (internal convention).
    gt = _first_existing(path.parent, strip_nifti_suffix(path.name) + "_gt")
    if gt is not None:
        study.labels = read_label_nifti(gt, "cinema", like=study)
        if study.labels.shape != study.image.shape:
            raise CineLoadError(gt, f"labels have {study.labels.shape[0]} frames, the image {study.n_frames}")
        study.labelled_frames = tuple(range(study.n_frames))
    return study
