"""The volume-time (or area-time) and MAPSE curves: a themed matplotlib canvas in a dock.

Drawn once per analysis (:meth:`CurveCanvas.set_curves`, which reuses the artists when only the data
changed); what moves afterwards is cheap: the current-frame marker (``set_xdata``, then a blit over
the background cached after the last full draw, napari-matplotlib style) and the ED/ES markers while
dragged. A click
away from a marker asks for a frame (``frame_clicked``); dragging the ED or ES marker and letting go
asks for a new ED/ES frame (``marker_moved``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QSizePolicy

from ._common import STRUCTURE_COLORS

PICK_PX = 7  # how close (pixels) a press must be to grab the ED/ES marker
MARKER_COLORS = {"ED": "#ffd24a", "ES": "#4ad2ff"}


class CurveCanvas(FigureCanvasQTAgg):
    frame_clicked = Signal(int)
    marker_moved = Signal(str, int)

    def __init__(self, parent=None):
        self.figure = Figure(figsize=(4.0, 2.6), dpi=100)
        super().__init__(self.figure)
        self.setParent(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumHeight(140)
        self.colors = {"background": "#262930", "canvas": "#000000", "text": "#f0f1f2",
                       "foreground": "#414851", "secondary": "#868e93"}
        self.times = np.zeros(0)
        self.x_label = "time (ms)"
        self.curve_axes = self.figure.add_subplot(111)
        self.mapse_axes = None
        self.lines: dict[str, Any] = {}
        self.mapse_lines: dict[str, Any] = {}
        self.frame_markers: list[Any] = []
        self.phase_markers: dict[str, list[Any]] = {"ED": [], "ES": []}
        self.phase_text: dict[str, Any] = {}
        self.phase_frames: dict[str, int | None] = {"ED": None, "ES": None}
        self.current_frame = 0
        self._drag: str | None = None
        self._empty_text = None
        self.mpl_connect("button_press_event", self._on_press)
        self.mpl_connect("motion_notify_event", self._on_motion)
        self.mpl_connect("button_release_event", self._on_release)
        self.mpl_connect("resize_event", lambda _e: self._layout())
        self.mpl_connect("draw_event", self._on_draw)
        self._background = None
        self.show_message("no analysis yet")

    # -- theme ------------------------------------------------------------------------------------
    def set_theme(self, colors: dict[str, str]) -> None:
        self.colors.update(colors)
        for line in self.frame_markers:
            line.set_color(self.colors["text"])
        self._background = None
        self._style_all()
        self.draw_idle()

    def _style(self, ax) -> None:
        c = self.colors
        ax.set_facecolor(c["canvas"])
        for spine in ax.spines.values():
            spine.set_color(c["secondary"])
        ax.tick_params(colors=c["text"], labelsize=8)
        ax.xaxis.label.set_color(c["text"])
        ax.yaxis.label.set_color(c["text"])
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
        ax.grid(True, color=c["foreground"], linewidth=0.5, alpha=0.8)
        legend = ax.get_legend()
        if legend is not None:
            legend.get_frame().set_facecolor(c["background"])
            legend.get_frame().set_edgecolor(c["secondary"])
            for text in legend.get_texts():
                text.set_color(c["text"])

    def _style_all(self) -> None:
        self.figure.set_facecolor(self.colors["background"])
        for ax in self.figure.axes:
            self._style(ax)
        if self._empty_text is not None:
            self._empty_text.set_color(self.colors["text"])
        for text in self.phase_text.values():
            if text is not None:
                text.set_color(text.get_color())

    def _layout(self) -> None:
        w, h = self.figure.get_size_inches() * self.figure.dpi
        if w < 50 or h < 50:
            return
        left = min(0.3, 52.0 / w)
        right = 1.0 - min(0.1, 10.0 / w)
        bottom = min(0.4, 40.0 / h)
        top = 1.0 - min(0.2, 16.0 / h)
        self.figure.subplots_adjust(left=left, right=right, bottom=bottom, top=top, hspace=0.12)

    # -- content ----------------------------------------------------------------------------------
    def _reset_axes(self, two: bool) -> None:
        self._background = None
        self.figure.clear()
        self.lines, self.mapse_lines = {}, {}
        self.frame_markers, self.phase_markers, self.phase_text = [], {"ED": [], "ES": []}, {}
        self._empty_text = None
        if two:
            self.curve_axes = self.figure.add_subplot(211)
            self.mapse_axes = self.figure.add_subplot(212, sharex=self.curve_axes)
            self.curve_axes.tick_params(labelbottom=False)
        else:
            self.curve_axes = self.figure.add_subplot(111)
            self.mapse_axes = None
        self._layout()

    def show_message(self, text: str) -> None:
        """An empty plot with a message (no labels chosen, analysis failed, ...)."""
        self._signature = None
        self._reset_axes(False)
        ax = self.curve_axes
        ax.set_xticks([])
        ax.set_yticks([])
        self.times = np.zeros(0)
        self._empty_text = ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
                                   fontsize=9, wrap=True)
        self._style_all()
        self.draw_idle()

    @staticmethod
    def _series(values) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=float)

    def set_curves(self, times: np.ndarray, curves: dict[str, list], y_label: str, x_label: str,
                   mapse: dict[str, list] | None = None, ed: int | None = None, es: int | None = None,
                   frame: int = 0) -> None:
        """Draw the curves: ``curves`` {LV|RV|MYO: values per frame (None = not labelled)}.

        When the plot has the same structure as before (same series, labels and frame count) the
        existing artists get the new data (no figure rebuild); otherwise the axes are built anew.
        """
        series = {}
        for name in ("LV", "RV", "MYO"):
            values = curves.get(name)
            if values is not None:
                y = self._series(values)
                if np.any(np.isfinite(y)):
                    series[name] = y
        mapse_series = None if mapse is None else {k: self._series(v) for k, v in mapse.items()
                                                   if k in ("mv_1", "mv_2", "mean") and v is not None}
        times = np.asarray(times, dtype=float)
        signature = (tuple(series), None if mapse_series is None else tuple(mapse_series), y_label, x_label,
                     len(times), tuple(np.isfinite(y).sum() < len(y) for y in series.values()))
        if signature == getattr(self, "_signature", None) and self.frame_markers:
            self._background = None  # the curves change: the next full draw caches a new one
            self.times = times
            for name, y in series.items():
                self.lines[name].set_data(times, y)
            for key, y in (mapse_series or {}).items():
                self.mapse_lines[key].set_data(times, y)
            for ax in self.figure.axes:
                ax.relim()
                ax.autoscale_view(scalex=False)
            self._set_xlim()
            self.set_frame(frame)
            self.set_phase("ED", ed)
            self.set_phase("ES", es)
            return
        self._signature = signature
        self.times = times
        self.x_label = x_label
        self._reset_axes(mapse_series is not None)
        ax = self.curve_axes
        for name, y in series.items():
            style = "-o" if np.isfinite(y).sum() < len(y) or len(y) <= 3 else "-"
            (self.lines[name],) = ax.plot(times, y, style, color=STRUCTURE_COLORS[name], lw=1.6, ms=3, label=name)
        ax.set_ylabel(y_label)
        axes = [ax]
        if mapse_series is not None:
            mx = self.mapse_axes
            styles = {"mv_1": ("#c0c0c0", ":"), "mv_2": ("#c0c0c0", "--"), "mean": ("#ffffff", "-")}
            for key, (color, ls) in styles.items():
                if key in mapse_series:
                    (self.mapse_lines[key],) = mx.plot(times, mapse_series[key], ls, color=color, lw=1.3, label=key)
            mx.set_ylabel("MAPSE (mm)")
            mx.set_xlabel(x_label)
            axes.append(mx)
            if self.mapse_lines:
                mx.legend(loc="upper right", fontsize=7, ncol=3, framealpha=0.6, handlelength=1.5)
        else:
            ax.set_xlabel(x_label)
        if self.lines:
            ax.legend(loc="upper right", fontsize=7, ncol=3, framealpha=0.6, handlelength=1.5)
        self._set_xlim()
        if x_label == "frame":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for a in axes:
            x0 = self.frame_x(frame)
            # animated: left out of full draws, blitted on top of the cached background
            self.frame_markers.append(a.axvline(x0, color=self.colors["text"], lw=1.0, alpha=0.9, zorder=5,
                                                animated=True))
            for phase, f in (("ED", ed), ("ES", es)):
                line = a.axvline(self.frame_x(f) if f is not None else np.nan, color=MARKER_COLORS[phase],
                                 lw=1.4, ls="--", zorder=4)
                line.set_visible(f is not None)
                self.phase_markers[phase].append(line)
        for phase, f in (("ED", ed), ("ES", es)):
            self.phase_text[phase] = ax.text(self.frame_x(f) if f is not None else 0.0, 1.0, f" {phase}",
                                             transform=ax.get_xaxis_transform(), va="bottom", ha="center",
                                             fontsize=8, color=MARKER_COLORS[phase], clip_on=False)
            self.phase_text[phase].set_visible(f is not None)
        self.phase_frames = {"ED": ed, "ES": es}
        self.current_frame = frame
        self._style_all()
        self.draw_idle()

    def _set_xlim(self) -> None:
        if len(self.times) > 1:
            pad = 0.02 * (self.times[-1] - self.times[0])
            self.curve_axes.set_xlim(self.times[0] - pad, self.times[-1] + pad)

    # -- cheap updates ----------------------------------------------------------------------------
    def frame_x(self, frame: int | None) -> float:
        if frame is None or not len(self.times):
            return float("nan")
        return float(self.times[int(np.clip(frame, 0, len(self.times) - 1))])

    def set_frame(self, frame: int) -> None:
        """Move the current-frame marker: ``set_xdata`` and a blit over the cached background (the
        curves are not redrawn); a full ``draw_idle`` only when no background is cached yet."""
        self.current_frame = int(frame)
        x = self.frame_x(frame)
        for line in self.frame_markers:
            line.set_xdata([x, x])
        if not self.frame_markers:
            return
        if self._background is None:
            self.draw_idle()
            return
        self.restore_region(self._background)
        self._draw_markers()
        self.blit(self.figure.bbox)

    def blit(self, bbox=None) -> None:
        """Like FigureCanvasQTAgg.blit, but schedules the paint (``update``) instead of painting at once
        (``repaint``), so that it joins the window's next paint rather than adding one."""
        if bbox is None:
            bbox = self.figure.bbox
        left, bottom, width, height = [int(pt / self.device_pixel_ratio) for pt in bbox.bounds]
        self.update(left, self.rect().height() - (bottom + height), width, height)

    def _draw_markers(self) -> None:
        for line in self.frame_markers:
            line.axes.draw_artist(line)

    def _on_draw(self, _event) -> None:
        """After every full draw: cache the background (markers are animated, so not in it) and draw
        the markers on top."""
        self._background = self.copy_from_bbox(self.figure.bbox)
        if self.frame_markers:
            self._draw_markers()
            self.blit(self.figure.bbox)

    def set_phase(self, phase: str, frame: int | None) -> None:
        self._background = None
        self.phase_frames[phase] = frame
        x = self.frame_x(frame)
        for line in self.phase_markers.get(phase, []):
            line.set_xdata([x, x])
            line.set_visible(frame is not None)
        text = self.phase_text.get(phase)
        if text is not None:
            text.set_x(x)
            text.set_visible(frame is not None)
        self.draw_idle()

    def marker_x(self) -> float:
        """x of the current-frame marker (the frame's time)."""
        if not self.frame_markers:
            return float("nan")
        return float(np.asarray(self.frame_markers[0].get_xdata(), dtype=float)[0])

    # -- mouse ------------------------------------------------------------------------------------
    def nearest_frame(self, x: float) -> int:
        if not len(self.times):
            return 0
        return int(np.argmin(np.abs(self.times - x)))

    def _phase_near(self, event) -> str | None:
        best, best_d = None, PICK_PX
        for phase, frame in self.phase_frames.items():
            if frame is None:
                continue
            px = event.inaxes.transData.transform((self.frame_x(frame), 0.0))[0]
            d = abs(px - event.x)
            if d <= best_d:
                best, best_d = phase, d
        return best

    def _on_press(self, event) -> None:
        if event.inaxes is None or event.xdata is None or not len(self.times) or event.button != 1:
            return
        phase = self._phase_near(event)
        if phase is not None:
            self._drag = phase
            return
        self.frame_clicked.emit(self.nearest_frame(event.xdata))

    def _on_motion(self, event) -> None:
        if self._drag is None or event.inaxes is None or event.xdata is None:
            return
        frame = self.nearest_frame(event.xdata)
        if frame != self.phase_frames.get(self._drag):
            self.set_phase(self._drag, frame)

    def _on_release(self, event) -> None:
        if self._drag is None:
            return
        phase, self._drag = self._drag, None
        frame = self.phase_frames.get(phase)
        if frame is not None:
            self.marker_moved.emit(phase, int(frame))
