"""'Cine analysis' dock: pick a cine, a model and a device; segment every frame in a worker thread.

Thin over :mod:`napari_cinema.api`: :func:`~napari_cinema.api.run_models` runs in a napari thread
worker (progress through a queued Qt signal, Cancel through a flag the engine checks between
batches), which also prepares the layers' arrays (:func:`~napari_cinema.api.prepare_results`); the
results go to layers in the GUI thread with :func:`~napari_cinema.api.apply_results_steps`, one step
per event-loop turn (build the labels layer, add it, then the landmarks), so that napari paints and the
GUI answers input between the steps. A cancelled, failed or orphaned run (its image layer was removed)
changes no layer.
"""

from __future__ import annotations

import html
import threading
from typing import Any

from qtpy.QtCore import QSize, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QWidget,
)

from napari_cinema import api
from napari_cinema.analysis.landmarks import SEGMENTATION_LANDMARK_VIEWS

from ._common import (
    NEXT_TURN_MS,
    LayerCombo,
    ProgressBridge,
    StatusLabel,
    notify,
    notify_exception,
    repaint_next_turn,
    same_layer,
    scrolling,
    user_error_types,
)

SMALL = "font-size: 8pt;"
WARN = "#e0a030"
VIEW_TITLES = {"sax": "SAX (short axis)", "lax_2c": "LAX 2-chamber", "lax_3c": "LAX 3-chamber",
               "lax_4c": "LAX 4-chamber"}
SOURCE_WORDS = {"bundled": "bundled", "published": "published CineMA", "user": "fine-tuned", "imported": "imported"}
ROLE_TASKS = {
    "segmentation": api.SEGMENTATION_TASKS,
    "landmarks": api.LANDMARK_TASKS,
    "classification": api.CLASSIFICATION_TASKS,
    "regression": api.EF_TASKS,
}
ROLE_WORDS = {"segmentation": "segmentation", "landmarks": "landmark", "classification": "disease classification",
              "regression": "EF regression"}
# engine.sliding.DEFAULT_SHIFT_PASSES, which the dock cannot import without importing torch while it is
# built (the engine package imports torch); tests hold the two equal
SHIFT_PASSES = 3
SHIFTED = f"{SHIFT_PASSES} shifted passes"
STEP_MS = NEXT_TURN_MS  # between the steps that show the results: each step gets its own event-loop turn
_WARMED = threading.Event()


def _warm_up() -> None:
    """Pay, off the GUI thread, the one-time costs of a session's first labels layer that napari would
    otherwise pay in the GUI thread when the first results arrive (about half a second here): a napari
    Labels layer imports pandas (its feature table) and skimage.color (its random colormap), and the
    vispy anti-aliased lines of its polygon tool compute their dash patterns once per process."""
    if _WARMED.is_set():
        return
    try:
        import pandas  # noqa: F401
        from napari.utils.colormaps.colormap_utils import label_colormap
        from vispy.visuals.line.dash_atlas import DashAtlas

        label_colormap(49, 0.5, background_value=0)  # as napari's Labels() makes it
        DashAtlas()
    except Exception:  # pragma: no cover - a warm-up only; napari pays the cost later instead
        pass
    _WARMED.set()


def _load_registry() -> dict[str, Any]:
    """Runs in a worker: every registry entry and the devices (imports torch the first time)."""
    from napari_cinema.engine import available_devices, describe_device, pick_device
    from napari_cinema.model import hub, registry

    devices = {"auto": describe_device(pick_device("auto"))}
    for name in available_devices():
        devices[name] = describe_device(pick_device(name))
    # in preference order here: the dock only filters them (the registry module imports torch, which the
    # GUI thread must not: seconds of frozen window)
    found = {"models": sorted(registry.list_models(), key=registry.preference), "devices": devices,
             "offline": hub.hub_offline()}
    _warm_up()  # once per session, while the dock says it reads the registry (Run waits for it anyway)
    return found


def _job(make_study, model_ids: dict[str, str | None], device: str, shift_passes: int | None, progress,
         cancel) -> tuple[str, Any]:
    """Runs in a worker: ('ok', CineResults) | ('cancelled', None) | ('error', exception)."""
    from napari_cinema.engine import Cancelled

    try:
        study = make_study()
        results = api.run_models(study, model_ids["segmentation"], device=device, view=study.view,
                                 landmark_model_id=model_ids.get("landmarks"),
                                 classification_model_id=model_ids.get("classification"),
                                 regression_model_id=model_ids.get("regression"),
                                 progress=progress, cancel=cancel, shift_passes=shift_passes)
        if cancel():
            return "cancelled", None
        return "ok", api.prepare_results(results)  # the layers' arrays, made here rather than in the GUI
    except Cancelled:
        return "cancelled", None
    except Exception as exc:  # handed to the GUI thread, which decides how to show it
        return "error", exc


