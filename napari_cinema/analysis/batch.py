"""Whole-study analysis (:func:`analyze_study`) and resumable, parallel batch runs (:func:`run_batch`).

Batch layout (``napari-cinema analyze PATH... --out DIR``)::

    DIR/<study>/report.json   written last: its presence means the study is finished
    DIR/<study>/volumes.csv
    DIR/<study>/report.pdf
    DIR/<study>/labels.nii.gz + labels.json   only when a segmentation model produced the labels
    DIR/<study>/error.txt     only when the study failed (the traceback); removed on success
    DIR/summary.csv           one row per study: status ok | failed | pending, error, key measures
    DIR/summary_rank<r>.csv   with several ranks: the rows each rank processed

Resuming: a study whose ``report.json`` exists is skipped; a failed one is tried again.

Parallelism: ``processes > 1`` runs studies in a ``ProcessPoolExecutor`` with the *spawn* start method
(safe with torch and threads). Sharding across ``torchrun`` ranks: ``rank``/``world_size`` (default:
the ``RANK``/``WORLD_SIZE`` environment variables) make each rank take ``studies[rank::world_size]``;
every rank writes ``summary_rank<r>.csv`` for its own rows and then rebuilds ``summary.csv`` from the
study folders (atomic replace), so whichever rank finishes last leaves the complete table, and if
``torch.distributed`` is initialised the ranks meet at a barrier and rank 0 alone writes it. Running the
same command again (everything finished is skipped) or :func:`write_summary` rebuilds it at any time.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .. import __version__
from ..io.labels import LABEL_NAMES
from ..io.study import CineStudy
from ..io.writers import atomic_path
from .aha import aha_wall_thickness
from .coverage import coverage_warnings
from .cycle import detect_ed_es, filling_rates, frame_times_ms, heart_rate
from .landmarks import READ_OFF_LABELS, SEGMENTATION_LANDMARK_VIEWS, landmarks_by_name, landmarks_over_frames, mapse
from .measures import (
    MYO_DENSITY_G_PER_ML,
    body_size_problems,
    bsa_mosteller,
    ejection_fraction,
    labelled_frames,
    spacing_problem,
    structure_volumes,
    voxel_counts,
)
from .reference_ranges import flag_measures
from .report import CORE_FIELDS, INDEXED_FIELDS, Report, now_iso, write_report

LAX_VIEWS = ("lax_2c", "lax_3c", "lax_4c")


# ------------------------------------------------------------------------------------------------
# one study
# ------------------------------------------------------------------------------------------------

def _check_labels(study: CineStudy, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 3 and study.n_frames == 1:
        labels = labels[None]
    if labels.shape != study.image.shape:
        raise ValueError(f"labels shape {labels.shape} does not match the study image {study.image.shape} "
                         f"(t, z, y, x)")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("labels hold non-integer values")
    values = [int(v) for v in np.unique(labels)]
    extra = [v for v in values if v not in LABEL_NAMES]
    if extra:
        raise ValueError(f"label values {extra} are not in the label map {LABEL_NAMES}")
    return labels.astype(np.uint8, copy=False)


def _study_info(study: CineStudy, frames: list[int]) -> dict[str, Any]:
    dt, dz, dy, dx = study.spacing
    return {
        "name": study.name,
        "source": study.source,
        "description": study.description,
        "view": study.view,
        "shape_tzyx": list(study.shape),
        "n_frames": study.n_frames,
        "n_slices": study.n_slices,
        "spacing_mm": {"dz": dz, "dy": dy, "dx": dx},
        "frame_interval_ms": dt,
        "labelled_frames": frames,
        "acquired_frame_numbers": None if study.frame_numbers is None else list(study.frame_numbers),
        "study_ed_frame": study.ed_frame,
        "study_es_frame": study.es_frame,
        "dicom_study_uid": None if study.dicom is None else study.dicom.study_instance_uid,
    }


def analyze_study(study: CineStudy, labels: np.ndarray | None = None, *, model_info: Mapping[str, Any] | None = None,
                  height_cm: float | None = None, weight_kg: float | None = None, ed_frame: int | None = None,
                  es_frame: int | None = None, landmarks: Mapping[str, Any] | None = None,
                  landmarks_source: str = "given", probabilities: Mapping[str, float] | None = None,
                  ef_regression: Any = None, aha: bool = True, rate_lowpass: tuple[float, float] | None = None) -> Report:
    """Analyse one study's labels: volumes per frame, ED/ES, EF, mass, BSA and indexed values, heart
    rate and cardiac output, ejection/filling rates, MAPSE (with LAX ``landmarks``), AHA wall thickness,
    coverage checks and reference-range flags.

    ``labels`` (t, z, y, x) default to ``study.labels``; a frame that is all background counts as not
    labelled (its volumes are null). ``height_cm``/``weight_kg`` override the patient data; ``ed_frame``/
    ``es_frame`` override the detection (max/min LV volume). ``landmarks`` maps ``mv_1``/``mv_2``/``apex``
    to (z, y, x) points per frame (``landmarks_source`` says where they came from; without them, 2- and
    4-chamber labels give their own, :data:`~.landmarks.READ_OFF_LABELS`). ``probabilities`` ({class: p})
    and ``ef_regression`` (a number or a dict) from models are carried into the report. Bad input never gives NaN: values that cannot be
    computed are None with a reason in ``report.null_reasons``. Raises ValueError only when the labels
    do not fit the study (shape, unknown label values) or are missing.
    """
    if labels is None:
        labels = study.labels
        declared = study.labelled_frames
    else:
        declared = study.labelled_frames if labels is study.labels else None
    if labels is None:
        raise ValueError("no labels: the study carries none and none were given")
    labels = _check_labels(study, labels)
    frames = labelled_frames(labels, declared)
    report = Report(study=_study_info(study, frames))
    report.provenance = {"software": "napari-cinema", "version": __version__, "created": now_iso(),
                         "myocardial_density_g_ml": MYO_DENSITY_G_PER_ML,
                         "label_map": {str(k): v for k, v in LABEL_NAMES.items()},
                         "contouring_convention": "papillary muscles and trabeculae as labelled (ACDC/CineMA "
                                                  "labels put them in the LV cavity)"}
    report.model = dict(model_info) if model_info else {"id": None, "description": "origin of the labels not given"}
    n = study.n_frames

    # -- patient -------------------------------------------------------------------------------
    p = study.patient
    h = height_cm if height_cm is not None else p.height_cm
    w = weight_kg if weight_kg is not None else p.weight_kg
    report.patient = {"patient_id": p.patient_id, "sex": p.sex, "age_years": p.age_years, "height_cm": h,
                      "weight_kg": w, "group": p.group,
                      "height_weight_source": "given" if (height_cm is not None or weight_kg is not None)
                      else ("study" if (p.height_cm or p.weight_kg) else None)}

    # -- volumes ---------------------------------------------------------------------------------
    if not frames:
        report.warn("the label map is empty (no frame holds any label)")
    is_lax = study.view in LAX_VIEWS
    sp_problem = spacing_problem(study.spacing)
    vols: dict[str, np.ndarray] | None = None
    if sp_problem:
        report.warn(f"{sp_problem}: no volumes, mass or rates")
    else:
        vols = structure_volumes(labels, study.spacing, frames)
        _, dz, dy, dx = study.spacing
        if dz == 1.0 and dy == 1.0 and dx == 1.0 and not is_lax:
            report.warn("voxel size is exactly 1 x 1 x 1 mm: check that the file carries the real spacing "
                        "(volumes assume it)")
    counts = voxel_counts(labels)
    lv_curve = np.full(n, np.nan)
    lv_curve[frames] = counts["LV"][frames]  # voxel counts drive ED/ES detection in every view
    times, time_reason = frame_times_ms(study)

    volumes_json: dict[str, Any] = {"frame": list(range(n)),
                                    "time_ms": None if times is None else [round(float(t), 3) for t in times]}
    if study.frame_numbers is not None:
        volumes_json["acquired_frame"] = list(study.frame_numbers)
    for name in ("LV", "RV", "MYO"):
        if vols is not None and not is_lax:
            volumes_json[f"{name}_ml"] = [None if not np.isfinite(v) else round(float(v), 4) for v in vols[name]]
        else:
            volumes_json[f"{name}_ml"] = [None] * n
    if is_lax or study.n_slices == 1:
        _, _, dy, dx = study.spacing
        for name in ("LV", "RV", "MYO"):
            volumes_json[f"{name}_area_mm2"] = [round(float(counts[name][t] * dy * dx), 3) if t in frames else None
                                                for t in range(n)]
    report.volumes = volumes_json
    if len(frames) and len(frames) < n:
        report.warn(f"labels on {len(frames)} of {n} frames ({', '.join(map(str, frames[:10]))}"
                    f"{', ...' if len(frames) > 10 else ''}); other frames are not analysed")

    # -- ED / ES -----------------------------------------------------------------------------------
    ed, es, source, problems = detect_ed_es(lv_curve, ed_frame=ed_frame, es_frame=es_frame)
    for prob in problems:
        report.warn(prob)
    for key, f, declared_f in (("ED", ed, study.ed_frame), ("ES", es, study.es_frame)):
        if f is not None and declared_f is not None and f != declared_f and "manual" not in source:
            report.warn(f"{key} detected at frame {f} but the study declares frame {declared_f}")
    report.cycle = {"ed_es_source": source, "frame_times_ms": volumes_json["time_ms"],
                    "frame_timing": "known" if times is not None else time_reason}
    report.set("ED_frame", ed, "; ".join(problems) or "ED frame unknown")
    report.set("ES_frame", es, "; ".join(problems) or "ES frame unknown")
    if study.frame_numbers is not None:
        report.cycle["ED_acquired_frame"] = None if ed is None else int(study.frame_numbers[ed])
        report.cycle["ES_acquired_frame"] = None if es is None else int(study.frame_numbers[es])

    # -- EDV, ESV, SV, EF, mass ----------------------------------------------------------------------
    def vol_reason() -> str | None:
        if is_lax:
            return f"{study.view} is a long-axis view: ventricular volumes need a short-axis stack"
        if sp_problem:
            return sp_problem
        return None

    base_reason = vol_reason()
    for side, name in (("LV", "LV"), ("RV", "RV")):
        edv = esv = None
        edv_reason = esv_reason = base_reason
        if base_reason is None:
            if ed is None:
                edv_reason = "ED frame unknown (" + ("; ".join(problems) or "no labels") + ")"
            elif vols[name][ed] > 0:
                edv = float(vols[name][ed])
            else:
                edv_reason = f"no {name} cavity label at ED (frame {ed})"
            if es is None:
                esv_reason = "ES frame unknown (" + ("; ".join(problems) or "no labels") + ")"
            elif ed is not None and es == ed:
                esv_reason = "ES is the same frame as ED"
            elif vols[name][es] > 0:
                esv = float(vols[name][es])
            else:
                esv_reason = f"no {name} cavity label at ES (frame {es})"
        report.set(f"{side}EDV_ml", edv, edv_reason)
        report.set(f"{side}ESV_ml", esv, esv_reason)
        sv = None if edv is None or esv is None else edv - esv
        report.set(f"{side}SV_ml", sv, edv_reason or esv_reason)
        ef = ejection_fraction(edv, esv)
        report.set(f"{side}EF_pct", ef, edv_reason or esv_reason or "EDV is zero")
        if ef is not None and not 0 <= ef <= 100:
            report.warn(f"{side} EF {ef:.1f} % is outside 0-100 %: ES volume larger than ED volume")
    mass = None
    mass_reason = base_reason
    if base_reason is None:
        if ed is None:
            mass_reason = "ED frame unknown"
        elif vols["MYO"][ed] > 0:
            mass = MYO_DENSITY_G_PER_ML * float(vols["MYO"][ed])
        else:
            mass_reason = f"no myocardium label at ED (frame {ed})"
    report.set("LVM_g", mass, mass_reason)

    # -- body size -----------------------------------------------------------------------------------
    size_problems = body_size_problems(h, w)
    bsa = bsa_mosteller(h, w)
    if bsa is None:
        reason = "; ".join(size_problems)
        if h is not None or w is not None:
            report.warn(f"body size not usable: {reason}; indexed values are not given")
        report.set("BSA_m2", None, reason)
    else:
        report.set("BSA_m2", bsa)
    for key in INDEXED_FIELDS:
        src = key.replace("_m2", "")
        val = report.get(src)
        if bsa is None:
            report.set(key, None, "body surface area unknown (" + "; ".join(size_problems) + ")")
        elif val is None:
            report.set(key, None, report.null_reasons.get(src, "not computable"))
        else:
            report.set(key, val / bsa)

    # -- heart rate, cardiac output ----------------------------------------------------------------------
    full_curve = None
    if vols is not None and not is_lax and len(frames) == n:
        full_curve = vols["LV"]
    hr, hr_how = heart_rate(study, full_curve if full_curve is not None else None)
    if hr is None:
        report.set("HR_bpm", None, f"heart rate unknown: {hr_how}")
    else:
        report.set("HR_bpm", hr)
        report.cycle["HR_source"] = hr_how
        if hr_how.startswith("frame timing"):
            report.warn(f"heart rate estimated from {hr_how}")
    sv = report.get("LVSV_ml")
    if hr is None or sv is None:
        report.set("CO_l_min", None, report.null_reasons.get("HR_bpm") if hr is None else
                   report.null_reasons.get("LVSV_ml", "LV stroke volume unknown"))
    else:
        report.set("CO_l_min", sv * hr / 1000.0)
    co = report.get("CO_l_min")
    if co is not None and bsa is not None:
        report.set("CI_l_min_m2", co / bsa)
    else:
        report.set("CI_l_min_m2", None, "cardiac output unknown" if co is None else "body surface area unknown")

    # -- ejection and filling rates ------------------------------------------------------------------------
    rate_keys = ("PER_ml_s", "PFR_early_ml_s", "PFR_late_ml_s")
    if base_reason is not None:
        for k in rate_keys:
            report.set(k, None, base_reason)
    else:
        rr = filling_rates(vols["LV"], times, ed, es, lowpass=rate_lowpass)
        for k in rate_keys:
            report.set(k, getattr(rr, k), rr.reasons.get(k))
        if "timing" in rr.reasons:
            report.warn(rr.reasons["timing"])
        report.rates = {k: getattr(rr, k) for k in ("PER_ml_s", "PER_time_ms", "PFR_early_ml_s",
                                                     "PFR_early_time_ms", "PFR_late_ml_s", "PFR_late_time_ms",
                                                     "lowpass_harmonics")}
        report.rates["method"] = ("derivative of the periodic Fourier series of the LV volume curve, raised-cosine "
                                  "low-pass between the two harmonics in lowpass_harmonics")
        if rr.curve is not None:
            report.curves = {"fine_t_ms": rr.fine_t_ms, "smooth_ml": rr.curve.value(rr.fine_t_ms),
                             "dvdt_ml_s": rr.curve.derivative_per_ms(rr.fine_t_ms) * 1000.0}
    e_, a_ = report.get("PFR_early_ml_s"), report.get("PFR_late_ml_s")
    report.set("PFR_E_A_ratio", None if e_ is None or not a_ else e_ / a_,
               "early and late filling peaks not both found")

    # -- landmarks: MAPSE --------------------------------------------------------------------------------
    if landmarks is not None or is_lax:
        source = landmarks_source
        if landmarks is None and study.view in SEGMENTATION_LANDMARK_VIEWS and frames and not sp_problem:
            # none given: read the mitral hinges and apex off the labels (the engine does the same)
            _, _, dy, dx = study.spacing
            landmarks = landmarks_by_name(landmarks_over_frames(labels, study.view, (dy, dx))[0])
            if landmarks is not None:
                source = READ_OFF_LABELS
        if landmarks is None:
            res = {k: None for k in ("MAPSE_mm", "MAPSE_mv_1_mm", "MAPSE_mv_2_mm", "LV_length_ED_mm",
                                     "LV_length_ES_mm", "LV_long_axis_shortening_pct")}
            reasons = {k: "no long-axis landmarks given" for k in res}
        else:
            res = mapse(study, landmarks, ed, es)
            reasons = res.pop("null_reasons")
            report.landmarks = dict(res, source=source)
        for k in ("MAPSE_mm", "MAPSE_mv_1_mm", "MAPSE_mv_2_mm", "LV_length_ED_mm", "LV_length_ES_mm",
                  "LV_long_axis_shortening_pct"):
            report.set(k, res.get(k), reasons.get(k))

    # -- AHA segments ------------------------------------------------------------------------------------
    if aha and study.view in ("sax", "unknown") and study.n_slices >= 3 and ed is not None and not sp_problem:
        try:
            a = aha_wall_thickness(study, labels, ed, es)
        except Exception as exc:  # a geometry corner case must not lose the whole report
            a = {"segments": None, "reason": f"AHA analysis failed: {type(exc).__name__}: {exc}"}
        for wmsg in a.pop("warnings", []):
            report.warn(wmsg)
        report.aha = a
    elif aha and study.view == "sax":
        report.aha = {"segments": None, "reason": "ED frame unknown or fewer than 3 slices"}

    # -- coverage and sanity ---------------------------------------------------------------------------
    for wmsg in coverage_warnings(labels, frames, ed_frame=ed, es_frame=es,
                                  view="sax" if study.view in ("sax", "unknown") else study.view):
        report.warn(wmsg)

    # -- reference ranges -------------------------------------------------------------------------------
    report.flags = flag_measures(report.measures, p.sex, p.age_years)
    out_of_range = [f"{k} {report.measures[k]:.1f} is {f['flag']} (range {f['range'][0]}-{f['range'][1]}, "
                    f"{f['source']})" for k, f in report.flags.items() if f.get("flag") in ("low", "high")]
    report.cycle["out_of_range"] = out_of_range
    if p.sex is None and report.flags:
        report.cycle["reference_note"] = "sex unknown: flags use the union of the male and female ranges"

    # -- model outputs --------------------------------------------------------------------------------
    if probabilities:
        report.probabilities = {str(k): float(v) for k, v in dict(probabilities).items()
                                if v is not None and np.isfinite(float(v))}
    if ef_regression is not None:
        if isinstance(ef_regression, Mapping):
            report.ef_regression = dict(ef_regression)
        else:
            value = getattr(ef_regression, "value", ef_regression)
            report.ef_regression = {"LVEF_pct": float(value)}
    return report


# ------------------------------------------------------------------------------------------------
# label sources (picklable, for worker processes)
# ------------------------------------------------------------------------------------------------

class StudyLabels:
    """Use the labels the study carries (``--labels auto``): ACDC/M&Ms ``_gt`` files, a phantom's
    ``<name>_gt.nii.gz``."""

    def __call__(self, path: Path, study: CineStudy):
        if study.labels is None:
            raise ValueError("the study carries no labels (no _gt file beside it); give --labels FILE/DIR or --model")
        return study.labels, {"id": "study-labels", "description": f"labels shipped with {Path(path).name}",
                              "labelled_frames": list(study.labelled_frames)}


class LabelsFromFile:
    """One label NIfTI for one study (``--labels FILE``)."""

    def __init__(self, path: str | Path, convention: str = "cinema"):
        self.path = Path(path)
        self.convention = convention

    def __call__(self, path: Path, study: CineStudy):
        from ..io.nifti import read_label_nifti

        labels = read_label_nifti(self.path, self.convention, like=study)
        return labels, {"id": f"labels:{self.path.name}", "description": f"labels from {self.path}",
                        "convention": self.convention}


class LabelsFromFolder:
    """Label NIfTIs in a folder, matched by study name (``--labels DIR``): ``DIR/<name>.nii.gz``,
    ``DIR/<name>_gt.nii.gz``, ``DIR/<name>_labels.nii.gz`` or ``DIR/<name>/labels.nii.gz``, where name is
    the batch name of the study or the stem of its file."""

    def __init__(self, folder: str | Path, convention: str = "cinema"):
        self.folder = Path(folder)
        self.convention = convention

    def candidates(self, path: Path, study: CineStudy) -> list[Path]:
        from ..io.nifti import strip_nifti_suffix

        names = []
        for n in (study_name(path), strip_nifti_suffix(Path(path).name), study.name):
            if n and n not in names:
                names.append(n)
        out = []
        for n in names:
            for rel in (f"{n}.nii.gz", f"{n}.nii", f"{n}_gt.nii.gz", f"{n}_gt.nii", f"{n}_labels.nii.gz",
                        f"{n}/labels.nii.gz"):
                out.append(self.folder / rel)
        return out

    def __call__(self, path: Path, study: CineStudy):
        from ..io.nifti import read_label_nifti

        for c in self.candidates(path, study):
            if c.is_file():
                labels = read_label_nifti(c, self.convention, like=study)
                return labels, {"id": f"labels:{c.name}", "description": f"labels from {c}",
                                "convention": self.convention}
        tried = ", ".join(p.name for p in self.candidates(path, study)[:4])
        raise FileNotFoundError(f"no label file for this study in {self.folder} (tried {tried}, ...)")


class EngineSegmenter:
    """Run a registered segmentation model on each study (``--model ID``); lazy imports so that the
    analysis core works without torch. The loaded model is cached per process, never pickled."""

    def __init__(self, model_id: str | None = None, device: str = "auto"):
        self.model_id = model_id
        self.device = device
        self._loaded: dict[str, Any] = {}

    def __getstate__(self):
        return {"model_id": self.model_id, "device": self.device}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._loaded = {}

    @staticmethod
    def check_available() -> None:
        try:
            import napari_cinema.engine  # noqa: F401
            from napari_cinema.model import registry  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(f"segmentation model support not installed ({exc}); "
                               f"analyse existing labels with --labels FILE|DIR|auto") from exc

    def __call__(self, study: CineStudy):
        self.check_available()
        from napari_cinema.engine import run_segmentation
        from napari_cinema.model import registry

        model_id = self.model_id or registry.find_default("segmentation", study.view)
        if model_id is None:
            raise RuntimeError(f"no segmentation model available for view {study.view}; "
                               f"download one (napari-cinema models list)")
        if model_id not in self._loaded:
            self._loaded[model_id] = registry.load_model(model_id, device="cpu")
        result = run_segmentation(study, self._loaded[model_id], device=self.device)
        info = {"id": model_id, **{k: v for k, v in dict(result.provenance).items()
                                   if isinstance(v, (str, int, float, bool, type(None)))}}
        return result.labels, info


# ------------------------------------------------------------------------------------------------
# finding studies and naming them
# ------------------------------------------------------------------------------------------------

_MNMS_IMAGE = re.compile(r"^(?P<id>.+?)_(?P<view>sa|SA|la|LA)_(?P<phase>ED|ES)\.nii(\.gz)?$")
GENERIC_NAMES = {"dicom", "dcm", "images", "image", "cine", "sax", "study", "data", "series"}


def study_name(path: str | Path) -> str:
    """A folder-safe name for a study path: the file stem (no .nii.gz) or the folder name; generic
    folder names (``dicom``) get their parent's name in front."""
    from ..io.nifti import strip_nifti_suffix

    p = Path(path)
    name = strip_nifti_suffix(p.name) if not p.is_dir() else p.name
    if name.lower() in GENERIC_NAMES and p.parent.name:
        name = f"{p.parent.name}_{name}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "study"
    return name


