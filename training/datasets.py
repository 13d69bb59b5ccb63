"""Training data sources, each with an explicit label map.

A *source* (one entry of ``data.train`` / ``data.val`` in a training config) is read into a list of
:class:`CaseRecord` objects: one study (t, z, y, x) on its own grid, its labels in the internal
convention (0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity), which frames and slices carry
real labels, which structures are labelled at all, and per-study targets (EF, diagnosis, landmarks,
CSV targets). Tasks (:mod:`.tasks`) turn records into network samples.

Source types (``type:`` key; paths are relative to ``data.root``)::

    acdc        ACDC layout: patientNNN/{Info.cfg, patientNNN_frameFF[_gt].nii.gz}
                options: split (train | val | all, default all; training/splits/acdc.json), patients
    mnms        M&Ms layout: <ID>_sa_{ED,ES}[_gt].nii.gz (M&Ms labels 1 LV, 2 MYO, 3 RV, remapped)
    mnms2       M&Ms-2 layout: <ID>/<ID>_{SA,LA}_{ED,ES}[_gt].nii.gz, <ID>_LA_CINE.nii.gz
                options: views (default [sax, lax_4c]); the LAX-4C cine carries labels on ED and ES
    sunnybrook  SCD*/dicom/N.dcm + contours/{i,o}-contours/IM-0001-NNNN-{i,o}contour-manual.txt;
                i-contour -> LV cavity, o minus i -> MYO; the RV is never labelled (ignored by the loss)
                and neither is MYO on frames without an o-contour; only contoured slices count
    phantom     synthetic studies generated on the fly: view (sax | lax_2c | lax_4c), n, seed,
                lvef [lo, hi] (uniform), edv_ml [lo, hi], plus any PhantomConfig field
    store       a napari-cinema correction store (napari_cinema.annotations.store): the current
                version of each study; labelled frames = the edited ones. options: cases [keys],
                exclude [keys] (held out), with_original (keep the model output for scoring)
    csv         a CSV of per-study targets: columns path, target (+ optional ed_frame, es_frame, view)
    studies     any studies napari-cinema reads (paths or glob patterns), unlabelled (MAE pre-training)

Every source accepts ``repeat: k`` (its cases count k times per epoch) and ``name:``.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_cinema.io.labels import LABEL_NAMES, LV, MYO
from napari_cinema.io.study import CineLoadError, CineStudy

__all__ = [
    "ACDC_CLASSES",
    "INTERNAL_LABEL_MAP",
    "SOURCE_LABEL_MAPS",
    "SOURCE_TYPES",
    "CaseRecord",
    "DatasetError",
    "acdc_split",
    "check_labels",
    "load_source",
    "load_sources",
    "read_sunnybrook_patient",
    "split_file",
]

#: The internal label map every segmentation record is expressed in.
INTERNAL_LABEL_MAP: dict[int, str] = dict(LABEL_NAMES)
#: Label maps as the datasets store them on disk (value -> structure); remapped on load.
SOURCE_LABEL_MAPS: dict[str, dict[int, str]] = {
    "acdc": {0: "background", 1: "RV", 2: "MYO", 3: "LV"},
    "mnms": {0: "background", 1: "LV", 2: "MYO", 3: "RV"},
    "mnms2": {0: "background", 1: "LV", 2: "MYO", 3: "RV"},
    "sunnybrook": {0: "background", 3: "LV", 2: "MYO"},  # contours rasterised; RV not labelled
    "phantom": {0: "background", 1: "RV", 2: "MYO", 3: "LV"},
    "store": {0: "background", 1: "RV", 2: "MYO", 3: "LV"},
}
ACDC_CLASSES = ("DCM", "HCM", "MINF", "NOR", "RV")
_SPLITS_DIR = Path(__file__).resolve().parent / "splits"


class DatasetError(ValueError):
    """A dataset cannot be used for training or evaluation; the message names it and the problem."""


@dataclass
class CaseRecord:
    """One study with what training needs to know about it, on the study's own grid.

    ``labels`` (t, z, y, x) uint8 are in the internal convention; ``labelled_frames`` lists the
    frames whose labels are real; ``frame_classes[t]`` the label values annotated on frame t
    (a value absent there is *unlabelled*, not background: the loss ignores it); ``valid`` (t, z)
    marks slices whose labels are real (None: every slice of a labelled frame).
    """

    case_id: str
    source: str
    view: str
    image: np.ndarray
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    labels: np.ndarray | None = None
    labelled_frames: tuple[int, ...] = ()
    frame_classes: dict[int, tuple[int, ...]] = field(default_factory=dict)
    valid: np.ndarray | None = None
    ed_frame: int | None = None
    es_frame: int | None = None
    label_map: dict[int, str] = field(default_factory=lambda: dict(INTERNAL_LABEL_MAP))
    source_label_map: dict[int, str] | None = None
    targets: dict[str, Any] = field(default_factory=dict)
    landmarks: dict[str, np.ndarray] | None = None  # name -> (t, 3) (z, y, x) study voxels
    path: str = ""
    repeat: int = 1

    @property
    def n_frames(self) -> int:
        return int(self.image.shape[0])

    def classes_of(self, t: int) -> tuple[int, ...]:
        return self.frame_classes.get(t, tuple(sorted(self.label_map)))

    def lv_volume_ml(self, t: int) -> float | None:
        """LV cavity volume of a labelled frame (slices outside ``valid`` are not counted)."""
        if self.labels is None or t not in self.labelled_frames or LV not in self.classes_of(t):
            return None
        dz, dy, dx = self.spacing
        return float((self.labels[t] == LV).sum()) * dz * dy * dx / 1000.0

    def ef_pct(self) -> float | None:
        """LVEF from the ED and ES labels (None when either is missing or not comparable)."""
        if self.ed_frame is None or self.es_frame is None:
            return None
        if self.valid is not None and not np.array_equal(self.valid[self.ed_frame], self.valid[self.es_frame]):
            return None  # contours on different slices: volumes are not comparable
        edv, esv = self.lv_volume_ml(self.ed_frame), self.lv_volume_ml(self.es_frame)
        if not edv or esv is None:
            return None
        return 100.0 * (edv - esv) / edv


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def check_labels(labels: np.ndarray, label_map: Mapping[int, str], what: str) -> None:
    """Raise DatasetError naming ``what`` when ``labels`` holds values outside ``label_map``."""
    values = np.unique(np.asarray(labels))
    extra = sorted(int(v) for v in values if int(v) not in label_map)
    if extra:
        raise DatasetError(
            f"{what}: label values {extra} are outside the label map "
            f"{ {int(k): v for k, v in sorted(label_map.items())} }; fix the labels or the data.label_map"
        )


def _record_from_study(study: CineStudy, source: str, case_id: str, *, repeat: int = 1,
                       source_label_map: Mapping[int, str] | None = None) -> CaseRecord:
    _, dz, dy, dx = study.spacing
    labels = study.labels
    labelled = tuple(int(t) for t in study.labelled_frames) if labels is not None else ()
    rec = CaseRecord(
        case_id=case_id,
        source=source,
        view=study.view,
        image=np.asarray(study.image, np.float32),
        spacing=(float(dz), float(dy), float(dx)),
        labels=None if labels is None else np.asarray(labels, np.uint8),
        labelled_frames=labelled,
        ed_frame=study.ed_frame,
        es_frame=study.es_frame,
        source_label_map=dict(source_label_map) if source_label_map else None,
        path=str(study.source),
        repeat=repeat,
    )
    if rec.labels is not None:
        check_labels(rec.labels, rec.label_map, f"{source} case {case_id}")
    if study.patient.group:
        rec.targets["pathology"] = str(study.patient.group)
    return rec


def _finish_targets(rec: CaseRecord) -> CaseRecord:
    ef = rec.ef_pct()
    if ef is not None:
        rec.targets.setdefault("ef", ef)
    return rec


def _wrap_load_error(source: str, exc: Exception) -> DatasetError:
    return DatasetError(f"{source}: {exc}")


# --------------------------------------------------------------------------------------------------
# ACDC
# --------------------------------------------------------------------------------------------------


def split_file(name: str = "acdc") -> Path:
    return _SPLITS_DIR / f"{name}.json"


def acdc_split(which: str, name: str = "acdc") -> list[str]:
    """Patient ids of the fixed ACDC split: 'train', 'val' or 'all' (both)."""
    data = json.loads(split_file(name).read_text(encoding="utf-8"))
    if which == "all":
        return sorted(data["train"] + data["val"])
    if which not in ("train", "val"):
        raise DatasetError(f"unknown ACDC split {which!r}; use train, val or all")
    return list(data[which])


def _load_acdc(spec: Mapping[str, Any], root: Path) -> list[CaseRecord]:
    from napari_cinema.io.nifti import is_acdc_patient, read_acdc_patient

    if is_acdc_patient(root):
        folders = [root]
    else:
        folders = sorted(p for p in root.iterdir() if is_acdc_patient(p)) if root.is_dir() else []
    wanted: set[str] | None = None
    if spec.get("patients"):
        wanted = {str(p) for p in spec["patients"]}
    elif spec.get("split", "all") != "all":
        wanted = set(acdc_split(str(spec["split"]), str(spec.get("split_name", "acdc"))))
    if wanted is not None and spec.get("split") == "train" and not spec.get("patients"):
        # everything but the fixed validation patients trains (also patients the split file never saw)
        held_out = set(acdc_split("val", str(spec.get("split_name", "acdc"))))
        folders = [f for f in folders if f.name not in held_out]
    elif wanted is not None:
        folders = [f for f in folders if f.name in wanted]
    records = []
    for folder in folders:
        try:
            study = read_acdc_patient(folder)
        except (CineLoadError, ValueError) as exc:
            raise _wrap_load_error("acdc", exc) from exc
        rec = _record_from_study(study, "acdc", folder.name, repeat=int(spec.get("repeat", 1)),
                                 source_label_map=SOURCE_LABEL_MAPS["acdc"])
        records.append(_finish_targets(rec))
    return records


# --------------------------------------------------------------------------------------------------
# M&Ms and M&Ms-2
# --------------------------------------------------------------------------------------------------

_MNMS_ED = re.compile(r"^(?P<id>.+?)_(?P<view>sa|SA)_ED\.nii(\.gz)?$")


def _load_mnms(spec: Mapping[str, Any], root: Path) -> list[CaseRecord]:
    from napari_cinema.io.nifti import read_mnms_phases

    files = sorted(p for p in root.rglob("*") if _MNMS_ED.match(p.name)) if root.is_dir() else []
    if root.is_file() and _MNMS_ED.match(root.name):
        files = [root]
    records = []
    for f in files:
        try:
            study = read_mnms_phases(f)
        except (CineLoadError, ValueError) as exc:
            raise _wrap_load_error("mnms", exc) from exc
        if study.labels is None and not spec.get("unlabelled", False):
            continue
        sid = _MNMS_ED.match(f.name).group("id")
        rec = _record_from_study(study, "mnms", sid, repeat=int(spec.get("repeat", 1)),
                                 source_label_map=SOURCE_LABEL_MAPS["mnms"])
        records.append(_finish_targets(rec))
    return records


def _load_mnms2(spec: Mapping[str, Any], root: Path) -> list[CaseRecord]:
    from napari_cinema.io.nifti import _first_existing, read_mnms2_cine, read_mnms_phases

    views = spec.get("views", ["sax", "lax_4c"])
    views = [views] if isinstance(views, str) else list(views)
    subjects = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if root.is_dir() and not subjects:
        subjects = [root]
    records = []
    for folder in subjects:
        sid = folder.name
        try:
            if "sax" in views:
                ed = _first_existing(folder, f"{sid}_SA_ED")
                if ed is not None:
                    study = read_mnms_phases(ed)
                    if study.labels is not None:
                        rec = _record_from_study(study, "mnms2", f"{sid}_sax", repeat=int(spec.get("repeat", 1)),
                                                 source_label_map=SOURCE_LABEL_MAPS["mnms2"])
                        records.append(_finish_targets(rec))
            if "lax_4c" in views:
                cine = _first_existing(folder, f"{sid}_LA_CINE")
                if cine is not None:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        study = read_mnms2_cine(cine)
                    study.view = "lax_4c"
                    rec = _record_from_study(study, "mnms2", f"{sid}_lax_4c", repeat=int(spec.get("repeat", 1)),
                                             source_label_map=SOURCE_LABEL_MAPS["mnms2"])
                    records.append(rec)
                elif (ed := _first_existing(folder, f"{sid}_LA_ED")) is not None:
                    study = read_mnms_phases(ed)
                    study.view = "lax_4c"
                    rec = _record_from_study(study, "mnms2", f"{sid}_lax_4c", repeat=int(spec.get("repeat", 1)),
                                             source_label_map=SOURCE_LABEL_MAPS["mnms2"])
                    records.append(rec)
        except (CineLoadError, ValueError) as exc:
            raise _wrap_load_error("mnms2", exc) from exc
    return records


# --------------------------------------------------------------------------------------------------
# Sunnybrook
# --------------------------------------------------------------------------------------------------

_CONTOUR = re.compile(r"^IM-\d+-(?P<inst>\d+)-(?P<kind>[io])contour-manual\.txt$")


def _read_contour(path: Path) -> np.ndarray:
    pts = []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            try:
                pts.append((float(parts[0]), float(parts[1])))
            except ValueError:
                raise DatasetError(f"{path}: not an 'x y' contour line: {line!r}") from None
    if len(pts) < 3:
        raise DatasetError(f"{path}: a contour needs at least 3 points, found {len(pts)}")
    return np.asarray(pts, np.float64)


def rasterise_contour(points_xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels (row, column) whose centres lie inside the closed polygon of ``x y`` points."""
    from matplotlib.path import Path as MplPath

    rows, cols = shape
    out = np.zeros((rows, cols), bool)
    x0, y0 = np.floor(points_xy.min(axis=0)).astype(int)
    x1, y1 = np.ceil(points_xy.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(cols - 1, x1), min(rows - 1, y1)
    if x1 < x0 or y1 < y0:
        return out
    yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    inside = MplPath(points_xy).contains_points(np.stack([xx.ravel(), yy.ravel()], axis=1), radius=1e-9)
    out[y0:y1 + 1, x0:x1 + 1] = inside.reshape(yy.shape)
    return out


def _instance_numbers(files: Sequence[Sequence[str]]) -> np.ndarray:
    """(t, z) InstanceNumber of every DICOM file (from the header, not the file name)."""
    import pydicom

    out = np.zeros((len(files), len(files[0])), np.int64)
    for t, row in enumerate(files):
        for z, f in enumerate(row):
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["InstanceNumber"])
            out[t, z] = int(ds.InstanceNumber)
    return out


