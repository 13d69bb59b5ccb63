"""Main-thread responsiveness of napari while the 'Cine analysis' dock segments a full cine.

A QTimer probe fires every 10 ms in the GUI event loop and records the gap between its ticks; the
longest gap is the longest time the GUI thread was blocked (target: below 100 ms). The run covers what
a user does: open the two docks, press Run in the dock (the engine works in a thread worker), the
results going to layers (created on the first run, updated in place on re-runs), the 'Cardiac
function' dock recomputing volumes, EF and flags from the new labels (also in a worker) and redrawing
its curves; then the time slider is scrubbed through every frame (the current-frame marker moves).

It prints the longest stall while the docks open, while segmenting, at the first result layer's
creation and on re-runs (with the target), and a breakdown of the main-thread costs at the first layer
creation: timers around the napari, vispy, Qt and napari-cinema functions that run then (bench-only
instrumentation, wrapped in this process), per event-loop turn; 'rest' is what no timer covers (Qt
paints and layouts of the window, signal dispatch).

Usage (a display is needed: run under Xvfb on a headless machine)::

    xvfb-run -a -s "-screen 0 1280x800x24" python bench/gui_responsiveness.py
    xvfb-run -a python bench/gui_responsiveness.py --frames 25 --size tiny --repeat 3
    xvfb-run -a python bench/gui_responsiveness.py --image-only   # the cine alone, no truth labels layer
    xvfb-run -a python bench/gui_responsiveness.py --frames 30 --matrix 256   # a 30 x 10 x 256 x 256 cine
    xvfb-run -a python bench/gui_responsiveness.py --model default-sax-seg   # a registry model
    xvfb-run -a python bench/gui_responsiveness.py --model default-sax-seg --torch-first   # as `view` starts

Without ``--model`` the workload is a CineMA ConvUNetR at the published SAX geometry (3-D input
192 x 192 x 16 at 1 x 1 x 10 mm, one volume per frame) with random weights and a slim decoder
(``--size`` sets the ViT width), registered in a temporary registry as a benchmark workload only;
its output is meaningless, its cost is that of a real run. The phantom is the full 10-slice SAX one,
opened with its truth labels layer (so napari has made a labels layer before the results arrive);
``--image-only`` opens the cine alone, as a study without labels is (the results are then the first
labels layer of the session). torch is imported before the window opens without ``--model`` (the
workload is built with it) and with ``--torch-first``, as ``napari-cinema view`` does; with ``--model``
alone the docks' registry worker imports it, as when the docks are opened in a napari started on its
own (a one-time stall while the dock says it reads the registry).

Under Xvfb, OpenGL is software-rendered (llvmpipe): every repaint of the window costs tens of ms of
CPU, so the napari floor (the 'time slider' reference, no napari-cinema code) is printed alongside.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INTERVAL_MS = 10
TARGET_MS = 100.0
SLIM = {"dec_chans": [8, 16, 32, 64, 128], "enc_conv_chans": [16, 32], "enc_conv_n_blocks": 1, "dec_n_blocks": 1}


class StallProbe:
    """A 10 ms QTimer whose tick-to-tick gaps measure how long the event loop was blocked."""

    def __init__(self, interval_ms: int = INTERVAL_MS):
        from qtpy.QtCore import Qt, QTimer

        self.interval_ms = interval_ms
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.phase = "idle"
        self.gaps: dict[str, list[float]] = {}
        self.windows: dict[str, list[tuple[float, float]]] = {}  # (start, end) of every gap, per phase
        self._last: float | None = None

    def start(self, phase: str) -> None:
        self.set_phase(phase)
        self._last = time.perf_counter()
        self.timer.start()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.gaps.setdefault(phase, [])
        self.windows.setdefault(phase, [])

    def stop(self) -> None:
        self.timer.stop()
        self._last = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps[self.phase].append(1000.0 * (now - self._last))
            self.windows[self.phase].append((self._last, now))
        self._last = now

    def summary(self, phase: str) -> tuple[float, float, int, int]:
        g = np.asarray(self.gaps.get(phase) or [0.0])
        return float(g.max()), float(np.percentile(g, 99)), int((g > 100.0).sum()), int(g.size)


# (module, qualified name, what it is): the main-thread work around a result layer's creation
TRACED = [
    ("napari_cinema.widgets.analysis", "AnalysisWidget._complete", "dock: results arrive"),
    ("napari_cinema.widgets.analysis", "AnalysisWidget._apply_step", "dock: one result step"),
    ("napari_cinema.widgets.analysis", "AnalysisWidget._announce", "dock: status, run finished"),
    ("napari.layers", "Labels.__init__", "napari Labels()"),
    ("napari.layers", "Points.__init__", "napari Points()"),
    ("napari.components.layerlist", "LayerList.insert", "napari: add layer"),
    ("napari.components.viewer_model", "ViewerModel._on_add_layer", "viewer dims/extent"),
    ("napari._vispy.layers.labels", "VispyLabelsLayer.__init__", "vispy labels visual"),
    ("napari._vispy.layers.points", "VispyPointsLayer.__init__", "vispy points visual"),
    ("napari._vispy.canvas", "VispyCanvas._update_layer_overlays", "vispy tool overlays"),
    ("napari._qt.layer_controls.qt_layer_controls_container", "QtLayerControlsContainer._add",
     "Qt layer controls"),
    ("napari._qt.layer_controls.qt_layer_controls_container", "QtLayerControlsContainer._populate",
     "Qt show controls"),
    ("napari.layers.base.base", "Layer.refresh", "napari layer refresh"),
    ("vispy.app.backends._qt", "CanvasBackendDesktop.paintGL", "vispy paint (GL)"),
    ("napari_cinema.widgets._common", "LayerCombo.refresh", "docks: layer pickers"),
    ("napari_cinema.widgets.function", "FunctionWidget._on_labels_changed", "function: new labels"),
    ("napari_cinema.widgets.function", "FunctionWidget.recompute", "function: start analysis"),
    ("napari_cinema.widgets.function", "FunctionWidget._on_report", "function: table, curves"),
    ("napari_cinema.widgets._canvas", "CurveCanvas.draw", "function: matplotlib draw"),
]


class CostTracer:
    """Timers around :data:`TRACED` (wrapped in this process only): (start, end, depth, what) per call."""

    def __init__(self) -> None:
        import importlib

        self.calls: list[tuple[float, float, int, str]] = []
        self._depth = 0
        for module, qualname, label in TRACED:
            try:
                owner = importlib.import_module(module)
                *path, attr = qualname.split(".")
                for name in path:
                    owner = getattr(owner, name)
                setattr(owner, attr, self._wrap(getattr(owner, attr), label))
            except (ImportError, AttributeError):  # another napari version: that timer is left out
                pass

    def _wrap(self, func, label: str):
        import functools

        @functools.wraps(func)
        def timed(*args, **kwargs):
            depth = self._depth
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self._depth -= 1
                self.calls.append((t0, time.perf_counter(), depth, label))
        return timed

    def turn(self, start: float, end: float) -> str:
        """What ran between two probe ticks: the outermost timed calls, each with what it spent in the
        timed calls inside it (self times, ms, in brackets), then the rest (no timer covers it: Qt paints
        and layouts of the window, signal dispatch)."""
        inside = sorted(c for c in self.calls if c[0] >= start and c[1] <= end)
        top = min((c[2] for c in inside), default=0)
        parts, covered = [], 0.0
        for t0, t1, depth, label in inside:
            if depth != top:
                continue
            covered += t1 - t0
            nested = [c for c in inside if c[2] > top and c[0] >= t0 and c[1] <= t1]
            merged: dict[str, float] = {}
            for u0, u1, d, lab in nested:
                below = sum(v1 - v0 for v0, v1, e, _ in nested if e == d + 1 and v0 >= u0 and v1 <= u1)
                merged[lab] = merged.get(lab, 0.0) + (u1 - u0 - below)
            detail = ", ".join(f"{lab} {1000 * dt:.0f}" for lab, dt in sorted(merged.items(), key=lambda x: -x[1])
                               if dt >= 0.002)
            parts.append(f"{label} {1000 * (t1 - t0):.0f}" + (f" [{detail}]" if detail else ""))
        rest = 1000 * (end - start - covered)
        return "; ".join(parts + [f"rest {rest:.0f}"])

    def totals(self, windows: list[tuple[float, float]]) -> list[tuple[str, float]]:
        """Milliseconds per timed function over ``windows`` (self time: nested timed calls subtracted)."""
        out: dict[str, float] = {}
        for t0, t1, depth, label in self.calls:
            if not any(t0 >= a and t1 <= b for a, b in windows):
                continue
            nested = sum(u1 - u0 for u0, u1, d, _ in self.calls if d == depth + 1 and u0 >= t0 and u1 <= t1)
            out[label] = out.get(label, 0.0) + 1000 * (t1 - t0 - nested)
        return sorted(out.items(), key=lambda x: -x[1])


def run_until(condition, timeout_s: float = 3600.0) -> None:
    """Run the Qt event loop (not a sleep loop) until ``condition()`` holds."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    check = QTimer()
    check.setInterval(20)
    t0 = time.perf_counter()

    def poll() -> None:
        if condition() or time.perf_counter() - t0 > timeout_s:
            loop.quit()

    check.timeout.connect(poll)
    check.start()
    if not condition():
        loop.exec()
    check.stop()
    if not condition():
        raise TimeoutError("the GUI did not reach the expected state in time")


