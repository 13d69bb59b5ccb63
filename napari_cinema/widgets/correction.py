"""The 'Corrections' dock: correct a segmentation across the cardiac cycle and keep every correction.

Painting is napari's own (brush, fill, eraser on the Labels layer). The dock adds what cine work needs:
copy a frame's labels to neighbouring frames, clear a slice, accept a frame the model got right, jump
to the next frame that differs from the model output, undo (napari's history: the dock's tools are
recorded there too, so Ctrl+Z undoes them like a brush stroke). "Save corrections" writes the model
output and the corrected labels side by side to the correction store with provenance; autosave writes
a version every minute while there are unsaved edits. A study with stored corrections is offered them
when its image is opened again; the store browser lists every stored study.

Saving and loading run in a worker thread on copies taken in the main thread (painting during a save
cannot tear what is written). The dock only moves data between layers and the core
(:mod:`napari_cinema.annotations`, :mod:`napari_cinema.api`).
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QSize, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_cinema import api
from napari_cinema.annotations.edit import clear_slice, copy_frame, next_differing_frame

from ._common import LayerCombo, StatusLabel, notify, notify_exception, same_layer, scrolling

AUTOSAVE_MS = 60_000  # "a crash loses at most the last minute"


def _is_cine_labels(layer) -> bool:
    return np.ndim(layer.data) == 4


def _frames_of_paint(item, n_frames: int) -> set[int]:
    """Frames touched by one napari paint history item (a list of atoms)."""
    frames: set[int] = set()
    for atom in item or ():
        key = getattr(atom, "slice_key", None)
        if key is not None:  # a masked atom: a bounding box of slices
            k = key[0]
            if isinstance(k, slice):
                frames.update(range(*k.indices(n_frames)))
            else:
                frames.add(int(k))
            continue
        try:
            indices = atom[0]
            frames.update(int(t) for t in np.unique(np.asarray(indices[0])))
        except Exception:  # an atom napari may add later: treat every frame as touched
            frames.update(range(n_frames))
    return frames


def _save_job(snapshot, store_root, autosave: bool, force: bool):
    """Worker: save, returning ("ok", entry) or ("error", exception) (the dock reports both)."""
    try:
        return "ok", api.write_snapshot(snapshot, store_root, autosave=autosave, force=force)
    except Exception as exc:  # noqa: BLE001 - handed to the GUI thread
        return "error", exc


def _load_job(image_layer, store_root):
    try:
        return "ok", api.stored_corrections_for(None, image_layer, store_root)
    except Exception as exc:  # noqa: BLE001
        return "error", exc


class CorrectionWidget(QWidget):
    """Correct, save and browse corrections (see the module docstring)."""

    saved = Signal(object)  # the store's StudyEntry after every save

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from napari.layers import Labels

        self.viewer = napari_viewer
        from napari_cinema.annotations.store import default_store_root

        # resolved once: every save of this session (autosaves at close included) goes to the store shown
        self.store_root = default_store_root()
        self._layer = None
        self._touched: set[int] = set()  # frames painted since the last save
        self._dirty = False
        self._worker = None
        self._force_next = False
        self._offered: set[str] = set()  # image layers already offered their stored corrections
        self.autosave_interval_ms = AUTOSAVE_MS

        content = scrolling(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("Labels"))
        self.layer_combo = LayerCombo(self.viewer, (Labels,), accept=_is_cine_labels, none_text="(none)")
        self.layer_combo.setToolTip("The (t, z, y, x) segmentation to correct")
        row.addWidget(self.layer_combo, 1)
        content.addLayout(row)

        self.offer_box = QWidget()
        offer = QHBoxLayout(self.offer_box)
        offer.setContentsMargins(0, 0, 0, 0)
        self.offer_label = QLabel()
        self.offer_label.setWordWrap(True)
        self.load_stored_button = QPushButton("Load")
        self.load_stored_button.setToolTip("Show the stored corrections of this study (replaces the layer's labels)")
        offer.addWidget(self.offer_label, 1)
        offer.addWidget(self.load_stored_button)
        self.offer_box.setVisible(False)
        content.addWidget(self.offer_box)

        self.frame_label = QLabel("No labels layer")
        self.frame_label.setWordWrap(True)
        content.addWidget(self.frame_label)

        tools = QGroupBox("Tools (Ctrl+Z undoes them too)")
        grid = QGridLayout(tools)
        grid.setContentsMargins(4, 4, 4, 4)
        grid.setSpacing(3)
        self.prev_diff_button = QPushButton("◀ Changed")
        self.prev_diff_button.setToolTip("Previous frame that differs from the model output")
        self.next_diff_button = QPushButton("Changed ▶")
        self.next_diff_button.setToolTip("Next frame that differs from the model output")
        self.copy_prev_button = QPushButton("Copy to previous")
        self.copy_prev_button.setToolTip("Copy this frame's labels (all slices) onto the previous frame")
        self.copy_next_button = QPushButton("Copy to next")
        self.copy_next_button.setToolTip("Copy this frame's labels (all slices) onto the next frame")
        self.copy_from = QSpinBox()
        self.copy_to = QSpinBox()
        for spin in (self.copy_from, self.copy_to):
            spin.setMinimum(1)
            spin.setToolTip("Frames (1-based, inclusive)")
        self.copy_range_button = QPushButton("Copy to frames")
        self.copy_range_button.setToolTip("Copy this frame's labels onto the frames in the range")
        self.slice_only = QCheckBox("this slice only")
        self.slice_only.setToolTip("Copy only the current slice instead of the whole stack")
        self.clear_button = QPushButton("Clear slice")
        self.clear_button.setToolTip("Erase every label on the current slice of this frame")
        self.accept_button = QPushButton("Accept frame")
        self.accept_button.setToolTip("Mark this frame as checked: the model output is right as it is "
                                      "(it then counts as a corrected frame for fine-tuning)")
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last edit (brush, fill, eraser or a tool here)")
        grid.addWidget(self.prev_diff_button, 0, 0)
        grid.addWidget(self.next_diff_button, 0, 1)
        grid.addWidget(self.copy_prev_button, 1, 0)
        grid.addWidget(self.copy_next_button, 1, 1)
        rng = QHBoxLayout()
        rng.addWidget(self.copy_range_button)
        rng.addWidget(self.copy_from)
        rng.addWidget(QLabel("–"))
        rng.addWidget(self.copy_to)
        grid.addLayout(rng, 2, 0, 1, 2)
        grid.addWidget(self.slice_only, 3, 0, 1, 2)
        grid.addWidget(self.clear_button, 4, 0)
        grid.addWidget(self.accept_button, 4, 1)
        grid.addWidget(self.undo_button, 5, 0)
        content.addWidget(tools)

        save_row = QHBoxLayout()
        self.save_button = QPushButton("Save corrections")
        self.save_button.setToolTip("Write the model output and your corrections side by side to the "
                                    "correction store (a new version; earlier versions are kept)")
        self.autosave_check = QCheckBox("Autosave every minute")
        self.autosave_check.setChecked(True)
        save_row.addWidget(self.save_button)
        save_row.addWidget(self.autosave_check)
        content.addLayout(save_row)
        self.status = StatusLabel()
        content.addWidget(self.status)

        self.store_toggle = QToolButton()
        self.store_toggle.setText("Correction store")
        self.store_toggle.setCheckable(True)
        self.store_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.store_toggle.setArrowType(Qt.ArrowType.RightArrow)
        content.addWidget(self.store_toggle)
        self.store_box = QWidget()
        sb = QVBoxLayout(self.store_box)
        sb.setContentsMargins(0, 0, 0, 0)
        self.store_path_label = QLabel()
        self.store_path_label.setWordWrap(True)
        self.store_path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        sb.addWidget(self.store_path_label)
        self.store_table = QTableWidget(0, 5)
        self.store_table.setHorizontalHeaderLabels(["study", "view", "corrected", "saved", "by"])
        self.store_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.store_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.store_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.store_table.verticalHeader().setVisible(False)
        self.store_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.store_table.setMinimumHeight(120)
        sb.addWidget(self.store_table)
        brow = QHBoxLayout()
        self.refresh_store_button = QPushButton("Refresh")
        self.open_stored_button = QPushButton("Open study")
        self.open_stored_button.setToolTip("Open the selected study's stored image with its corrections")
        brow.addWidget(self.refresh_store_button)
        brow.addWidget(self.open_stored_button)
        sb.addLayout(brow)
        self.store_box.setVisible(False)
        content.addWidget(self.store_box)
        content.addStretch(1)

        self.autosave_timer = QTimer(self)
        self.autosave_timer.timeout.connect(self._autosave)

        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        self.prev_diff_button.clicked.connect(lambda: self.jump_to_changed(-1))
        self.next_diff_button.clicked.connect(lambda: self.jump_to_changed(1))
        self.copy_prev_button.clicked.connect(lambda: self.copy_current_to([self.current_frame() - 1]))
        self.copy_next_button.clicked.connect(lambda: self.copy_current_to([self.current_frame() + 1]))
        self.copy_range_button.clicked.connect(self._copy_range)
        self.clear_button.clicked.connect(self.clear_current_slice)
        self.accept_button.clicked.connect(self.accept_current_frame)
        self.undo_button.clicked.connect(self.undo)
        self.save_button.clicked.connect(lambda: self.save())
        self.autosave_check.toggled.connect(self._update_autosave)
        self.load_stored_button.clicked.connect(self._load_offered)
        self.store_toggle.toggled.connect(self._toggle_store)
        self.refresh_store_button.clicked.connect(self.refresh_store)
        self.open_stored_button.clicked.connect(self._open_selected)
        self.store_table.itemDoubleClicked.connect(lambda _item: self._open_selected())
        self.viewer.dims.events.current_step.connect(self._update_frame_label)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self._pick_default_layer()
        self._on_layer_changed()
        for layer in list(self.viewer.layers):
            self._offer_for_image(layer)

    def _pick_default_layer(self) -> None:
        """With nothing chosen: the active cine labels layer, else the newest model segmentation."""
        if self._layer is not None or self.layer_combo.current_layer() is not None:
            return
        candidates = self.layer_combo.layers()
        active = self.viewer.layers.selection.active
        pick = next((lay for lay in candidates if same_layer(lay, active)), None)
        if pick is None:
            results = [lay for lay in candidates if isinstance(lay.metadata.get("cinema_result"), dict)]
            pick = (results or candidates or [None])[-1]
        if pick is not None:
            self.layer_combo.set_layer(pick)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt
        return QSize(300, 320)  # it scrolls: a modest height leaves room for the docks above it

    # -- state ------------------------------------------------------------------------------------
    @property
    def labels_layer(self):
        return self._layer

    def set_labels_layer(self, layer) -> bool:
        return self.layer_combo.set_layer(layer)

    @property
    def saving(self) -> bool:
        return self._worker is not None

    @property
    def dirty(self) -> bool:
        return self._dirty

    def set_store(self, root) -> None:
        """Use the store at ``root`` (None: the default one)."""
        from napari_cinema.annotations.store import default_store_root

        self.store_root = default_store_root() if root is None else root
        self._offered.clear()
        if not self.store_box.isHidden():
            self.refresh_store()

    def _store(self):
        from napari_cinema.annotations.store import CorrectionStore

        return CorrectionStore(self.store_root)

    def _message(self, text: str, level: str = "info", toast: bool = False) -> None:
        self.status.show_message(text, level)
        if toast:
            notify(text, level)

    def _n_frames(self) -> int:
        return int(np.shape(self._layer.data)[0]) if self._layer is not None else 0

    def _original(self):
        return api.correction_baseline(self._layer)

    def current_frame(self) -> int:
        return self._position()[0]

    def current_slice(self) -> int:
        return self._position()[1]

    def _position(self) -> tuple[int, int]:
        if self._layer is None:
            return 0, 0
        coords = self._layer.world_to_data(self.viewer.dims.point)
        shape = np.shape(self._layer.data)
        t = int(np.clip(round(float(coords[0])), 0, shape[0] - 1))
        z = int(np.clip(round(float(coords[1])), 0, shape[1] - 1))
        return t, z

    def go_to_frame(self, t: int) -> None:
        world = self._layer.data_to_world([t, self.current_slice(), 0, 0])
        self.viewer.dims.set_point(0, float(world[0]))

    # -- layer tracking ---------------------------------------------------------------------------
    def _on_layer_changed(self, *_args) -> None:
        old = self._layer
        new = self.layer_combo.current_layer()
        if same_layer(old, new):
            return
        if old is not None:
            try:
                old.events.paint.disconnect(self._on_paint)
                old.events.data.disconnect(self._on_data)
            except (TypeError, ValueError, RuntimeError):
                pass
            if self._dirty and not any(same_layer(old, other) for other in self.viewer.layers):
                # the layer was deleted with unsaved edits: they go to the store, not to the bin
                self.save(autosave=True, layer=old, touched=set(self._touched))
            elif self._dirty:
                self._message(f"'{old.name}' has unsaved corrections (frames "
                              f"{self._frames_text(self._touched)}); select it again to save them.", "warning")
        self._layer = new
        self._touched = set()
        self._dirty = False
        if new is not None:
            new.events.paint.connect(self._on_paint)
            new.events.data.connect(self._on_data)
            api.correction_baseline(new)  # pin the model output before anyone paints
            n = self._n_frames()
            for spin in (self.copy_from, self.copy_to):
                spin.setMaximum(max(1, n))
            self.copy_from.setValue(1)
            self.copy_to.setValue(max(1, n))
            self.status.show_message("", "info")
        self._update_enabled()
        self._update_frame_label()
        self._update_autosave()

    def _on_layer_inserted(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            QTimer.singleShot(0, lambda: (self._pick_default_layer(), self._offer_for_image(layer)))

    def _on_paint(self, event=None) -> None:
        frames = _frames_of_paint(getattr(event, "value", None), self._n_frames())
        self._record_edit(frames)

    def _on_data(self, event=None) -> None:
        # new data (a re-run of the model, or stored corrections loaded): a fresh starting point
        self._touched = set()
        self._dirty = False
        self._update_frame_label()
        self._update_enabled()

    def _record_edit(self, frames) -> None:
        frames = {int(t) for t in frames if 0 <= int(t) < self._n_frames()}
        if not frames:
            return
        self._touched |= frames
        self._dirty = True
        api.mark_edited(self._layer, frames)
        self._update_frame_label()
        self._update_enabled()

    @staticmethod
    def _frames_text(frames) -> str:
        frames = sorted(int(t) + 1 for t in frames)
        if len(frames) > 8:
            return ", ".join(map(str, frames[:8])) + f" … ({len(frames)} frames)"
        return ", ".join(map(str, frames)) or "none"

    def _update_frame_label(self, *_args) -> None:
        if self._layer is None:
            self.frame_label.setText("No labels layer: segment a cine in the Cine analysis dock, or open a "
                                     "study with its labels.")
            return
        t = self.current_frame()
        n = self._n_frames()
        edited = set(api.edited_frames_of(self._layer))
        original = self._original()
        differs = not np.array_equal(np.asarray(self._layer.data[t]), original[t])
        state = ("edited" if t in edited else "not edited") + (", differs from the model" if differs else "")
        unsaved = f"; unsaved: {self._frames_text(self._touched)}" if self._dirty else ""
        self.frame_label.setText(f"Frame {t + 1} of {n}, slice {self.current_slice() + 1}: {state}. "
                                 f"Edited frames: {len(edited)} of {n}{unsaved}.")

    def _update_enabled(self) -> None:
        has = self._layer is not None
        for button in (self.prev_diff_button, self.next_diff_button, self.copy_prev_button, self.copy_next_button,
                       self.copy_range_button, self.clear_button, self.accept_button, self.undo_button):
            button.setEnabled(has)
        self.save_button.setEnabled(has and not self.saving)
        self.save_button.setText("Save anyway (keep theirs as history)" if self._force_next else "Save corrections")

    def _update_autosave(self, *_args) -> None:
        if self.autosave_check.isChecked() and self._layer is not None:
            self.autosave_timer.start(self.autosave_interval_ms)
        else:
            self.autosave_timer.stop()

    # -- tools ------------------------------------------------------------------------------------
    def _edit(self, change) -> list[int]:
        """Apply ``change(array) -> changed frames`` through napari's history (one undo step)."""
        if self._layer is None:
            return []
        before = np.array(self._layer.data, copy=True)
        work = before.copy()
        changed = change(work)
        if changed:
            where = np.nonzero(work != before)
            if where[0].size:
                with self._layer.block_history():
                    self._layer.data_setitem(where, work[where])
        return sorted(changed)

    def copy_current_to(self, frames) -> list[int]:
        """Copy the current frame's labels (or only the current slice) onto ``frames`` (0-based)."""
        if self._layer is None:
            return []
        n = self._n_frames()
        targets = [int(t) for t in frames if 0 <= int(t) < n and int(t) != self.current_frame()]
        if not targets:
            self._message("No other frame to copy to.", "warning")
            return []
        src = self.current_frame()
        slices = [self.current_slice()] if self.slice_only.isChecked() else None
        changed = self._edit(lambda arr: copy_frame(arr, src, targets, slices=slices))
        where = "slice " + str(self.current_slice() + 1) if slices else "all slices"
        self._message(f"Copied frame {src + 1} ({where}) to frames {self._frames_text(targets)}"
                      + ("" if changed else ": they already had the same labels") + ".", "ok")
        return changed

    def _copy_range(self) -> None:
        lo, hi = sorted((self.copy_from.value() - 1, self.copy_to.value() - 1))
        self.copy_current_to(range(lo, hi + 1))

    def clear_current_slice(self) -> bool:
        t, z = self._position()
        changed = self._edit(lambda arr: [t] if clear_slice(arr, t, z) else [])
        self._message(f"Cleared slice {z + 1} of frame {t + 1}." if changed else "That slice is already empty.",
                      "ok" if changed else "info")
        return bool(changed)

    def accept_current_frame(self) -> None:
        if self._layer is None:
            return
        t = self.current_frame()
        self._record_edit({t})
        self._message(f"Frame {t + 1} marked as checked.", "ok")

    def undo(self) -> None:
        if self._layer is not None:
            self._layer.undo()
            self._update_frame_label()

    def jump_to_changed(self, step: int = 1) -> int | None:
        if self._layer is None:
            return None
        target = next_differing_frame(np.asarray(self._layer.data), self._original(), self.current_frame(), step)
        if target is None:
            self._message("No other frame differs from the model output.", "info")
            return None
        self.go_to_frame(target)
        return target

    # -- saving -----------------------------------------------------------------------------------
    def save(self, autosave: bool = False, layer=None, touched: set[int] | None = None) -> bool:
        """Save (the dock's layer, or ``layer``) in a worker thread; returns False when nothing was
        started (the status says why)."""
        from napari.qt.threading import create_worker

        layer = self._layer if layer is None else layer
        if layer is None:
            self._message("Choose the labels layer to save.", "warning")
            return False
        if self.saving:
            if not autosave:
                self._message("A save is already running.", "info")
            return False
        try:
            snapshot = api.correction_snapshot(self.viewer, layer)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._message(f"Cannot save: {exc}", "error", toast=not autosave)
            return False
        if not snapshot.edited_frames:
            if not autosave:
                self._message("Nothing to save: no frame was edited or accepted.", "info")
            return False
        force, self._force_next = self._force_next, False
        touched = set(self._touched) if touched is None else touched
        worker = create_worker(_save_job, snapshot, self.store_root, autosave, force, _start_thread=False)
        worker.returned.connect(lambda outcome: self._on_saved(layer, touched, outcome[1], autosave)
                                if outcome[0] == "ok" else self._on_save_error(outcome[1], autosave))
        worker.finished.connect(self._on_save_finished)
        self._worker = worker
        self._update_enabled()
        self._message("Autosaving…" if autosave else "Saving…", "info")
        worker.start()
        return True

    def _autosave(self) -> None:
        if self._dirty and not self.saving:
            self.save(autosave=True)

    def _on_saved(self, layer, touched: set[int], entry, autosave: bool) -> None:
        layer.metadata[api.STORE_VERSION_KEY] = entry.version
        if same_layer(layer, self._layer):
            self._touched -= touched  # edits made while saving stay unsaved
            self._dirty = bool(self._touched)
            layer.metadata[api.UNSAVED_KEY] = self._dirty
        what = "Autosaved" if autosave else "Saved"
        self._message(f"{what} version {entry.version} of {entry.key}: {len(entry.edited_frames)} of "
                      f"{entry.n_frames} frames corrected ({entry.folder}).", "ok")
        self.saved.emit(entry)
        if not self.store_box.isHidden():
            self.refresh_store()

    def _on_save_error(self, exc: BaseException, autosave: bool) -> None:
        from napari_cinema.annotations.store import StoreConflict, StoreError

        if isinstance(exc, StoreConflict):
            self._force_next = True
            self._message(f"Not saved: {exc} Your edits are still in the layer; press 'Save anyway' to save "
                          "them as the newest version (the other version stays in the history).", "warning",
                          toast=True)
        elif isinstance(exc, (StoreError, OSError)):
            self._message(f"Not saved: {exc} Your edits are still in the layer.", "error", toast=True)
        else:
            self._message(f"Not saved ({type(exc).__name__}: {exc}). Your edits are still in the layer.", "error")
            notify_exception(exc)

    def _on_save_finished(self) -> None:
        self._worker = None
        self._update_enabled()
        self._update_frame_label()

    # -- stored corrections -----------------------------------------------------------------------
    def _offer_for_image(self, layer) -> None:
        """When an image whose study has stored corrections is opened, offer them (once per layer)."""
        from napari.layers import Image

        if not isinstance(layer, Image) or str(layer.unique_id) in self._offered:
            return
        study = api.study_from_layer(layer)
        if study is None:
            return
        self._offered.add(str(layer.unique_id))
        try:
            entry = self._store().entry(study)  # its provenance only: no label files are read here
        except Exception:  # noqa: BLE001 - an unreadable store must not break opening a study
            return
        if entry is None:
            return
        self._offer_layer = layer
        self.offer_label.setText(f"'{layer.name}' has stored corrections: version {entry.version}, "
                                 f"{len(entry.edited_frames)} of {entry.n_frames} frames, saved by {entry.saved_by} "
                                 f"at {entry.saved_at[:16].replace('T', ' ')}.")
        self.offer_box.setVisible(True)

    def _load_offered(self) -> None:
        layer = getattr(self, "_offer_layer", None)
        if layer is None or not any(same_layer(layer, other) for other in self.viewer.layers):
            self.offer_box.setVisible(False)
            return
        self.load_stored(layer)

    def load_stored(self, image_layer) -> bool:
        """Load the newest stored corrections of ``image_layer``'s study (worker thread), show them."""
        from napari.qt.threading import create_worker

        existing = api.find_result_layer(self.viewer, image_layer, "segmentation")
        if existing is not None and same_layer(existing, self._layer) and self._dirty:
            self._message("The segmentation has unsaved edits: save them first (loading would replace them).",
                          "warning")
            return False
        worker = create_worker(_load_job, image_layer, self.store_root, _start_thread=False)
        worker.returned.connect(lambda outcome: self._show_stored(image_layer, outcome[1]) if outcome[0] == "ok"
                                else self._message(f"Could not load the stored corrections: {outcome[1]}", "error",
                                                   toast=True))
        self._load_worker = worker  # keep a reference while it runs
        self._message("Loading stored corrections…", "info")
        worker.start()
        return True

    def _show_stored(self, image_layer, stored) -> None:
        self.offer_box.setVisible(False)
        if stored is None:
            self._message("No stored corrections for this study.", "info")
            return
        if not any(same_layer(image_layer, other) for other in self.viewer.layers):
            self._message("The image was closed before its corrections loaded.", "warning")
            return
        layer = api.apply_stored_corrections(self.viewer, image_layer, stored)
        self.layer_combo.refresh()
        self.set_labels_layer(layer)
        self._on_layer_changed()
        self._message(f"Loaded version {stored.version} ({len(stored.edited_frames)} corrected frames).", "ok")

    def _toggle_store(self, on: bool) -> None:
        self.store_toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.store_box.setVisible(on)
        if on:
            self.refresh_store()

    def refresh_store(self) -> list:
        """Fill the store browser; returns the entries."""
        store = self._store()
        self.store_path_label.setText(f"Store: {store.root}")
        try:
            entries = store.entries()
        except Exception as exc:  # noqa: BLE001
            self._message(f"Cannot read the correction store: {exc}", "error")
            entries = []
        self._entries = entries
        self.store_table.setRowCount(len(entries))
        for r, e in enumerate(entries):
            cells = [e.key, e.view, f"{len(e.edited_frames)}/{e.n_frames}",
                     e.saved_at[:16].replace("T", " ") + (" (auto)" if e.autosave else ""), e.saved_by]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(str(text))
                if c == 2:
                    item.setToolTip(f"corrected frames: {self._frames_text(e.edited_frames)}\nuncorrected: "
                                    f"{self._frames_text(e.uncorrected_frames)}")
                elif c == 0:
                    item.setToolTip(f"{e.source}\nmodel: {e.model_id}\n{e.folder}")
                self.store_table.setItem(r, c, item)
        self.store_table.resizeColumnsToContents()
        return entries

    def _open_selected(self) -> None:
        rows = self.store_table.selectionModel().selectedRows() if self.store_table.selectionModel() else []
        if not rows:
            self._message("Select a study in the store first.", "info")
            return
        self.open_stored_study(self._entries[rows[0].row()].key)

    def open_stored_study(self, key: str):
        """Open a stored study's image (kept in the store) with its newest corrections."""
        from napari_cinema.layers import image_layer_data

        try:
            study = self._store().read_study(key)
        except Exception as exc:  # noqa: BLE001
            self._message(f"Cannot open {key}: {exc}", "error", toast=True)
            return None
        data, kwargs, _ = image_layer_data(study)
        image = self.viewer.add_image(data, **kwargs)
        self._offered.add(str(image.unique_id))
        self.load_stored(image)
        return image