def read_sunnybrook_patient(folder: str | Path) -> CaseRecord:
    """A Sunnybrook patient (``dicom/`` + ``contours/``) as a record with LV cavity / MYO labels.

    Labels are placed on the frames and slices that have contours: the i-contour fills the LV cavity,
    the o-contour minus the i-contour the myocardium. Frames with o-contours are ED (also checked
    against the larger cavity), the others ES. The RV is never labelled, and MYO only where an
    o-contour exists: ``frame_classes`` says so, so the loss ignores them.
    """
    from napari_cinema.io.dicom import read_dicom_cine

    folder = Path(folder)
    dicom_dir = folder / "dicom" if (folder / "dicom").is_dir() else folder
    contour_dir = folder / "contours"
    if not contour_dir.is_dir():
        raise DatasetError(f"sunnybrook {folder}: no contours/ folder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = read_dicom_cine(dicom_dir)
    if study.dicom is None or study.dicom.files is None:
        raise DatasetError(f"sunnybrook {folder}: the DICOM reader kept no file table")
    inst = _instance_numbers(study.dicom.files)
    where = {int(n): (t, z) for (t, z), n in np.ndenumerate(inst)}
    t_n, z_n, rows, cols = study.shape
    inner: dict[tuple[int, int], np.ndarray] = {}
    outer: dict[tuple[int, int], np.ndarray] = {}
    for sub in ("i-contours", "o-contours"):
        d = contour_dir / sub
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            m = _CONTOUR.match(f.name)
            if not m:
                continue
            n = int(m.group("inst"))
            if n not in where:
                raise DatasetError(f"{f}: InstanceNumber {n} is not an image of {dicom_dir}")
            mask = rasterise_contour(_read_contour(f), (rows, cols))
            (inner if m.group("kind") == "i" else outer)[where[n]] = mask
    if not inner:
        raise DatasetError(f"sunnybrook {folder}: no i-contour files in {contour_dir}")
    labels = np.zeros(study.shape, np.uint8)
    valid = np.zeros((t_n, z_n), bool)
    frames = sorted({t for t, _ in inner})
    for (t, z), m in outer.items():
        labels[t, z][m] = MYO
    for (t, z), m in inner.items():
        labels[t, z][m] = LV
        valid[t, z] = True
    for (t, z) in outer:
        if (t, z) not in inner:
            raise DatasetError(f"sunnybrook {folder}: an o-contour on frame {t} slice {z} without its i-contour")
    with_outer = {t for t, _ in outer}
    frame_classes = {t: ((0, MYO, LV) if t in with_outer else (0, LV)) for t in frames}
    lv = {t: float((labels[t] == LV).sum()) for t in frames}
    ed = max(with_outer, key=lambda t: lv[t]) if with_outer else max(frames, key=lambda t: lv[t])
    others = [t for t in frames if t != ed]
    es = min(others, key=lambda t: lv[t]) if others else None
    _, dz, dy, dx = study.spacing
    rec = CaseRecord(
        case_id=folder.name,
        source="sunnybrook",
        view="sax",
        image=study.image,
        spacing=(dz, dy, dx),
        labels=labels,
        labelled_frames=tuple(frames),
        frame_classes=frame_classes,
        valid=valid,
        ed_frame=ed,
        es_frame=es,
        source_label_map=SOURCE_LABEL_MAPS["sunnybrook"],
        path=str(folder),
    )
    rec.label_map = {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
    return rec


def _load_sunnybrook(spec: Mapping[str, Any], root: Path) -> list[CaseRecord]:
    if (root / "contours").is_dir():
        folders = [root]
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "contours").is_dir()) if root.is_dir() else []
    if spec.get("patients"):
        keep = {str(p) for p in spec["patients"]}
        folders = [f for f in folders if f.name in keep]
    records = []
    for f in folders:
        try:
            rec = read_sunnybrook_patient(f)
        except (CineLoadError, ValueError) as exc:
            raise _wrap_load_error("sunnybrook", exc) from exc
        rec.repeat = int(spec.get("repeat", 1))
        records.append(_finish_targets(rec))
    return records