def unique_names(paths: Sequence[Path]) -> list[str]:
    names = [study_name(p) for p in paths]
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    out = []
    used: set[str] = set()
    for p, n in zip(paths, names):
        if seen[n] > 1:
            n = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{Path(p).parent.name}_{n}")
        base, k = n, 2
        while n in used:
            n, k = f"{base}_{k}", k + 1
        used.add(n)
        out.append(n)
    return out


def _single_image(folder: Path) -> Path | None:
    """The one NIfTI image of a plain study folder (not ACDC, no DICOM), else None."""
    from ..io.nifti import is_acdc_patient, is_label_file, is_nifti

    if not folder.is_dir() or is_acdc_patient(folder):
        return None
    try:
        images = [f for f in folder.iterdir() if f.is_file() and is_nifti(f) and not is_label_file(f)]
    except OSError:
        return None
    return images[0] if len(images) == 1 else None


def load_for_batch(path: str | Path) -> CineStudy:
    """Load a discovered study. A folder with one NIfTI image is read through that file, so the labels
    saved beside it (``<name>_gt.nii.gz``) come along as they do when the file is opened."""
    from ..io.load import load_study

    p = Path(path)
    image = _single_image(p)
    return load_study(image if image is not None else p)


def discover_studies(paths: Iterable[str | Path]) -> list[Path]:
    """Expand the command-line paths into studies.

    A file is a study. A folder is one study when napari-cinema reads it as one (an ACDC patient folder,
    a DICOM series folder, a folder with one NIfTI image); otherwise each NIfTI image in it (not ``_gt``
    label files; of an M&Ms ED/ES pair only the ED file) and each sub-folder that holds a study is one.
    Order is sorted and deterministic (resuming and sharding rely on it).
    """
    from ..io.load import looks_like_dicom, study_kind
    from ..io.nifti import NIFTI_SUFFIXES, is_acdc_patient, is_label_file, is_nifti

    out: list[Path] = []

    def is_study_folder(d: Path) -> bool:
        if is_acdc_patient(d):
            return True
        try:
            entries = list(d.iterdir())
        except OSError:
            return False
        files = [e for e in entries if e.is_file()]
        if any(looks_like_dicom(f) for f in files[:50]):
            return True
        images = [f for f in files if is_nifti(f) and not is_label_file(f)]
        return len(images) == 1

    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            out.append(p)
            continue
        if is_study_folder(p):
            out.append(p)
            continue
        found: list[Path] = []
        for e in sorted(p.iterdir()):
            if e.is_file() and is_nifti(e) and not is_label_file(e):
                m = _MNMS_IMAGE.match(e.name)
                if m and m.group("phase") == "ES" and any(
                        (e.parent / f"{m.group('id')}_{m.group('view')}_ED{s}").is_file() for s in NIFTI_SUFFIXES):
                    continue  # the ED file of the pair opens both phases
                found.append(e)
            elif e.is_dir() and (is_study_folder(e) or study_kind(e) is not None):
                found.append(e)
        out.extend(found if found else [p])
    return out


