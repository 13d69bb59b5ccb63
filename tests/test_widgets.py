"""The review workflow in a real napari viewer: the 'Cine analysis' and 'Cardiac function' docks and the
function API (napari_cinema.api), driven on small phantoms.

The models are real CineMA-family networks (tiny ConvUNetR / ConvViT from the factory) with random
weights, registered in a temporary registry: the tests check the plumbing (workers, progress, cancel,
layers, geometry, provenance, the analysis numbers against the analysis core), never accuracy. No
model here is presented as trained: their cards say "random weights".
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import numpy as np
import pytest
import torch
import yaml

from napari_cinema import api
from napari_cinema.analysis import analyze_study
from napari_cinema.model import checkpoint as ck
from napari_cinema.model import factory, registry
from napari_cinema.sample_data.napari_samples import phantom_layers

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]

SMALL_UNET = {"size": "tiny", "dec_chans": [4, 8, 8, 16, 16], "enc_conv_chans": [8, 16], "enc_conv_n_blocks": 1,
              "dec_n_blocks": 1}
SMALL_VIT = {"size": "tiny", "enc_conv_chans": [8, 16], "enc_conv_n_blocks": 1}
GEOMETRY = {"patch_size": [64, 64], "spacing": [3.0, 3.0], "in_chans": 1}
PHANTOM = dict(frames=8, supersample=1, matrix=64, pixel_mm=3.0, noise=0.0)
CARD = {"training_data": "none: random weights (test)", "description": "random-weight test network, not trained"}
WAIT_MS = 60_000


def _configs() -> dict[str, tuple[dict, int, str | None]]:
    seg = lambda view, data: {"task": "segmentation",  # noqa: E731
                              "data": {"name": data, "sax" if view == "sax" else "lax": dict(GEOMETRY)},
                              "model": {"name": "convunetr", "views": view, "out_chans": 4,
                                        "convunetr": dict(SMALL_UNET)}}
    pair = {"sax": dict(GEOMETRY)}
    return {
        # (config, seed, view whose head is made decisive so that every class shows up)
        "test/tiny-sax-seg": (seg("sax", "acdc"), 1, "sax"),
        "test/tiny-lax4c-seg": (seg("lax_4c", "mnms2"), 1, "lax_4c"),
        "test/tiny-lax4c-landmarks": ({"task": "segmentation", "data": {"name": "landmark", "lax": dict(GEOMETRY)},
                                       "model": {"name": "convunetr", "views": "lax_4c", "out_chans": 3,
                                                 "convunetr": dict(SMALL_UNET)}}, 2, None),
        "test/tiny-sax-cvd": ({"task": "classification",
                               "data": {"name": "acdc", **pair, "class_column": "pathology",
                                        "pathology": ["DCM", "HCM", "MINF", "NOR", "RV"]},
                               "model": {"name": "convvit", "views": "sax", "n_frames": 2,
                                         "convvit": dict(SMALL_VIT)}}, 3, None),
        "test/tiny-sax-ef": ({"task": "regression",
                              "data": {"name": "acdc", **pair, "regression_column": "ef",
                                       "ef": {"mean": 55.0, "std": 10.0}},
                              "model": {"name": "convvit", "views": "sax", "n_frames": 2, "out_chans": 1,
                                        "convvit": dict(SMALL_VIT)}}, 4, None),
    }


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, tuple]:
    """Safetensors files of the test networks (built once per module)."""
    folder = tmp_path_factory.mktemp("weights")
    out = {}
    for model_id, (cfg, seed, head) in _configs().items():
        torch.manual_seed(seed)
        net = factory.build_model(cfg)
        if head is not None:
            with torch.no_grad():
                net.pred_head_dict[head].weight.normal_(0.0, 3.0)
                net.pred_head_dict[head].bias.zero_()
        path = ck.save_checkpoint(net, folder / model_id.replace("/", "_") / "model.safetensors", config=cfg)
        out[model_id] = (path, cfg)
    return out


@pytest.fixture
def models(weights, tmp_path, monkeypatch) -> list[str]:
    """A private registry (user folder, empty bundled folder, offline hub cache) holding the test networks."""
    monkeypatch.setenv("NAPARI_CINEMA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(registry, "bundled_models_dir", lambda: tmp_path / "bundled")
    for model_id, (path, cfg) in weights.items():
        registry.register_model(path, model_id, config=cfg, card=CARD, link=True)
    return list(weights)


@pytest.fixture(scope="module")
def sax_phantom():
    return phantom_layers("sax", slices=6, **PHANTOM)


@pytest.fixture(scope="module")
def lax_phantom():
    return phantom_layers("lax_4c", **PHANTOM)


def add_layers(viewer, layer_data):
    """Add sample layer data to the viewer (label arrays copied: tests paint on them)."""
    from napari.layers import Layer

    out = []
    for data, kwargs, kind in layer_data:
        kwargs = dict(kwargs, metadata=dict(kwargs.get("metadata", {})))
        out.append(viewer.add_layer(Layer.create(data.copy() if kind == "labels" else data, kwargs, kind)))
    return out


def open_docks(viewer, qtbot):
    analysis = api.open_analysis_dock(viewer)
    function = api.open_function_dock(viewer)
    qtbot.waitUntil(lambda: analysis.models_ready, timeout=WAIT_MS)
    return analysis, function


def run_and_wait(qtbot, dock, **kwargs) -> str:
    outcomes = []
    dock.run_finished.connect(outcomes.append)
    assert dock.run(**kwargs) is not None, dock.status_text()
    qtbot.waitUntil(lambda: bool(outcomes) and not dock.running, timeout=WAIT_MS)
    return outcomes[-1]


def wait_analysis(qtbot, function, after: int = -1):
    qtbot.waitUntil(lambda: function.analyses > after and not function.busy and function.report is not None,
                    timeout=WAIT_MS)
    return function.report


def same(a, b) -> bool:
    """Docks see napari's public-only proxies of layers: compare layers by their unique id."""
    return a is not None and b is not None and a.unique_id == b.unique_id