# --------------------------------------------------------------------------------------------------
# phantoms
# --------------------------------------------------------------------------------------------------

_PHANTOM_RANGES = ("lvef", "edv_ml", "rvef", "heart_rate_bpm", "lvm_g")


def _load_phantom(spec: Mapping[str, Any], root: Path | None) -> list[CaseRecord]:
    from napari_cinema.sample_data.phantom import make_phantom

    view = str(spec.get("view", "sax"))
    n = int(spec.get("n", 8))
    seed0 = int(spec.get("seed", 0))
    fixed = {k: v for k, v in spec.items()
             if k not in ("type", "view", "n", "seed", "repeat", "name", "root", "path", *_PHANTOM_RANGES)}
    ranges = {k: spec[k] for k in _PHANTOM_RANGES if k in spec}
    defaults = {"lvef": [30.0, 72.0], "edv_ml": [100.0, 220.0]}
    for k, v in defaults.items():
        ranges.setdefault(k, v)
    records = []
    for i in range(n):
        rng = np.random.default_rng([seed0, i, 7919])
        params = dict(fixed)
        for k, v in ranges.items():
            if isinstance(v, (list, tuple)) and len(v) == 2:
                params[k] = float(rng.uniform(float(v[0]), float(v[1])))
            else:
                params[k] = float(v)
        params["seed"] = seed0 + i
        try:
            study, truth = make_phantom(view, **params)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"phantom source: {exc}") from exc
        rec = _record_from_study(study, "phantom", f"phantom_{view}_{seed0 + i}", repeat=int(spec.get("repeat", 1)),
                                 source_label_map=SOURCE_LABEL_MAPS["phantom"])
        rec.targets["ef"] = float(truth["LVEF_pct"])
        if "landmarks" in truth:
            rec.landmarks = {k: np.asarray(v, np.float64) for k, v in truth["landmarks"].items()}
        records.append(rec)
    return records


