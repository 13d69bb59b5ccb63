"""Score a model on a labelled dataset: ``napari-cinema evaluate DATASET --out FILE [--model ID]``.

Datasets (recognised by layout): an ACDC folder (patientNNN/ with Info.cfg) or one patient, an M&Ms
folder (<ID>_sa_ED[_gt].nii.gz), an M&Ms-2 folder (<ID>/<ID>_SA_ED...), a Sunnybrook folder
(SCD*/contours), a napari-cinema correction store (napari_cinema.annotations.store: scored on the
edited frames of each study's current version; without ``--model`` its stored model output is scored
against the corrections), or a folder of ``<name>.nii.gz`` + ``<name>_gt.nii.gz`` pairs (``--labels`` gives their convention).

Output JSON (DESIGN.md)::

    {"n_cases": 15,
     "dice": {"LV": .., "MYO": .., "RV": .., "mean": ..},
     "hd95_mm": {"LV": .., "MYO": .., "RV": .., "mean": ..},
     "LVEF_mae_pct": .., "LVEDV_mae_ml": .., "LVESV_mae_ml": ..,
     "accuracy": .., "auroc": ..,            # classification models, where the dataset has classes
     "landmark_error_mm": {"mv_1": .., "mv_2": .., "apex": .., "mean": ..},   # landmark models
     "per_case": [{"case": .., "dice": {..}, "hd95_mm": {..}, "LVEDV_ml": {"true": .., "pred": ..}, ...}],
     "model": {...}, "dataset": .., "notes": {field: why it is null}}

Values are means over cases (a case's Dice / HD95 is the mean over its labelled frames); structures a
case does not label (Sunnybrook RV) are left out, never counted as zero. NaN never appears: a value
that cannot be computed is null, with the reason in ``notes``.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cinema.engine.sliding import DEFAULT_SHIFT_PASSES
from napari_cinema.io.labels import CONVENTIONS, LV, MYO, RV, from_internal, to_internal
from napari_cinema.io.study import CineStudy

from .datasets import CaseRecord, DatasetError, load_source

__all__ = ["EvaluationError", "detect_layout", "evaluate", "load_dataset", "load_eval_model", "score_case"]

STRUCTURES = {"LV": LV, "MYO": MYO, "RV": RV}
_PAIR_GT = re.compile(r"^(?P<stem>.+)_gt\.nii(\.gz)?$")


class EvaluationError(ValueError):
    """The dataset or the model cannot be evaluated; the message says why."""


# --------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------


def detect_layout(path: Path) -> str:
    """'acdc', 'mnms', 'mnms2', 'sunnybrook', 'store' or 'pairs' for a dataset path."""
    if not path.exists():
        raise EvaluationError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".csv":
            return "csv"
        return "pairs"
    from napari_cinema.annotations.store import is_store

    if is_store(path):  # before ACDC: its marker file decides, without probing every study folder
        return "store"
    if (path / "Info.cfg").is_file() or any((p / "Info.cfg").is_file() for p in path.iterdir() if p.is_dir()):
        return "acdc"
    if (path / "contours").is_dir() or any((p / "contours").is_dir() for p in path.iterdir() if p.is_dir()):
        return "sunnybrook"
    names = [p.name for p in path.iterdir()]
    if any(re.match(r".+_sa_ED\.nii(\.gz)?$", n) for n in names):
        return "mnms"
    for sub in path.iterdir():
        if sub.is_dir() and any(re.match(r".+_SA_ED\.nii(\.gz)?$", p.name) for p in sub.iterdir()):
            return "mnms2"
    if any(re.match(r".+_SA_ED\.nii(\.gz)?$", n) for n in names):
        return "mnms2"
    return "pairs"


def _read_pairs(path: Path, convention: str) -> list[CaseRecord]:
    """Image + ``_gt`` label pairs (a file or a folder of them) in ``convention``."""
    from napari_cinema.io.nifti import read_nifti

    gts = [path] if path.is_file() and _PAIR_GT.match(path.name) else []
    if path.is_file() and not gts:
        stem = re.sub(r"\.nii(\.gz)?$", "", path.name)
        gts = [p for p in path.parent.glob(f"{stem}_gt.nii*")]
    elif path.is_dir():
        gts = sorted(p for p in path.iterdir() if _PAIR_GT.match(p.name))
    records = []
    for gt in gts:
        stem = _PAIR_GT.match(gt.name).group("stem")
        img = next((gt.parent / f"{stem}{s}" for s in (".nii.gz", ".nii") if (gt.parent / f"{stem}{s}").is_file()),
                   None)
        if img is None:
            continue
        study = read_nifti(img)
        raw = read_nifti(gt).image
        try:
            labels = to_internal(raw, convention, source=str(gt))
        except ValueError as exc:
            raise EvaluationError(str(exc)) from None
        if labels.shape != study.image.shape:
            raise EvaluationError(f"{gt}: labels {labels.shape} do not match the image {study.image.shape}")
        _, dz, dy, dx = study.spacing
        frames = tuple(int(t) for t in range(labels.shape[0]) if labels[t].any())
        rec = CaseRecord(case_id=stem, source="pairs", view=study.view, image=study.image, spacing=(dz, dy, dx),
                         labels=labels, labelled_frames=frames, path=str(img))
        if len(frames) >= 2:
            lv = {t: int((labels[t] == LV).sum()) for t in frames}
            rec.ed_frame, rec.es_frame = max(lv, key=lv.get), min(lv, key=lv.get)
            ef = rec.ef_pct()
            if ef is not None:
                rec.targets["ef"] = ef
        records.append(rec)
    if not records:
        raise EvaluationError(f"{path}: no <name>.nii.gz + <name>_gt.nii.gz pairs found")
    return records


_LAYOUT_CONVENTION = {"acdc": "acdc", "mnms": "mnms", "mnms2": "mnms2", "store": "cinema", "sunnybrook": "cinema",
                      "pairs": "cinema"}


def load_dataset(path: str | Path, labels: str | None = None, split: str = "all",
                 view: str = "sax") -> tuple[str, list[CaseRecord]]:
    """(layout, records) of a labelled dataset; ``labels`` overrides the ground-truth label convention;
    ``view`` picks the view of a dataset holding several (M&Ms-2: 'sax' or 'lax_4c')."""
    path = Path(path)
    layout = detect_layout(path)
    if labels is not None and labels not in CONVENTIONS:
        raise EvaluationError(f"--labels {labels!r}: expected one of {', '.join(sorted(CONVENTIONS))}")
    try:
        if layout == "pairs":
            records = _read_pairs(path, labels or "cinema")
        elif layout == "store":
            records = load_source({"type": "store", "root": str(path), "with_original": True})
        elif layout == "acdc":
            records = load_source({"type": "acdc", "root": str(path), "split": split})
        elif layout == "mnms2":
            records = load_source({"type": "mnms2", "root": str(path), "views": [view]})
        elif layout == "csv":
            raise EvaluationError(f"{path}: a CSV of targets needs a classification/regression model; "
                                  "evaluate reads labelled image datasets")
        else:
            records = load_source({"type": layout, "root": str(path)})
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from None
    default = _LAYOUT_CONVENTION.get(layout, "cinema")
    if labels is not None and layout != "pairs" and labels != default:
        # the user says the files use another convention than the layout's usual one
        for r in records:
            if r.labels is not None:
                raw = from_internal(r.labels, default)
                try:
                    r.labels = to_internal(raw, labels, source=r.path)
                except ValueError as exc:
                    raise EvaluationError(str(exc)) from None
    return layout, records


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


def _load_or_fail(model: str):
    try:
        return load_eval_model(model, "cpu")
    except (ValueError, OSError) as exc:
        raise EvaluationError(f"--model {model}: {exc}") from None


def load_eval_model(model: str, device: str = "cpu"):
    """A LoadedModel from a registry id, a run folder or a .safetensors file."""
    from napari_cinema.model.checkpoint import load_model as load_checkpoint

    p = Path(model).expanduser()
    if p.exists():
        weights = None
        if p.is_dir():
            for cand in ("model.safetensors", "checkpoints/best.safetensors"):
                if (p / cand).is_file():
                    weights = p / cand
                    break
            if weights is None and (p / "checkpoints" / "last.json").is_file():
                from .loop import load_last_checkpoint

                weights = load_last_checkpoint(p)[0]
            if weights is None:
                raise EvaluationError(f"{p}: no model.safetensors, checkpoints/best.safetensors or last checkpoint")
        else:
            weights = p
        return load_checkpoint(weights, model_id=str(p), device=device, source="file")
    from napari_cinema.model.registry import load_model as registry_load

    return registry_load(model, device)


# in-plane orientations of a (..., y, x) array: how a scanner or converter may have stored the same slice
ORIENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "stored": lambda a: a,
    "rot90": lambda a: np.rot90(a, 1, axes=(-2, -1)),
    "rot180": lambda a: np.rot90(a, 2, axes=(-2, -1)),
    "rot270": lambda a: np.rot90(a, 3, axes=(-2, -1)),
    "flip_x": lambda a: a[..., ::-1],
    "flip_y": lambda a: a[..., ::-1, :],
    "transpose": lambda a: np.swapaxes(a, -1, -2),
    "antitranspose": lambda a: np.rot90(np.swapaxes(a, -1, -2), 2, axes=(-2, -1)),
}
_SWAPS_AXES = ("rot90", "rot270", "transpose", "antitranspose")


def reorient(rec: CaseRecord, orientation: str) -> CaseRecord:
    """``rec`` with its image and labels stored in another in-plane orientation (:data:`ORIENTATIONS`),
    the pixel spacing following its axes: the same heart as another scanner may have written it."""
    if orientation not in ORIENTATIONS:
        raise EvaluationError(f"orientation {orientation!r}: expected one of {', '.join(ORIENTATIONS)}")
    if orientation == "stored":
        return rec
    if rec.landmarks:
        raise EvaluationError("orientation: landmark targets are not reoriented; evaluate landmarks as stored")
    op = ORIENTATIONS[orientation]
    dz, dy, dx = rec.spacing
    targets = dict(rec.targets)
    if targets.get("original_labels") is not None:  # a correction store's model output turns with its case
        targets["original_labels"] = np.ascontiguousarray(op(targets["original_labels"]))
    return replace(rec, image=np.ascontiguousarray(op(rec.image)),
                   labels=None if rec.labels is None else np.ascontiguousarray(op(rec.labels)),
                   spacing=(dz, dx, dy) if orientation in _SWAPS_AXES else (dz, dy, dx), targets=targets)


def _study(rec: CaseRecord) -> CineStudy:
    return CineStudy(image=rec.image, spacing=(None, *rec.spacing), view=rec.view, source=rec.path,
                     ed_frame=rec.ed_frame, es_frame=rec.es_frame)


def segment_with(loaded, device: str = "auto",
                 shift_passes: int = DEFAULT_SHIFT_PASSES) -> Callable[[CaseRecord], np.ndarray]:
    """A ``predict(record) -> labels (t, z, y, x)`` running the engine on the labelled frames."""
    from napari_cinema.engine import run_segmentation

    def predict(rec: CaseRecord) -> np.ndarray:
        res = run_segmentation(_study(rec), loaded, device=device, frames=list(rec.labelled_frames), view=rec.view,
                               shift_passes=shift_passes)
        return res.labels

    return predict


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _frame_metrics(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float], structures: Mapping[str, int],
                   labelled: Sequence[int]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Dice and HD95 (mm) per structure of one (z, y, x) frame with MONAI's metrics."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    names = list(structures)
    p = torch.stack([torch.from_numpy(pred == structures[n]) for n in names])[None].float()
    t = torch.stack([torch.from_numpy(truth == structures[n]) for n in names])[None].float()
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(p, t)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
            p, t, spacing=[float(s) for s in spacing_zyx])[0]
    d_out, h_out = {}, {}
    for k, n in enumerate(names):
        if structures[n] not in labelled or not t[0, k].any():
            d_out[n], h_out[n] = None, None
            continue
        d_out[n] = _finite(dice[k])
        h_out[n] = _finite(hd[k]) if p[0, k].any() else None
    return d_out, h_out


def score_case(rec: CaseRecord, pred: np.ndarray) -> dict[str, Any]:
    """Metrics of one case: per-frame and mean Dice / HD95, LV (and RV) volumes and EF."""
    if pred.shape != rec.image.shape:
        raise EvaluationError(f"{rec.case_id}: prediction {pred.shape} does not match the image {rec.image.shape}")
    dz, dy, dx = rec.spacing
    vox_ml = dz * dy * dx / 1000.0
    frames = []
    for t in rec.labelled_frames:
        valid = np.ones(rec.image.shape[1], bool) if rec.valid is None else rec.valid[t].astype(bool)
        truth = np.where(valid[:, None, None], rec.labels[t], 0)
        p = np.where(valid[:, None, None], pred[t], 0)
        labelled = rec.classes_of(t)
        d, h = _frame_metrics(p, truth, (dz, dy, dx), STRUCTURES, labelled)
        vols = {}
        for n, v in STRUCTURES.items():
            if v in labelled and n != "MYO":
                vols[n] = {"true": float((truth == v).sum()) * vox_ml, "pred": float((p == v).sum()) * vox_ml}
        phase = "ED" if t == rec.ed_frame else ("ES" if t == rec.es_frame else None)
        frames.append({"frame": int(t), "phase": phase, "dice": d, "hd95_mm": h, "volumes_ml": vols})
    row: dict[str, Any] = {
        "case": rec.case_id,
        "source": rec.source,
        "frames": frames,
        "dice": {n: _mean([f["dice"][n] for f in frames]) for n in STRUCTURES},
        "hd95_mm": {n: _mean([f["hd95_mm"][n] for f in frames]) for n in STRUCTURES},
    }
    for key in ("dice", "hd95_mm"):
        row[key]["mean"] = _mean([row[key][n] for n in STRUCTURES])
    by_frame = {f["frame"]: f for f in frames}
    if rec.ed_frame in by_frame and rec.es_frame in by_frame:
        ed, es = by_frame[rec.ed_frame]["volumes_ml"], by_frame[rec.es_frame]["volumes_ml"]
        same_slices = rec.valid is None or np.array_equal(rec.valid[rec.ed_frame], rec.valid[rec.es_frame])
        for n in ("LV", "RV"):
            if n in ed and n in es and same_slices:
                edv, esv = ed[n], es[n]
                ef = {k: (100.0 * (edv[k] - esv[k]) / edv[k] if edv[k] > 0 else None) for k in ("true", "pred")}
                row[f"{n}EDV_ml"] = edv
                row[f"{n}ESV_ml"] = esv
                row[f"{n}EF_pct"] = ef
    return row


def _abs_err(pair: Mapping[str, float | None] | None) -> float | None:
    if not pair or pair.get("true") is None or pair.get("pred") is None:
        return None
    return abs(float(pair["pred"]) - float(pair["true"]))


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The DESIGN.md fields from per-case rows."""
    out: dict[str, Any] = {"n_cases": len(rows), "notes": {}}
    for key in ("dice", "hd95_mm"):
        out[key] = {n: _mean([r[key][n] for r in rows]) for n in STRUCTURES}
        present = [out[key][n] for n in STRUCTURES if out[key][n] is not None]
        out[key]["mean"] = float(np.mean(present)) if present else None
        for n in STRUCTURES:
            if out[key][n] is None:
                out["notes"][f"{key}.{n}"] = f"no case labels {n} (or it was never predicted for HD95)"
    for field, src in (("LVEF_mae_pct", "LVEF_pct"), ("LVEDV_mae_ml", "LVEDV_ml"), ("LVESV_mae_ml", "LVESV_ml"),
                       ("RVEF_mae_pct", "RVEF_pct"), ("RVEDV_mae_ml", "RVEDV_ml"), ("RVESV_mae_ml", "RVESV_ml")):
        errs = [_abs_err(r.get(src)) for r in rows]
        out[field] = _mean(errs)
        if out[field] is None:
            out["notes"][field] = "no case has labelled ED and ES frames on the same slices"
    return out


