"""Open studies in a real napari window and save screenshots (run under Xvfb, e.g. `xvfb-run -a -s
"-screen 0 1280x800x24" .venv/bin/python scripts/screenshots.py`). Used for the README images.

Besides the plain viewer images (phantom_sax.png, phantom_lax_4c.png, sunnybrook_dicom.png) it captures
the review workflow with the two napari-cinema docks at 1280 x 800:

- workflow_phantom_sax.png: the short-axis phantom, 'Cine analysis' (model, device) and 'Cardiac
  function' (volume curves, ED/ES, measures);
- workflow_phantom_lax_4c.png: the 4-chamber phantom with its landmarks (MAPSE curve);
- workflow_acdc.png: an ACDC patient segmented, with the disease and EF models (when ../shared/data
  is present);
- workflow_mnms2_lax_4c.png: the real M&Ms-2 4-chamber cine, segmented, with the landmarks read off the
  segmentation and its MAPSE curve (when present);
- workflow_sunnybrook.png: a Sunnybrook DICOM cine in the analysis dock (when present).

and the correction workflow (``--only corrections``; a temporary NAPARI_CINEMA_HOME, so the user's
store and models are not touched):

- workflow_corrections.png: the phantom segmented by the default model, a frame corrected with the
  brush, saved; the 'Corrections' dock with the store browser;
- workflow_finetune.png: the 'Fine-tuning' dock after a short real run (default model, phantom
  corrections, CPU): curves, before/after table, log.

A model from the registry segments the cine when one is available for its view (the default model
first); until a trained default exists, the function dock shows the phantom's or dataset's truth labels
instead of a model run, and the screenshot says so on the canvas.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_cinema import api

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SIZE = (1280, 800)


def _settle(n: int = 20) -> None:
    for _ in range(n):
        QApplication.processEvents()


def _wait(condition, timeout: float = 600.0) -> None:
    t0 = time.time()
    while not condition():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("the GUI did not settle")


def capture(viewer: napari.Viewer, out: Path) -> None:
    _settle()
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"saved {out}")


def show_frame(viewer: napari.Viewer, t: int, z: int | None = None) -> None:
    step = list(viewer.dims.current_step)
    step[0] = t
    if z is not None and len(step) > 1:
        step[1] = z
    viewer.dims.current_step = tuple(step)


def plain_screenshots(viewer: napari.Viewer, out: Path) -> None:
    viewer.open_sample("napari-cinema", "phantom_sax")
    show_frame(viewer, t=0, z=5)
    viewer.reset_view()
    capture(viewer, out / "phantom_sax.png")

    viewer.layers.clear()
    viewer.open_sample("napari-cinema", "phantom_lax_4c")
    show_frame(viewer, t=0)
    viewer.reset_view()
    capture(viewer, out / "phantom_lax_4c.png")

    sunnybrook = SHARED / "sunnybrook" / "SCD0000101" / "dicom"
    if sunnybrook.is_dir():
        viewer.layers.clear()
        viewer.open(str(sunnybrook), plugin="napari-cinema")
        show_frame(viewer, t=0, z=6)
        viewer.reset_view()
        capture(viewer, out / "sunnybrook_dicom.png")


class Workflow:
    """The two docks in one window, arranged for 1280 x 800."""

    def __init__(self, viewer: napari.Viewer):
        self.viewer = viewer
        self.analysis = api.open_analysis_dock(viewer)
        self.function = api.open_function_dock(viewer)
        _wait(lambda: self.analysis.models_ready)
        _settle()
        self.arrange()

    def arrange(self) -> None:
        from qtpy.QtWidgets import QDockWidget

        window = self.viewer.window._qt_window
        docks = {d.windowTitle(): d for d in window.findChildren(QDockWidget)}
        pair = [next(d for t, d in docks.items() if name in t) for name in (api.ANALYSIS_DOCK, api.FUNCTION_DOCK)]
        window.resizeDocks(pair, [380, 380], _horizontal())
        content = self.analysis.content_widget.layout()
        width = self.analysis.scroll_area.viewport().width()
        need = content.totalHeightForWidth(width) if content.hasHeightForWidth() else content.minimumSize().height()
        top = need + 42  # content + the dock's title bar
        window.resizeDocks(pair, [top, SIZE[1] - 40 - top], _vertical())
        _settle()

    def reset(self) -> None:
        self.viewer.layers.clear()
        _settle()
        self.arrange()
        self.viewer.canvas.overlays["text"].visible = False

    def note(self, text: str) -> None:
        overlay = self.viewer.canvas.overlays["text"]
        overlay.text = text
        overlay.font_size = 9
        overlay.color = "yellow"
        overlay.position = "top_left"
        overlay.visible = True

    def segment_or_truth(self, image, truth_labels, what: str, extras: bool = False,
                         landmarks: str | None = None) -> str:
        """Run the registry's default model on ``image`` when there is one; else analyse the truth labels.
        ``extras``: also the default disease-classification and EF-regression models of the view;
        ``landmarks``: this landmark model (the bundled one is opt-in: it works on phantoms only)."""
        if landmarks is not None:
            self.analysis.set_image_layer(image)
            _settle()
            self.analysis.set_model(landmarks, "landmarks")
        done = self._segment_or_truth(image, truth_labels, what, extras)
        self.arrange()
        return done

    def _segment_or_truth(self, image, truth_labels, what: str, extras: bool) -> str:
        self.analysis.set_image_layer(image)
        _settle()
        view = self.analysis.view()
        default = api.default_model_id(api.SEGMENTATION_TASKS, view)
        if default is not None:
            self.analysis.set_model(default)
            for role, tasks in (("classification", api.CLASSIFICATION_TASKS), ("regression", api.EF_TASKS)):
                if extras:
                    self.analysis.set_model(api.default_model_id(tasks, view), role)
            self.analysis.run()
            _wait(lambda: not self.analysis.running)
            if self.analysis.labels_layer is not None:
                self.function.set_labels_layer(self.analysis.labels_layer)
                self._wait_function()
                return f"segmented with {default}"
        if truth_labels is not None:
            self.function.set_labels_layer(truth_labels)
            self._wait_function()
            self.note(f"No trained {view} model in the registry yet:\nthe function dock shows the {what} labels,\n"
                      "not a model run")
            return f"no trained {view} model: {what} labels shown"
        self.note(f"No trained {view} model in the registry yet:\nnothing to segment this cine with")
        return f"no trained {view} model"

    def _wait_function(self) -> None:
        _settle()
        _wait(lambda: not self.function.busy and self.function.report is not None)
        _settle()


def _horizontal():
    from qtpy.QtCore import Qt

    return Qt.Orientation.Horizontal


def _vertical():
    from qtpy.QtCore import Qt

    return Qt.Orientation.Vertical


def workflow_screenshots(viewer: napari.Viewer, out: Path) -> None:
    flow = Workflow(viewer)

    flow.reset()
    layers = viewer.open_sample("napari-cinema", "phantom_sax")
    image, truth = layers[0], layers[1]
    what = flow.segment_or_truth(image, truth, "phantom truth")
    es = flow.function.report.measures.get("ES_frame") or 0
    show_frame(viewer, t=es, z=5)
    viewer.layers.selection.active = image
    viewer.reset_view()
    capture(viewer, out / "workflow_phantom_sax.png")
    print(f"  phantom sax: {what}")

    flow.reset()
    layers = viewer.open_sample("napari-cinema", "phantom_lax_4c")
    image, truth = layers[0], layers[1]
    what = flow.segment_or_truth(image, truth, "phantom truth", landmarks="default-lax-4c-landmarks")
    show_frame(viewer, t=15)  # mid-diastole: the white current-frame marker away from ED and ES
    viewer.layers.selection.active = image
    viewer.reset_view()
    capture(viewer, out / "workflow_phantom_lax_4c.png")
    print(f"  phantom lax_4c: {what}")

    acdc = SHARED / "acdc" / "patient001"
    if acdc.is_dir():
        flow.reset()
        layers = viewer.open(str(acdc), plugin="napari-cinema")
        image = layers[0]
        truth = layers[1] if len(layers) > 1 else None
        what = flow.segment_or_truth(image, truth, "ACDC expert", extras=True)
        show_frame(viewer, t=0, z=5)
        viewer.layers.selection.active = image
        viewer.reset_view()
        capture(viewer, out / "workflow_acdc.png")
        print(f"  ACDC patient001: {what}")

    # real studies without labels in the viewer: (path, screenshot, title, frame, slice)
    for path, name, title, t, z in (
            (SHARED / "mnms2" / "001" / "001_LA_CINE.nii.gz", "workflow_mnms2_lax_4c.png", "M&Ms-2 001 4-chamber cine",
             8, None),
            (SHARED / "sunnybrook" / "SCD0000101" / "dicom", "workflow_sunnybrook.png", "Sunnybrook SCD0000101", 0, 6)):
        if not path.exists():
            continue
        flow.reset()
        layers = viewer.open(str(path), plugin="napari-cinema")
        what = flow.segment_or_truth(layers[0], None, "")
        show_frame(viewer, t=t, z=z)
        viewer.reset_view()
        capture(viewer, out / name)
        print(f"  {title}: {what}")


def correction_screenshots(viewer: napari.Viewer, out: Path) -> None:
    import os
    import tempfile

    import numpy as np

    home = Path(tempfile.mkdtemp(prefix="napari-cinema-shots-"))
    os.environ["NAPARI_CINEMA_HOME"] = str(home)
    from qtpy.QtWidgets import QDockWidget

    window = viewer.window._qt_window
    analysis = api.open_analysis_dock(viewer)
    _wait(lambda: analysis.models_ready)
    image = viewer.open_sample("napari-cinema", "phantom_sax")[0]
    analysis.set_image_layer(image)
    analysis.set_model(api.default_model_id(api.SEGMENTATION_TASKS, "sax"))
    analysis.run()
    _wait(lambda: not analysis.running)
    labels = analysis.labels_layer
    dock = api.open_corrections_dock(viewer)
    _settle()
    show_frame(viewer, t=3, z=5)
    y, x = np.argwhere(np.asarray(labels.data[3, 5]) == 3).mean(0).astype(int).tolist()
    labels.brush_size = 12
    labels.paint((3, 5, y, x + 10), 2, refresh=True)  # a brush stroke on the LV
    labels.mode = "paint"
    viewer.layers.selection.active = labels
    dock.save()
    _wait(lambda: not dock.saving)
    dock.store_toggle.setChecked(True)
    docks = {d.windowTitle(): d for d in window.findChildren(QDockWidget)}
    pair = [next(d for t, d in docks.items() if name in t) for name in (api.ANALYSIS_DOCK, api.CORRECTIONS_DOCK)]
    window.resizeDocks(pair, [360, 360], _horizontal())
    window.resizeDocks(pair, [300, SIZE[1] - 340], _vertical())
    viewer.reset_view()
    capture(viewer, out / "workflow_corrections.png")

    # a short real fine-tuning run of the default model on the phantom's corrections
    tune = api.open_finetune_dock(viewer)
    for name in (api.ANALYSIS_DOCK, api.CORRECTIONS_DOCK):
        next(d for t, d in docks.items() if name in t).close()
    tune.epochs_spin.setValue(2)
    tune.batch_spin.setValue(4)
    tune.samples_spin.setValue(24)
    tune.refresh_store_summary()
    tune.log_toggle.setChecked(True)
    assert tune.start(), tune.status.text()
    _wait(lambda: not tune.running, timeout=900)
    _settle()
    capture(viewer, out / "workflow_finetune.png")
    print(f"  fine-tuning: {tune.last_outcome}, model {tune.new_model_id}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--only", choices=("plain", "workflow", "corrections"), help="capture one group only")
    args = parser.parse_args()

    viewer = napari.Viewer(title="napari-cinema")
    viewer.window._qt_window.resize(*SIZE)
    if args.only in (None, "plain"):
        plain_screenshots(viewer, args.out)
    if args.only in (None, "workflow"):
        viewer.layers.clear()
        workflow_screenshots(viewer, args.out)
    if args.only in (None, "corrections"):
        viewer.close()
        viewer = napari.Viewer(title="napari-cinema")
        viewer.window._qt_window.resize(*SIZE)
        correction_screenshots(viewer, args.out)
    viewer.close()


if __name__ == "__main__":
    main()
