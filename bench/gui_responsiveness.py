"""Main-thread responsiveness of napari while the 'Cine analysis' dock segments a full cine.

A QTimer probe fires every 10 ms in the GUI event loop and records the gap between its ticks; the
longest gap is the longest time the GUI thread was blocked (a responsive GUI stays well under 100 ms).
The run covers what a user does: press Run in the dock (the engine works in a thread worker), the
results going to layers, and the 'Cardiac function' dock recomputing volumes, EF and flags from the
new labels (also in a worker) and redrawing its curves; then the time slider is scrubbed through every
frame (the current-frame marker moves). Figures are printed per phase, with the segmentation time.

Usage (a display is needed: run under Xvfb on a headless machine)::

    xvfb-run -a -s "-screen 0 1280x800x24" python bench/gui_responsiveness.py
    xvfb-run -a python bench/gui_responsiveness.py --frames 25 --size tiny --repeat 2
    xvfb-run -a python bench/gui_responsiveness.py --model default-sax-seg   # a registry model

Without ``--model`` the workload is a CineMA ConvUNetR at the published SAX geometry (3-D input
192 x 192 x 16 at 1 x 1 x 10 mm, one volume per frame) with random weights and a slim decoder
(``--size`` sets the ViT width), registered in a temporary registry as a benchmark workload only;
its output is meaningless, its cost is that of a real run. The phantom is the full 10-slice SAX one.
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
        self.worst: dict[str, float] = {}
        self._last: float | None = None

    def start(self, phase: str) -> None:
        self.set_phase(phase)
        self._last = time.perf_counter()
        self.timer.start()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.gaps.setdefault(phase, [])

    def stop(self) -> None:
        self.timer.stop()
        self._last = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps[self.phase].append(1000.0 * (now - self._last))
        self._last = now

    def summary(self, phase: str) -> tuple[float, float, int, int]:
        g = np.asarray(self.gaps.get(phase) or [0.0])
        return float(g.max()), float(np.percentile(g, 99)), int((g > 100.0).sum()), int(g.size)


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
    parser.add_argument("--size", default="tiny", help="ViT size preset of the random-weight workload")
    parser.add_argument("--model", help="segment with this registry model instead of the workload")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=1, help="runs (the first one includes torch's warm-up)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    model_id = args.model or register_workload(args.size)

    import napari

    from napari_cinema import api
    from napari_cinema.sample_data.napari_samples import phantom_layers

    viewer = napari.Viewer(title="napari-cinema responsiveness")
    viewer.window._qt_window.resize(1280, 800)
    from napari.layers import Layer

    layers = [viewer.add_layer(Layer.create(d, k, kind)) for d, k, kind in phantom_layers("sax", frames=args.frames)]
    image = layers[0]
    run_for(500)
    baseline = StallProbe()  # the floor: napari alone redrawing the frames (no dock open yet)
    baseline.start("napari time slider")
    for t in range(args.frames):
        viewer.dims.set_current_step(0, t)
        run_for(40)
    baseline.stop()
    analysis = api.open_analysis_dock(viewer)
    function = api.open_function_dock(viewer)
    run_until(lambda: analysis.models_ready and not function.busy and function.report is not None)
    analysis.set_image_layer(image)
    analysis.set_model(model_id)
    analysis.set_device(args.device)
    shape = image.data.shape
    print(f"cine {shape[0]} frames x {shape[1]} slices x {shape[2]} x {shape[3]}; model {model_id}; "
          f"device {analysis.device_label.text()}; probe every {INTERVAL_MS} ms; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    for run in range(1, args.repeat + 1):
        probe = StallProbe()
        outcomes: list[str] = []
        done_before = function.analyses

        def finished(outcome: str, probe=probe, outcomes=outcomes) -> None:
            outcomes.append(outcome)
            probe.set_phase("results + analysis")
            marks["apply"] = time.perf_counter()

        marks: dict[str, float] = {}
        analysis.run_finished.connect(finished)
        probe.start("segmenting")
        t0 = time.perf_counter()
        analysis.run()
        run_until(lambda: bool(outcomes))
        if outcomes[-1] != "ok":
            raise SystemExit(f"the run ended with {outcomes[-1]}: {analysis.status_text()}")
        seg_s = marks["apply"] - t0
        engine_s = analysis.last_results.seconds
        run_until(lambda: function.analyses > done_before and not function.busy)
        total_s = time.perf_counter() - t0
        probe.set_phase("time slider")
        t_scrub = time.perf_counter()
        for t in range(shape[0]):  # playback at 25 frames/s: the event loop runs between frames
            viewer.dims.set_current_step(0, t)
            run_for(40)
            assert function.canvas.current_frame == t
        scrub_s = time.perf_counter() - t_scrub
        probe.stop()
        analysis.run_finished.disconnect(finished)

        print(f"\nrun {run}: segmentation {seg_s:.1f} s (engine {engine_s:.1f} s), results on layers and "
              f"analysis redrawn after {total_s:.1f} s; time slider through {shape[0]} frames at 25/s ({scrub_s:.1f} s)")
        print(f"  {'phase':<20} {'longest stall':>14} {'p99 gap':>9} {'gaps > 100 ms':>14} {'ticks':>7}")
        worst = 0.0
        for phase in ("segmenting", "results + analysis", "time slider"):
            mx, p99, over, n = probe.summary(phase)
            worst = max(worst, mx)
            print(f"  {phase:<20} {mx:>11.1f} ms {p99:>6.1f} ms {over:>14d} {n:>7d}")
        verdict = "below" if worst < 100.0 else "ABOVE"
        print(f"  longest main-thread stall: {worst:.1f} ms ({verdict} the 100 ms target)")
        print(f"  LV EF of the random-weight labels: {function.report.measures.get('LVEF_pct')} % "
              f"(meaningless: untrained workload)" if not args.model else
              f"  LV EF: {function.report.measures.get('LVEF_pct')} %")
    # reference: what napari itself takes to add one more labels layer of the same size (vispy visual,
    # layer controls, first paint): the floor under the first run's "results" phase
    from napari_cinema.layers import labels_layer_data

    probe = StallProbe()
    probe.start("napari add_labels")
    data, kwargs, _ = labels_layer_data(image.metadata["cinema_study"], np.array(layers[1].data), "reference")
    extra = viewer.add_labels(data, **kwargs)
    run_for(1000)
    probe.stop()
    viewer.layers.remove(extra)
    mx, _p99, _over, _n = probe.summary("napari add_labels")
    slider, _p99, _over, _n = baseline.summary("napari time slider")
    print(f"\nreferences (napari alone, no napari-cinema code): time slider {slider:.1f} ms per frame at most "
          f"before the docks were opened; add_labels of a same-size layer {mx:.1f} ms (the first run's floor: "
          f"later runs update the layer in place)")
    viewer.close()


if __name__ == "__main__":
    main()