# --------------------------------------------------------------------------------------------------
# the command's core
# --------------------------------------------------------------------------------------------------


def evaluate(dataset: str | Path, *, model: str | None = None, labels: str | None = None, device: str = "auto",
             split: str = "all", predict: Callable[[CaseRecord], np.ndarray] | None = None,
             progress: Callable[[int, int, str], None] | None = None,
             shift_passes: int | None = None, orientation: str = "stored") -> dict[str, Any]:
    """Evaluate a model (registry id, run folder, weights file) or ``predict`` on a labelled dataset.

    ``shift_passes`` is the segmentation engine's setting (None: its default, as the app runs it; 1 for
    single passes). ``orientation`` stores every case's slices another way first (:data:`ORIENTATIONS`:
    quarter turns, flips, transposes), to see whether the model depends on how the images were stored.

    Without ``model`` and ``predict``: a correction store is scored as its stored model output
    ('original') against the corrections ('final'); other datasets use the registry's default model
    for their view.
    """
    t0 = time.perf_counter()
    shift_passes = DEFAULT_SHIFT_PASSES if shift_passes is None else int(shift_passes)
    if shift_passes < 1:
        raise EvaluationError(f"shift_passes must be at least 1, got {shift_passes}")
    # the model first: its view picks the records of a multi-view dataset (M&Ms-2)
    loaded = _load_or_fail(model) if predict is None and model is not None else None
    view = "lax_4c" if loaded is not None and "lax_4c" in tuple(loaded.views) else "sax"
    layout, records = load_dataset(dataset, labels, split, view=view)
    records = [r for r in records if r.labels is not None and r.labelled_frames]
    if not records:
        raise EvaluationError(f"{dataset}: no labelled cases")
    records = [reorient(r, orientation) for r in records]
    model_info: dict[str, Any] = {}
    task = "segmentation"
    if predict is None:
        if model is None and layout == "store" and all("original_labels" in r.targets for r in records):
            def predict(rec: CaseRecord) -> np.ndarray:  # noqa: F811
                return rec.targets["original_labels"]

            provs = [r.targets.get("provenance") or {} for r in records]
            ids = sorted({str(p.get("model_id")) for p in provs})
            shas = sorted({str(p.get("model_sha256")) for p in provs if p.get("model_sha256")})
            model_info = {"id": ids[0] if len(ids) == 1 else ids,
                          "sha256": (shas[0] if len(shas) == 1 else shas) if shas else None,
                          "source": "correction store (original vs final)",
                          "versions": {r.case_id: r.targets.get("store_version") for r in records}}
        else:
            if model is None:
                from napari_cinema.model.registry import find_default

                view = records[0].view
                model = find_default("segmentation", view)
                if model is None:
                    raise EvaluationError(f"no segmentation model for {view} is available; pass --model ID")
            if loaded is None:
                loaded = _load_or_fail(model)
            task = loaded.task
            model_info = loaded.provenance()
            if task == "segmentation":
                predict = segment_with(loaded, device, shift_passes)
                model_info["shift_passes"] = int(shift_passes)
    result: dict[str, Any] = {"dataset": str(dataset), "layout": layout, "task": task, "model": model_info,
                              "orientation": orientation}
    rows: list[dict[str, Any]] = []
    if predict is not None:
        for k, rec in enumerate(records):
            if progress:
                progress(k, len(records), rec.case_id)
            pred = np.asarray(predict(rec))
            rows.append(score_case(rec, pred))
        result.update(aggregate(rows))
    else:
        result.update(aggregate([]))
        result["n_cases"] = len(records)
    result["accuracy"], result["auroc"] = None, None
    if loaded is not None and task.startswith(("classification", "regression")):
        rows = _evaluate_pair_model(loaded, records, device, result)
    else:
        if loaded is not None and task.startswith("landmark"):
            rows = _evaluate_landmark_model(loaded, records, device, result)
        result["notes"]["accuracy"] = "not a classification model"
        result["notes"]["auroc"] = "not a classification model"
    result["per_case"] = rows
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _heart_centre(rec: CaseRecord) -> tuple[float, float, float] | None:
    """(z, y, x) centroid of the ED labels: the pair models are cropped around the heart as in training."""
    if rec.labels is None or rec.ed_frame is None or rec.ed_frame not in rec.labelled_frames:
        return None
    fg = np.argwhere(rec.labels[rec.ed_frame] > 0)
    return tuple(float(v) for v in fg.mean(axis=0)) if len(fg) else None