def last_notification() -> str:
    from napari.utils.notifications import notification_manager

    return str(notification_manager.records[-1].message) if notification_manager.records else ""


# ------------------------------------------------------------------------------------------------
# manifest and menus
# ------------------------------------------------------------------------------------------------


def test_manifest_declares_the_docks_and_a_submenu():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-cinema")
    widgets = {w.display_name: w.command for w in manifest.contributions.widgets}
    review = {"Cine analysis": "napari-cinema.analysis_widget", "Cardiac function": "napari-cinema.function_widget"}
    assert review.items() <= widgets.items()  # the review docks (other docks may follow them)
    assert [s.label for s in manifest.contributions.submenus] == ["napari-cinema"]
    menu = manifest.contributions.menus["napari-cinema.submenu"]
    assert [item.command for item in menu] == list(widgets.values())  # every dock, in the manifest's order
    assert [item.command for item in menu][:2] == list(review.values())
    assert {"napari/layers/segment", "napari/layers/measure"} <= set(manifest.contributions.menus)


GUI_THREAD_IMPORTS = """
import sys, threading

importers = {}  # heavy package -> the thread that imported it first
def audit(event, args):
    if event == "import" and args[0] in ("torch", "monai") and args[0] not in importers:
        importers[args[0]] = threading.current_thread().name
sys.addaudithook(audit)

import napari
from qtpy.QtCore import QCoreApplication
from napari.layers import Layer
from napari_cinema import api
from napari_cinema.sample_data.napari_samples import phantom_layers

viewer = napari.Viewer(show=False)
image = viewer.add_layer(Layer.create(*phantom_layers("sax", frames=4, matrix=64, pixel_mm=3.0)[0]))
analysis, function = api.open_analysis_dock(viewer), api.open_function_dock(viewer)
def wait(condition):
    while not condition():
        QCoreApplication.processEvents()
wait(lambda: analysis.models_ready)
done = []
analysis.run_finished.connect(done.append)
analysis.run()
wait(lambda: done and not analysis.running)
print(done[-1], importers.get("torch"), importers.get("monai"), threading.main_thread().name)
viewer.close()
"""


CLOSE_MID_RUN = """
import atexit, sys, time
jobs = []  # what the run's job returned, recorded in its worker thread
atexit.register(lambda: print("job", *jobs, flush=True))  # runs after napari-cinema's exit handler

import napari
from qtpy.QtCore import QCoreApplication
from napari.layers import Layer
from napari_cinema import api
from napari_cinema.widgets import analysis as dock_module
from napari_cinema.sample_data.napari_samples import phantom_layers

job = dock_module._job
dock_module._job = lambda *args: jobs.append(job(*args)[0]) or ("cancelled", None)
viewer = napari.Viewer(show=False)
image = viewer.add_layer(Layer.create(*phantom_layers("sax", frames=int(sys.argv[1]))[0]))
analysis = api.open_analysis_dock(viewer)
def wait(condition):
    while not condition():
        QCoreApplication.processEvents()
wait(lambda: analysis.models_ready)
analysis.run()
wait(lambda: analysis.progress_bar.value() > 0)  # the first batch is done
viewer.close()
print("closed", flush=True)
"""