class AnalysisWidget(QWidget):
    """The 'Cine analysis' dock."""

    run_finished = Signal(str)  # 'ok' | 'cancelled' | 'error' | 'discarded'
    models_loaded = Signal()

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from napari.layers import Image

        self.viewer = napari_viewer
        self.worker = None
        self.last_results = None
        self.labels_layer = None
        self.points_layer = None
        self._models: list = []
        self._devices: dict[str, str] = {}
        self._offline = False
        self._registry_worker = None
        self._cancel = threading.Event()
        self._cancel_reason = ""
        self._run_layer = None
        self._outcome = None
        self._steps = None  # apply_results_steps while the results are being shown
        self._pending_outcome = ("error", "", "info", False)
        self._bridge = ProgressBridge(self)
        self._bridge.progress.connect(self._on_progress)

        self.image_combo = LayerCombo(napari_viewer, (Image,))
        self.image_combo.setToolTip("The cine to segment (a 4-D t, z, y, x image layer)")
        self.view_combo = QComboBox()
        self.view_combo.addItem("unknown: choose the view", "unknown")
        for view, title in VIEW_TITLES.items():
            self.view_combo.addItem(title, view)
        self.view_combo.setToolTip("The view the models are chosen for; change it when it was not detected")
        self.detected_label = QLabel("")
        self.detected_label.setStyleSheet(SMALL)
        self.detected_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.model_combo = self._model_combo()
        self.refresh_button = QToolButton()
        self.refresh_button.setText("⟳")
        self.refresh_button.setToolTip("Read the model registry again (after a download or a fine-tuning run)")
        # one or two short lines, no word wrap (keeps the dock's height fixed); details in the tooltip
        self.model_info = QLabel("reading the model registry…")
        self.model_info.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.model_info.setTextFormat(Qt.TextFormat.RichText)
        self.model_info.setWordWrap(True)  # a model's caveat must be read whole, not cut at the dock's edge
        self.model_info.setStyleSheet(SMALL)
        self.landmark_combo = self._model_combo()
        self.classification_combo = self._model_combo()
        self.regression_combo = self._model_combo()
        self.device_combo = QComboBox()
        self.device_combo.addItem("auto", "auto")
        self.device_label = QLabel("")
        self.device_label.setStyleSheet(SMALL)
        self.device_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Segment every frame of the cine")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(False)  # shown while a run is going
        self.status = StatusLabel()

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        form.setVerticalSpacing(4)
        form.addRow("Image", self.image_combo)
        form.addRow("View", self.view_combo)
        form.addRow(self.detected_label)
        model_row = QHBoxLayout()
        model_row.setContentsMargins(0, 0, 0, 0)
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.refresh_button)
        form.addRow("Model", model_row)
        form.addRow(self.model_info)
        self.more_button = QToolButton()
        self.more_button.setText("More ▸")
        self.more_button.setCheckable(True)
        self.more_button.setToolTip("Landmarks (long-axis cines), disease classification and EF regression: "
                                    "models run after the segmentation (their outputs show in the Cardiac "
                                    "function dock); the segmentation's passes")
        device_row = QHBoxLayout()
        device_row.setContentsMargins(0, 0, 0, 0)
        device_row.addWidget(self.device_combo)
        device_row.addWidget(self.device_label, 1)
        device_row.addWidget(self.more_button)
        form.addRow("Device", device_row)
        extras = QFormLayout()
        extras.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        extras.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        extras.setContentsMargins(0, 0, 0, 0)
        extras.setVerticalSpacing(4)
        self.landmark_label = QLabel("Landmarks")
        extras.addRow(self.landmark_label, self.landmark_combo)
        extras.addRow("Disease", self.classification_combo)
        extras.addRow("EF model", self.regression_combo)
        self.shift_check = QCheckBox(SHIFTED)  # short: the dock is narrow; the why is in the tooltip
        self.shift_check.setChecked(True)
        self.shift_check.setToolTip(
            f"Segment each image {SHIFT_PASSES} times, shifted by 1/{SHIFT_PASSES} of the network's token grid, "
            "and average: mean Dice 0.872 -> 0.882 on held-out ACDC patients, about 2.3x the time. Untick for a "
            "single, faster pass.")
        extras.addRow("Segmentation", self.shift_check)
        self.extras = QWidget()
        self.extras.setLayout(extras)
        self.extras.setVisible(False)
        self.more_button.toggled.connect(self._toggle_extras)
        self.shift_check.toggled.connect(self._title_extras)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.cancel_button)
        layout = scrolling(self)
        layout.addLayout(form)
        layout.addWidget(self.extras)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.setMinimumWidth(260)

        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.view_combo.currentIndexChanged.connect(self._on_view_changed)
        self.model_combo.currentIndexChanged.connect(self._show_model_info)
        for combo in (self.landmark_combo, self.classification_combo, self.regression_combo):
            combo.currentIndexChanged.connect(self._title_extras)
            combo.currentIndexChanged.connect(self._show_model_info)
        self.device_combo.currentIndexChanged.connect(self._show_device)
        self.refresh_button.clicked.connect(self.refresh_models)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        napari_viewer.layers.selection.events.active.connect(self._on_active_layer)

        active = napari_viewer.layers.selection.active
        if isinstance(active, Image):
            self.image_combo.set_layer(active)
        self._on_image_changed()
        self._replace_confirmed: str | None = None
        self._refresh_again = False
        from .finetune import MODEL_EVENTS

        MODEL_EVENTS.registered.connect(self._on_model_registered)  # a fine-tuned model: list it
        # not before the dock is in the window: the worker's first torch import holds the GIL for long
        # stretches, and napari adding the dock would wait on it (0.7 s of frozen window)
        QTimer.singleShot(NEXT_TURN_MS, self.refresh_models)

    # -- widgets ----------------------------------------------------------------------------------
    def sizeHint(self) -> QSize:  # noqa: N802 - Qt
        hint = self.content_widget.sizeHint()
        return QSize(max(330, hint.width()), min(hint.height() + 6, 420))

    @staticmethod
    def _model_combo() -> QComboBox:
        combo = QComboBox()
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(14)
        combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        return combo

    # -- state ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None

    def image_layer(self):
        return self.image_combo.current_layer()

    def set_image_layer(self, layer) -> bool:
        return self.image_combo.set_layer(layer)

    def view(self) -> str:
        return self.view_combo.currentData()

    def set_view(self, view: str) -> None:
        index = self.view_combo.findData(view)
        if index < 0:
            raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEW_TITLES)}")
        self.view_combo.setCurrentIndex(index)

    def model_id(self, role: str = "segmentation") -> str | None:
        return self._combo_for(role).currentData()

    def set_model(self, model_id: str | None, role: str = "segmentation") -> None:
        combo = self._combo_for(role)
        index = combo.findData(model_id)
        if index < 0:
            raise ValueError(f"model {model_id!r} is not offered for {ROLE_WORDS[role]} on {self.view()} cines")
        combo.setCurrentIndex(index)

    def set_device(self, device: str) -> None:
        index = self.device_combo.findData(device)
        if index < 0:
            raise ValueError(f"device {device!r} is not available here ({', '.join(self._devices) or 'auto'})")
        self.device_combo.setCurrentIndex(index)

    def status_text(self) -> str:
        return self.status.text()

    def _combo_for(self, role: str) -> QComboBox:
        return {"segmentation": self.model_combo, "landmarks": self.landmark_combo,
                "classification": self.classification_combo, "regression": self.regression_combo}[role]

    def _message(self, text: str, level: str = "info", toast: bool = False) -> None:
        self.status.show_message(text, level)
        if toast:
            notify(text, level)

    # -- image and view -----------------------------------------------------------------------------
    def _on_active_layer(self, event=None) -> None:
        from napari.layers import Image

        layer = self.viewer.layers.selection.active
        if isinstance(layer, Image) and not self.running:
            self.image_combo.set_layer(layer)

    def _on_image_changed(self, *_args) -> None:
        layer = self.image_layer()
        if layer is None:
            self.detected_label.setText("no image layer: open a cine study")
            self.detected_label.setToolTip("File > Open (napari-cinema), or File > Open Sample > napari-cinema")
            self._update_run_enabled()
            return
        try:
            api.check_cine_layer(layer)
        except api.NotACine as exc:
            short = str(exc).split(":")[0]
            self.detected_label.setText(f"<span style='color:{WARN}'>{short}</span>")
            self.detected_label.setToolTip(str(exc))
            self._update_run_enabled()
            return
        study = api.study_from_layer(layer)
        view = study.view if study is not None else "unknown"
        self.view_combo.blockSignals(True)
        self.view_combo.setCurrentIndex(max(0, self.view_combo.findData(view)))
        self.view_combo.blockSignals(False)
        self._on_view_changed()
        if study is None:
            t, z, y, x = layer.data.shape
            self.detected_label.setText(f"view unknown: choose it · {t} frames × {z} slices")
            self.detected_label.setToolTip("the layer was not opened by napari-cinema: its view is not known")
            self._update_run_enabled()
            return
        dt = study.spacing[0]
        timing = f" · {dt:.0f} ms/frame" if dt else " · timing unknown"
        detected = view.upper().replace("_", " ") if view in VIEW_TITLES else "view unknown: choose it"
        self.detected_label.setText(f"detected {detected} · {study.n_frames} frames × {study.n_slices} "
                                    f"slice{'s' if study.n_slices != 1 else ''}{timing}")
        self.detected_label.setToolTip(study.source or "")
        self._update_run_enabled()

    def _on_view_changed(self, *_args) -> None:
        self._fill_models()
        is_lax = self.view() in api.LAX_VIEWS
        self.landmark_combo.setVisible(is_lax)
        self.landmark_label.setVisible(is_lax)

    # -- registry -------------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        """Read the registry (and the devices) in a worker; the combos fill when it is done."""
        from napari.qt.threading import create_worker

        if self._registry_worker is not None:
            self._refresh_again = True  # the registry may have changed since that read started
            return
        self.refresh_button.setEnabled(False)
        worker = create_worker(_load_registry, _start_thread=False)
        worker.returned.connect(self._on_registry)
        worker.errored.connect(self._on_registry_error)  # bound methods: dropped if the dock is deleted
        worker.finished.connect(self._on_registry_finished)
        self._registry_worker = worker
        worker.start()

    def _on_registry_error(self, exc: BaseException) -> None:
        self.model_info.setText(f"<span style='color:{WARN}'>cannot read the model registry: {exc}</span>")

    def _on_model_registered(self, model_id: str) -> None:
        self.refresh_models()

    def _on_registry_finished(self) -> None:
        self._registry_worker = None
        if self._refresh_again:
            self._refresh_again = False
            QTimer.singleShot(0, self.refresh_models)
        self.refresh_button.setEnabled(True)

    def _on_registry(self, found: dict[str, Any]) -> None:
        self._models = list(found["models"])
        self._devices = dict(found["devices"])
        self._offline = bool(found["offline"])
        current = self.device_combo.currentData()
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        for name in self._devices:
            self.device_combo.addItem(name, name)
        index = self.device_combo.findData(current)
        self.device_combo.setCurrentIndex(max(0, index))
        self.device_combo.blockSignals(False)
        self._show_device()
        self._fill_models()
        self.models_loaded.emit()

    @property
    def models_ready(self) -> bool:
        return bool(self._devices)

    def models_for(self, role: str, view: str | None = None) -> list:
        """The models for ``role`` and ``view``, the default first (the worker sorted them)."""
        view = view or self.view()
        tasks = ROLE_TASKS[role]
        return [m for m in self._models if m.task in tasks and view in m.views]

    @staticmethod
    def _item_text(info) -> str:
        mark = "●" if info.available else "○"
        data = f" · {info.training_data}" if info.training_data else ""
        where = SOURCE_WORDS.get(info.source, info.source)
        tail = "" if info.available else " · not downloaded"
        return f"{mark} {info.id}  ({where}{data}{tail})"

    def _fill_models(self) -> None:
        view = self.view()
        for role in ROLE_TASKS:
            combo = self._combo_for(role)
            previous = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            infos = self.models_for(role, view)
            if role == "landmarks" and view in SEGMENTATION_LANDMARK_VIEWS:
                combo.addItem("from the segmentation", None)
                combo.setItemData(0, "No landmark model: the mitral hinges and apex are read off the "
                                     "segmentation (ends of the valve opening, tip of the LV wall)",
                                  Qt.ItemDataRole.ToolTipRole)
            elif role != "segmentation":
                combo.addItem("none", None)
            elif view not in VIEW_TITLES:
                combo.addItem("choose the view first", None)
            elif not infos:
                combo.addItem(f"no segmentation model for {view}", None)
            for info in infos:
                combo.addItem(self._item_text(info), info.id)
                tip = "\n".join(t for t in (info.description or info.id, info.card.get("caveat")) if t)
                combo.setItemData(combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
            index = combo.findData(previous) if previous is not None else -1
            if index < 0:
                if role in ("segmentation", "landmarks"):
                    # the default: an available model (bundled first); never preselect a download for extras,
                    # nor a model whose card asks to be chosen by hand (opt-in: it fails on real cines, or
                    # serves a special case), unless a segmentation has no other
                    avail = [i for i in infos if i.available and not i.card.get("opt_in")]
                    if not avail and role == "segmentation":
                        avail = [i for i in infos if i.available]
                    pick = avail[0].id if avail else (infos[0].id if infos and role == "segmentation" else None)
                    index = combo.findData(pick)
                index = max(0, index)
            combo.setCurrentIndex(index)
            combo.blockSignals(False)
        self._show_model_info()
        self._title_extras()

    def _title_extras(self, *_args) -> None:
        roles = ["classification", "regression"] + (["landmarks"] if self.view() in api.LAX_VIEWS else [])
        chosen = [ROLE_WORDS[r].split()[0] for r in roles if self.model_id(r) is not None]
        arrow = "▾" if self.more_button.isChecked() else "▸"
        count = f" ({len(chosen)} model{'s' if len(chosen) > 1 else ''})" if chosen else ""
        self.more_button.setText(f"More{count} {arrow}")
        passes = SHIFTED if self.shift_check.isChecked() else "1 pass"
        self.more_button.setToolTip("Models run after the segmentation: " + (", ".join(chosen) or "none chosen")
                                    + f"; segmentation: {passes}")

    def _toggle_extras(self, on: bool) -> None:
        self.extras.setVisible(on)
        self._title_extras()

    def _info(self, model_id: str | None):
        for info in self._models:
            if info.id == model_id:
                return info
        return None

    def _show_model_info(self, *_args) -> None:
        if not self._devices:
            return
        view = self.view()
        infos = self.models_for("segmentation", view)
        info = self._info(self.model_id())
        title = VIEW_TITLES.get(view, view)
        if view not in VIEW_TITLES:
            self.model_info.setText(f"<span style='color:{WARN}'>Choose the view of this cine: the models "
                                    f"are chosen for it.</span>")
            self.model_info.setToolTip("")
        elif info is None:
            self.model_info.setText(
                f"<span style='color:{WARN}'>No segmentation model for {title} cines here.<br>"
                f"Import or download one, then press ⟳.</span>")
            self.model_info.setToolTip(api.no_model_message(view))
        else:
            where = SOURCE_WORDS.get(info.source, info.source)
            line = f"{info.task.replace('_', ' ')} · trained on {info.training_data or 'unknown data'} · {where}"
            notes = []
            if not any(i.available for i in infos):
                notes.append(f"no trained {view} model here yet")
            if info.problem:
                notes.append("cannot be used (see tooltip)")
            elif not info.available:
                notes.append("hub offline: cannot download" if self._offline else "Run downloads it first")
            note = " · ".join(notes)
            text = line + (f"<br><span style='color:{WARN}'>{note}</span>" if note else "")
            # what each chosen model was (not) validated on, from its card: scarce labels said plainly
            caveats = [f"{c.id}: {c.card['caveat']}" for c in (self._info(self.model_id(r)) for r in ROLE_TASKS)
                       if c is not None and c.card.get("caveat")]
            if caveats:
                text += "".join(f"<br><span style='color:{WARN}'>⚠ {html.escape(c)}</span>" for c in caveats)
            self.model_info.setText(text)
            tip = [f"{info.id}", f"task: {info.task.replace('_', ' ')}; views: {', '.join(info.views)}",
                   f"trained on: {info.training_data or 'unknown'}; source: {where}"]
            if info.description:
                tip.append(info.description)
            if info.problem:
                tip.append(f"problem: {info.problem}")
            if not info.available:
                tip.append("not downloaded: the hub is offline (HF_HUB_OFFLINE), so it cannot run here" if self._offline
                           else "not downloaded: Run downloads it from the Hugging Face hub (mathpluscode/CineMA) "
                                "into the local cache first")
            if info.sha256:
                tip.append(f"sha256: {info.sha256[:16]}…")
            if info.training_data and "ACDC" in str(info.training_data):
                tip.append("ACDC-trained weights: non-commercial research use only (CC BY-NC-SA 4.0)")
            self.model_info.setToolTip("\n".join(tip))
        self._update_run_enabled()

    def _show_device(self, *_args) -> None:
        name = self.device_combo.currentData() or "auto"
        desc = self._devices.get(name)
        self.device_label.setText(desc or "")
        self.device_label.setToolTip(f"in use: {desc}" if desc else "")

    def _update_run_enabled(self) -> None:
        if self.running:
            self.run_button.setEnabled(False)
            return
        layer = self.image_layer()
        ok = layer is not None and self.model_id() is not None
        if ok:
            try:
                api.check_cine_layer(layer)
            except api.NotACine:
                ok = False
        self.run_button.setEnabled(ok)

    # -- running ------------------------------------------------------------------------------------
    def run(self, layer=None):
        """Segment the chosen (or given) cine layer in a worker thread; returns the worker, or None with a
        message (status line and a napari notification) when the run cannot start."""
        from napari.qt.threading import create_worker

        if self.running:
            self._message("A run is already in progress: wait for it to finish or press Cancel.", "warning", True)
            return None
        layer = layer if layer is not None else self.image_layer()
        try:
            api.check_cine_layer(layer)
        except api.NotACine as exc:
            self._message(f"Cannot run: {exc}", "error", True)
            return None
        view = self.view()
        if view not in api.STUDY_VIEWS:
            self._message("Cannot run: choose the view of the cine first.", "error", True)
            return None
        if not self.models_ready:
            self._message("The model registry is still being read; try again in a moment.", "warning", True)
            return None
        existing = api.find_result_layer(self.viewer, layer, "segmentation")
        if existing is not None and api.has_unsaved_edits(existing):
            if self._replace_confirmed != str(existing.unique_id):
                # hand corrections are never overwritten silently: the second press replaces them
                self._replace_confirmed = str(existing.unique_id)
                self._message(f"'{existing.name}' has hand corrections that are not saved in the correction "
                              "store: save them in the Corrections dock first, or press Run again to replace "
                              "them with a new model run.", "warning", True)
                return None
        self._replace_confirmed = None
        model_ids = {role: self.model_id(role) for role in ROLE_TASKS}
        if view not in api.LAX_VIEWS:
            model_ids["landmarks"] = None
        if model_ids["segmentation"] is None:
            self._message(f"Cannot run: {api.no_model_message(view)}.", "error", True)
            return None
        self._cancel = threading.Event()
        self._cancel_reason = ""
        self._run_layer = layer
        make_study = _StudyMaker(layer, view)
        flag, worker = self._cancel, None

        def cancel() -> bool:  # Cancel, or napari quitting the worker (closing the window, quitting)
            return flag.is_set() or (worker is not None and worker.abort_requested)

        device = self.device_combo.currentData() or "auto"
        passes = None if self.shift_check.isChecked() else 1  # None: the engine's default
        worker = create_worker(_job, make_study, model_ids, device, passes, self._bridge, cancel, _start_thread=False)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        # never the busy (0, 0) range: leaving it repaints the whole window at once (a GUI stall)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("starting…")
        self.progress_bar.setVisible(True)
        self._message(f"Running {model_ids['segmentation']} on '{layer.name}' ({device})…")
        worker.start()
        return worker

    def cancel(self, reason: str = "") -> None:
        """Ask the running job to stop at the next batch; no layer is changed."""
        if not self.running:
            return
        self._cancel_reason = reason
        self._cancel.set()
        self.cancel_button.setEnabled(False)
        self.progress_bar.setFormat("cancelling…")
        self._message(reason or "Cancelling…", "warning")

    def _on_layer_removed(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if self.running and self._steps is None and same_layer(layer, self._run_layer):
            self.cancel(f"The image layer '{layer.name}' was removed: the run was stopped and no layer was made.")
        if same_layer(layer, self.labels_layer):
            self.labels_layer = None
        if same_layer(layer, self.points_layer):
            self.points_layer = None

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if not self.running:
            return
        if total > 0:
            if self.progress_bar.maximum() != total:
                self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(done, total))
        self.progress_bar.setFormat(f"{message} ({done}/{total})" if total > 0 else message)

    def _on_returned(self, outcome: tuple[str, Any]) -> None:
        self._outcome = outcome

    def _on_finished(self) -> None:
        # the results go to the layers one step per event-loop turn, then the dock's own updates, so that
        # the GUI paints and breathes between them
        QTimer.singleShot(STEP_MS, self._complete)

    def _complete(self) -> None:
        outcome, self._outcome = self._outcome, None
        status, value = outcome if outcome is not None else ("error", RuntimeError("the run ended without a result"))
        layer = self._run_layer
        if status == "ok" and self._cancel.is_set():
            status = "cancelled"  # Cancel was pressed after the last batch: the results are dropped all the same
        if status == "cancelled":
            self._finish("cancelled", self._cancel_reason or "Cancelled: no layer was changed.", "warning")
        elif status == "error":
            exc = value
            if isinstance(exc, user_error_types()):
                self._finish("error", f"Run failed: {exc}", "error", toast=True)
            else:
                self._finish("error", f"Run failed ({type(exc).__name__}: {exc}); see the notification for "
                                      "the traceback.", "error")
                notify_exception(exc)
        elif layer is None or not any(same_layer(layer, other) for other in self.viewer.layers):
            self._discarded()
        else:
            self.last_results = value
            self.cancel_button.setEnabled(False)  # the results are being shown: too late to cancel
            self.progress_bar.setFormat("showing the results…")
            self._steps = api.apply_results_steps(self.viewer, layer, value)
            self._apply_step()
            return
        QTimer.singleShot(STEP_MS, self._announce)

    def _apply_step(self) -> None:
        """One step of showing the results (then the next one in the next event-loop turn)."""
        repaint_next_turn(self)  # a step's own work in this turn, the window's repaint in the next
        try:
            next(self._steps)
        except StopIteration as done:
            self._steps = None
            labels, points = done.value
            if labels is None:
                self._discarded()
            else:
                self.labels_layer, self.points_layer = labels, points
                self._finish("ok", self._done_text(self.last_results), "ok")
        except Exception as exc:  # napari refused the layer: say so, never leave the dock 'running'
            self._steps = None
            self._finish("error", f"Showing the results failed ({type(exc).__name__}: {exc}); see the "
                                  "notification for the traceback.", "error")
            notify_exception(exc)
        else:
            QTimer.singleShot(STEP_MS, self._apply_step)
            return
        QTimer.singleShot(STEP_MS, self._announce)

    def _discarded(self) -> None:
        self._finish("discarded", "The image layer was removed during the run: results discarded.", "warning")

    @staticmethod
    def _done_text(results) -> str:
        prov = results.segmentation.provenance
        derived = results.models.get("landmarks", {}).get("task") == "landmarks_from_segmentation"
        extra = [r for r in ("landmarks", "classification", "regression")
                 if getattr(results, r) is not None and not (r == "landmarks" and derived)]
        n_z = results.study.n_slices
        text = (f"Segmented {results.study.n_frames} frames × {n_z} slice{'s' if n_z != 1 else ''} in "
                f"{results.seconds:.1f} s with {prov.get('model_id')} on "
                f"{prov.get('device_description', prov.get('device'))} ({prov.get('precision')})"
                + (f"; also {', '.join(extra)}" if extra else "")
                + ("; landmarks read off the segmentation" if derived else "") + ".")
        warnings = [w for w in prov.get("warnings", []) if w]
        if results.landmarks is not None:
            warnings += [w for w in results.landmarks.provenance.get("warnings", []) if w]
        if warnings:
            text += " Note: " + "; ".join(warnings[:2])
        return text

    def _finish(self, outcome: str, text: str, level: str, toast: bool = False) -> None:
        self._pending_outcome = (outcome, text, level, toast)

    def _announce(self) -> None:
        outcome, text, level, toast = self._pending_outcome
        self._pending_outcome = ("error", "", "info", False)
        self.worker = None
        self._run_layer = None
        self.cancel_button.setEnabled(False)
        self.progress_bar.setVisible(False)
        self._message(text, level, toast)
        self._update_run_enabled()
        self.run_finished.emit(outcome)


class _StudyMaker:
    """Builds the study in the worker (foreign layers convert their data there, not in the GUI)."""

    def __init__(self, layer, view: str):
        self.layer = layer
        self.view = view

    def __call__(self):
        return api.study_for_layer(self.layer, self.view)