# ------------------------------------------------------------------------------------------------
# the batch
# ------------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("study", "status", "error", "path") + CORE_FIELDS + INDEXED_FIELDS + (
    "BSA_m2", "HR_bpm", "CO_l_min", "PER_ml_s", "PFR_early_ml_s", "PFR_late_ml_s", "MAPSE_mm", "n_warnings", "model")


@dataclass
class BatchResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # this run's rows (status ok|failed|skipped)
    summary_path: Path | None = None
    rank: int = 0
    world_size: int = 1

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)

    @property
    def n_ok(self) -> int:
        return self.count("ok")

    @property
    def n_failed(self) -> int:
        return self.count("failed")

    @property
    def n_skipped(self) -> int:
        return self.count("skipped")


@dataclass
class _Job:
    path: Path
    name: str
    out_dir: Path
    labels_for: Any
    segmenter: Any
    analysis: dict[str, Any]
    pdf: bool


def _process(job: _Job) -> dict[str, Any]:
    """Analyse one study into ``job.out_dir``; never raises (a failure is returned and kept on disk)."""
    import warnings as _w

    from .export import export_labels_nifti

    folder = job.out_dir / job.name
    row: dict[str, Any] = {"study": job.name, "path": str(job.path), "status": "ok", "error": ""}
    try:
        with _w.catch_warnings():
            _w.simplefilter("ignore")
            study = load_for_batch(job.path)
        info: dict[str, Any] | None = None
        if job.segmenter is not None:
            got = job.segmenter(study)
            labels, info = got if isinstance(got, tuple) else (got, getattr(job.segmenter, "model_info", None))
            info = dict(info or {"id": getattr(job.segmenter, "model_id", "model")})
            folder.mkdir(parents=True, exist_ok=True)
            export_labels_nifti(folder / "labels.nii.gz", labels, study, model_info=info)
        else:
            resolver = job.labels_for or StudyLabels()
            got = resolver(job.path, study)
            labels, info = got if isinstance(got, tuple) else (got, {"id": "labels"})
            if isinstance(labels, (str, Path)):
                from ..io.nifti import read_label_nifti

                labels = read_label_nifti(labels, "cinema", like=study)
        report = analyze_study(study, labels, model_info=info, **job.analysis)
        write_report(report, folder, pdf=job.pdf)
        err = folder / "error.txt"
        if err.exists():
            err.unlink()
        row.update(report.summary_row())
    except Exception as exc:  # recorded, never stops the batch
        row["status"] = "failed"
        row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / "error.txt") as tmp:
                tmp.write_text(f"{job.path}\n{row['error']}\n\n{traceback.format_exc()}")
        except OSError:
            pass
    return row


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _row_from_disk(name: str, path: Path | None, out_dir: Path) -> dict[str, Any]:
    import json

    folder = out_dir / name
    row: dict[str, Any] = {"study": name, "path": "" if path is None else str(path), "status": "pending", "error": ""}
    rj = folder / "report.json"
    if rj.is_file():
        try:
            d = json.loads(rj.read_text())
        except (OSError, ValueError) as exc:
            row.update(status="failed", error=f"unreadable report.json: {exc}")
            return row
        row["status"] = "ok"
        for c in SUMMARY_COLUMNS:
            if c in d and c not in row:
                row[c] = d[c]
        row["n_warnings"] = len(d.get("warnings") or [])
        row["model"] = (d.get("model") or {}).get("id")
        if not row["path"]:
            row["path"] = (d.get("study") or {}).get("source", "")
    elif (folder / "error.txt").is_file():
        lines = (folder / "error.txt").read_text(errors="replace").splitlines()
        row["status"] = "failed"
        row["error"] = lines[1] if len(lines) > 1 else (lines[0] if lines else "failed")
        if not row["path"] and lines:
            row["path"] = lines[0]
    return row


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.3f}" if isinstance(r.get(k), float) else r.get(k)))
                    for k in SUMMARY_COLUMNS})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def write_summary(out_dir: str | Path, names: Sequence[str] | None = None,
                  paths: Sequence[Path] | None = None) -> Path:
    """Rebuild ``out_dir/summary.csv`` from the study folders (every sub-folder, or ``names``)."""
    out = Path(out_dir)
    if names is None:
        names = sorted(d.name for d in out.iterdir() if d.is_dir() and
                       ((d / "report.json").exists() or (d / "error.txt").exists()))
        paths = [None] * len(names)
    rows = [_row_from_disk(n, p, out) for n, p in zip(names, paths or [None] * len(names))]
    _write_csv(out / "summary.csv", rows)
    return out / "summary.csv"


