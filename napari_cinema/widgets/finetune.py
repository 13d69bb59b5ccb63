"""The 'Fine-tuning' dock: turn stored corrections into a better model without leaving napari.

The dock checks the request in process (:func:`napari_cinema.training.finetune.plan_finetune`: no
corrections, wrong view, a base model without weights, a full disk are refused before anything
starts), writes the run's config, then runs ``python -m napari_cinema train CONFIG --run-dir RUN
--progress json`` as a subprocess (MONAI Label style: training never runs in the GUI process). The JSON
progress lines drive the progress bar with ETA, the loss and validation-Dice curves, the log and the
before/after table. Stop asks the trainer to stop after its current step (RUN/STOP; then SIGTERM,
which the trainer also turns into a clean stop) and leaves a resumable checkpoint: Start then resumes
it. One run at a time. On success the trainer has registered the new model; the dock tells every
open analysis dock to list it (:data:`MODEL_EVENTS`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QProcess, QProcessEnvironment, QSize, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ._common import StatusLabel, notify, scrolling, theme_colors

STOP_GRACE_MS = 60_000  # after STOP, how long the trainer gets to finish its step before SIGTERM
KILL_GRACE_MS = 30_000  # after SIGTERM, before SIGKILL
STOPPED_EXIT = 3  # the trainer's exit status for "stopped with a resumable checkpoint"
CURVE_REDRAW_S = 1.0
STRUCTURES = ("LV", "MYO", "RV")


class _ModelEvents(QObject):
    """Process-wide news about the model registry (a fine-tuned model was registered)."""

    registered = Signal(str)


MODEL_EVENTS = _ModelEvents()


def runs_root() -> Path:
    """Where GUI fine-tuning runs go: beside the user's model folder (``.../napari-cinema/runs``)."""
    from napari_cinema.model.registry import user_models_dir

    return user_models_dir().parent / "runs"


def _fold(text: str) -> QToolButton:
    button = QToolButton()
    button.setText(text)
    button.setCheckable(True)
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    button.setArrowType(Qt.ArrowType.RightArrow)
    return button


class _Curves:
    """Training loss and validation Dice against the step, in a themed matplotlib canvas."""

    def __init__(self, colors: dict[str, str]):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.0, 2.4), dpi=100)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(150)
        bg, fg = colors.get("background", "#262930"), colors.get("text", "#f0f1f2")
        self.figure.set_facecolor(bg)
        self.loss_ax = self.figure.add_subplot(121)
        self.dice_ax = self.figure.add_subplot(122)
        for ax, title in ((self.loss_ax, "training loss"), (self.dice_ax, "validation Dice")):
            ax.set_facecolor(bg)
            ax.set_title(title, color=fg, fontsize=8)
            ax.tick_params(colors=fg, labelsize=7)
            for spine in ax.spines.values():
                spine.set_color(colors.get("secondary", "#868e93"))
        (self.loss_line,) = self.loss_ax.plot([], [], color="#e0a030", lw=1)
        (self.dice_line,) = self.dice_ax.plot([], [], "o-", color="#5fbf6f", lw=1, ms=3)
        self.baseline_line = self.dice_ax.axhline(np.nan, color="#868e93", lw=1, ls="--")
        self.figure.tight_layout(pad=0.6)
        self.clear()

    def clear(self) -> None:
        self.loss: list[tuple[int, float]] = []
        self.dice: list[tuple[int, float]] = []
        self.baseline: float | None = None
        self._drawn = 0.0
        self.redraw(force=True)

    def redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < CURVE_REDRAW_S:
            return
        self._drawn = now
        for line, points, ax in ((self.loss_line, self.loss, self.loss_ax), (self.dice_line, self.dice, self.dice_ax)):
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            line.set_data(xs, ys)
            if points:
                ax.relim()
                ax.autoscale_view()
        if self.baseline is not None:
            self.baseline_line.set_ydata([self.baseline, self.baseline])
        self.canvas.draw_idle()