# --------------------------------------------------------------------------------------------------
# correction store
# --------------------------------------------------------------------------------------------------


def _store_record(store: Any, key: str, *, with_original: bool, repeat: int) -> CaseRecord:
    """The current version of one study of a correction store as a record (labels = the corrections)."""
    from napari_cinema.annotations.store import StoreError

    try:
        stored = store.load(key)
        if stored is None:
            raise DatasetError(f"correction store {store.root}: study {key} has no saved version")
        study = store.read_study(key, labels=False)
    except StoreError as exc:
        raise DatasetError(f"correction store {store.root}: {exc}") from None
    label_map = stored.label_map
    frames = tuple(stored.labelled_frames)
    _, dz, dy, dx = study.spacing
    rec = CaseRecord(
        case_id=key, source="store", view=study.view, image=study.image, spacing=(dz, dy, dx),
        labels=stored.final, labelled_frames=frames, ed_frame=study.ed_frame, es_frame=study.es_frame,
        label_map=label_map, source_label_map=label_map, path=str(stored.folder), repeat=repeat,
    )
    if rec.ed_frame is None and frames and len(frames) == rec.n_frames:
        # the whole cycle is labelled: ED and ES are the largest and smallest LV cavity
        lv = {t: int((stored.final[t] == LV).sum()) for t in frames}
        rec.ed_frame, rec.es_frame = max(lv, key=lv.get), min(lv, key=lv.get)
    if with_original:
        rec.targets["original_labels"] = stored.original
    rec.targets["provenance"] = stored.provenance
    rec.targets["store_version"] = stored.version
    return _finish_targets(rec)


