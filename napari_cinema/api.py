"""The scriptable twins of the napari-cinema docks (micro-sam style: every GUI action is a function).

Use from the napari console, a notebook or a script::

    import napari
    from napari_cinema import api

    viewer = napari.Viewer()
    viewer.open_sample("napari-cinema", "phantom_sax")
    image = viewer.layers["phantom sax"]
    labels = api.segment_layer(viewer, image, model_id="default-sax-seg", device="auto")
    report = api.analyze_layer(viewer, labels)              # ED/ES detected
    report = api.analyze_layer(viewer, labels, ed=0, es=9)  # ... or given
    api.export_report(viewer, labels, "out/phantom")         # report.json, volumes.csv, report.pdf
    api.open_analysis_dock(viewer); api.open_function_dock(viewer)
    entry = api.save_corrections(viewer, labels)            # after painting: model output + corrections
    stored = api.stored_corrections_for(viewer, image)       # ... read back (None if none)
    api.open_corrections_dock(viewer); api.open_finetune_dock(viewer)

The docks call the same code: :func:`run_models` (Qt- and napari-free, run in a worker thread by the
dock) produces :class:`CineResults` (the dock's worker also runs :func:`prepare_results`, which makes the
layers' arrays there); :func:`apply_results` pushes them to layers (main thread; the dock runs the same
:func:`apply_results_steps` one step per event-loop turn); :func:`analysis_inputs` gathers what
:func:`compute_report` needs from the layers (main thread, cheap) and :func:`compute_report` runs
:func:`napari_cinema.analysis.analyze_study` (any thread).

Result layers are created once per image layer and updated in place on a re-run; they are found again
through ``metadata['cinema_result'] = {'kind': 'segmentation' | 'landmarks', 'of': str(<image unique_id>)}``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .io.labels import LABEL_NAMES
from .io.study import CineStudy
from .layers import LANDMARK_NAMES, labels_layer_data, points_layer_data, study_from_layer

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Labels, Layer

    from .analysis.report import Report

__all__ = [
    "AnalysisInputs",
    "CineResults",
    "CorrectionSnapshot",
    "ModelNotAvailable",
    "NotACine",
    "STUDY_VIEWS",
    "analysis_inputs",
    "analyze_layer",
    "apply_results",
    "apply_stored_corrections",
    "check_cine_layer",
    "compute_report",
    "correction_baseline",
    "correction_snapshot",
    "default_model_id",
    "edited_frames_of",
    "export_report",
    "find_landmarks_layer",
    "find_result_layer",
    "has_unsaved_edits",
    "landmarks_from_points",
    "list_models",
    "load_registered_model",
    "mark_edited",
    "open_analysis_dock",
    "open_corrections_dock",
    "open_finetune_dock",
    "open_function_dock",
    "prepare_results",
    "run_models",
    "save_corrections",
    "segment_layer",
    "stored_corrections_for",
    "study_for_labels",
    "study_for_layer",
    "study_from_layer",
    "write_snapshot",
]

STUDY_VIEWS = ("sax", "lax_2c", "lax_3c", "lax_4c")
LAX_VIEWS = ("lax_2c", "lax_3c", "lax_4c")
PLUGIN = "napari-cinema"
ANALYSIS_DOCK = "Cine analysis"
FUNCTION_DOCK = "Cardiac function"
CORRECTIONS_DOCK = "Corrections"
FINETUNE_DOCK = "Fine-tuning"

# Registry task names (napari_cinema.model.registry) per role.
SEGMENTATION_TASKS = ("segmentation",)
LANDMARK_TASKS = ("landmark_heatmap", "landmark_coordinate")
CLASSIFICATION_TASKS = ("classification_cvd",)
EF_TASKS = ("regression_ef",)

ProgressFn = Callable[[int, int, str], None]
CancelFn = Callable[[], bool]


class NotACine(ValueError):
    """The layer given is not a cine study a model can run on (the message says why and what to do)."""


class ModelNotAvailable(RuntimeError):
    """No model for this task and view, or the chosen one cannot be loaded (message fit to show)."""


# --------------------------------------------------------------------------------------------------
# layers <-> studies
# --------------------------------------------------------------------------------------------------


def _kind(layer: Any) -> str:
    return type(layer).__name__


def check_cine_layer(layer: Any) -> None:
    """Raise :class:`NotACine` with a clear message unless ``layer`` is a 4-D cine image layer.

    Cheap (no data access beyond the shape), so it can run in the GUI thread.
    """
    from napari.layers import Image

    if layer is None:
        raise NotACine("no image layer chosen: open a cine study (File > Open, or File > Open Sample > "
                       "napari-cinema) and pick its image layer")
    if not isinstance(layer, Image):
        raise NotACine(f"'{layer.name}' is a {_kind(layer)} layer, not a cine image: pick the image layer of a "
                       "cine study (segmentations are made from the image)")
    if getattr(layer, "rgb", False):
        raise NotACine(f"'{layer.name}' is an RGB image, not a cine MR study")
    shape = tuple(np.shape(layer.data[0] if layer.multiscale else layer.data))
    if len(shape) != 4:
        raise NotACine(f"'{layer.name}' is a {len(shape)}-D image {shape}, not a cine: a cine has 4 axes "
                       "(t, z, y, x); open the study with the napari-cinema reader so that its frames and "
                       "slices are known")
    study = study_from_layer(layer)
    if study is not None and tuple(study.shape) != shape:
        raise NotACine(f"'{layer.name}' holds data of shape {shape} but its study is {tuple(study.shape)}: "
                       "the layer data was replaced; open the study again")
    if shape[0] < 1 or shape[2] < 2 or shape[3] < 2:
        raise NotACine(f"'{layer.name}' is too small to be a cine ({shape})")


def _time_ms(scale: float, unit: Any) -> float | None:
    name = str(unit or "")
    if name in ("millisecond", "ms"):
        return float(scale)
    if name in ("second", "s"):
        return float(scale) * 1000.0
    return None


def study_for_layer(layer: Any, view: str | None = None) -> CineStudy:
    """The :class:`CineStudy` behind a cine image layer (``view`` overrides the detected view).

    napari-cinema layers carry their study (``metadata['cinema_study']``); a foreign 4-D image layer
    becomes a study with the layer's scale as spacing (t in ms when its unit says so) and an unknown
    view. Raises :class:`NotACine` for anything else.
    """
    check_cine_layer(layer)
    study = study_from_layer(layer)
    if study is None:
        data = layer.data[0] if layer.multiscale else layer.data
        scale = [float(s) for s in layer.scale]
        units = list(getattr(layer, "units", [None] * 4))
        study = CineStudy(image=np.asarray(data), spacing=(_time_ms(scale[0], units[0]), *scale[1:]),
                          view="unknown", source=str(layer.name), description="napari image layer")
    if view and view != study.view:
        if view not in STUDY_VIEWS:
            raise NotACine(f"unknown view {view!r}; choose one of {', '.join(STUDY_VIEWS)}")
        study = replace(study, view=view)
    return study


def _image_layers(viewer: Any):
    from napari.layers import Image

    return [lay for lay in viewer.layers if isinstance(lay, Image)]


def study_for_labels(viewer: Any, labels_layer: Any) -> CineStudy:
    """The study a (t, z, y, x) Labels layer belongs to: its own ``cinema_study`` metadata, else that of
    an image layer of the same shape. Raises :class:`NotACine` with what to do otherwise."""
    from napari.layers import Labels

    if labels_layer is None:
        raise NotACine("no labels layer chosen: segment a cine with the Cine analysis dock, or open a study "
                       "with its labels")
    if not isinstance(labels_layer, Labels):
        raise NotACine(f"'{labels_layer.name}' is a {_kind(labels_layer)} layer, not a Labels layer")
    shape = tuple(np.shape(labels_layer.data))
    if len(shape) != 4:
        raise NotACine(f"'{labels_layer.name}' is a {len(shape)}-D labels layer {shape}: cardiac function needs "
                       "labels on every frame of a cine (t, z, y, x)")
    study = study_from_layer(labels_layer)
    if study is None and viewer is not None:
        for image in _image_layers(viewer):
            s = study_from_layer(image)
            if s is not None and tuple(s.shape) == shape:
                study = s
                break
    if study is None:
        raise NotACine(f"'{labels_layer.name}' carries no cine study: segment the cine with the Cine analysis "
                       "dock, or open the study (and its labels) with the napari-cinema reader")
    if tuple(study.shape) != shape:
        raise NotACine(f"'{labels_layer.name}' has shape {shape} but its study is {tuple(study.shape)}")
    return study


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------


def list_models(tasks: tuple[str, ...] | str = SEGMENTATION_TASKS, view: str | None = None) -> list:
    """Registry entries (``ModelInfo``) for ``tasks`` and a study ``view``, available ones first."""
    from .model import registry

    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    out = [m for m in registry.list_models(view=view) if m.task in tasks and (view is None or view in m.views)]
    return sorted(out, key=registry.preference)


def default_model_id(tasks: tuple[str, ...] | str, view: str) -> str | None:
    """The registry's default available model for one of ``tasks`` and ``view`` (None when none)."""
    from .model import registry

    for task in (tasks,) if isinstance(tasks, str) else tasks:
        found = registry.find_default(task=task, view=view)
        if found:
            return found
    return None