def run_for(ms: int) -> None:
    """Run the Qt event loop for ``ms`` milliseconds."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def register_workload(size: str) -> str:
    """A random-weight ConvUNetR at the published SAX geometry in a temporary registry."""
    import torch

    from napari_cinema.model import checkpoint, factory, registry

    home = Path(tempfile.mkdtemp(prefix="napari-cinema-bench-"))
    atexit.register(shutil.rmtree, home, True)  # the workload never stays in a registry
    os.environ["NAPARI_CINEMA_HOME"] = str(home)
    cfg = {"task": "segmentation",
           "data": {"name": "acdc", "sax": {"patch_size": [192, 192, 16], "spacing": [1.0, 1.0, 10.0], "in_chans": 1}},
           "model": {"name": "convunetr", "views": "sax", "out_chans": 4, "convunetr": {"size": size, **SLIM}}}
    torch.manual_seed(0)
    weights = checkpoint.save_checkpoint(factory.build_model(cfg), home / "src" / "model.safetensors", config=cfg)
    model_id = f"bench/random-sax-3d-{size}"
    registry.register_model(weights, model_id, config=cfg,
                            card={"training_data": "none: random weights (benchmark workload only)",
                                  "description": "benchmark workload, not a trained model"})
    return model_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=25, help="cine frames (phantom: 10 slices of 128 x 128)")
    parser.add_argument("--matrix", type=int, help="phantom in-plane matrix (default 128; the field of view "
                                                   "stays, so 256 halves the pixel size)")
    parser.add_argument("--size", default="tiny", help="ViT size preset of the random-weight workload")
    parser.add_argument("--model", help="segment with this registry model instead of the workload")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs: the first creates the result layer, later ones update it in place")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--image-only", action="store_true",
                        help="open the cine without its truth labels layer (a study without labels)")
    parser.add_argument("--torch-first", action="store_true",
                        help="import torch before the window, as `napari-cinema view` does (default with --model: "
                             "the docks' worker imports it, as in napari with the plugin's docks opened)")
    args = parser.parse_args()
    model_id = args.model or register_workload(args.size)  # the workload is made with torch
    torch_first = args.torch_first or args.threads or not args.model
    if torch_first:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)

    import napari

    from napari_cinema import api
    from napari_cinema.sample_data.napari_samples import phantom_layers

    viewer = napari.Viewer(title="napari-cinema responsiveness")
    viewer.window._qt_window.resize(1280, 800)
    from napari.layers import Layer

    sample = phantom_layers("sax", frames=args.frames,
                            **({"matrix": args.matrix, "pixel_mm": 192.0 / args.matrix} if args.matrix else {}))
    truth = np.array(sample[1][0])
    if args.image_only:
        sample = sample[:1]
    layers = [viewer.add_layer(Layer.create(d, k, kind)) for d, k, kind in sample]
    image = layers[0]
    viewer.layers.selection.active = image
    run_for(500)
    baseline = StallProbe()  # the floor: napari alone redrawing the frames (no dock open yet)
    baseline.start("napari time slider")
    for t in range(args.frames):
        viewer.dims.set_current_step(0, t)
        run_for(40)
    baseline.stop()
    tracer = CostTracer()

    docks = StallProbe()
    docks.start("building the docks")
    analysis = api.open_analysis_dock(viewer)
    function = api.open_function_dock(viewer)
    run_for(1)
    docks.set_phase("registry worker")
    run_until(lambda: analysis.models_ready and not function.busy
              and (args.image_only or function.report is not None))
    run_for(300)
    docks.stop()
    analysis.set_image_layer(image)
    analysis.set_model(model_id)
    analysis.set_device(args.device)
    shape = image.data.shape
    print(f"cine {shape[0]} frames x {shape[1]} slices x {shape[2]} x {shape[3]}"
          f"{' (image only)' if args.image_only else ' with its truth labels layer'}; model {model_id}; "
          f"device {analysis.device_label.text()}; torch imported "
          f"{'before the window' if torch_first else 'by the docks worker'}; probe every {INTERVAL_MS} ms; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    build, _p, _o, _n = docks.summary("building the docks")
    worker, _p, _o, _n = docks.summary("registry worker")
    print(f"opening the docks: {build:.0f} ms building them (GUI thread), then at most {worker:.0f} ms per "
          f"turn while their worker reads the registry, imports torch and warms napari's labels layer")

    worst: dict[str, float] = {}
    creation_windows: list[tuple[float, float]] = []
    for run in range(1, args.repeat + 1):
        probe = StallProbe()
        outcomes: list[str] = []
        done_before = function.analyses
        marks: dict[str, float] = {}
        results_phase = "first layer creation" if run == 1 else "re-run (in place)"

        def results_arrive(probe=probe, marks=marks, phase=results_phase) -> None:
            probe.set_phase(phase)  # the worker is done: from here on the results go to the layers
            marks["apply"] = time.perf_counter()

        analysis.run_finished.connect(outcomes.append)
        probe.start("segmenting")
        t0 = time.perf_counter()
        worker_obj = analysis.run()
        worker_obj.finished.connect(results_arrive)
        run_until(lambda: bool(outcomes))
        if outcomes[-1] != "ok":
            raise SystemExit(f"the run ended with {outcomes[-1]}: {analysis.status_text()}")
        seg_s = marks["apply"] - t0
        engine_s = analysis.last_results.seconds
        run_until(lambda: function.analyses > done_before and not function.busy)
        run_for(300)
        total_s = time.perf_counter() - t0
        probe.set_phase("time slider")
        t_scrub = time.perf_counter()
        for t in range(shape[0]):  # playback at 25 frames/s: the event loop runs between frames
            viewer.dims.set_current_step(0, t)
            run_for(40)
            assert function.canvas.current_frame == t
        scrub_s = time.perf_counter() - t_scrub
        probe.stop()
        analysis.run_finished.disconnect(outcomes.append)

        print(f"\nrun {run}: segmentation {seg_s:.1f} s (engine {engine_s:.1f} s), results on layers and "
              f"analysis redrawn after {total_s:.1f} s; time slider through {shape[0]} frames at 25/s ({scrub_s:.1f} s)")
        print(f"  {'phase':<22} {'longest stall':>14} {'p99 gap':>9} {'gaps > 100 ms':>14} {'ticks':>7}")
        for phase in ("segmenting", results_phase, "time slider"):
            mx, p99, over, n = probe.summary(phase)
            worst[phase] = max(worst.get(phase, 0.0), mx)
            print(f"  {phase:<22} {mx:>11.1f} ms {p99:>6.1f} ms {over:>14d} {n:>7d}")
        windows = probe.windows.get(results_phase, [])
        longest = sorted(windows, key=lambda w: w[0] - w[1])[:3]
        print(f"  longest turns after the results arrived (ms; {results_phase}):")
        for a, b in longest:
            print(f"    {1000 * (b - a):5.0f}: {tracer.turn(a, b)}")
        if run == 1:
            creation_windows = windows
        print(f"  LV EF of the random-weight labels: {function.report.measures.get('LVEF_pct')} % "
              f"(meaningless: untrained workload)" if not args.model else
              f"  LV EF: {function.report.measures.get('LVEF_pct')} %")
    # reference: what napari itself takes to add one more labels layer of the same size in one call (vispy
    # visual, tool overlays, layer controls, first paint), measured in the same process and load
    from napari_cinema.layers import labels_layer_data

    probe = StallProbe()
    probe.start("napari add_labels")
    data, kwargs, _ = labels_layer_data(image.metadata["cinema_study"], truth, "reference")
    extra = viewer.add_labels(data, **kwargs)
    run_for(1000)
    probe.stop()
    viewer.layers.remove(extra)
    ref_add, _p99, _over, _n = probe.summary("napari add_labels")
    ref_turn = max(probe.windows["napari add_labels"], key=lambda w: w[1] - w[0], default=None)
    slider, _p99, _over, _n = baseline.summary("napari time slider")

    print("\nmain-thread costs at the first layer creation (ms, self time, all turns until the curves are "
          "redrawn): " + ", ".join(f"{label} {ms:.0f}" for label, ms in tracer.totals(creation_windows)[:10]))
    print(f"references: napari's time slider before the docks were opened (no napari-cinema code) {slider:.1f} ms "
          f"per frame at most; one viewer.add_labels call for a same-size layer (napari's work in one turn, as "
          f"the dock did it before) {ref_add:.1f} ms" + (f" ({tracer.turn(*ref_turn)})" if ref_turn else ""))
    print(f"\nlongest main-thread stall (target {TARGET_MS:.0f} ms):")
    rows = [("opening the docks (building them)", build), ("opening the docks (registry worker)", worker),
            ("segmenting", worst.get("segmenting", 0.0)),
            ("first layer creation", worst.get("first layer creation", 0.0))]
    if args.repeat > 1:
        rows.append(("re-run (layers updated in place)", worst.get("re-run (in place)", 0.0)))
    rows.append(("time slider", worst.get("time slider", 0.0)))
    for name, ms in rows:
        print(f"  {name:<38} {ms:7.1f} ms  {'below' if ms < TARGET_MS else 'ABOVE'}")
    viewer.close()


if __name__ == "__main__":
    main()