def _load_store(spec: Mapping[str, Any], root: Path) -> list[CaseRecord]:
    """A napari-cinema correction store (napari_cinema.annotations.store): the current version of each
    study, its labelled frames the edited ones. Options: ``cases: [keys]`` (only these), ``exclude:
    [keys]`` (held out, e.g. for validation), ``with_original`` (the stored model output in
    ``targets['original_labels']``, for scoring it against the corrections)."""
    from napari_cinema.annotations.store import CorrectionStore, StoreError, is_store

    if not is_store(root):
        raise DatasetError(f"correction store {root}: not a correction store (no store.json, no study folder "
                           "with current.json and versions/)")
    store = CorrectionStore(root)
    try:
        keys = store.keys()
    except (StoreError, OSError) as exc:
        raise DatasetError(f"correction store {root}: {exc}") from None
    for opt in ("cases", "exclude"):
        if isinstance(spec.get(opt), str):
            raise DatasetError(f"correction store {root}: {opt} must be a list of study keys, got {spec[opt]!r}")
    if spec.get("cases") is not None:
        wanted = [str(k) for k in spec["cases"]]
        missing = [k for k in wanted if k not in keys]
        if missing:
            raise DatasetError(f"correction store {root}: no study {', '.join(missing)} "
                               f"(the store holds {', '.join(keys) or 'none'})")
        keys = [k for k in keys if k in wanted]
    excluded = {str(k) for k in spec.get("exclude") or []}
    keys = [k for k in keys if k not in excluded]
    return [_store_record(store, k, with_original=bool(spec.get("with_original", False)),
                         repeat=int(spec.get("repeat", 1))) for k in keys]