def run_script(tmp_path, text: str, *args: str) -> str:
    """``text`` as a Python script in a fresh process (the same X display); its output, checked it exited 0."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(text)
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip(), done.stdout + done.stderr
    return done.stdout


def test_closing_napari_mid_run_stops_the_run_and_exits_cleanly(tmp_path):
    """Closing the window quits napari's workers: the run stops at its next batch, and the process exits
    normally (a worker still running when Python exits made PyQt abort it: exit code 134)."""
    out = run_script(tmp_path, CLOSE_MID_RUN, "25")
    assert out.split()[-3:] == ["closed", "job", "cancelled"], out


def test_the_gui_thread_never_imports_torch(tmp_path):
    """Importing torch takes seconds: the docks, their registry listing and a run leave it to workers (a
    fresh process, where nothing has imported torch yet; the bundled default model on a small phantom)."""
    out = run_script(tmp_path, GUI_THREAD_IMPORTS)
    outcome, torch_by, monai_by, main = out.split()[-4:]
    assert outcome == "ok", out
    assert main not in (torch_by, monai_by), (torch_by, monai_by)


# ------------------------------------------------------------------------------------------------
# the main workflow on the short-axis phantom
# ------------------------------------------------------------------------------------------------


def test_run_sax_labels_curves_marker_and_manual_ed_es(make_napari_viewer, qtbot, models, sax_phantom):
    viewer = make_napari_viewer()
    image, truth = add_layers(viewer, sax_phantom)
    analysis, function = open_docks(viewer, qtbot)
    assert same(analysis.image_layer(), image) and analysis.view() == "sax"
    offered = [analysis.model_combo.itemData(i) for i in range(analysis.model_combo.count())]
    assert offered[0] == "test/tiny-sax-seg"  # available models first
    assert "cinema/segmentation/acdc_sax/0" in offered  # published ones listed, marked as not downloaded
    acdc = offered.index("cinema/segmentation/acdc_sax/0")
    assert "not downloaded" in analysis.model_combo.itemText(acdc)
    assert "random weights" in analysis.model_combo.itemText(0)  # training data shown
    assert analysis.device_label.text().startswith(("CPU", "CUDA", "MPS"))

    analysis.set_model("test/tiny-sax-seg")
    progress = []
    analysis._bridge.progress.connect(lambda d, t, m: progress.append((d, t, m)))
    held = []  # the result steps hold the window's repaint to the next turn, and only that long
    analysis.run_finished.connect(lambda _: held.append(viewer.window._qt_window.updatesEnabled()))
    assert run_and_wait(qtbot, analysis) == "ok", analysis.status_text()
    assert any(d >= 1 and t == 8 for d, t, _ in progress)  # progress reached the GUI during the run
    assert held == [True]
    from napari_cinema.widgets._common import repaint_next_turn

    repaint_next_turn(function)
    assert not viewer.window._qt_window.updatesEnabled()
    qtbot.waitUntil(viewer.window._qt_window.updatesEnabled, timeout=1000)

    labels = analysis.labels_layer
    assert labels is not None and labels in viewer.layers and labels.name == "phantom sax segmentation"
    assert labels.data.shape == image.data.shape and labels.data.dtype == np.uint8
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    assert tuple(labels.axis_labels) == ("t", "z", "y", "x")
    assert [str(u) for u in labels.units] == [str(u) for u in image.units]
    assert labels.metadata["provenance"]["model_id"] == "test/tiny-sax-seg"
    assert labels.metadata["provenance"]["shift_passes_px"] == [0, 5, -5]  # the dock's default
    assert labels.metadata["label_names"] == {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
    assert labels.metadata["cinema_result"]["of"] == str(image.unique_id)
    assert {1, 3} <= set(np.unique(labels.data).tolist())
    colors = labels.colormap.color_dict
    np.testing.assert_allclose(colors[3][:3], (1.0, 0.30, 0.25), atol=1e-6)  # the fixed LV colour
    assert list(labels.features["structure"]) == ["background", "RV", "MYO", "LV"]
    # the model output is kept beside the layer data (a copy: painting must not change it)
    original = labels.metadata["cinema_original"]
    assert original.dtype == np.uint8 and original.shape == labels.data.shape
    np.testing.assert_array_equal(original, labels.data)
    assert not np.shares_memory(original, labels.data)
    assert original is analysis.last_results.segmentation.labels  # made once, in the worker

    # the function dock follows the new segmentation; its EF is the analysis core's on the same labels
    qtbot.waitUntil(lambda: same(function.labels_layer(), labels), timeout=WAIT_MS)
    report = wait_analysis(qtbot, function)
    study = image.metadata["cinema_study"]
    core = analyze_study(study, np.asarray(labels.data), model_info={"id": "x"})
    assert report.measures["LVEF_pct"] is not None
    assert report.measures["LVEF_pct"] == core.measures["LVEF_pct"]
    assert report.measures["LVEDV_ml"] == core.measures["LVEDV_ml"]
    assert report.model["id"] == "test/tiny-sax-seg"
    assert "LV" in function.canvas.lines  # curves of the structures present
    table = {function.table.item(r, 0).text(): function.table.item(r, 1).text()
             for r in range(function.table.rowCount())}
    ef = report.measures["LVEF_pct"]
    assert float(table["LV EF"].split()[0]) == pytest.approx(ef, abs=0.051)

    # the time slider moves the marker to the frame's time (ms), without redrawing the curves
    lv_line = function.canvas.lines["LV"]
    for t in (3, 6):
        viewer.dims.set_current_step(0, t)
        assert function.canvas.marker_x() == pytest.approx(t * study.spacing[0])
    assert function.canvas.lines["LV"] is lv_line

    # ED / ES typed by hand: everything is recomputed with them
    ed, es = core.measures["ED_frame"], core.measures["ES_frame"]
    new_es = (es + 2) % study.n_frames if (es + 2) % study.n_frames != ed else (es + 3) % study.n_frames
    n = function.analyses
    function.es_spin.setValue(new_es)  # as typing does
    report2 = wait_analysis(qtbot, function, n)
    expected = analyze_study(study, np.asarray(labels.data), es_frame=new_es)
    assert report2.measures["ES_frame"] == new_es
    assert report2.measures["LVEF_pct"] == expected.measures["LVEF_pct"] != report.measures["LVEF_pct"]
    assert function.canvas.phase_frames["ES"] == new_es

    # painting the labels recomputes (debounced) with the edit; the report says the labels were edited
    n = function.analyses
    before = report2.measures["LVEDV_ml"]
    z, y, x = np.argwhere(np.asarray(labels.data[ed]) == 3)[0]
    labels.brush_size = 15
    labels.paint((ed, z, y, x), 0, refresh=True)  # erase some LV at ED (napari emits the paint event)
    report3 = wait_analysis(qtbot, function, n)
    assert report3.model.get("edited") is True
    assert labels.metadata["cinema_original"] is original and (original[ed] != labels.data[ed]).any()
    assert report3.measures["LVEDV_ml"] != before or report3.measures["LVESV_ml"] != report2.measures["LVESV_ml"]

    # re-running updates the same layers in place (no second layer), with fresh provenance
    created = labels.metadata["provenance"]["created"]
    count = len(viewer.layers)
    n = function.analyses
    # the hand edit is not in the correction store: the first Run refuses, the second replaces it
    assert api.has_unsaved_edits(labels)
    assert analysis.run() is None and "not saved" in analysis.status_text()
    assert analysis.labels_layer.metadata.get("edited") is True
    analysis.more_button.click()
    assert not analysis.extras.isHidden() and "3 shifted passes" in analysis.more_button.toolTip()
    from napari_cinema.engine import DEFAULT_SHIFT_PASSES
    from napari_cinema.widgets import analysis as analysis_module

    assert analysis_module.SHIFT_PASSES == DEFAULT_SHIFT_PASSES  # what the dock says is what the engine does
    assert analysis.more_button.text().startswith("More") and "1 models" not in analysis.more_button.text()
    analysis.shift_check.setChecked(False)  # the fast single pass
    assert "1 pass" in analysis.more_button.toolTip()
    assert run_and_wait(qtbot, analysis) == "ok"
    assert same(analysis.labels_layer, labels) and len(viewer.layers) == count
    assert labels.metadata["provenance"]["shift_passes_px"] == [0]
    assert labels.metadata.get("edited") is False and "created" in labels.metadata["provenance"]
    assert labels.metadata["provenance"]["created"] >= created
    rerun = labels.metadata["cinema_original"]  # replaced by the new run's output
    assert rerun is not original and rerun is analysis.last_results.segmentation.labels
    np.testing.assert_array_equal(rerun, labels.data)
    assert not np.shares_memory(rerun, labels.data)
    wait_analysis(qtbot, function, n)  # the new data is analysed, with the ES typed by hand kept
    new = np.asarray(labels.data)
    assert function.report.measures["LVEF_pct"] == analyze_study(study, new, es_frame=new_es).measures["LVEF_pct"]
    n = function.analyses
    function.auto_button.click()  # back to the detected ED / ES
    wait_analysis(qtbot, function, n)
    assert function.report.measures["LVEF_pct"] == analyze_study(study, new).measures["LVEF_pct"]


def test_results_reach_the_viewer_in_steps(make_napari_viewer, sax_phantom):
    """apply_results_steps: the layer is built in one step, added in the next, its painting tools shown in
    the two after (the dock runs one step per event-loop turn, so napari's work on them gets turns of its
    own); an image removed between steps gets no layer; apply_results runs them all."""
    from napari.layers import Labels

    from napari_cinema.engine.engine import SegmentationResult

    viewer = make_napari_viewer()
    image, truth = add_layers(viewer, sax_phantom)
    study = image.metadata["cinema_study"]
    output = np.asarray(truth.data).copy()

    def results():
        seg = SegmentationResult(labels=output, provenance={"model_id": "test/x"}, label_names={})
        return api.prepare_results(api.CineResults(study=study, segmentation=seg, models={}))

    made = results()
    assert made.layer_parts.original is output and not np.shares_memory(made.layer_parts.labels, output)
    steps = api.apply_results_steps(viewer, image, made)
    count = len(viewer.layers)
    next(steps)  # built, not added yet
    assert len(viewer.layers) == count and api.find_result_layer(viewer, image) is None
    next(steps)  # added, its painting tools (polygon, brush stroke) hidden: napari has not built them yet
    labels = api.find_result_layer(viewer, image)
    tools = [labels._overlays["polygon"], labels._overlays["brush_stroke"]]
    visuals = viewer.window._qt_viewer.canvas._layer_overlay_to_visual[labels]
    assert not any(tool.visible or tool in visuals for tool in tools)
    next(steps)  # one tool per turn
    assert tools[0].visible and tools[0] in visuals and tools[1] not in visuals
    with pytest.raises(StopIteration) as done:
        next(steps)
    assert all(tool.visible and tool in visuals for tool in tools)
    labels, points = done.value.value
    assert points is None and isinstance(labels, Labels) and same(api.find_result_layer(viewer, image), labels)
    assert labels.metadata["cinema_original"] is output
    np.testing.assert_allclose(labels.scale, image.scale)

    # an update in place is a single step; then the image goes away between the steps of a new layer
    with pytest.raises(StopIteration):
        next(api.apply_results_steps(viewer, image, results()))
    other = add_layers(viewer, sax_phantom[:1])[0]
    steps = api.apply_results_steps(viewer, other, results())
    next(steps)
    viewer.layers.remove(other)
    with pytest.raises(StopIteration) as done:
        next(steps)
    assert done.value.value == (None, None) and api.find_result_layer(viewer, other) is None
    # steps abandoned after the insertion (the dock closed): the layer's painting tools are shown all the same
    other = add_layers(viewer, sax_phantom[:1])[0]
    steps = api.apply_results_steps(viewer, other, results())
    next(steps)
    next(steps)
    abandoned = api.find_result_layer(viewer, other)
    assert not abandoned._overlays["polygon"].visible
    steps.close()
    assert abandoned._overlays["polygon"].visible and abandoned._overlays["brush_stroke"].visible

    # the scripting twin does everything at once (and makes the layer parts itself)
    third = add_layers(viewer, sax_phantom[:1])[0]
    seg = SegmentationResult(labels=output, provenance={"model_id": "test/x"}, label_names={})
    labels3, _ = api.apply_results(viewer, third, api.CineResults(study=study, segmentation=seg))
    assert labels3.metadata["cinema_original"] is output and not np.shares_memory(labels3.data, output)


def test_clicks_and_drags_on_the_curves(make_napari_viewer, qtbot, sax_phantom):
    """On truth labels (no model): a click jumps to a frame, dragging the ED marker sets ED."""
    from matplotlib.backend_bases import MouseEvent

    viewer = make_napari_viewer()
    image, truth = add_layers(viewer, sax_phantom)
    function = api.open_function_dock(viewer)
    assert same(function.labels_layer(), truth)
    report = wait_analysis(qtbot, function)
    study = truth.metadata["cinema_study"]
    assert report.measures["LVEF_pct"] == pytest.approx(truth.metadata["truth"]["LVEF_pct"], abs=6.0)
    canvas = function.canvas
    canvas.draw()
    ax = canvas.curve_axes
    dt = study.spacing[0]

    def event(name, frame):
        x, y = ax.transData.transform((frame * dt, np.mean(ax.get_ylim())))
        MouseEvent(name, canvas, x, y, button=1)._process()

    event("button_press_event", 5)
    event("button_release_event", 5)
    assert viewer.dims.current_step[0] == 5 and canvas.marker_x() == pytest.approx(5 * dt)
    ed = report.measures["ED_frame"]
    n = function.analyses
    event("button_press_event", ed)  # on the ED marker: a drag
    event("motion_notify_event", ed + 1)
    event("button_release_event", ed + 1)
    report2 = wait_analysis(qtbot, function, n)
    assert report2.measures["ED_frame"] == ed + 1 == function.ed_spin.value()
    assert viewer.dims.current_step[0] == 5  # dragging a marker does not move the time slider


# ------------------------------------------------------------------------------------------------
# cancel, bad input, errors
# ------------------------------------------------------------------------------------------------


def test_cancel_midway_leaves_no_layer(make_napari_viewer, qtbot, models, sax_phantom):
    viewer = make_napari_viewer()
    image, truth = add_layers(viewer, sax_phantom)
    analysis, _function = open_docks(viewer, qtbot)
    analysis.set_model("test/tiny-sax-seg")
    names = [layer.name for layer in viewer.layers]

    def cancel_midway(done, total, message):
        if 1 <= done < total and analysis.cancel_button.isEnabled():
            analysis.cancel_button.click()

    analysis._bridge.progress.connect(cancel_midway)
    assert run_and_wait(qtbot, analysis) == "cancelled"
    assert [layer.name for layer in viewer.layers] == names  # no partial layer
    assert analysis.labels_layer is None and api.find_result_layer(viewer, image) is None
    assert analysis.status_text().startswith("Cancelled") and "no layer was changed" in analysis.status_text()
    assert analysis.run_button.isEnabled() and not analysis.cancel_button.isEnabled()


def test_bad_input_gives_clear_messages(make_napari_viewer, qtbot, models, sax_phantom):
    viewer = make_napari_viewer()
    image, truth = add_layers(viewer, sax_phantom)
    flat = viewer.add_image(np.zeros((32, 32), np.float32), name="a 2-D image")
    analysis, function = open_docks(viewer, qtbot)
    analysis.set_image_layer(image)
    analysis.set_model("test/tiny-sax-seg")

    # a 2-D image layer: Run disabled, the reason shown; run() anyway gives a message and a notification
    assert analysis.set_image_layer(flat)
    assert not analysis.run_button.isEnabled()
    assert "2-D" in analysis.detected_label.text()
    assert analysis.run() is None
    assert "2-D" in analysis.status_text() and "not a cine" in analysis.status_text()
    assert "2-D" in last_notification()

    # a Labels layer (scripted: the image list never offers one)
    assert analysis.run(layer=truth) is None
    assert "Labels layer" in analysis.status_text()
    with pytest.raises(api.NotACine, match="Labels layer"):
        api.segment_layer(viewer, truth, "test/tiny-sax-seg")
    with pytest.raises(api.NotACine, match="2-D"):
        api.analyze_layer(viewer, viewer.add_labels(np.zeros((32, 32), np.uint8), name="flat labels"))

    # a foreign 4-D image (not opened by napari-cinema): its view is unknown until chosen
    foreign = viewer.add_image(np.asarray(image.data), scale=image.scale, name="foreign cine")
    assert analysis.set_image_layer(foreign) and analysis.view() == "unknown"
    assert "view unknown" in analysis.detected_label.text()
    assert analysis.run() is None and "choose the view" in analysis.status_text()
    analysis.set_view("sax")
    assert analysis.model_id() == "test/tiny-sax-seg" and analysis.run_button.isEnabled()

    # a second Run while one is running: refused with a message, the button disabled
    analysis.set_image_layer(image)
    outcomes = []
    analysis.run_finished.connect(outcomes.append)
    worker = analysis.run()
    assert worker is not None and not analysis.run_button.isEnabled()
    assert analysis.run() is None
    assert "already in progress" in analysis.status_text()
    qtbot.waitUntil(lambda: bool(outcomes) and not analysis.running, timeout=WAIT_MS)
    assert outcomes == ["ok"]

    # the image layer removed mid-run: the run stops, no layer is made, the message says why
    other = add_layers(viewer, sax_phantom[:1])[0]
    other.name = "second cine"
    analysis.set_image_layer(other)
    count = len(viewer.layers)

    def remove_midway(done, total, message):
        if done >= 1 and other in viewer.layers:
            viewer.layers.remove(other)

    analysis._bridge.progress.connect(remove_midway)
    assert run_and_wait(qtbot, analysis) in ("cancelled", "discarded")
    assert len(viewer.layers) == count - 1
    assert api.find_result_layer(viewer, other) is None
    assert "removed" in analysis.status_text()


def test_missing_and_offline_models_are_explained(make_napari_viewer, qtbot, models, monkeypatch):
    viewer = make_napari_viewer()
    add_layers(viewer, phantom_layers("lax_2c", **PHANTOM)[:1])
    analysis, _function = open_docks(viewer, qtbot)
    # no segmentation model exists for 2-chamber cines: said so, Run disabled, run() explains
    assert analysis.view() == "lax_2c" and analysis.model_id() is None
    assert "No segmentation model" in analysis.model_info.text()
    assert not analysis.run_button.isEnabled()
    assert analysis.run() is None and "no segmentation model for lax_2c" in analysis.status_text()
    with pytest.raises(api.ModelNotAvailable, match="no segmentation model"):
        api.segment_layer(viewer, viewer.layers[0])

    # a published model that is not downloaded, offline: the hub's own message (what to run)
    analysis.set_view("lax_4c")
    analysis.set_model("cinema/segmentation/mnms2_lax_4c/0")
    assert "hub offline" in analysis.model_info.text()
    assert run_and_wait(qtbot, analysis) == "error"
    text = analysis.status_text()
    assert "not in the local cache" in text and "napari-cinema models download" in text
    assert not [layer for layer in viewer.layers if layer.name.endswith("segmentation")]


# ------------------------------------------------------------------------------------------------
# long axis: landmarks and MAPSE; model outputs; export
# ------------------------------------------------------------------------------------------------


def test_lax_landmarks_points_layer_and_mapse(make_napari_viewer, qtbot, models, lax_phantom):
    viewer = make_napari_viewer()
    image, truth, truth_points = add_layers(viewer, lax_phantom)
    analysis, function = open_docks(viewer, qtbot)
    assert analysis.view() == "lax_4c"
    analysis.set_model("test/tiny-lax4c-seg")
    analysis.set_model("test/tiny-lax4c-landmarks", "landmarks")
    assert run_and_wait(qtbot, analysis) == "ok", analysis.status_text()
    points = analysis.points_layer
    assert points is not None and points.name == "phantom lax_4c landmarks"
    t = image.data.shape[0]
    assert points.data.shape == (3 * t, 4)
    assert list(points.features["name"][:3]) == ["mv_1", "mv_2", "apex"]
    np.testing.assert_allclose(points.scale, image.scale)
    np.testing.assert_array_equal(points.data[::3, 0], np.arange(t))  # one set per frame (time slider)
    assert points.metadata["provenance"]["model_id"] == "test/tiny-lax4c-landmarks"

    qtbot.waitUntil(lambda: same(function.labels_layer(), analysis.labels_layer), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: same(function.points_combo.current_layer(), points), timeout=WAIT_MS)
    report = wait_analysis(qtbot, function)
    assert report.landmarks is not None and "curves" in report.landmarks
    assert function.canvas.mapse_axes is not None and "mean" in function.canvas.mapse_lines
    # the truth landmarks give the phantom's MAPSE (known value)
    n = function.analyses
    function.points_combo.set_layer(truth_points)
    function.labels_combo.set_layer(truth)
    report = wait_analysis(qtbot, function, n)
    assert report.measures["MAPSE_mm"] == pytest.approx(truth.metadata["truth"]["MAPSE_mm"], abs=1.0)


def test_lax_run_without_a_landmark_model_reads_the_landmarks_off_the_segmentation(make_napari_viewer, qtbot, models,
                                                                                   lax_phantom):
    import json
    from pathlib import Path

    import napari_cinema
    from napari_cinema.model.checkpoint import read_config

    shipped = Path(napari_cinema.__file__).parent / "models" / "default-lax-4c-seg"  # real contours, real landmarks
    registry.register_model(shipped / "model.safetensors", "default-lax-4c-seg", link=True,
                            config=read_config(shipped / "config.yaml"),
                            card=json.loads((shipped / "card.json").read_text()))
    viewer = make_napari_viewer()
    image, truth, _truth_points = add_layers(viewer, lax_phantom)
    analysis, function = open_docks(viewer, qtbot)
    analysis.set_model("default-lax-4c-seg")
    analysis.set_model(None, "landmarks")  # no landmark model (the default when the only one is opt-in)
    assert analysis.landmark_combo.currentText() == "from the segmentation"
    assert run_and_wait(qtbot, analysis) == "ok", analysis.status_text()
    assert "landmarks read off the segmentation" in analysis.status_text()
    points = analysis.points_layer
    t = image.data.shape[0]
    assert points is not None and points.data.shape == (3 * t, 4)
    assert points.metadata["provenance"]["task"] == "landmarks_from_segmentation"
    qtbot.waitUntil(lambda: same(function.labels_layer(), analysis.labels_layer), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: same(function.points_combo.current_layer(), points), timeout=WAIT_MS)
    report = wait_analysis(qtbot, function)
    assert report.landmarks is not None and function.canvas.mapse_axes is not None
    # 3 mm pixels here: one pixel of hinge error moves MAPSE by up to 3 mm (the accuracy at the phantom's
    # real resolution is tested in test_engine and test_bundled_models)
    assert report.measures["MAPSE_mm"] == pytest.approx(truth.metadata["truth"]["MAPSE_mm"], abs=3.0)

    # an annotator corrects the LV of one frame: the landmarks read off the segmentation follow the labels
    labels = analysis.labels_layer
    study = api.study_for_labels(viewer, labels)
    assert api.landmarks_follow_labels(points)
    before = np.array(points.data)
    edited = np.array(labels.data)
    edited[0] = np.roll(edited[0], 4, axis=-1)  # frame 0's heart 4 px to the right
    n = function.analyses
    labels.data = edited
    report = wait_analysis(qtbot, function, n)
    expected, names = api.landmark_rows(api.read_landmarks(study, edited))
    np.testing.assert_allclose(points.data, expected)
    assert [str(v) for v in points.features["name"]] == names
    frame0 = points.data[:, 0] == 0
    np.testing.assert_allclose(points.data[frame0, 3], before[before[:, 0] == 0, 3] + 4, atol=1.0)
    np.testing.assert_allclose(points.data[~frame0], before[before[:, 0] != 0])  # other frames: unchanged
    assert report.landmarks["source"].startswith("read off the labels")
    assert api.landmarks_follow_labels(points)

    # once moved by hand, the points are the annotator's: kept through later label edits, used as given
    moved = np.array(points.data)
    moved[0, 2:] += 2.0
    n = function.analyses
    points.data = moved
    wait_analysis(qtbot, function, n)
    assert not api.landmarks_follow_labels(points)
    edited[1] = np.roll(edited[1], -3, axis=-1)
    n = function.analyses
    labels.data = edited
    report = wait_analysis(qtbot, function, n)
    np.testing.assert_allclose(points.data, moved)
    assert report.landmarks["source"] == "given"


def test_model_outputs_beside_segmentation_ef(make_napari_viewer, qtbot, models, sax_phantom):
    viewer = make_napari_viewer()
    image, _truth = add_layers(viewer, sax_phantom)
    analysis, function = open_docks(viewer, qtbot)
    analysis.set_model("test/tiny-sax-seg")
    analysis.set_model("test/tiny-sax-cvd", "classification")
    analysis.set_model("test/tiny-sax-ef", "regression")
    assert run_and_wait(qtbot, analysis) == "ok", analysis.status_text()
    outputs = analysis.labels_layer.metadata["cinema_models"]
    assert outputs["classification"]["classes"] == ["DCM", "HCM", "MINF", "NOR", "RV"]
    assert sum(outputs["classification"]["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    qtbot.waitUntil(lambda: same(function.labels_layer(), analysis.labels_layer), timeout=WAIT_MS)
    report = wait_analysis(qtbot, function)
    assert set(report.probabilities) == {"DCM", "HCM", "MINF", "NOR", "RV"}
    assert report.ef_regression["LVEF_pct"] == pytest.approx(outputs["ef_regression"]["LVEF_pct"])
    assert function.models_box.isVisibleTo(function)
    assert "model" in function.ef_label.text() and "segmentation" in function.ef_label.text()


def test_export_report_from_the_dock_and_the_function_api(make_napari_viewer, qtbot, models, sax_phantom,
                                                          tmp_path):
    viewer = make_napari_viewer()
    image, truth = add_layers(viewer, sax_phantom)
    function = api.open_function_dock(viewer)
    wait_analysis(qtbot, function)
    function.set_phases(ed=0, es=3)
    with qtbot.waitSignal(function.exported, timeout=WAIT_MS) as signal:
        function.export_report(tmp_path / "dock")
    paths = signal.args[0]
    assert {"report.json", "volumes.csv", "report.pdf"} <= set(paths)
    saved = json.loads((tmp_path / "dock" / "report.json").read_text())
    study = image.metadata["cinema_study"]
    expected = analyze_study(study, np.asarray(truth.data), ed_frame=0, es_frame=3)
    assert saved["ES_frame"] == 3 and saved["LVEF_pct"] == expected.measures["LVEF_pct"]

    # the scriptable twins
    labels = api.segment_layer(viewer, image, "test/tiny-sax-seg", device="cpu")
    assert labels.data.shape == image.data.shape
    assert same(api.segment_layer(viewer, "phantom sax", "test/tiny-sax-seg"), labels)  # updated in place
    report = api.analyze_layer(viewer, labels, ed=1, es=4)
    assert report.measures["ED_frame"] == 1 and report.measures["ES_frame"] == 4
    assert report.measures["LVEF_pct"] == analyze_study(study, np.asarray(labels.data), ed_frame=1,
                                                        es_frame=4).measures["LVEF_pct"]
    written = api.export_report(viewer, labels, tmp_path / "api", pdf=False)
    assert json.loads(written["report.json"].read_text())["model"]["id"] == "test/tiny-sax-seg"

    # a foreign 4-D image layer (not opened by napari-cinema): its view must be given
    foreign = viewer.add_image(np.asarray(image.data), scale=image.scale, name="foreign cine")
    with pytest.raises(api.NotACine, match="view .* is unknown"):
        api.segment_layer(viewer, foreign, "test/tiny-sax-seg")
    seg = api.segment_layer(viewer, foreign, "test/tiny-sax-seg", view="sax")
    assert seg.data.shape == image.data.shape and seg.metadata["cinema_study"].view == "sax"
    assert api.analyze_layer(viewer, seg).study["view"] == "sax"
    qtbot.waitUntil(lambda: not function.busy, timeout=WAIT_MS)  # the dock analyses the new layer too


# ------------------------------------------------------------------------------------------------
# a published model fetched from a (local, fake) hub with download progress
# ------------------------------------------------------------------------------------------------


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Just enough of the hub's resolve endpoint for hf_hub_download: HEAD metadata and GET bodies."""

    files: dict[str, bytes] = {}
    commit = "0123456789abcdef0123456789abcdef01234567"

    def log_message(self, *args):  # quiet
        pass

    def _meta(self):
        prefix = "/mathpluscode/CineMA/resolve/main/"
        path = self.path.split("?")[0]
        data = self.files.get(path[len(prefix):]) if path.startswith(prefix) else None
        self.send_response(200 if data is not None else 404)
        self.send_header("X-Repo-Commit", self.commit)
        if data is None:
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
        else:
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return data

    def do_HEAD(self):  # noqa: N802
        self._meta()

    def do_GET(self):  # noqa: N802
        data = self._meta()
        if data is not None:
            self.wfile.write(data)