_MODEL_CACHE: OrderedDict[str, tuple[tuple, Any]] = OrderedDict()
_MODEL_CACHE_SIZE = 3
_MODEL_LOCK = threading.Lock()


def load_registered_model(model_id: str, *, progress: ProgressFn | None = None, cancel: CancelFn | None = None):
    """A registry ``LoadedModel`` (cached for the last few ids). A published model that is not cached is
    downloaded with ``progress(done_bytes, total_bytes, message)``; offline that raises
    :class:`ModelNotAvailable` with the hub's message (HubUnavailable: what to run to get it)."""
    from .model import hub, registry
    from .model.errors import ModelError

    try:
        info = registry.get_model_info(model_id)
    except ModelError as exc:
        raise ModelNotAvailable(str(exc)) from exc
    key = (str(info.path), info.sha256, info.available)
    with _MODEL_LOCK:
        hit = _MODEL_CACHE.get(model_id)
        if hit is not None and hit[0] == key and info.available:
            _MODEL_CACHE.move_to_end(model_id)
            return hit[1]

    def on_bytes(done: int, total: int | None) -> None:
        if cancel is not None and cancel():
            raise hub.DownloadCancelled(f"download of {model_id} cancelled")
        if progress is not None:
            mb = f"{done / 2**20:.1f}" + (f" of {total / 2**20:.1f}" if total else "")
            progress(int(done), int(total or 0), f"downloading {model_id}: {mb} MB")

    if progress is not None:
        what = "downloading" if not info.available else "loading"
        progress(0, 0, f"{what} model {model_id}")
    try:
        loaded = registry.load_model(model_id, device="cpu", download=True, progress=on_bytes)
    except hub.DownloadCancelled:
        from .engine import Cancelled

        raise Cancelled(f"download of {model_id} cancelled") from None
    except ModelError as exc:  # HubUnavailable, UnknownModel, CheckpointError: one-line messages
        raise ModelNotAvailable(str(exc)) from exc
    info = registry.get_model_info(model_id)
    with _MODEL_LOCK:
        _MODEL_CACHE[model_id] = ((str(info.path), info.sha256, info.available), loaded)
        while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
            _MODEL_CACHE.popitem(last=False)
    return loaded


# --------------------------------------------------------------------------------------------------
# running models (any thread; no Qt, no napari)
# --------------------------------------------------------------------------------------------------


