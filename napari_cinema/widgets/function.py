"""'Cardiac function' dock: volume-time curves, ED/ES, the measures table, MAPSE, model outputs, export.

Thin over :mod:`napari_cinema.api` / :mod:`napari_cinema.analysis`: the labels (and landmarks) are
gathered in the GUI thread (a copy of the label array), :func:`~napari_cinema.api.compute_report`
runs in a worker thread, and the dock shows the report it returns in two event-loop turns (the table,
then the curves: the matplotlib redraw is the dearest part). Edits of the labels layer (painting, a
re-run replacing its data) recompute after 300 ms of quiet; the current-frame marker follows the time
slider without redrawing the curves.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QSize, Qt, QTimer, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_cinema import api

from ._canvas import MARKER_COLORS, CurveCanvas
from ._common import (
    NEXT_TURN_MS,
    LayerCombo,
    StatusLabel,
    notify,
    notify_exception,
    same_layer,
    scrolling,
    theme_colors,
)

DEBOUNCE_MS = 300
# napari's stylesheet gives every spin box 90 px; these hold a frame number or a height.
COMPACT_SPIN = "QAbstractSpinBox { min-width: 20px; padding: 1px 4px; }"

SAX_ROWS = (
    ("LVEDV_ml", "LV EDV"), ("LVESV_ml", "LV ESV"), ("LVSV_ml", "LV SV"), ("LVEF_pct", "LV EF"),
    ("LVM_g", "LV mass"), ("RVEDV_ml", "RV EDV"), ("RVESV_ml", "RV ESV"), ("RVSV_ml", "RV SV"),
    ("RVEF_pct", "RV EF"),
)
INDEXED_ROWS = (
    ("LVEDV_ml_m2", "LV EDV index"), ("LVESV_ml_m2", "LV ESV index"), ("LVSV_ml_m2", "LV SV index"),
    ("LVM_g_m2", "LV mass index"), ("RVEDV_ml_m2", "RV EDV index"), ("RVESV_ml_m2", "RV ESV index"),
)
TIMING_ROWS = (
    ("HR_bpm", "Heart rate"), ("CO_l_min", "Cardiac output"), ("CI_l_min_m2", "Cardiac index"), ("BSA_m2", "BSA"),
    ("PER_ml_s", "Peak ejection rate"), ("PFR_early_ml_s", "Peak filling (E)"),
)
LAX_ROWS = (
    ("MAPSE_mm", "MAPSE"), ("MAPSE_mv_1_mm", "MAPSE mv_1"), ("MAPSE_mv_2_mm", "MAPSE mv_2"),
    ("LV_length_ED_mm", "LV length ED"), ("LV_length_ES_mm", "LV length ES"),
    ("LV_long_axis_shortening_pct", "Long-axis shortening"), ("HR_bpm", "Heart rate"),
)
NO_LABELS = ("No labels: segment a cine with the Cine analysis dock, or open a study with its labels "
             "(e.g. a napari-cinema phantom).")
NO_LABELS_SHORT = "No labels to analyse yet:\nrun a model in 'Cine analysis',\nor open a study with its labels"
FLAG_STYLE = {"low": ("↓", "#5bb8ff"), "high": ("↑", "#ff8a5b")}


def _analyze(inputs: api.AnalysisInputs, ed, es, height_cm, weight_kg, generation: int) -> tuple:
    """Runs in a worker: (generation, inputs, 'ok', (Report, landmark rows and names or None)) or
    (generation, inputs, 'error', exception). The landmark rows come with landmarks that follow the labels:
    read off the labels as they are now, for the Points layer."""
    try:
        # landmarks that follow the labels are read once, for the analysis and for the Points layer
        voxels = api.read_landmarks(inputs.study, inputs.labels) if inputs.landmarks_follow_labels else None
        report = api.compute_report(inputs, ed, es, height_cm=height_cm, weight_kg=weight_kg, landmark_voxels=voxels)
        return generation, inputs, "ok", (report, None if voxels is None else api.landmark_rows(voxels))
    except Exception as exc:
        return generation, inputs, "error", exc


def _export(inputs: api.AnalysisInputs, ed, es, height_cm, weight_kg, out_dir: str) -> tuple[str, Any]:
    from napari_cinema.analysis import write_report

    try:
        report = api.compute_report(inputs, ed, es, height_cm=height_cm, weight_kg=weight_kg)
        return "ok", write_report(report, out_dir)
    except Exception as exc:
        return "error", exc


def _range_text(rng: Any) -> str:
    if not rng or len(rng) != 2 or (rng[0] is None and rng[1] is None):
        return ""
    lo, hi = rng
    if lo is None:
        return f"≤ {hi:g}"
    if hi is None:
        return f"≥ {lo:g}"
    return f"{lo:g}–{hi:g}"


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    v = float(value)
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


class FunctionWidget(QWidget):
    """The 'Cardiac function' dock."""

    report_ready = Signal(object)  # the Report, after each recomputation
    exported = Signal(object)  # {name: path}
    export_failed = Signal(str)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from napari.layers import Labels, Points

        self.viewer = napari_viewer
        self.report = None
        self.study = None
        self.worker = None
        self.export_worker = None
        self.analyses = 0  # completed recomputations (tests wait on it)
        self._generation = 0
        self._pending = False
        self._manual: dict[str, int | None] = {"ED": None, "ES": None}
        self._watched = None
        self._watched_points = None
        self._curves_pending = None  # (generation, report, inputs) whose curves are drawn in the next turn
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.recompute)

        self.labels_combo = LayerCombo(napari_viewer, (Labels,), accept=lambda lay: np.ndim(lay.data) == 4)
        self.labels_combo.setToolTip("The segmentation (t, z, y, x) to analyse")
        self.points_combo = LayerCombo(napari_viewer, (Points,), none_text="none")
        self.points_combo.setToolTip("Landmarks (mv_1, mv_2, apex per frame) for MAPSE on long-axis cines")
        self.points_label = QLabel("Landmarks")
        self.canvas = CurveCanvas(self)
        self.canvas.setToolTip("Click: go to that frame. Drag the dashed ED / ES lines to change them.")
        self.ed_spin = self._frame_spin("ED")
        self.es_spin = self._frame_spin("ES")
        self.auto_button = QPushButton("Auto")
        self.auto_button.setMaximumWidth(48)
        self.auto_button.setToolTip("ED and ES from the largest and smallest LV volume")
        self.height_spin = self._body_spin(" cm", 250.0, "Height (for the body surface area and indexed values)")
        self.weight_spin = self._body_spin(" kg", 400.0, "Weight (for body surface area and indexed values)")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Measure", "Value", "Reference"])
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(20)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(100)
        self.models_box = QGroupBox("Model outputs")
        self.models_layout = QGridLayout(self.models_box)
        self.models_layout.setContentsMargins(6, 4, 6, 4)
        self.models_layout.setVerticalSpacing(2)
        self.models_box.setVisible(False)
        self.ef_label = QLabel("")
        self.export_button = QPushButton("Export report…")
        self.export_button.setToolTip("Write report.json, volumes.csv and report.pdf into a folder")
        self.status = StatusLabel(wrap=False)

        pick = QFormLayout()
        pick.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        pick.setVerticalSpacing(4)
        pick.addRow("Labels", self.labels_combo)
        pick.addRow(self.points_label, self.points_combo)
        phases = QHBoxLayout()
        phases.setSpacing(3)
        for text, w in (("ED", self.ed_spin), ("ES", self.es_spin)):
            lab = QLabel(text)
            lab.setStyleSheet(f"color: {MARKER_COLORS[text]}; font-weight: bold;")
            phases.addWidget(lab)
            phases.addWidget(w)
        phases.addWidget(self.auto_button)
        phases.addStretch(1)
        for text, w in (("H", self.height_spin), ("W", self.weight_spin)):
            lab = QLabel(text)
            lab.setToolTip(w.toolTip())
            phases.addWidget(lab)
            phases.addWidget(w)
        layout = scrolling(self)
        layout.addLayout(pick)
        layout.addWidget(self.canvas, 5)
        layout.addLayout(phases)
        layout.addWidget(self.table, 2)
        layout.addWidget(self.models_box)
        bottom = QHBoxLayout()
        bottom.setSpacing(6)
        bottom.addWidget(self.export_button, 0, Qt.AlignmentFlag.AlignTop)
        bottom.addWidget(self.status, 1)
        layout.addLayout(bottom)
        self.setMinimumWidth(280)

        self.canvas.set_theme(theme_colors(napari_viewer))
        napari_viewer.events.theme.connect(self._on_theme)
        self.labels_combo.currentIndexChanged.connect(self._on_labels_changed)
        self.points_combo.currentIndexChanged.connect(self._on_points_changed)
        self.ed_spin.valueChanged.connect(lambda v: self._set_manual("ED", v))
        self.es_spin.valueChanged.connect(lambda v: self._set_manual("ES", v))
        self.auto_button.clicked.connect(self.auto_phases)
        self.height_spin.valueChanged.connect(lambda _v: self.schedule(DEBOUNCE_MS))
        self.weight_spin.valueChanged.connect(lambda _v: self.schedule(DEBOUNCE_MS))
        self.canvas.frame_clicked.connect(self.go_to_frame)
        self.canvas.marker_moved.connect(self._on_marker_moved)
        self.export_button.clicked.connect(self._ask_export)
        napari_viewer.dims.events.current_step.connect(self._on_dims)
        napari_viewer.layers.events.inserted.connect(self._on_layer_inserted)

        self._pick_default_labels()
        self._on_labels_changed()

    def _on_theme(self, event=None) -> None:
        self.canvas.set_theme(theme_colors(self.viewer))

    # -- small widgets ------------------------------------------------------------------------------
    def sizeHint(self) -> QSize:  # noqa: N802 - Qt
        return QSize(max(330, self.content_widget.sizeHint().width()), 520)

    def _frame_spin(self, phase: str) -> QSpinBox:
        spin = QSpinBox()
        spin.setRange(0, 0)
        spin.setToolTip(f"{phase} frame (0-based); typing a frame recomputes everything")
        spin.setKeyboardTracking(False)
        spin.setButtonSymbols(QSpinBox.ButtonSymbols.NoButtons)
        spin.setStyleSheet(COMPACT_SPIN)
        spin.setFixedWidth(40)
        return spin

    @staticmethod
    def _body_spin(suffix: str, top: float, tip: str) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(0.0, top)
        spin.setDecimals(0)
        spin.setSuffix(suffix)
        spin.setSpecialValueText("—")
        spin.setToolTip(tip + "; — = unknown")
        spin.setKeyboardTracking(False)
        spin.setButtonSymbols(QDoubleSpinBox.ButtonSymbols.NoButtons)
        spin.setStyleSheet(COMPACT_SPIN)
        spin.setFixedWidth(62)
        return spin

    # -- layers ---------------------------------------------------------------------------------------
    def labels_layer(self):
        return self.labels_combo.current_layer()

    def set_labels_layer(self, layer) -> bool:
        return self.labels_combo.set_layer(layer)

    def _is_cinema_labels(self, layer) -> bool:
        return isinstance(layer.metadata, Mapping) and layer.metadata.get("cinema_study") is not None

    def _pick_default_labels(self) -> None:
        current = self.labels_layer()
        if current is not None and self._is_cinema_labels(current):
            return
        for layer in self.labels_combo.layers():
            if self._is_cinema_labels(layer):
                self.labels_combo.set_layer(layer)
                return

    def _on_layer_inserted(self, event=None) -> None:
        from napari.layers import Points

        layer = getattr(event, "value", None)
        tag = layer.metadata.get("cinema_result") if layer is not None else None
        if isinstance(tag, Mapping) and tag.get("kind") == "segmentation":
            self.labels_combo.set_layer(layer)  # a new segmentation: show it
        elif isinstance(tag, Mapping) and tag.get("kind") == "landmarks":
            self.points_combo.set_layer(layer)
        elif isinstance(layer, Points) and self.study is not None and self.study.view in api.LAX_VIEWS:
            if self.points_combo.current_layer() is None and same_layer(api.find_landmarks_layer(
                    self.viewer, self.labels_layer(), self.study), layer):
                self.points_combo.set_layer(layer)  # the study's landmarks arrived after its labels
        elif self.labels_layer() is None or not self._is_cinema_labels(self.labels_layer()):
            self._pick_default_labels()

    def _watch(self, layer) -> None:
        if self._watched is not None:
            for emitter in (self._watched.events.data, self._watched.events.paint):
                emitter.disconnect(self._on_labels_edited)
        self._watched = layer
        if layer is not None:
            layer.events.data.connect(self._on_labels_edited)
            layer.events.paint.connect(self._on_labels_edited)

    def _watch_points(self, layer) -> None:
        if self._watched_points is not None:
            self._watched_points.events.data.disconnect(self._on_points_edited)
        self._watched_points = layer
        if layer is not None:
            layer.events.data.connect(self._on_points_edited)

    def _on_labels_changed(self, *_args) -> None:
        layer = self.labels_layer()
        self._watch(layer)
        self._manual = {"ED": None, "ES": None}
        self.study = None
        if layer is not None:
            try:
                self.study = api.study_for_labels(self.viewer, layer)
            except api.NotACine as exc:
                self._show_points_row(False)
                self._show_problem(str(exc))
                return
        if self.study is None:
            self._show_points_row(False)
            self._show_problem(NO_LABELS, NO_LABELS_SHORT)
            return
        n = self.study.n_frames
        for spin in (self.ed_spin, self.es_spin):
            spin.blockSignals(True)
            spin.setRange(0, max(0, n - 1))
            spin.blockSignals(False)
        p = self.study.patient
        for spin, value in ((self.height_spin, p.height_cm), (self.weight_spin, p.weight_kg)):
            spin.blockSignals(True)
            spin.setValue(float(value) if value else 0.0)  # 0 shows '—': unknown
            spin.blockSignals(False)
        is_lax = self.study.view in api.LAX_VIEWS
        self._show_points_row(is_lax)
        if is_lax and self.points_combo.current_layer() is None:
            found = api.find_landmarks_layer(self.viewer, layer, self.study)
            if found is not None:
                self.points_combo.blockSignals(True)
                self.points_combo.set_layer(found)
                self.points_combo.blockSignals(False)
        self._watch_points(self.points_combo.current_layer() if is_lax else None)
        self.schedule(0)

    def _show_points_row(self, on: bool) -> None:
        """The landmarks picker is for long-axis studies only. It is hidden until labels are chosen too:
        a row appearing or going away resizes the curves, which costs a full matplotlib redraw."""
        if self.points_combo.isVisibleTo(self) != on:
            self.points_combo.setVisible(on)
            self.points_label.setVisible(on)

    def _on_points_changed(self, *_args) -> None:
        self._watch_points(self.points_combo.current_layer())
        self.schedule(0)

    def _on_labels_edited(self, event=None) -> None:
        layer = self._watched
        if layer is not None and getattr(event, "type", "") == "paint":
            layer.metadata["edited"] = True  # in place: the report says the labels were corrected
        self.schedule(DEBOUNCE_MS)

    def _on_points_edited(self, event=None) -> None:
        self.schedule(DEBOUNCE_MS)

    def _show_problem(self, text: str, short: str | None = None) -> None:
        self.report = None
        self.canvas.show_message(short or (text if len(text) < 60 else "no analysis: see the status line"))
        for spin in (self.ed_spin, self.es_spin, self.height_spin, self.weight_spin):
            spin.blockSignals(True)
            spin.setValue(0)
            spin.blockSignals(False)
        self.table.setRowCount(0)
        self.models_box.setVisible(False)
        self.status.show_message(text, "warning")

    # -- ED / ES ----------------------------------------------------------------------------------------
    def set_phases(self, ed: int | None = None, es: int | None = None) -> None:
        """Set ED and/or ES by hand (as typing in the spin boxes does) and recompute."""
        if ed is not None:
            self._manual["ED"] = int(ed)
            self._set_spin(self.ed_spin, ed)
        if es is not None:
            self._manual["ES"] = int(es)
            self._set_spin(self.es_spin, es)
        self.schedule(0)

    def auto_phases(self) -> None:
        self._manual = {"ED": None, "ES": None}
        self.schedule(0)

    @staticmethod
    def _set_spin(spin: QSpinBox, value: int) -> None:
        spin.blockSignals(True)
        spin.setValue(int(value))
        spin.blockSignals(False)

    def _set_manual(self, phase: str, value: int) -> None:
        self._manual[phase] = int(value)
        self.canvas.set_phase(phase, int(value))
        self.schedule(0)

    def _on_marker_moved(self, phase: str, frame: int) -> None:
        self._set_spin(self.ed_spin if phase == "ED" else self.es_spin, frame)
        self._manual[phase] = int(frame)
        self.schedule(0)

    # -- frames -------------------------------------------------------------------------------------------
    def current_frame(self) -> int:
        """The frame the time slider shows, in the labels layer's own frame index."""
        layer = self.labels_layer()
        dims = self.viewer.dims
        if layer is None or dims.ndim < 4:
            return 0
        axis = dims.ndim - 4
        scale = float(layer.scale[0]) or 1.0
        frame = int(round((float(dims.point[axis]) - float(layer.translate[0])) / scale))
        n = self.study.n_frames if self.study is not None else frame + 1
        return int(np.clip(frame, 0, max(0, n - 1)))

    def go_to_frame(self, frame: int) -> None:
        layer = self.labels_layer()
        dims = self.viewer.dims
        if layer is None or dims.ndim < 4:
            return
        axis = dims.ndim - 4
        self.viewer.dims.set_point(axis, float(layer.translate[0]) + int(frame) * float(layer.scale[0]))

    def _on_dims(self, event=None) -> None:
        if self.report is not None:
            self.canvas.set_frame(self.current_frame())

    # -- analysis -------------------------------------------------------------------------------------------
    def schedule(self, delay_ms: int = DEBOUNCE_MS) -> None:
        """Recompute after ``delay_ms`` of quiet (restarts the timer)."""
        self._timer.start(max(0, int(delay_ms)))

    @property
    def busy(self) -> bool:
        return (self._timer.isActive() or self.worker is not None or self._pending
                or self._curves_pending is not None)

    def _body(self) -> tuple[float | None, float | None]:
        h = self.height_spin.value() or None
        w = self.weight_spin.value() or None
        return h, w

    def _inputs(self) -> api.AnalysisInputs | None:
        layer = self.labels_layer()
        if layer is None:
            return None
        if self.study is not None and self.study.view in api.LAX_VIEWS:
            points = self.points_combo.current_layer()
        else:
            points = None
        return api.analysis_inputs(self.viewer, layer, points)

    def recompute(self) -> None:
        """Analyse the chosen labels now (in a worker); the plot and table follow when it returns."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            self._pending = True
            return
        self._pending = False
        if self.labels_layer() is None or self.study is None:
            if self.labels_layer() is None:
                self._show_problem(NO_LABELS, NO_LABELS_SHORT)
            return
        try:
            inputs = self._inputs()
        except api.NotACine as exc:
            self._show_problem(str(exc))
            return
        self._generation += 1
        gen = self._generation
        h, w = self._body()
        worker = create_worker(_analyze, inputs, self._manual["ED"], self._manual["ES"], h, w, gen,
                               _start_thread=False)
        worker.returned.connect(self._on_report)  # a bound method: dropped if the dock is deleted
        worker.finished.connect(self._on_worker_finished)
        self.worker = worker
        self.status.show_message("analysing…")
        worker.start()

    def _on_worker_finished(self) -> None:
        self.worker = None
        if self._pending:
            self._pending = False
            self.recompute()

    def _on_report(self, outcome: tuple) -> None:
        gen, inputs, status, value = outcome
        if gen != self._generation or self._pending:
            return  # stale: a newer request follows
        if status == "error":
            if isinstance(value, ValueError):
                self._show_problem(f"Cannot analyse '{inputs.labels_name}': {value}")
            else:
                self._show_problem(f"Analysis failed: {type(value).__name__}: {value}")
                notify_exception(value)
            return
        report, points = value
        if points is not None:
            self._follow_labels(inputs, *points)
        self.report = report
        self._fill_table(report, inputs.study)
        self._fill_models(report)
        warnings = list(report.warnings)
        source = inputs.model_info or {}
        origin = source.get("id") or source.get("description") or inputs.labels_name
        text = f"{inputs.labels_name}: labels from {origin}"
        if source.get("edited"):
            text += " (edited)"
        if warnings:
            text += f" · {len(warnings)} warning{'s' if len(warnings) != 1 else ''}: {warnings[0]}"
        self.status.show_message(text, "warning" if warnings else "info")
        self.status.setToolTip("\n".join(warnings))
        # the curves (a full matplotlib redraw) in the next event-loop turn, not on top of the table's
        self._curves_pending = (gen, report, inputs)
        QTimer.singleShot(NEXT_TURN_MS, self._show_curves)

    def _follow_labels(self, inputs: api.AnalysisInputs, rows: np.ndarray, names: list[str]) -> None:
        """Move the landmarks read off the segmentation to where the (edited) labels now put them, unless
        someone moved them by hand meanwhile. The analysis this report came from already used them."""
        layer = self.points_combo.current_layer()
        if layer is None or str(layer.name) != inputs.landmarks_name:
            return
        with layer.events.data.blocker(self._on_points_edited):  # not an edit: no second analysis
            api.update_landmarks_from_labels(layer, rows, names)

    def _show_curves(self) -> None:
        pending, self._curves_pending = self._curves_pending, None
        if pending is None:
            return
        gen, report, inputs = pending
        if gen != self._generation or report is not self.report:
            return  # a newer analysis (or a problem) replaced this report meanwhile
        self._draw(report, inputs)
        self.analyses += 1
        self.report_ready.emit(report)

    # -- drawing ---------------------------------------------------------------------------------------------
    def frame_times(self, report=None) -> tuple[np.ndarray, str]:
        report = report or self.report
        v = report.volumes
        n = len(v.get("frame", []))
        if v.get("time_ms") is not None:
            return np.asarray(v["time_ms"], dtype=float), "time (ms)"
        return np.arange(n, dtype=float), "frame"

    def _draw(self, report, inputs: api.AnalysisInputs) -> None:
        times, x_label = self.frame_times(report)
        v = report.volumes
        if inputs.study.view in api.LAX_VIEWS or inputs.study.n_slices == 1:
            curves = {k: (None if v.get(f"{k}_area_mm2") is None else
                          [None if a is None else a / 100.0 for a in v[f"{k}_area_mm2"]]) for k in ("LV", "RV", "MYO")}
            y_label = "area (cm²)"
        else:
            curves = {k: v.get(f"{k}_ml") for k in ("LV", "RV", "MYO")}
            y_label = "volume (ml)"
        mapse = None
        if report.landmarks and report.landmarks.get("curves"):
            mapse = report.landmarks["curves"].get("displacement_mm")
        ed, es = report.measures.get("ED_frame"), report.measures.get("ES_frame")
        self.canvas.set_curves(times, curves, y_label, x_label, mapse=mapse, ed=ed, es=es,
                               frame=self.current_frame())
        if ed is not None:
            self._set_spin(self.ed_spin, ed)
        if es is not None:
            self._set_spin(self.es_spin, es)

    def _fill_table(self, report, study) -> None:
        m = report.measures
        is_lax = study.view in api.LAX_VIEWS
        rows: list[tuple[str, str]] = list(LAX_ROWS if is_lax else SAX_ROWS)
        if not is_lax:
            if m.get("BSA_m2") is not None:
                rows += list(INDEXED_ROWS)
            rows += list(TIMING_ROWS)
        if is_lax and report.landmarks is None and m.get("MAPSE_mm") is None:
            rows = [r for r in rows if not r[0].startswith(("MAPSE", "LV_length", "LV_long"))] + [
                ("MAPSE_mm", "MAPSE")]
        from napari_cinema.analysis.report import LABELS, unit_of

        self.table.setUpdatesEnabled(False)
        try:
            self._fill_rows(report, rows, LABELS, unit_of)
        finally:
            self.table.setUpdatesEnabled(True)

    def _fill_rows(self, report, rows, long_names, unit_of) -> None:
        m = report.measures
        if self.table.rowCount() != len(rows):
            self.table.setRowCount(len(rows))
        for i, (key, name) in enumerate(rows):
            value = m.get(key)
            unit = unit_of(key)
            flag = report.flags.get(key) or {}
            arrow, color = FLAG_STYLE.get(flag.get("flag"), ("", None))
            text = _fmt(value) + (f" {unit}" if value is not None and unit else "") + (f" {arrow}" if arrow else "")
            name_item, value_item, ref_item = (self._item(i, col) for col in range(3))
            name_item.setText(name)
            name_item.setToolTip(long_names.get(key, key))
            value_item.setText(text)
            value_item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            value_item.setToolTip(report.null_reasons.get(key, "not computable") if value is None else "")
            value_item.setForeground(QColor(color) if color else self.table.palette().text())
            if color:
                value_item.setToolTip(f"{flag.get('flag')} against the reference range")
            ref_item.setText(_range_text(flag.get("range")))
            ref_item.setToolTip("\n".join(str(flag.get(k)) for k in ("source", "citation", "note") if flag.get(k)))

    def _item(self, row: int, col: int) -> QTableWidgetItem:
        item = self.table.item(row, col)
        if item is None:
            item = QTableWidgetItem()
            self.table.setItem(row, col, item)
        return item

    def _fill_models(self, report) -> None:
        while self.models_layout.count():
            item = self.models_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        probs = report.probabilities or {}
        row = 0
        if probs:
            best = max(probs, key=probs.get)
            for name, p in probs.items():
                label = QLabel(name)
                bar = QProgressBar()
                bar.setRange(0, 1000)
                bar.setValue(int(round(1000 * float(p))))
                bar.setFormat(f"{100 * float(p):.0f} %")
                bar.setMaximumHeight(14)
                if name == best:
                    label.setStyleSheet("font-weight: bold;")
                self.models_layout.addWidget(label, row, 0)
                self.models_layout.addWidget(bar, row, 1)
                row += 1
        ef = report.ef_regression or {}
        if ef.get("LVEF_pct") is not None:
            seg = report.measures.get("LVEF_pct")
            label = QLabel(f"LV EF: model {float(ef['LVEF_pct']):.1f} % · segmentation "
                           f"{'—' if seg is None else f'{seg:.1f} %'}")
            label.setToolTip(f"EF regression model: {ef.get('model_id')}")
            self.ef_label = label
            self.models_layout.addWidget(label, row, 0, 1, 2)
            row += 1
        self.models_box.setVisible(row > 0)

    # -- export ------------------------------------------------------------------------------------------------
    def _ask_export(self) -> None:
        if self.labels_layer() is None:
            self.status.show_message("Nothing to export: choose a labels layer first.", "warning")
            return
        start = str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Export the report into a folder", start)
        if folder:
            self.export_report(folder)

    def export_report(self, out_dir: str | Path):
        """Write report.json, volumes.csv and report.pdf into ``out_dir`` in a worker (with the ED/ES,
        height and weight shown); ``exported`` / ``export_failed`` tell the outcome. Returns the worker."""
        from napari.qt.threading import create_worker

        if self.export_worker is not None:
            self.status.show_message("An export is already being written.", "warning")
            return None
        try:
            inputs = self._inputs()
        except api.NotACine as exc:
            self.status.show_message(f"Cannot export: {exc}", "error")
            notify(f"Cannot export: {exc}", "error")
            return None
        if inputs is None:
            self.status.show_message("Nothing to export: choose a labels layer first.", "warning")
            return None
        h, w = self._body()
        worker = create_worker(_export, inputs, self._manual["ED"], self._manual["ES"], h, w, str(out_dir),
                               _start_thread=False)
        worker.returned.connect(self._on_exported)
        worker.finished.connect(self._on_export_finished)
        self.export_worker = worker
        self.export_button.setEnabled(False)
        self.status.show_message(f"writing the report into {out_dir}…")
        worker.start()
        return worker

    def _on_export_finished(self) -> None:
        self.export_worker = None
        self.export_button.setEnabled(True)

    def _on_exported(self, outcome: tuple[str, Any]) -> None:
        status, value = outcome
        if status == "error":
            text = f"Export failed: {type(value).__name__}: {value}"
            self.status.show_message(text, "error")
            notify(text, "error")
            self.export_failed.emit(text)
            return
        folder = Path(value["report.json"]).parent
        self.status.show_message(f"Report written to {folder} ({', '.join(sorted(value))})", "ok")
        notify(f"napari-cinema report written to {folder}")
        self.exported.emit(value)