def test_published_model_downloads_with_progress(make_napari_viewer, qtbot, models, weights, lax_phantom,
                                                 monkeypatch):
    from huggingface_hub import constants

    path, cfg = weights["test/tiny-lax4c-seg"]
    folder = "finetuned/segmentation/mnms2_lax_4c"
    _FakeHub.files = {f"{folder}/mnms2_lax_4c_0.safetensors": path.read_bytes(),
                      f"{folder}/config.yaml": yaml.safe_dump(cfg).encode()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # as HF_ENDPOINT does when set before the import
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    try:
        viewer = make_napari_viewer()
        image = add_layers(viewer, lax_phantom)[0]
        analysis, _function = open_docks(viewer, qtbot)
        model_id = "cinema/segmentation/mnms2_lax_4c/0"
        analysis.set_model(model_id)
        assert "Run downloads it first" in analysis.model_info.text()
        messages = []
        analysis._bridge.progress.connect(lambda d, t, m: messages.append((d, t, m)))
        assert run_and_wait(qtbot, analysis) == "ok", analysis.status_text()
        size = len(_FakeHub.files[f"{folder}/mnms2_lax_4c_0.safetensors"])
        assert any(m.startswith(f"downloading {model_id}") and t == size for d, t, m in messages)
        assert analysis.labels_layer.metadata["provenance"]["model_id"] == model_id
        assert api.find_result_layer(viewer, image) is not None
        with qtbot.waitSignal(analysis.models_loaded, timeout=WAIT_MS):
            analysis.refresh_models()
        assert "●" in analysis.model_combo.currentText()  # now in the local cache: available
    finally:
        server.shutdown()
        server.server_close()
