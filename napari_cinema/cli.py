"""The ``napari-cinema`` command line (also ``python -m napari_cinema``).

Each sub-command is a thin twin of a core function so that GUI, scripts and batch runs share code.
Errors a user can fix (bad input files, unknown ids) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from .io.study import CineLoadError
from .model.errors import ModelError

Handler = Callable[[argparse.Namespace], int]


def _cmd_phantom(args: argparse.Namespace) -> int:
    from .sample_data.phantom import write_phantom

    overrides = {}
    if args.frames is not None:
        overrides["frames"] = args.frames
    if args.lvef is not None:
        overrides["lvef"] = args.lvef
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.slices is not None:
        overrides["slices"] = args.slices
    out = write_phantom(args.out, view=args.view, fmt=args.format, **overrides)
    print(f"wrote {args.view} phantom ({args.format}) to {out}; truth in {Path(args.out) / 'truth.json'}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .io.load import load_study

    study = load_study(args.path, series=args.series)
    summary = study.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    dt = summary["frame_interval_ms"]
    print(f"{summary['source']}")
    print(f"  view        {summary['view']}  ({summary['description']})")
    print(f"  shape       {summary['frames']} frames x {summary['slices']} slices x "
          f"{summary['rows']} x {summary['columns']} (t, z, y, x)")
    print(f"  spacing     slices {summary['slice_spacing_mm']} mm, pixels {summary['pixel_spacing_mm'][0]} x "
          f"{summary['pixel_spacing_mm'][1]} mm, frames {'unknown' if dt is None else f'{dt} ms'}")
    if summary["ed_frame"] is not None:
        print(f"  ED / ES     frames {summary['ed_frame']} / {summary['es_frame']}")
    patient = {k: v for k, v in summary["patient"].items() if v is not None}
    if patient:
        print("  patient     " + ", ".join(f"{k}={v}" for k, v in patient.items()))
    if summary["has_labels"]:
        print(f"  labels      on frames {summary['labelled_frames']}")
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    import napari

    if not args.no_docks:
        # the docks' registry worker imports torch anyway; here, before there is a window, its seconds of
        # held GIL and garbage collection cannot stall the GUI
        import torch  # noqa: F401

    viewer = napari.Viewer(title="napari-cinema")
    if args.sample:
        viewer.open_sample("napari-cinema", f"phantom_{args.sample}")
    for path in args.paths:
        viewer.open(str(path), plugin="napari-cinema")
    if not args.no_docks:
        from .api import open_analysis_dock, open_function_dock

        # the review docks; Corrections and Fine-tuning are one click away (Plugins > napari-cinema), a third
        # dock stacked here would squeeze the analysis dock on a 1280 x 800 screen
        open_analysis_dock(viewer)
        open_function_dock(viewer)
    napari.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-cinema", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("phantom", help="write a synthetic beating-heart study and its truth")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--format", choices=["nifti", "dicom"], default="nifti")
    p.add_argument("--view", choices=["sax", "lax_2c", "lax_4c"], default="sax")
    p.add_argument("--frames", type=int, help="frames over the cardiac cycle")
    p.add_argument("--slices", type=int, help="short-axis slices")
    p.add_argument("--lvef", type=float, help="true LV ejection fraction in percent")
    p.add_argument("--seed", type=int, help="noise seed")
    p.set_defaults(handler=_cmd_phantom)

    p = sub.add_parser("info", help="describe a study: view, shape, spacing, frames, patient data")
    p.add_argument("path", type=Path)
    p.add_argument("--series", help="SeriesInstanceUID to pick in a folder with several series")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_info)

    from .analysis import commands as analysis_commands
    from .annotations import commands as annotation_commands
    from .engine import commands as engine_commands
    from .model import commands as model_commands
    from .training import commands as training_commands

    engine_commands.register(sub)
    model_commands.register(sub)
    analysis_commands.register(sub)
    training_commands.register(sub)
    annotation_commands.register(sub)

    p = sub.add_parser("view", help="open napari with studies or the phantom sample")
    p.add_argument("paths", type=Path, nargs="*", help="studies to open")
    p.add_argument("--sample", choices=["sax", "lax_4c", "lax_2c"], help="open a phantom sample")
    p.add_argument("--no-docks", action="store_true", help="do not open the analysis and function docks")
    p.set_defaults(handler=_cmd_view)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (CineLoadError, ModelError) as exc:
        print(f"napari-cinema {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