class FinetuneWidget(QWidget):
    """Fine-tune a segmentation model on the correction store (see the module docstring)."""

    run_finished = Signal(str)  # 'done' | 'stopped' | 'error'

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.process: QProcess | None = None
        self.run_dir: Path | None = None
        self.resumable: Path | None = None  # a stopped run that Start resumes
        self.events: list[dict] = []
        self.last_outcome: str | None = None
        self.new_model_id: str | None = None
        self._buffer = b""
        self._stopping = False
        self._started_at = 0.0

        content = scrolling(self)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        self.base_combo = QComboBox()
        self.base_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.base_combo.setMinimumContentsLength(14)  # long published ids must not widen the dock
        self.base_combo.setToolTip("The model to start from (a segmentation model with its weights)")
        form.addRow("Base model", self.base_combo)
        store_row = QHBoxLayout()
        self.store_edit = QLineEdit()
        self.store_edit.setToolTip("The correction store (saved by the Corrections dock)")
        self.store_browse = QPushButton("…")
        self.store_browse.setFixedWidth(28)
        store_row.addWidget(self.store_edit, 1)
        store_row.addWidget(self.store_browse)
        form.addRow("Corrections", store_row)
        self.store_summary = QLabel()
        self.store_summary.setWordWrap(True)
        form.addRow("", self.store_summary)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(10)
        form.addRow("Epochs", self.epochs_spin)
        self.lr_edit = QLineEdit("1e-4")
        self.lr_edit.setToolTip("Learning rate (fine-tuning: 1e-5 to 1e-3)")
        form.addRow("Learning rate", self.lr_edit)
        self.layers_combo = QComboBox()
        self.layers_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.layers_combo.addItem("all layers", "all")
        self.layers_combo.addItem("decoder only (encoder frozen)", "decoder")
        self.layers_combo.setToolTip("Few corrections: training only the decoder over-fits less")
        form.addRow("Train", self.layers_combo)
        self.device_combo = QComboBox()
        for name in self._devices():
            self.device_combo.addItem(name, name)
        form.addRow("Device", self.device_combo)
        content.addLayout(form)

        self.advanced_toggle = _fold("Advanced")
        content.addWidget(self.advanced_toggle)
        self.advanced_box = QWidget()
        adv = QFormLayout(self.advanced_box)
        adv.setContentsMargins(12, 0, 0, 0)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 512)
        self.batch_spin.setValue(8)
        adv.addRow("Batch size", self.batch_spin)
        self.samples_spin = QSpinBox()
        self.samples_spin.setRange(1, 1_000_000)
        self.samples_spin.setValue(256)
        adv.addRow("Samples / epoch", self.samples_spin)
        self.val_spin = QSpinBox()
        self.val_spin.setRange(0, 90)
        self.val_spin.setValue(20)
        self.val_spin.setSuffix(" %")
        self.val_spin.setToolTip("Share of the corrected studies held out to validate on")
        adv.addRow("Validation", self.val_spin)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        adv.addRow("Seed", self.seed_spin)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("automatic (<base>-ft-<date>)")
        adv.addRow("New model id", self.name_edit)
        data_row = QVBoxLayout()
        self.data_list = QListWidget()
        self.data_list.setMaximumHeight(60)
        self.data_list.setToolTip("Labelled dataset folders trained on as well (ACDC, M&Ms, ... layouts)")
        buttons = QHBoxLayout()
        self.add_data_button = QPushButton("Add folder…")
        self.remove_data_button = QPushButton("Remove")
        buttons.addWidget(self.add_data_button)
        buttons.addWidget(self.remove_data_button)
        data_row.addWidget(self.data_list)
        data_row.addLayout(buttons)
        adv.addRow("Also train on", data_row)
        self.advanced_box.setVisible(False)
        content.addWidget(self.advanced_box)

        run_row = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop after the current step; the checkpoint is kept and Start resumes it")
        self.new_run_button = QPushButton("New run")
        self.new_run_button.setToolTip("Forget the stopped run: Start begins a new one")
        self.new_run_button.setVisible(False)
        run_row.addWidget(self.start_button)
        run_row.addWidget(self.stop_button)
        run_row.addWidget(self.new_run_button)
        content.addLayout(run_row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        content.addWidget(self.progress_bar)
        self.eta_label = QLabel()
        content.addWidget(self.eta_label)
        self.status = StatusLabel()
        content.addWidget(self.status)

        self.curves = _Curves(theme_colors(self.viewer))
        content.addWidget(self.curves.canvas)

        self.table = QTableWidget(len(STRUCTURES) + 2, 3)
        self.table.setHorizontalHeaderLabels(["validation", "base", "new"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        rows = [f"Dice {s}" for s in STRUCTURES] + ["Dice mean", "HD95 mean (mm)"]
        for r, name in enumerate(rows):
            self.table.setItem(r, 0, QTableWidgetItem(name))
        self.table.setMaximumHeight(self.table.verticalHeader().defaultSectionSize() * (len(rows) + 1) + 6)
        content.addWidget(self.table)

        self.log_toggle = _fold("Log")
        content.addWidget(self.log_toggle)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_view.setVisible(False)
        content.addWidget(self.log_view)
        content.addStretch(1)

        self.stop_timer = QTimer(self)
        self.stop_timer.setSingleShot(True)
        self.stop_timer.timeout.connect(self._escalate_stop)

        self.advanced_toggle.toggled.connect(lambda on: self._toggle(self.advanced_toggle, self.advanced_box, on))
        self.log_toggle.toggled.connect(lambda on: self._toggle(self.log_toggle, self.log_view, on))
        self.store_edit.editingFinished.connect(self.refresh_store_summary)
        self.store_browse.clicked.connect(self._browse_store)
        self.add_data_button.clicked.connect(self._add_data)
        self.remove_data_button.clicked.connect(lambda: [self.data_list.takeItem(self.data_list.row(i))
                                                         for i in self.data_list.selectedItems()])
        self.start_button.clicked.connect(lambda: self.start())
        self.stop_button.clicked.connect(self.stop)
        self.new_run_button.clicked.connect(self.forget_stopped_run)

        from napari_cinema.annotations.store import default_store_root

        self.store_edit.setText(str(default_store_root()))
        self.refresh_models()
        self.refresh_store_summary()
        self.offer_interrupted_run()

    def offer_interrupted_run(self) -> Path | None:
        """A fine-tuning run interrupted in an earlier session (napari closed, a crash): Start resumes it."""
        try:
            runs = [d for d in runs_root().iterdir() if (d / "finetune.yaml").is_file()
                    and (d / "checkpoints" / "last.json").is_file() and not (d / "model.safetensors").is_file()]
        except OSError:
            return None
        if not runs:
            return None
        run = max(runs, key=lambda d: (d / "checkpoints" / "last.json").stat().st_mtime)
        try:
            last = json.loads((run / "checkpoints" / "last.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        self.resumable = self.run_dir = run
        self._update_buttons()
        self._message(f"An interrupted run was found: {run.name}, step {last.get('step')} of "
                      f"{last.get('total_steps')}. Resume continues it exactly; New run leaves it on disk.", "info")
        return run

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt
        return QSize(320, 620)

    # -- inputs -----------------------------------------------------------------------------------
    @staticmethod
    def _devices() -> list[str]:
        try:
            from napari_cinema.engine import available_devices

            return ["auto"] + [d for d in available_devices() if d != "auto"]
        except Exception:  # noqa: BLE001
            return ["auto", "cpu"]

    @staticmethod
    def _toggle(button: QToolButton, box: QWidget, on: bool) -> None:
        button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        box.setVisible(on)

    def refresh_models(self) -> None:
        """List the segmentation models (available ones first), keeping the selection."""
        from napari_cinema import api

        current = self.base_combo.currentData()
        self.base_combo.blockSignals(True)
        self.base_combo.clear()
        for info in api.list_models(api.SEGMENTATION_TASKS):
            text = info.id + ("" if info.available else " (weights not available)")
            self.base_combo.addItem(text, info.id)
        index = self.base_combo.findData(current) if current else 0
        self.base_combo.setCurrentIndex(max(0, index))
        self.base_combo.blockSignals(False)

    def set_base_model(self, model_id: str) -> bool:
        index = self.base_combo.findData(model_id)
        if index >= 0:
            self.base_combo.setCurrentIndex(index)
        return index >= 0

    def set_store(self, root) -> None:
        self.store_edit.setText(str(root))
        self.refresh_store_summary()

    def refresh_store_summary(self) -> None:
        from napari_cinema.annotations.store import CorrectionStore

        root = self.store_edit.text().strip()
        try:
            entries = CorrectionStore(root or None).entries() if Path(root).is_dir() else []
        except Exception as exc:  # noqa: BLE001
            self.store_summary.setText(f"cannot read the store: {exc}")
            return
        frames = sum(len(e.edited_frames) for e in entries)
        views = sorted({e.view for e in entries})
        studies = "1 study" if len(entries) == 1 else f"{len(entries)} studies"
        self.store_summary.setText(f"{studies}, {frames} corrected frame{'' if frames == 1 else 's'}"
                                   + (f" ({', '.join(views)})" if views else "") if entries else
                                   "no corrections stored yet")
        if len(views) == 1:
            self._match_base_to_view(views[0])

    def _match_base_to_view(self, view: str) -> None:
        """A base model that cannot segment the store's view is swapped for the default one of that view
        (a 4-chamber model listed first must not be the base for short-axis corrections)."""
        from napari_cinema import api

        views_of = {info.id: tuple(info.views) for info in api.list_models(api.SEGMENTATION_TASKS)}
        if view in views_of.get(self.base_combo.currentData(), ()):
            return
        default = api.default_model_id(api.SEGMENTATION_TASKS, view)
        if default is not None:
            self.set_base_model(default)

    def _browse_store(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Correction store", self.store_edit.text())
        if path:
            self.set_store(path)

    def _add_data(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Labelled dataset folder")
        if path:
            self.data_list.addItem(path)

    def request(self):
        """The :class:`FinetuneRequest` the dock's settings describe (ValueError for a bad value)."""
        from napari_cinema.training.finetune import FinetuneRequest

        try:
            lr = float(self.lr_edit.text())
        except ValueError:
            raise ValueError(f"learning rate {self.lr_edit.text()!r} is not a number (e.g. 1e-4)") from None
        return FinetuneRequest(
            base_model=str(self.base_combo.currentData() or ""),
            store=self.store_edit.text().strip() or None,
            datasets=[self.data_list.item(i).text() for i in range(self.data_list.count())],
            epochs=self.epochs_spin.value(), lr=lr, train_layers=str(self.layers_combo.currentData()),
            device=str(self.device_combo.currentData()), batch_size=self.batch_spin.value(),
            samples_per_epoch=self.samples_spin.value(), val_fraction=self.val_spin.value() / 100.0,
            seed=self.seed_spin.value(), model_id=self.name_edit.text().strip() or None,
        )

    # -- running ----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process is not None

    def _message(self, text: str, level: str = "info", toast: bool = False) -> None:
        self.status.show_message(text, level)
        if toast:
            notify(text, level)

    def start(self) -> bool:
        """Check the request, write the config and start the trainer (or resume a stopped run)."""
        if self.running:
            self._message("A fine-tuning run is already going: stop it first.", "warning")
            return False
        if self.resumable is not None:
            return self._launch(self.resumable, self.resumable / "finetune.yaml", resume=True)
        from napari_cinema.training.finetune import FinetuneError, plan_finetune, write_finetune_config

        try:
            request = self.request()
            request.run_dir = runs_root() / (request.model_id or "new")  # only its filesystem is checked here
            plan = plan_finetune(request)
            run_dir = runs_root() / plan.model_id.replace("/", "-")
            config = write_finetune_config(plan, run_dir)
        except (FinetuneError, ValueError, OSError) as exc:
            self._message(f"Not started: {exc}", "error", toast=True)
            return False
        self.events = []
        self.curves.clear()
        self._clear_table()
        self.log_view.clear()
        for w in plan.warnings:
            self._log(f"warning: {w}")
        self._log(f"train: {len(plan.train_cases)} studies; validate: {len(plan.val_cases)} studies")
        return self._launch(run_dir, config, resume=False)

    def _launch(self, run_dir: Path, config: Path, resume: bool) -> bool:
        self.run_dir = Path(run_dir)
        stop_file = self.run_dir / "STOP"
        if stop_file.exists():
            stop_file.unlink()
        args = ["-m", "napari_cinema", "train", str(config), "--run-dir", str(self.run_dir), "--progress", "json"]
        if resume:
            args.append("--resume")
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        proc.setProcessEnvironment(env)
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_process_error)
        self.process = proc
        self._buffer = b""
        self._stopping = False
        self.new_model_id = None
        self._started_at = time.monotonic()
        self._log(f"$ {Path(sys.executable).name} {' '.join(args)}")
        proc.start(sys.executable, args)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(True)
        self.eta_label.setText("starting the trainer…")
        self._message(("Resuming " if resume else "Started ") + f"fine-tuning in {self.run_dir}.", "info")
        self._update_buttons()
        return True

    def stop(self) -> None:
        """Ask the trainer to stop after its current step (a resumable checkpoint is kept)."""
        if not self.running or self.run_dir is None:
            return
        self._stopping = True
        try:
            (self.run_dir / "STOP").touch()
        except OSError:
            self.process.terminate()  # SIGTERM: the trainer stops cleanly on it as well
        self.stop_timer.start(STOP_GRACE_MS)
        self.stop_button.setEnabled(False)
        self._message("Stopping after the current step…", "info")

    def _escalate_stop(self) -> None:
        if self.process is None:
            return
        if self.process.state() != QProcess.ProcessState.NotRunning:
            self._log("the trainer did not stop in time: terminating it")
            self.process.terminate()
            QTimer.singleShot(KILL_GRACE_MS, lambda p=self.process: p is not None and p.kill())

    def forget_stopped_run(self) -> None:
        self.resumable = None
        self._update_buttons()
        self._message("The stopped run is kept on disk; Start begins a new run.", "info")

    def _update_buttons(self) -> None:
        running = self.running
        self.start_button.setEnabled(not running)
        self.start_button.setText("Resume" if self.resumable is not None and not running else "Start")
        self.new_run_button.setVisible(self.resumable is not None and not running)
        self.stop_button.setEnabled(running and not self._stopping)
        for w in (self.base_combo, self.store_edit, self.epochs_spin, self.lr_edit, self.layers_combo,
                  self.device_combo, self.advanced_box):
            w.setEnabled(not running and self.resumable is None)

    # -- trainer output ---------------------------------------------------------------------------
    def _log(self, line: str) -> None:
        self.log_view.appendPlainText(line)

    def _read_stdout(self) -> None:
        if self.process is None:
            return
        self._buffer += bytes(self.process.readAllStandardOutput())
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self._log(line)
                continue
            if isinstance(event, dict) and "event" in event:
                self._on_event(event)
            else:
                self._log(line)
        self.curves.redraw()

    def _read_stderr(self) -> None:
        if self.process is None:
            return
        text = bytes(self.process.readAllStandardError()).decode("utf-8", "replace")
        for line in text.splitlines():
            if line.strip():
                self._log(line)

    def _on_event(self, ev: dict) -> None:
        self.events.append(ev)
        kind = ev.get("event")
        if kind == "start":
            self._log(f"start: {ev.get('total_steps')} steps on {ev.get('device')}, "
                      f"{ev.get('train_cases')} training / {ev.get('val_cases')} validation cases")
        elif kind == "step":
            step, total = int(ev.get("step", 0)), int(ev.get("total_steps", 0) or 0)
            if total:
                self.progress_bar.setRange(0, total)
                self.progress_bar.setValue(step)
            if ev.get("train_loss") is not None:
                self.curves.loss.append((step, float(ev["train_loss"])))
            eta = ev.get("eta_s")
            self.eta_label.setText(f"step {step} of {total}, epoch {ev.get('epoch')}"
                                   + (f", about {self._duration(eta)} left" if eta is not None else ""))
        elif kind == "baseline":
            self.curves.baseline = ev.get("val_dice")
            self._fill_column(1, ev)
            self._log(f"base model: validation Dice {self._fmt(ev.get('val_dice'))}")
        elif kind == "epoch":
            if ev.get("val_dice") is not None:
                self.curves.dice.append((int(ev.get("step", 0)), float(ev["val_dice"])))
                if ev.get("is_best"):
                    self._fill_column(2, ev)
            self._log(f"epoch {ev.get('epoch')}/{ev.get('epochs')}: loss {self._fmt(ev.get('train_loss'))}"
                      + (f", validation Dice {self._fmt(ev.get('val_dice'))}" if ev.get("val_dice") is not None else ""))
            self.curves.redraw(force=True)
        elif kind in ("warning", "error"):
            self._log(f"{kind}: {ev.get('message')}")
        elif kind == "stopped":
            self._log(f"stopped at step {ev.get('step')} of {ev.get('total_steps')} ({ev.get('reason')})")
        elif kind == "done":
            self.new_model_id = ev.get("model_id")
            self._log(f"done: {ev.get('status')}; model {ev.get('model_id')}")
        elif kind == "checkpoint":
            self._log(f"checkpoint ({ev.get('kind')}) at step {ev.get('step')}")

    @staticmethod
    def _fmt(v: Any) -> str:
        return "–" if v is None else f"{float(v):.3f}"

    @staticmethod
    def _duration(seconds: Any) -> str:
        s = int(float(seconds))
        return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else (f"{s // 60} min {s % 60:02d} s"
                                                                            if s >= 60 else f"{s} s")

    def _clear_table(self) -> None:
        for r in range(self.table.rowCount()):
            for c in (1, 2):
                self.table.setItem(r, c, QTableWidgetItem("–"))

    def _fill_column(self, col: int, ev: dict) -> None:
        values = [ev.get(f"val_dice_{s}") for s in STRUCTURES] + [ev.get("val_dice"), ev.get("val_hd95_mm")]
        for r, v in enumerate(values):
            item = QTableWidgetItem("–" if v is None else (f"{float(v):.1f}" if r == len(values) - 1 else
                                                            f"{float(v):.3f}"))
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(r, col, item)

    def table_values(self) -> dict[str, tuple[str, str]]:
        """The before/after table as text: {row name: (base, new)}."""
        return {self.table.item(r, 0).text(): (self.table.item(r, 1).text() if self.table.item(r, 1) else "–",
                                               self.table.item(r, 2).text() if self.table.item(r, 2) else "–")
                for r in range(self.table.rowCount())}

    def _on_process_error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._log(f"could not start {sys.executable}")
            self._on_finished(-1, None)

    def _on_finished(self, code: int, _status=None) -> None:
        if self.process is None:
            return
        self._read_stdout()
        self._read_stderr()
        self.stop_timer.stop()
        self.process.deleteLater()
        self.process = None
        self.progress_bar.setVisible(False)
        self.curves.redraw(force=True)
        elapsed = self._duration(time.monotonic() - self._started_at)
        last_step = next((e for e in reversed(self.events) if e.get("event") in ("step", "stopped", "done")), {})
        if code == 0 and any(e.get("event") == "done" for e in self.events):
            self.resumable = None
            self.last_outcome = "done"
            mid = self.new_model_id
            self.eta_label.setText(f"finished in {elapsed}")
            self._message(f"Fine-tuning finished: model '{mid}' is registered and can be chosen in the Cine "
                          "analysis dock.", "ok", toast=True)
            if mid:
                MODEL_EVENTS.registered.emit(mid)
        elif code == STOPPED_EXIT:
            self.resumable = self.run_dir
            self.last_outcome = "stopped"
            self.eta_label.setText(f"stopped at step {last_step.get('step', '?')} after {elapsed}")
            self._message("Stopped; the checkpoint is kept: Resume continues the run exactly, New run forgets it.",
                          "warning")
        else:
            self.last_outcome = "error"
            error = next((e.get("message") for e in reversed(self.events) if e.get("event") == "error"), None)
            if error is None:
                tail = self.log_view.toPlainText().strip().splitlines()[-3:]
                error = " / ".join(tail) or f"exit status {code}"
            self.eta_label.setText("")
            self._message(f"Fine-tuning failed (exit {code}): {error}. The run folder {self.run_dir} keeps the "
                          "log (metrics.jsonl) and any checkpoint.", "error", toast=True)
        self._stopping = False
        self._update_buttons()
        self.run_finished.emit(self.last_outcome)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt
        # closing the dock must not orphan a trainer: ask it to stop (its checkpoint stays resumable)
        if self.running:
            self.stop()
        super().closeEvent(event)