@dataclass
class CineResults:
    """What one run produced for one study (``study`` carries the view the models were run for)."""

    study: CineStudy
    segmentation: Any = None  # engine.SegmentationResult
    landmarks: Any = None  # engine.LandmarkResult
    classification: Any = None  # engine.ClassificationResult
    regression: Any = None  # engine.RegressionResult
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> registry facts
    seconds: float = 0.0
    layer_parts: Any = None  # LayerParts made off the GUI thread by prepare_results (optional)

    def model_outputs(self) -> dict[str, Any]:
        """Classification / EF-regression outputs as stored on the labels layer (``cinema_models``)."""
        out: dict[str, Any] = {}
        if self.classification is not None:
            c = self.classification
            out["classification"] = {"model_id": c.provenance.get("model_id"), "classes": list(c.classes),
                                     "probabilities": [float(p) for p in c.probabilities],
                                     "predicted": c.predicted}
        if self.regression is not None:
            r = self.regression
            out["ef_regression"] = {"model_id": r.provenance.get("model_id"), "LVEF_pct": float(r.value),
                                    "target": r.target}
        return out


def _model_facts(loaded: Any) -> dict[str, Any]:
    return {"id": getattr(loaded, "model_id", None), "sha256": getattr(loaded, "sha256", None),
            "source": getattr(loaded, "source", None), "training_data": getattr(loaded, "training_data", None),
            "task": getattr(loaded, "task", None)}


def run_models(study: CineStudy, model_id: str, *, device: str = "auto", view: str | None = None,
               landmark_model_id: str | None = None, classification_model_id: str | None = None,
               regression_model_id: str | None = None, progress: ProgressFn | None = None,
               cancel: CancelFn | None = None, batch_frames: int | None = None,
               shift_passes: int | None = None) -> CineResults:
    """Segment every frame of ``study`` with ``model_id`` and run the optional landmark (LAX),
    disease-classification and EF-regression models on the (ED, ES) pair of the segmentation. On a 2- or
    4-chamber cine without a landmark model, the landmarks are read off the segmentation
    (engine.landmarks_from_segmentation; ``results.models['landmarks']['task']`` says so).

    ``shift_passes``: the segmentation's shifted, averaged network passes (None: the engine's default;
    1 is fastest).

    ``progress(done, total, message)`` counts frames over all stages; ``cancel()`` returning True stops
    at the next batch (engine.Cancelled is raised; nothing is returned). Errors a user can fix raise
    engine.EngineError, engine.DeviceUnavailable, :class:`ModelNotAvailable` or :class:`NotACine`.
    """
    from .analysis.landmarks import SEGMENTATION_LANDMARK_VIEWS
    from .engine import (
        Cancelled,
        landmarks_from_segmentation,
        resolve_model,
        run_classification,
        run_landmarks,
        run_regression,
        run_segmentation,
    )

    t0 = time.perf_counter()
    view = view or study.view
    if view not in STUDY_VIEWS:
        raise NotACine(f"the study's view is {view!r}: choose the view (sax, lax_2c, lax_3c or lax_4c) to run a model")
    if view != study.view:
        study = replace(study, view=view)
    n = study.n_frames
    stages = [("segmentation", model_id, n)]
    if landmark_model_id:
        if view not in LAX_VIEWS:
            raise NotACine(f"landmarks are found on long-axis cines; this study is {view}")
        stages.append(("landmarks", landmark_model_id, n))
    if classification_model_id:
        stages.append(("classification", classification_model_id, 1))
    if regression_model_id:
        stages.append(("regression", regression_model_id, 1))
    total = sum(s[2] for s in stages)
    offset = 0

    def stage_progress(label: str):
        base = offset

        def report(done: int, _total: int, message: str) -> None:
            if progress is not None:
                progress(base + int(done), total, message)
        return report

    def check() -> None:
        if cancel is not None and cancel():
            raise Cancelled("cancelled")

    results = CineResults(study=study)
    seg_labels = None
    for role, mid, weight in stages:
        check()

        def load_progress(done: int, tot: int, message: str, _base=offset) -> None:
            if progress is not None:  # a download shows its bytes, loading the frames done so far
                progress(done, tot, message) if tot > 0 else progress(_base, total, message)

        loaded = load_registered_model(mid, progress=load_progress, cancel=cancel)
        module, spec = resolve_model(loaded, None, view if view in tuple(getattr(loaded, "views", ()) or ()) else None)
        results.models[role] = _model_facts(loaded)
        rep = stage_progress(role)
        common = dict(device=device, progress=rep, cancel=cancel, view=view)
        if role == "segmentation":
            if spec.task != "segmentation":
                raise ModelNotAvailable(f"{mid} is a {spec.task} model, not a segmentation model")
            passes = {} if shift_passes is None else {"shift_passes": shift_passes}
            results.segmentation = run_segmentation(study, module, spec, batch_frames=batch_frames,
                                                    **passes, **common)
            seg_labels = results.segmentation
        elif role == "landmarks":
            results.landmarks = run_landmarks(study, module, spec, batch_frames=batch_frames, **common)
        elif role == "classification":
            results.classification = run_classification(study, module, spec, segmentation=seg_labels, **common)
        else:
            results.regression = run_regression(study, module, spec, segmentation=seg_labels, **common)
        offset += weight
    if (results.landmarks is None and results.segmentation is not None
            and view in SEGMENTATION_LANDMARK_VIEWS):
        # no landmark model: read the mitral hinges and apex off the segmentation (MAPSE needs them)
        results.landmarks = landmarks_from_segmentation(study, results.segmentation, view=view)
        seg_model = results.models.get("segmentation", {})
        results.models["landmarks"] = {"id": None, "task": "landmarks_from_segmentation",
                                       "source": f"read off the segmentation ({seg_model.get('id')})",
                                       "sha256": seg_model.get("sha256"), "training_data": None}
    results.seconds = time.perf_counter() - t0
    return results


# --------------------------------------------------------------------------------------------------
# results -> layers (main thread)
# --------------------------------------------------------------------------------------------------

ORIGINAL_KEY = "cinema_original"  # the model output the annotator started from (t, z, y, x) uint8
STORE_VERSION_KEY = "cinema_store_version"  # the store version this layer was saved as / loaded from
EDITED_KEY = "cinema_edited_frames"  # frames edited by hand (cumulative, saved or not)
UNSAVED_KEY = "cinema_unsaved"  # hand edits not yet in the correction store
# metadata a model run owns: replaced on a re-run (the store version a layer builds on is kept)
OWN_KEYS = ("cinema_result", "cinema_models", "provenance", "model", "labelled_frames", "edited",
            ORIGINAL_KEY, EDITED_KEY, UNSAVED_KEY)