def run_batch(paths: Sequence[str | Path], out_dir: str | Path, *, labels_for: Callable | None = None,
              segmenter: Callable | None = None, processes: int = 1, rank: int | None = None,
              world_size: int | None = None, progress: bool = True, pdf: bool = True,
              analysis: Mapping[str, Any] | None = None) -> BatchResult:
    """Analyse many studies: one folder per study in ``out_dir`` plus ``summary.csv``.

    ``paths`` are expanded with :func:`discover_studies`. Labels come from ``segmenter(study)`` (returns
    labels or (labels, model_info)), else ``labels_for(path, study)`` (labels, a label file path, or
    (labels, model_info)), else the labels the study carries. ``analysis`` holds keyword arguments for
    :func:`analyze_study` (height_cm, weight_kg, ed_frame, es_frame, ...). Resumable, failure-tolerant,
    parallel and shardable as described in the module docstring. Callables must be picklable when
    ``processes > 1`` (the classes of this module are).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    studies = discover_studies(paths)
    names = unique_names(studies)
    rank = _env_int("RANK") if rank is None else rank
    world_size = _env_int("WORLD_SIZE") if world_size is None else world_size
    rank, world_size = (rank or 0), max(1, world_size or 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    mine = list(zip(studies, names))[rank::world_size]
    result = BatchResult(rank=rank, world_size=world_size)
    jobs = []
    for path, name in mine:
        if (out / name / "report.json").is_file():
            result.rows.append({"study": name, "path": str(path), "status": "skipped", "error": ""})
        else:
            jobs.append(_Job(path, name, out, labels_for, segmenter, dict(analysis or {}), pdf))
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with the project's dependencies
        tqdm = None
    bar = None
    if tqdm is not None:
        bar = tqdm(total=len(mine), initial=len(mine) - len(jobs), desc=f"analyze{'' if world_size == 1 else f' rank {rank}'}",
                   unit="study", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        if processes > 1 and len(jobs) > 1:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=min(processes, len(jobs)), mp_context=mp.get_context("spawn")) as ex:
                futures = {ex.submit(_process, j): j for j in jobs}
                for fut in as_completed(futures):
                    j = futures[fut]
                    try:
                        row = fut.result()
                    except Exception as exc:  # a worker that died (killed, out of memory)
                        row = {"study": j.name, "path": str(j.path), "status": "failed",
                               "error": f"worker failed: {type(exc).__name__}: {exc}"}
                        _record_failure(j, row["error"])
                    result.rows.append(row)
                    if bar is not None:
                        bar.update(1)
                        if row["status"] == "failed" and progress:
                            bar.write(f"failed: {row['study']}: {row['error']}", file=sys.stderr)
        else:
            for j in jobs:
                row = _process(j)
                result.rows.append(row)
                if bar is not None:
                    bar.update(1)
                    if row["status"] == "failed" and progress:
                        bar.write(f"failed: {row['study']}: {row['error']}", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    order = {n: i for i, n in enumerate(names)}
    result.rows.sort(key=lambda r: order.get(r["study"], 0))
    if world_size > 1:
        _write_csv(out / f"summary_rank{rank}.csv",
                   [(_row_from_disk(r["study"], Path(r["path"]), out) if r["status"] == "skipped" else r)
                    for r in result.rows])
        dist = _torch_distributed()
        if dist is not None:
            dist.barrier()
            if rank != 0:
                result.summary_path = out / "summary.csv"
                return result
    result.summary_path = write_summary(out, names, studies)
    return result


def _record_failure(job: _Job, error: str) -> None:
    try:
        folder = job.out_dir / job.name
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "error.txt") as tmp:
            tmp.write_text(f"{job.path}\n{error}\n")
    except OSError:
        pass


def _torch_distributed():
    """torch.distributed when a process group is initialised (torchrun), else None; never imports torch
    just for this."""
    if "torch" not in sys.modules:
        return None
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    return dist if dist.is_available() and dist.is_initialized() else None