# --------------------------------------------------------------------------------------------------
# CSV targets and plain studies
# --------------------------------------------------------------------------------------------------


def _ed_es_guess(study: CineStudy) -> tuple[int | None, int | None]:
    if study.ed_frame is not None:
        return study.ed_frame, study.es_frame
    if study.labels is not None and len(study.labelled_frames) >= 2:
        lv = {t: int((study.labels[t] == LV).sum()) for t in study.labelled_frames}
        return max(lv, key=lv.get), min(lv, key=lv.get)
    return None, None


def _load_csv(spec: Mapping[str, Any], root: Path) -> list[CaseRecord]:
    from napari_cinema.io.load import load_study

    path_col = str(spec.get("path_column", "path"))
    target_col = str(spec.get("target_column", "target"))
    target_name = str(spec.get("target", target_col))
    kind = str(spec.get("kind", "regression"))
    if kind not in ("classification", "regression"):
        raise DatasetError(f"csv source {root}: kind must be classification or regression, not {kind!r}")
    if not root.is_file():
        raise DatasetError(f"csv source {root}: no such file")
    with root.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and (path_col not in rows[0] or target_col not in rows[0]):
        raise DatasetError(f"{root}: needs columns {path_col!r} and {target_col!r}, has {list(rows[0])}")
    records = []
    for i, row in enumerate(rows, start=2):
        p = Path(row[path_col])
        if not p.is_absolute():
            p = root.parent / p
        try:
            study = load_study(p)
        except CineLoadError as exc:
            raise DatasetError(f"{root} line {i}: {exc}") from exc
        if row.get("view"):
            study.view = row["view"]
        raw = row[target_col].strip()
        if kind == "regression":
            try:
                value: Any = float(raw)
            except ValueError:
                raise DatasetError(f"{root} line {i}: target {raw!r} is not a number") from None
            if not math.isfinite(value):
                raise DatasetError(f"{root} line {i}: target {raw!r} is not finite")
        else:
            value = raw
        rec = _record_from_study(study, "csv", f"{p.name}", repeat=int(spec.get("repeat", 1)))
        ed, es = _ed_es_guess(study)
        if row.get("ed_frame"):
            ed = int(row["ed_frame"])
        if row.get("es_frame"):
            es = int(row["es_frame"])
        rec.ed_frame, rec.es_frame = ed, es
        rec.targets[target_name] = value
        records.append(rec)
    return records


