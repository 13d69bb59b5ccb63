"""Small Qt helpers shared by the docks: messages, theme colours, layer pickers, a progress bridge."""

from __future__ import annotations

import atexit
import traceback
from typing import Any, Callable

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import QComboBox, QFrame, QLabel, QMainWindow, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

# Structure colours (the labels layer's fixed colours) for curves and legends.
from napari_cinema.io.labels import LABEL_COLORS, LV, MYO, RV

STRUCTURE_COLORS = {"LV": LABEL_COLORS[LV][:3], "RV": LABEL_COLORS[RV][:3], "MYO": LABEL_COLORS[MYO][:3]}

# Status levels -> text colour (readable on napari's dark and light themes).
LEVEL_COLORS = {"info": None, "ok": "#5fbf6f", "warning": "#e0a030", "error": "#ff6b5b"}

# Delay (ms) that gives work its own event-loop turn: a real timer, so the loop paints the last change and
# handles input first; a zero delay can run queued calls back to back in the same turn.
NEXT_TURN_MS = 1


EXIT_WAIT_MS = 30_000


@atexit.register
def _await_workers_at_exit() -> None:
    """A worker thread still running when the interpreter finalizes emits into deleted Qt objects and
    PyQt aborts the process (a script that closes its viewer mid-run; napari's own app waits for its
    workers only when the application quits): ask every napari worker to quit (a run stops at its next
    batch) and wait for them (a correction save finishes)."""
    try:
        from napari.qt.threading import WorkerBase

        WorkerBase.await_workers(EXIT_WAIT_MS)  # what napari does when its application quits
    except Exception:  # pragma: no cover - timed out, or Qt already torn down: nothing more to do
        pass


def repaint_next_turn(widget: QWidget) -> None:
    """Hold the repaint of ``widget``'s main window (napari's, also while a dock floats) until the next
    event-loop turn. Work that changes the canvas and builds widgets at once (napari adding a layer) then
    does not pay for repainting the whole window in the same turn: under software OpenGL that repaint
    costs as much as the work, and the GUI answers input between the two."""
    window = widget
    while window is not None and not isinstance(window, QMainWindow):
        window = window.parentWidget()
    window = window or widget.window()
    window.setUpdatesEnabled(False)

    def resume() -> None:
        try:
            window.setUpdatesEnabled(True)
        except RuntimeError:  # the window is gone
            pass
    QTimer.singleShot(0, resume)


class ProgressBridge(QObject):
    """Emitted from a worker thread, delivered in the GUI thread (queued connection)."""

    progress = Signal(int, int, str)

    def __call__(self, done: int, total: int, message: str) -> None:
        try:
            self.progress.emit(int(done), int(total), str(message))
        except RuntimeError:  # the dock was deleted (napari closed): nobody to tell, the job goes on to stop
            pass


class StatusLabel(QLabel):
    """A status line whose colour follows the message level (word-wrapped, or one elided line with the
    whole text in the tooltip: ``wrap=False`` keeps a dock's layout free of height-for-width)."""

    def __init__(self, parent=None, wrap: bool = True):
        super().__init__(parent)
        self.wrap = wrap
        self.full_text = ""
        self.setWordWrap(wrap)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.level = "info"
        self.setVisible(False)

    def show_message(self, text: str, level: str = "info") -> None:
        self.level = level
        color = LEVEL_COLORS.get(level)
        self.setStyleSheet(f"color: {color};" if color else "")
        self.full_text = text
        if self.wrap:
            self.setText(text)
            self.setToolTip(text if len(text) > 80 else "")
        else:
            self._elide()
            self.setToolTip(text)
        self.setVisible(bool(text))

    def text(self) -> str:  # the whole message, also when elided
        return self.full_text if not self.wrap else super().text()

    def _elide(self) -> None:
        metrics = self.fontMetrics()
        super().setText(metrics.elidedText(self.full_text, Qt.TextElideMode.ElideRight, max(20, self.width() - 4)))

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt
        super().resizeEvent(event)
        if not self.wrap:
            self._elide()