def _evaluate_pair_model(loaded, records: Sequence[CaseRecord], device: str, result: dict[str, Any]) -> list[dict]:
    from napari_cinema.engine import run_classification, run_regression

    from .tasks import auroc

    from napari_cinema.engine import run_segmentation
    from napari_cinema.model.registry import find_default

    # centred as in the app: on the default segmentation model's ED/ES labels (never the expert's)
    seg_id = find_default("segmentation", records[0].view) if records else None
    seg_model = load_eval_model(seg_id, "cpu") if seg_id else None
    result["notes"]["centring"] = (f"on the {seg_id} segmentation of the ED and ES frames, as in the app"
                                   if seg_model is not None else
                                   "no segmentation model available: centroid of the expert ED labels")

    def centring(rec: CaseRecord) -> dict[str, Any]:
        if seg_model is None:
            return {"centre_zyx": _heart_centre(rec)}
        seg = run_segmentation(_study(rec), seg_model, device=device, view=rec.view,
                               frames=[rec.ed_frame, rec.es_frame])
        return {"segmentation": seg.labels}

    rows = []
    if loaded.task.startswith("classification"):
        classes = list(loaded.classes or [])
        col = (loaded.config.get("data") or {}).get("class_column") or "pathology"
        probs, truth = [], []
        for rec in records:
            if rec.ed_frame is None or rec.es_frame is None:
                continue
            res = run_classification(_study(rec), loaded, device=device, ed_frame=rec.ed_frame,
                                     es_frame=rec.es_frame, view=rec.view, **centring(rec))
            row = {"case": rec.case_id, "predicted": res.predicted, "probabilities": res.as_dict()}
            if rec.targets.get(col) in classes:
                row["true"] = rec.targets[col]
                probs.append(res.probabilities)
                truth.append(classes.index(rec.targets[col]))
            rows.append(row)
        if truth:
            p, t = np.asarray(probs), np.asarray(truth)
            result["accuracy"] = float((p.argmax(1) == t).mean())
            result["auroc"] = auroc(p, t, len(classes))
        if result["accuracy"] is None:
            result["notes"]["accuracy"] = f"no case carries a {col} label among {classes}"
        if result["auroc"] is None:
            result["notes"]["auroc"] = "fewer than two classes present"
    else:
        target = loaded.regression_target or "ef"
        errs = []
        for rec in records:
            if rec.ed_frame is None or rec.es_frame is None:
                continue
            res = run_regression(_study(rec), loaded, device=device, ed_frame=rec.ed_frame, es_frame=rec.es_frame,
                                 view=rec.view, **centring(rec))
            row = {"case": rec.case_id, "predicted": float(res.value)}
            true = rec.targets.get(target)
            if true is not None:
                row["true"] = float(true)
                errs.append(abs(float(res.value) - float(true)))
            rows.append(row)
        result[f"{target}_mae"] = float(np.mean(errs)) if errs else None
        if target == "ef":
            result["LVEF_mae_pct"] = result[f"{target}_mae"]
        result["n_cases"] = len(rows)
    return rows