def _load_studies(spec: Mapping[str, Any], root: Path | None, base: Path | None) -> list[CaseRecord]:
    from napari_cinema.io.load import load_studies

    patterns = spec.get("paths") or ([str(root)] if root is not None else [])
    if isinstance(patterns, str):
        patterns = [patterns]
    paths: list[Path] = []
    for pat in patterns:
        full = pat if os.path.isabs(pat) or base is None else str(base / pat)
        hits = sorted(glob.glob(full)) if any(c in pat for c in "*?[") else [full]
        paths.extend(Path(h) for h in hits)
    records = []
    for p in paths:
        try:
            studies = load_studies(p)
        except (CineLoadError, ValueError) as exc:
            raise _wrap_load_error("studies", exc) from exc
        for k, study in enumerate(studies):
            if study.view == "unknown" and spec.get("view"):
                study.view = str(spec["view"])
            rec = _record_from_study(study, "studies", f"{p.name}#{k}" if len(studies) > 1 else p.name,
                                     repeat=int(spec.get("repeat", 1)))
            records.append(rec)
    return records


# --------------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------------

SOURCE_TYPES: dict[str, Callable[..., list[CaseRecord]]] = {
    "acdc": _load_acdc,
    "mnms": _load_mnms,
    "mnms2": _load_mnms2,
    "sunnybrook": _load_sunnybrook,
    "phantom": _load_phantom,
    "store": _load_store,
    "csv": _load_csv,
    "studies": _load_studies,
}