def same_layer(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same layer. Plugin docks get napari's public-only proxies of the
    viewer and its layers, and events carry the layers themselves, so identity cannot be used."""
    return a is not None and b is not None and getattr(a, "unique_id", a) == getattr(b, "unique_id", b)


def notify(message: str, level: str = "info") -> None:
    """A napari notification (the bell / toast), never raising."""
    try:
        from napari.utils.notifications import show_error, show_info, show_warning

        {"error": show_error, "warning": show_warning}.get(level, show_info)(message)
    except Exception:  # pragma: no cover - notifications must never break the dock
        pass


def notify_exception(exc: BaseException) -> None:
    """An unexpected error: napari's notification with the traceback (the 'View traceback' button)."""
    try:
        from napari.utils.notifications import notification_manager

        notification_manager.receive_error(type(exc), exc, exc.__traceback__)
    except Exception:  # pragma: no cover
        traceback.print_exception(type(exc), exc, exc.__traceback__)


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user as is (no traceback)."""
    from napari_cinema.api import ModelNotAvailable, NotACine
    from napari_cinema.engine import DeviceUnavailable, EngineError
    from napari_cinema.model.errors import ModelError

    return (NotACine, ModelNotAvailable, EngineError, DeviceUnavailable, ModelError, FileNotFoundError,
            PermissionError)


def theme_colors(viewer: Any) -> dict[str, str]:
    """Hex colours of the viewer's theme: background, canvas, foreground, text, highlight, secondary."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        return {k: getattr(theme, k).as_hex() for k in
                ("background", "canvas", "foreground", "primary", "secondary", "highlight", "text")}
    except Exception:  # pragma: no cover - unknown theme names
        return {"background": "#262930", "canvas": "#000000", "foreground": "#414851", "primary": "#5a626c",
                "secondary": "#868e93", "highlight": "#6a6f75", "text": "#f0f1f2"}


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers of some types, kept in sync with the layer list (names included).

    ``accept(layer) -> bool`` narrows the list further. Items hold the layer's ``unique_id``.
    """

    def __init__(self, viewer: Any, types: tuple[type, ...], accept: Callable[[Any], bool] | None = None,
                 none_text: str | None = None, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.types = types
        self.accept = accept or (lambda layer: True)
        self.none_text = none_text
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _on_inserted(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def layers(self) -> list:
        return [lay for lay in self.viewer.layers if isinstance(lay, self.types) and self.accept(lay)]

    def refresh(self, event=None) -> None:
        current = self.current_layer()
        wanted = current.unique_id if current is not None else None
        self.blockSignals(True)
        self.clear()
        if self.none_text is not None:
            self.addItem(self.none_text, None)
        for layer in self.layers():
            self.addItem(layer.name, layer.unique_id)
        index = self.findData(wanted) if wanted is not None else -1
        changed = False
        if index < 0:
            index = 0 if self.count() else -1
            changed = True
        self.setCurrentIndex(index)
        self.blockSignals(False)
        if changed:
            self.currentIndexChanged.emit(self.currentIndex())

    def current_layer(self):
        uid = self.currentData()
        if uid is None:
            return None
        for layer in self.viewer.layers:
            if layer.unique_id == uid:
                return layer
        return None

    def set_layer(self, layer) -> bool:
        if layer is None:
            index = self.findData(None) if self.none_text is not None else -1
        else:
            index = self.findData(layer.unique_id)
        if index < 0:
            return False
        self.setCurrentIndex(index)
        return True


def scrolling(owner: QWidget) -> QVBoxLayout:
    """Give ``owner`` a frameless vertical scroll area and return the layout of its content, so that a
    dock never forces the window taller than the screen (it scrolls instead)."""
    inner = QWidget()
    content = QVBoxLayout(inner)
    content.setContentsMargins(6, 4, 6, 4)
    content.setSpacing(4)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(inner)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    owner.scroll_area = scroll
    owner.content_widget = inner
    return content