def _evaluate_landmark_model(loaded, records: Sequence[CaseRecord], device: str, result: dict[str, Any]) -> list[dict]:
    """Landmark error (mm) per landmark on the labelled frames: against the record's own landmarks
    (phantoms) or, for expert-labelled LAX frames, the hinges and apex derived from the LV cavity and
    myocardium labels (:func:`~napari_cinema.analysis.landmarks.landmarks_from_labels`)."""
    from napari_cinema.analysis.landmarks import landmarks_from_labels
    from napari_cinema.engine import run_landmarks

    rows, errors = [], {}
    derived = False
    for rec in records:
        res = run_landmarks(_study(rec), loaded, device=device, view=rec.view)
        mm = np.asarray(rec.spacing[-2:], dtype=float)
        frames = []
        for t in rec.labelled_frames:
            if rec.landmarks:
                truth = {n: np.asarray(rec.landmarks[n][t], float)[1:] for n in res.names if n in rec.landmarks}
            else:
                truth = landmarks_from_labels(rec.labels[t, 0], rec.view, tuple(mm)) or {}
                derived = True
            err = {n: float(np.linalg.norm((res.voxels[t, k, 1:] - truth[n]) * mm))
                   for k, n in enumerate(res.names) if n in truth}
            for n, e in err.items():
                errors.setdefault(n, []).append(e)
            frames.append({"frame": int(t), "error_mm": err,
                           "predicted_yx": {n: [float(v) for v in res.voxels[t, k, 1:]] for k, n in enumerate(res.names)},
                           "reference_yx": {n: [float(v) for v in p] for n, p in truth.items()}})
        rows.append({"case": rec.case_id, "source": rec.source, "frames": frames})
    result["landmark_error_mm"] = {n: float(np.mean(v)) for n, v in errors.items()}
    if errors:
        result["landmark_error_mm"]["mean"] = float(np.mean([e for v in errors.values() for e in v]))
    if derived:
        result["notes"]["landmark_error_mm"] = ("reference landmarks derived from the expert LV cavity and "
                                                "myocardium labels (ends of the uncovered cavity border; wall tip "
                                                "on the long axis), not placed by an expert")
    result["n_cases"] = len(rows)
    return rows


def write_json(path: str | Path, result: Mapping[str, Any]) -> Path:
    from napari_cinema.model.checkpoint import atomic_write_text

    from .loop import _json_safe

    return atomic_write_text(path, json.dumps(_json_safe(result), indent=2) + "\n")