def describe_source(spec: Mapping[str, Any]) -> str:
    kind = spec.get("type", "?")
    where = spec.get("root") or spec.get("path") or spec.get("paths")
    extra = f", split {spec['split']}" if spec.get("split") else ""
    if kind == "phantom":
        return f"phantom {spec.get('view', 'sax')} x{spec.get('n', 8)} (seed {spec.get('seed', 0)})"
    return f"{kind} at {where}{extra}"


def load_source(spec: Mapping[str, Any], base: Path | None = None) -> list[CaseRecord]:
    """Read one source spec (a mapping with ``type``) into records; DatasetError names the problem."""
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise DatasetError(f"a data source must be a mapping with a 'type' key, got {spec!r}")
    kind = str(spec["type"]).lower()
    if kind not in SOURCE_TYPES:
        raise DatasetError(f"unknown data source type {kind!r}; known: {', '.join(sorted(SOURCE_TYPES))}")
    where = spec.get("root", spec.get("path"))
    root: Path | None = None
    if where is not None:
        root = Path(os.path.expanduser(str(where)))
        if not root.is_absolute() and base is not None:
            root = base / root
    if kind not in ("phantom", "studies"):
        if root is None:
            raise DatasetError(f"data source {kind}: give its folder as root:")
        if not root.exists():
            raise DatasetError(f"data source {describe_source(spec)}: {root} does not exist")
    if kind == "studies":
        records = _load_studies(spec, root, base)
    else:
        records = SOURCE_TYPES[kind](spec, root)
    if not records:
        raise DatasetError(f"data source {describe_source(spec)}: no usable cases found in {root}")
    if spec.get("view_override"):
        for r in records:
            r.view = str(spec["view_override"])
    return records


def load_sources(specs: Iterable[Mapping[str, Any]], base: Path | None = None, *,
                 what: str = "data") -> list[CaseRecord]:
    """Read every source; DatasetError when the result is empty."""
    specs = list(specs or [])
    if not specs:
        raise DatasetError(f"{what}: no data sources given")
    records: list[CaseRecord] = []
    for i, spec in enumerate(specs):
        try:
            records.extend(load_source(spec, base))
        except DatasetError as exc:
            raise DatasetError(f"{what}[{i}]: {exc}") from exc
    return records


def records_summary(records: Sequence[CaseRecord]) -> dict[str, Any]:
    """Counts per source and view, for cards and logs."""
    out: dict[str, Any] = {}
    for r in records:
        key = f"{r.source}/{r.view}"
        out.setdefault(key, {"cases": 0, "labelled_frames": 0, "frames": 0})
        out[key]["cases"] += 1
        out[key]["labelled_frames"] += len(r.labelled_frames)
        out[key]["frames"] += r.n_frames
    return out


def with_view(record: CaseRecord, view: str) -> CaseRecord:
    return replace(record, view=view)