def find_result_layer(viewer: Any, image_layer: Any, kind: str = "segmentation"):
    """The result layer (``'segmentation'`` Labels or ``'landmarks'`` Points) made from ``image_layer``."""
    uid = str(getattr(image_layer, "unique_id", ""))
    for layer in viewer.layers:
        tag = layer.metadata.get("cinema_result") if isinstance(layer.metadata, Mapping) else None
        if isinstance(tag, Mapping) and tag.get("kind") == kind and tag.get("of") == uid:
            return layer
    return None


def _geometry(image_layer: Any) -> dict[str, Any]:
    return {"scale": tuple(image_layer.scale), "translate": tuple(image_layer.translate),
            "units": tuple(image_layer.units), "axis_labels": tuple(image_layer.axis_labels)}


def _align(layer: Any, image_layer: Any) -> None:
    for key, value in _geometry(image_layer).items():
        current = getattr(layer, key)
        same = (tuple(map(str, current)) == tuple(map(str, value)) if key in ("units", "axis_labels")
                else np.allclose(np.asarray(current, float), np.asarray(value, float)))
        if not same:
            setattr(layer, key, value)


def _merged_metadata(layer: Any, new: Mapping[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in dict(layer.metadata).items() if k not in OWN_KEYS}
    keep.update(new)
    return keep


def _label_features():
    import pandas as pd

    return pd.DataFrame({"index": list(LABEL_NAMES), "structure": list(LABEL_NAMES.values())})


@dataclass
class LayerParts:
    """The array and table parts of the result layers (numpy and pandas only, so any thread makes them).

    The dock makes them in its worker (:func:`prepare_results`), so that the GUI thread only builds the
    napari layers and adds them; :func:`apply_results` makes them itself when they are missing.
    """

    labels: np.ndarray  # the labels layer's data: a copy of the model output (painting changes it)
    original: np.ndarray  # the model output as it came: metadata['cinema_original']
    features: Any = None  # pandas DataFrame, label index -> structure name (napari shows it on hover)
    points: tuple[np.ndarray, list[str]] | None = None  # landmark rows (t, z, y, x) and their names


def _landmark_rows(voxels: np.ndarray, landmark_names) -> tuple[np.ndarray, list[str]]:
    """Points rows (t, z, y, x) and names from landmark voxels (t, k, 3); frames without a landmark (NaN)
    get no point."""
    t, k = voxels.shape[:2]
    rows = np.concatenate([np.repeat(np.arange(t, dtype=float), k)[:, None],
                           np.asarray(voxels, dtype=float).reshape(-1, 3)], axis=1)
    keep = np.isfinite(rows).all(axis=1)
    names = [str(n) for n in landmark_names] * t
    return rows[keep], [n for n, ok in zip(names, keep) if ok]


def read_landmarks(study: CineStudy, labels: np.ndarray) -> np.ndarray:
    """The landmarks (t, 3, 3) (z, y, x) read off 2-/4-chamber ``labels`` (t, z, y, x), NaN where a frame
    shows no mitral opening: the rule a run applies when no landmark model runs
    (:func:`napari_cinema.engine.landmarks_from_segmentation`)."""
    from .analysis.landmarks import landmarks_over_frames

    _, _, dy, dx = study.spacing
    return landmarks_over_frames(labels, study.view, (dy, dx))[0]


def landmark_rows(voxels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Points rows (t, z, y, x) and names of landmarks (t, 3, 3) from :func:`read_landmarks`."""
    return _landmark_rows(voxels, LANDMARK_NAMES)


def landmarks_follow_labels(points_layer: Any) -> bool:
    """Whether ``points_layer`` holds landmarks read off the segmentation that nobody has moved since:
    such points are read off the labels again whenever the labels change (an annotator's correction of
    the LV moves its hinges and apex with it). Points moved, added or deleted by hand are kept as they are.
    """
    meta = getattr(points_layer, "metadata", None)
    if not isinstance(meta, Mapping):
        return False
    prov = meta.get("provenance")
    snapshot = meta.get(ORIGINAL_KEY)
    if not isinstance(prov, Mapping) or prov.get("task") != "landmarks_from_segmentation" or snapshot is None:
        return False
    data = np.asarray(points_layer.data, dtype=float)
    snapshot = np.asarray(snapshot, dtype=float)
    return data.shape == snapshot.shape and bool(np.allclose(data, snapshot))


def update_landmarks_from_labels(points_layer: Any, rows: np.ndarray, names: list[str]) -> bool:
    """Give a Points layer that :func:`landmarks_follow_labels` the landmarks read off the current labels
    (``rows``, ``names`` from :func:`landmark_rows`). Returns whether the points changed;
    nothing happens to points moved by hand, or when the labels give the same points."""
    if not landmarks_follow_labels(points_layer):
        return False
    rows = np.asarray(rows, dtype=float)
    current = np.asarray(points_layer.data, dtype=float)
    same_names = [str(n) for n in points_layer.features["name"]] == list(names)
    if current.shape == rows.shape and same_names and np.allclose(current, rows):
        return False
    points_layer.metadata[ORIGINAL_KEY] = rows.copy()  # first: whoever hears the data event sees it follows
    points_layer.data = rows
    points_layer.features = {"name": list(names)}
    return True


def _layer_parts(results: CineResults) -> LayerParts:
    original = np.asarray(results.segmentation.labels)
    if original.dtype != np.uint8:
        original = original.astype(np.uint8)
    lm = results.landmarks
    return LayerParts(labels=np.array(original, order="C", copy=True), original=original,
                      features=_label_features(), points=None if lm is None else _landmark_rows(lm.voxels, lm.names))


def prepare_results(results: CineResults) -> CineResults:
    """Make ``results.layer_parts`` now (in any thread: the dock's worker calls it after
    :func:`run_models`), so that :func:`apply_results` does no array copies or tables in the GUI thread.
    Returns ``results``."""
    results.layer_parts = _layer_parts(results)
    return results


def _in_viewer(viewer: Any, layer: Any) -> bool:
    uid = getattr(layer, "unique_id", None)
    return any(other.unique_id == uid for other in viewer.layers)


def apply_results(viewer: Any, image_layer: Any, results: CineResults):
    """Push ``results`` to the viewer in one go: the segmentation Labels layer (and, with landmarks, the
    Points layer) of ``image_layer``, created once and updated in place afterwards (data replaced,
    metadata and provenance updated), aligned with the image (scale, translate, units, axis labels).

    The labels layer keeps the model output as ``metadata['cinema_original']`` (uint8 (t, z, y, x),
    replaced on every run); its data is a copy, so painting never changes the model output. The points
    layer keeps its rows as the run gave them the same way (:func:`landmarks_follow_labels`).
    Returns (labels_layer, points_layer or None).
    """
    steps = apply_results_steps(viewer, image_layer, results)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def apply_results_steps(viewer: Any, image_layer: Any, results: CineResults):
    """:func:`apply_results` as a generator of GUI-thread steps, one per ``next()``: build the labels
    layer, add it to the viewer, then the same for the landmarks (an update in place is one step). Its
    return value (``StopIteration.value``) is (labels_layer, points_layer or None).

    The dock runs one step per event-loop turn, so that napari paints the new layer and the GUI answers
    input between steps instead of freezing for all of them at once. A layer is only added while
    ``image_layer`` is still in the viewer (else the steps end early: (None, None) before the labels
    layer was added).
    """
    from napari.layers import Labels, Points

    parts = results.layer_parts if isinstance(results.layer_parts, LayerParts) else _layer_parts(results)
    study = results.study
    seg = results.segmentation
    uid = str(image_layer.unique_id)
    geometry = _geometry(image_layer)
    model = results.models.get("segmentation", {})
    meta = {
        "cinema_result": {"kind": "segmentation", "of": uid, "image": image_layer.name},
        "provenance": dict(seg.provenance),
        "model": {**model, "label_names": dict(seg.label_names or LABEL_NAMES)},
        "labelled_frames": list(range(study.n_frames)),
        "edited": False,
        ORIGINAL_KEY: parts.original,
    }
    outputs = results.model_outputs()
    if outputs:
        meta["cinema_models"] = outputs
    # one constructor call (data, geometry, colormap, metadata, features): no later setter refreshes it
    data, kwargs, _ = labels_layer_data(study, parts.labels, f"{image_layer.name} segmentation", meta)
    kwargs.update(geometry)
    labels_layer = find_result_layer(viewer, image_layer, "segmentation")
    if labels_layer is not None and not isinstance(labels_layer, Labels):
        labels_layer = None
    if labels_layer is None:
        built = Labels(data, features=parts.features, **kwargs)
        deferred = _hide_overlays(built)
        yield
        try:
            if not _in_viewer(viewer, image_layer):
                return None, None
            labels_layer = viewer.add_layer(built)
            for overlay in deferred:  # napari builds each one's visual now, a turn of its own each
                yield
                overlay.visible = True
        finally:  # also when the steps are abandoned: a layer never keeps its painting tools hidden
            for overlay in deferred:
                overlay.visible = True
    else:
        _align(labels_layer, image_layer)
        # metadata first: whoever listens to the data event reads the new provenance
        labels_layer.metadata = _merged_metadata(labels_layer, kwargs["metadata"])
        labels_layer.data = data
    if results.landmarks is None:
        return labels_layer, None
    yield
    lm = results.landmarks
    rows, names = parts.points if parts.points is not None else _landmark_rows(lm.voxels, lm.names)
    pmeta = {"cinema_result": {"kind": "landmarks", "of": uid, "image": image_layer.name},
             "cinema_study": study.header(), "provenance": dict(lm.provenance),
             "model": results.models.get("landmarks", {}),
             ORIGINAL_KEY: np.array(rows, dtype=float, copy=True)}  # the points as the run gave them
    pdata, pkw, _ = points_layer_data(study, rows, names, f"{image_layer.name} landmarks", pmeta)
    pkw.update(geometry)
    points_layer = find_result_layer(viewer, image_layer, "landmarks")
    if points_layer is not None and not isinstance(points_layer, Points):
        points_layer = None
    if points_layer is None:
        built = Points(pdata, **pkw)
        yield
        if not _in_viewer(viewer, image_layer):
            return labels_layer, None
        points_layer = viewer.add_layer(built)
    else:
        _align(points_layer, image_layer)
        points_layer.metadata = _merged_metadata(points_layer, pmeta)
        points_layer.data = pdata
        points_layer.features = {"name": names}
        points_layer.text = pkw["text"]
    return labels_layer, points_layer


def _hide_overlays(layer: Any) -> list:
    """Hide the overlays ``layer`` was made with visible (a Labels layer's painting tools: polygon and
    brush stroke) and return them, to be shown again once the layer is in the viewer.

    napari builds an overlay's vispy visual when its layer is added, or, for an overlay hidden then, when
    it is first shown (napari's own lazy overlays). The two painting tools cost about 25 ms of the
    insertion's event-loop turn here; shown one per later turn, that work gets turns of its own. The
    overlays are private napari (``Layer._overlays``): without them nothing is deferred."""
    overlays = getattr(layer, "_overlays", None)
    if overlays is None:
        return []
    hidden = [overlay for overlay in overlays.values() if getattr(overlay, "visible", False)]
    for overlay in hidden:
        overlay.visible = False
    return hidden


# --------------------------------------------------------------------------------------------------
# analysis inputs from layers (main thread) and the report (any thread)
# --------------------------------------------------------------------------------------------------


def landmarks_from_points(points_layer: Any, n_frames: int) -> dict[str, dict[int, tuple[float, float, float]]] | None:
    """{name: {frame: (z, y, x)}} from a Points layer with a ``name`` feature (mv_1, mv_2, apex), rows
    (t, z, y, x) or (t, y, x) in the layer's data coordinates; None when the layer has no such points."""
    if points_layer is None:
        return None
    features = getattr(points_layer, "features", None)
    if features is None or "name" not in features:
        return None
    data = np.asarray(points_layer.data, dtype=float)
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] not in (3, 4):
        return None
    names = [str(n) for n in features["name"]]
    out: dict[str, dict[int, tuple[float, float, float]]] = {n: {} for n in LANDMARK_NAMES}
    for row, name in zip(data, names):
        if name not in out:
            continue
        t = int(round(row[0]))
        if not 0 <= t < n_frames:
            continue
        zyx = (float(row[1]), float(row[2]), float(row[3])) if data.shape[1] == 4 else (0.0, float(row[1]), float(row[2]))
        out[name][t] = zyx
    if not any(out.values()):
        return None
    return out


def find_landmarks_layer(viewer: Any, labels_layer: Any, study: CineStudy | None = None):
    """The Points layer with the landmarks of the study ``labels_layer`` belongs to: the landmark result
    of the same image, else a Points layer with mv_1/mv_2/apex names on a cine of as many frames."""
    from napari.layers import Points

    tag = labels_layer.metadata.get("cinema_result") if labels_layer is not None else None
    candidates = [lay for lay in viewer.layers if isinstance(lay, Points)]
    if isinstance(tag, Mapping):
        for lay in candidates:
            other = lay.metadata.get("cinema_result")
            if isinstance(other, Mapping) and other.get("kind") == "landmarks" and other.get("of") == tag.get("of"):
                return lay
    n = None if study is None else study.n_frames
    for lay in candidates:
        features = getattr(lay, "features", None)
        if features is None or "name" not in features:
            continue
        if not set(LANDMARK_NAMES) <= {str(v) for v in features["name"]}:
            continue
        s = study_from_layer(lay)
        if study is not None and s is not None and s.shape != study.shape:
            continue
        if n is not None and len(lay.data) and np.max(np.asarray(lay.data)[:, 0]) > n - 1 + 1e-6:
            continue
        return lay
    return None


@dataclass
class AnalysisInputs:
    """Everything :func:`compute_report` needs, gathered from the layers."""

    study: CineStudy
    labels: np.ndarray
    landmarks: dict | None = None
    probabilities: dict[str, float] | None = None
    ef_regression: dict[str, Any] | None = None
    model_info: dict[str, Any] | None = None
    labels_name: str = ""
    landmarks_name: str | None = None
    # the landmarks layer follows the labels (read off them, never moved by hand): ``landmarks`` is None,
    # so the analysis reads them off these labels, as edited
    landmarks_follow_labels: bool = False


def _model_info(labels_layer: Any) -> dict[str, Any]:
    meta = labels_layer.metadata
    prov = meta.get("provenance")
    if isinstance(prov, Mapping):
        info = {"id": prov.get("model_id"), **{k: v for k, v in prov.items()
                                               if isinstance(v, (str, int, float, bool, type(None)))}}
        model = meta.get("model")
        if isinstance(model, Mapping):
            info.update({k: v for k, v in model.items() if k in ("source", "training_data") and v})
        if meta.get("edited"):
            info["edited"] = True
            info["description"] = "model segmentation, corrected by hand in napari"
        return info
    desc = str(prov) if prov else f"labels layer '{labels_layer.name}'"
    return {"id": None, "description": desc}


def analysis_inputs(viewer: Any, labels_layer: Any, landmarks_layer: Any = "auto", *,
                    copy: bool = True) -> AnalysisInputs:
    """Gather the study, labels (copied, so painting cannot change them mid-analysis), landmarks and
    model outputs of ``labels_layer``. ``landmarks_layer``: a Points layer, None, or 'auto' (LAX only)."""
    study = study_for_labels(viewer, labels_layer)
    labels = np.array(labels_layer.data, copy=copy)
    if landmarks_layer == "auto":
        landmarks_layer = find_landmarks_layer(viewer, labels_layer, study) if study.view in LAX_VIEWS else None
    follow = landmarks_layer is not None and landmarks_follow_labels(landmarks_layer)
    lm = landmarks_from_points(landmarks_layer, study.n_frames) if landmarks_layer is not None and not follow else None
    outputs = labels_layer.metadata.get("cinema_models") or {}
    probs = None
    cls = outputs.get("classification")
    if isinstance(cls, Mapping) and cls.get("classes"):
        probs = {str(c): float(p) for c, p in zip(cls["classes"], cls["probabilities"])}
    ef = outputs.get("ef_regression")
    ef = dict(ef) if isinstance(ef, Mapping) else None
    return AnalysisInputs(study=study, labels=labels, landmarks=lm, probabilities=probs, ef_regression=ef,
                          model_info=_model_info(labels_layer), labels_name=str(labels_layer.name),
                          landmarks_name=None if landmarks_layer is None else str(landmarks_layer.name),
                          landmarks_follow_labels=follow)


def compute_report(inputs: AnalysisInputs, ed: int | None = None, es: int | None = None, *,
                   height_cm: float | None = None, weight_kg: float | None = None,
                   landmark_voxels: np.ndarray | None = None) -> "Report":
    """:func:`napari_cinema.analysis.analyze_study` on gathered inputs (safe in a worker thread).

    ``landmark_voxels``: the landmarks :func:`read_landmarks` read off ``inputs.labels``, for a caller
    that also shows them (the analysis would otherwise read them again)."""
    from .analysis import analyze_study
    from .analysis.landmarks import READ_OFF_LABELS, landmarks_by_name

    n = inputs.study.n_frames
    for name, f in (("ED", ed), ("ES", es)):
        if f is not None and not 0 <= int(f) < n:
            raise ValueError(f"{name} frame {f} is outside 0..{n - 1}")
    landmarks, source = inputs.landmarks, "given"
    read = None if landmark_voxels is None else landmarks_by_name(landmark_voxels)
    if read is not None:
        landmarks, source = read, READ_OFF_LABELS
    return analyze_study(inputs.study, inputs.labels, model_info=inputs.model_info, height_cm=height_cm,
                         weight_kg=weight_kg, ed_frame=None if ed is None else int(ed),
                         es_frame=None if es is None else int(es), landmarks=landmarks,
                         landmarks_source=source, probabilities=inputs.probabilities,
                         ef_regression=inputs.ef_regression)


# --------------------------------------------------------------------------------------------------
# the function API
# --------------------------------------------------------------------------------------------------


def _layer(viewer: Any, layer: Any):
    if isinstance(layer, str):
        try:
            return viewer.layers[layer]
        except KeyError:
            raise NotACine(f"no layer named {layer!r} in the viewer") from None
    return layer


def segment_layer(viewer: "napari.Viewer", image_layer: "Layer | str", model_id: str | None = None,
                  device: str = "auto", *, view: str | None = None, landmark_model_id: str | None = "auto",
                  classification_model_id: str | None = None, regression_model_id: str | None = None,
                  progress: ProgressFn | None = None, batch_frames: int | None = None) -> "Labels":
    """Segment every frame of a cine image layer; returns the segmentation Labels layer.

    ``model_id`` defaults to the registry's default for the study's view (bundled first); with no model
    available :class:`ModelNotAvailable` says so. On long-axis cines ``landmark_model_id='auto'`` also
    runs the default landmark model when one is available (a Points layer ``<image> landmarks``).
    Runs in the calling thread (the dock runs the same code in a worker).
    """
    image_layer = _layer(viewer, image_layer)
    study = study_for_layer(image_layer, view)
    v = study.view
    if v not in STUDY_VIEWS:
        raise NotACine(f"the view of '{image_layer.name}' is unknown: pass view='sax' (or lax_2c, lax_3c, lax_4c)")
    if model_id is None:
        model_id = default_model_id(SEGMENTATION_TASKS, v)
        if model_id is None:
            raise ModelNotAvailable(no_model_message(v))
    if landmark_model_id == "auto":
        landmark_model_id = default_model_id(LANDMARK_TASKS, v) if v in LAX_VIEWS else None
    results = run_models(study, model_id, device=device, view=v, landmark_model_id=landmark_model_id,
                         classification_model_id=classification_model_id, regression_model_id=regression_model_id,
                         progress=progress, batch_frames=batch_frames)
    labels, _points = apply_results(viewer, image_layer, results)
    return labels


def no_model_message(view: str, task_words: str = "segmentation") -> str:
    return (f"no {task_words} model for {view} cines is available here: download a published one "
            f"(napari-cinema models download ID), or register a fine-tuned model "
            f"(napari-cinema models import FILE); `napari-cinema models list` shows them")


def analyze_layer(viewer: "napari.Viewer", labels_layer: "Labels | str", ed: int | None = None,
                  es: int | None = None, *, landmarks_layer: Any = "auto", height_cm: float | None = None,
                  weight_kg: float | None = None) -> "Report":
    """The analysis report of a segmentation layer (volumes, ED/ES, EF, mass, flags, MAPSE on LAX with
    landmarks). ``ed``/``es`` override the detected frames."""
    labels_layer = _layer(viewer, labels_layer)
    inputs = analysis_inputs(viewer, labels_layer, landmarks_layer)
    return compute_report(inputs, ed, es, height_cm=height_cm, weight_kg=weight_kg)


def export_report(viewer: "napari.Viewer", labels_layer: "Labels | str", out_dir: str | Path,
                  ed: int | None = None, es: int | None = None, *, landmarks_layer: Any = "auto",
                  height_cm: float | None = None, weight_kg: float | None = None,
                  pdf: bool = True) -> dict[str, Path]:
    """Write the report folder (report.json, volumes.csv, report.pdf) of a segmentation layer."""
    from .analysis import write_report

    report = analyze_layer(viewer, labels_layer, ed, es, landmarks_layer=landmarks_layer, height_cm=height_cm,
                           weight_kg=weight_kg)
    return write_report(report, out_dir, pdf=pdf)


def _open_dock(viewer: Any, name: str, tabify: bool = False):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=tabify)
    return widget


def open_analysis_dock(viewer: "napari.Viewer"):
    """Open (or show) the 'Cine analysis' dock; returns the widget."""
    return _open_dock(viewer, ANALYSIS_DOCK)


def open_function_dock(viewer: "napari.Viewer"):
    """Open (or show) the 'Cardiac function' dock; returns the widget."""
    return _open_dock(viewer, FUNCTION_DOCK)


# --------------------------------------------------------------------------------------------------
# corrections (the Corrections dock's twins; the store is napari_cinema.annotations.store)
# --------------------------------------------------------------------------------------------------


def correction_baseline(labels_layer: Any) -> np.ndarray:
    """The model output kept with ``labels_layer`` (set by :func:`apply_results`); a layer that has none
    (labels opened from a file, drawn from scratch) gets its current data as the baseline, once."""
    meta = labels_layer.metadata
    original = meta.get(ORIGINAL_KEY)
    if original is None or np.shape(original) != np.shape(labels_layer.data):
        original = np.array(labels_layer.data, dtype=np.uint8, copy=True)
        meta[ORIGINAL_KEY] = original
    return original


def edited_frames_of(labels_layer: Any) -> list[int]:
    """Frames edited by hand so far (recorded by the Corrections dock or :func:`mark_edited`)."""
    return sorted(int(t) for t in labels_layer.metadata.get(EDITED_KEY, ()))


def mark_edited(labels_layer: Any, frames, saved: bool = False) -> list[int]:
    """Record ``frames`` as edited by hand on ``labels_layer`` (the report then says 'corrected');
    ``saved``: they are in the correction store now (else they count as unsaved edits)."""
    done = set(edited_frames_of(labels_layer)) | {int(t) for t in frames}
    labels_layer.metadata[EDITED_KEY] = sorted(done)
    if done:
        labels_layer.metadata["edited"] = True
    labels_layer.metadata[UNSAVED_KEY] = not saved
    return sorted(done)


def has_unsaved_edits(labels_layer: Any) -> bool:
    """Whether ``labels_layer`` holds hand edits that are not in the correction store (a painted layer
    the Corrections dock never saw counts as unsaved)."""
    meta = labels_layer.metadata
    return bool(meta.get(UNSAVED_KEY, meta.get("edited", False)))


@dataclass
class CorrectionSnapshot:
    """What a save writes, copied in the main thread so that painting cannot change it mid-save."""

    study: CineStudy
    original: np.ndarray
    final: np.ndarray
    model_id: str
    model_sha256: str | None
    edited_frames: list[int]
    base_version: int | None


def correction_snapshot(viewer: Any, labels_layer: Any, edited_frames=None) -> CorrectionSnapshot:
    """Copy what :func:`save_corrections` writes from ``labels_layer`` (cheap; main thread)."""
    study = study_for_labels(viewer, labels_layer)
    original = correction_baseline(labels_layer)
    final = np.array(labels_layer.data, dtype=np.uint8, copy=True)
    if edited_frames is None:
        edited_frames = edited_frames_of(labels_layer)
        if not edited_frames:  # edited outside the dock (script, other tool): every frame that differs
            edited_frames = [t for t in range(final.shape[0]) if not np.array_equal(final[t], original[t])]
    prov = labels_layer.metadata.get("provenance")
    prov = prov if isinstance(prov, Mapping) else {}
    version = labels_layer.metadata.get(STORE_VERSION_KEY)
    # the model output is never painted on (the layer's data is its own copy): no copy needed
    return CorrectionSnapshot(study=study, original=np.asarray(original, dtype=np.uint8), final=final,
                              model_id=str(prov.get("model_id") or "none (labels not from a model)"),
                              model_sha256=prov.get("sha256"), edited_frames=sorted(int(t) for t in edited_frames),
                              base_version=None if version is None else int(version))


def write_snapshot(snapshot: CorrectionSnapshot, store: Any = None, *, user: str | None = None,
                   autosave: bool = False, force: bool = False):
    """Save a :class:`CorrectionSnapshot` to the correction store (any thread). With ``force``, a newer
    version saved by someone else is kept as history instead of refusing (StoreConflict)."""
    from .annotations.store import CorrectionStore, study_key

    store = store if isinstance(store, CorrectionStore) else CorrectionStore(store)
    base = snapshot.base_version
    if force:
        versions = store.versions(study_key(snapshot.study))
        base = versions[-1] if versions else None
    return store.save(snapshot.study, snapshot.original, snapshot.final, model_id=snapshot.model_id,
                      model_sha256=snapshot.model_sha256, edited_frames=snapshot.edited_frames, user=user,
                      autosave=autosave, base_version=base)


def save_corrections(viewer: Any, labels_layer: Any, store: Any = None, *, edited_frames=None,
                     user: str | None = None, autosave: bool = False, force: bool = False):
    """Save the corrected ``labels_layer`` next to the model output in the correction store (a new
    version; atomic). Returns the store's ``StudyEntry``. Raises ``StoreConflict`` when someone saved
    a newer version since this layer was loaded (unless ``force``)."""
    labels_layer = _layer(viewer, labels_layer)
    snap = correction_snapshot(viewer, labels_layer, edited_frames)
    entry = write_snapshot(snap, store, user=user, autosave=autosave, force=force)
    labels_layer.metadata[STORE_VERSION_KEY] = entry.version
    mark_edited(labels_layer, entry.edited_frames, saved=True)
    return entry


def stored_corrections_for(viewer: Any, layer: Any, store: Any = None):
    """The store's newest corrections of the study of ``layer`` (image or labels), or None."""
    from .annotations.store import CorrectionStore

    layer = _layer(viewer, layer)
    study = study_from_layer(layer)
    if study is None:
        return None
    store = store if isinstance(store, CorrectionStore) else CorrectionStore(store)
    return store.load(study)


def apply_stored_corrections(viewer: Any, image_layer: Any, stored: Any):
    """Show stored corrections (from :func:`stored_corrections_for`) as the segmentation layer of
    ``image_layer``: created, or replaced in place. Returns the labels layer."""
    from napari.layers import Labels

    image_layer = _layer(viewer, image_layer)
    study = study_from_layer(image_layer)
    if study is None:
        raise NotACine(f"'{image_layer.name}' carries no cine study")
    if tuple(stored.final.shape) != tuple(study.shape):
        raise NotACine(f"the stored corrections {tuple(stored.final.shape)} do not match '{image_layer.name}' "
                       f"{tuple(study.shape)}")
    prov = dict(stored.provenance)
    meta = {
        "cinema_result": {"kind": "segmentation", "of": str(image_layer.unique_id), "image": image_layer.name},
        "provenance": {"model_id": prov.get("model_id"), "sha256": prov.get("model_sha256"),
                       "corrections": f"correction store version {stored.version}, saved by "
                                      f"{prov.get('user')} at {prov.get('saved_at')}"},
        "model": {"label_names": dict(LABEL_NAMES)},
        "labelled_frames": list(range(study.n_frames)),
        "edited": bool(stored.edited_frames),
        ORIGINAL_KEY: np.array(stored.original, dtype=np.uint8, copy=True),
        STORE_VERSION_KEY: int(stored.version),
        EDITED_KEY: sorted(int(t) for t in stored.edited_frames),
        UNSAVED_KEY: False,
    }
    data, kwargs, _ = labels_layer_data(study, np.array(stored.final, dtype=np.uint8, copy=True),
                                        f"{image_layer.name} segmentation", meta)
    kwargs.update(_geometry(image_layer))
    layer = find_result_layer(viewer, image_layer, "segmentation")
    if isinstance(layer, Labels):
        _align(layer, image_layer)
        layer.metadata = _merged_metadata(layer, kwargs["metadata"])
        layer.data = data
    else:
        layer = viewer.add_labels(data, **kwargs)
    return layer


def open_corrections_dock(viewer: "napari.Viewer", tabify: bool = False):
    """Open (or show) the 'Corrections' dock (``tabify``: as a tab of the last dock); returns the widget."""
    return _open_dock(viewer, CORRECTIONS_DOCK, tabify)


def open_finetune_dock(viewer: "napari.Viewer", tabify: bool = False):
    """Open (or show) the 'Fine-tuning' dock (``tabify``: as a tab of the last dock); returns the widget."""
    return _open_dock(viewer, FINETUNE_DOCK, tabify)
