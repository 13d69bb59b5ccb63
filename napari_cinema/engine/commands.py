"""The engine's command-line twins: ``napari-cinema segment PATH --out FILE [--model ID] [--device ...]``.

``register(subparsers)`` adds the sub-commands to the ``napari-cinema`` parser (cli.py calls it).
Progress goes to stderr, the result summary to stdout; errors a user can fix print one line and
exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .devices import DEVICE_CHOICES, PRECISIONS, DeviceUnavailable
from .engine import CENTRING_MODES, Cancelled, EngineError, run_segmentation
from .sliding import DEFAULT_SHIFT_PASSES
from .spec import ModelSpec, resolve_model

STUDY_VIEWS = ("sax", "lax_2c", "lax_3c", "lax_4c")


class ModelUnavailable(RuntimeError):
    """A model id could not be resolved or loaded."""


def default_model_id(task: str, view: str) -> str | None:
    """The registry's default model for a task and a study view (None when none is available)."""
    try:
        from napari_cinema.model.registry import find_default  # lazy: torch-heavy
    except ImportError:  # pragma: no cover - the registry ships with the package
        return None
    return find_default(task=task, view=view)


def load_model(model_id: str, view: str | None = None) -> tuple[Any, ModelSpec]:
    """(module, spec) for a registry id, through ``napari_cinema.model.registry.load_model``.

    The network is loaded on the CPU; the engine moves it to the chosen device.
    """
    try:
        from napari_cinema.model.registry import load_model as registry_load
    except ImportError as exc:  # pragma: no cover - the registry ships with the package
        raise ModelUnavailable(f"the model registry is not available ({exc}); cannot load {model_id!r}") from exc
    try:
        loaded = registry_load(model_id)
    except (ValueError, KeyError, OSError) as exc:  # ModelError / UnknownModel are ValueErrors
        raise ModelUnavailable(str(exc) or f"cannot load model {model_id!r}") from exc
    views = tuple(getattr(loaded, "views", ()) or ())
    return resolve_model(loaded, None, view if view in views else None)


class StderrProgress:
    """``progress(done, total, message)`` printing to stderr (one updating line on a terminal)."""

    def __init__(self, prefix: str = "", stream=None):
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int, message: str) -> None:
        elapsed = time.perf_counter() - self.t0
        line = f"{self.prefix}[{done}/{total}] {message} ({elapsed:.1f} s)"
        if self.tty:
            self.stream.write("\r" + line.ljust(78))
            if done >= total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _fail(command: str, message: str) -> int:
    print(f"napari-cinema {command}: {message}", file=sys.stderr)
    return 2


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment every frame of a study and write a label NIfTI (x, y, z, t)."""
    from napari_cinema.io import load_study
    from napari_cinema.io.writers import write_labels_nifti

    study = load_study(args.path, series=getattr(args, "series", None))
    view = args.view or study.view
    if view in (None, "", "unknown"):
        return _fail("segment", f"{args.path}: the study's view is unknown; pass --view sax|lax_2c|lax_3c|lax_4c")
    model_id = args.model or default_model_id("segmentation", view)
    if not model_id:
        return _fail("segment", f"no segmentation model for {view} studies is available; "
                                "see `napari-cinema models list` or pass --model ID")
    try:
        module, spec = load_model(model_id, view)
        progress = None if args.quiet else StderrProgress("segment ")
        result = run_segmentation(
            study, module, spec, device=args.device, batch_frames=args.batch_frames, progress=progress,
            view=args.view, centring=args.centring, precision=args.precision,
            keep_largest=not args.keep_all_pieces, shift_passes=args.shift_passes,
        )
    except (EngineError, DeviceUnavailable, ModelUnavailable) as exc:
        return _fail("segment", str(exc))
    except Cancelled:  # pragma: no cover - no cancel source on the command line
        return _fail("segment", "cancelled")
    out = write_labels_nifti(args.out, result.labels, study.affine, study.spacing[0])
    prov = result.provenance
    if args.json:
        print(json.dumps({"out": str(out), **prov}, indent=2, default=str))
    else:
        t = prov["timings_s"]
        print(f"wrote {study.n_frames} frames x {study.n_slices} slices of labels to {out} "
              f"(model {prov['model_id']}, {prov['device_description']}, {t['total_s']:.1f} s, "
              f"centring {prov['centring']['method']})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the engine's sub-commands (``segment``) to the ``napari-cinema`` parser."""
    p = subparsers.add_parser(
        "segment", help="segment every frame of a study (label NIfTI x, y, z, t)",
        description="Segment every frame of a cine study with a CineMA-family model and write the labels "
                    "(0 background, 1 RV, 2 LV myocardium, 3 LV cavity) as a NIfTI (x, y, z, t) on the study's grid.",
    )
    p.add_argument("path", type=Path, help="study: NIfTI file, DICOM file or folder, dataset folder")
    p.add_argument("--out", type=Path, required=True, help="label NIfTI to write (.nii.gz)")
    p.add_argument("--model", help="model id (default: the bundled default model for the study's view)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--series", help="SeriesInstanceUID to pick in a folder with several series")
    p.add_argument("--view", choices=STUDY_VIEWS, help="override the study's view")
    p.add_argument("--batch-frames", type=int, help="frames per forward pass (default: from free memory)")
    p.add_argument("--centring", choices=CENTRING_MODES, default="auto",
                   help="how to find the heart when the field of view exceeds the network input")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--keep-all-pieces", action="store_true",
                   help="keep every connected piece of each cavity label (default: only the largest per frame)")
    p.add_argument("--shift-passes", type=int, default=DEFAULT_SHIFT_PASSES, metavar="N",
                   help=f"network passes per input at shifted token-grid phases, averaged (default "
                        f"{DEFAULT_SHIFT_PASSES}; 1 is fastest, about 3x less model time, slightly less accurate)")
    p.add_argument("--json", action="store_true", help="print the provenance as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=cmd_segment)
