"""``napari-cinema analyze``: the command-line twin of the analysis core.

    napari-cinema analyze PATH... --out DIR [--model ID | --labels FILE|DIR|auto]
                          [--height CM --weight KG] [--ed N --es N] [--processes N]

Where the labels come from:

- ``--labels FILE``: one label NIfTI for one study (internal/ACDC convention unless
  ``--label-convention mnms``).
- ``--labels DIR``: a folder of label NIfTIs matched by study name (``<name>.nii.gz``,
  ``<name>_gt.nii.gz``, ``<name>_labels.nii.gz`` or ``<name>/labels.nii.gz``).
- ``--labels auto``: the labels the study itself carries -- an ACDC or M&Ms ``_gt`` file, or the
  ``<name>_gt.nii.gz`` beside a phantom or an exported study, which the reader attaches. Nothing is run.
- ``--model ID``: segment with a registered model (needs the inference engine and torch); the labels are
  saved as ``DIR/<study>/labels.nii.gz`` with a provenance sidecar.
- neither: the default segmentation model for the study's view, as with ``--model``. (Expert labels
  shipped beside a study are never used silently: ask for them with ``--labels auto``.)

Exit status: 0 when every study succeeded (or was already done), 1 when some failed (see
``DIR/summary.csv`` and ``DIR/<study>/error.txt``), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``analyze`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "analyze", help="full analysis per study: volumes, EF, mass, rates, AHA, report.json/csv/pdf",
        description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                   help="studies: files, study folders, or folders holding several studies")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="ID", help="segmentation model id (default: the view's default model)")
    src.add_argument("--labels", metavar="FILE|DIR|auto",
                     help="analyse existing labels: a label NIfTI (one study), a folder of them, or 'auto' "
                          "for the labels shipped with each study")
    p.add_argument("--label-convention", default="cinema", choices=["cinema", "acdc", "mnms", "mnms2"],
                   help="label values of --labels files (default: cinema = ACDC: 1 RV, 2 MYO, 3 LV)")
    p.add_argument("--device", default="auto", help="for --model: auto, cpu, cuda, mps")
    p.add_argument("--height", type=float, metavar="CM", help="patient height in cm (overrides the study)")
    p.add_argument("--weight", type=float, metavar="KG", help="patient weight in kg (overrides the study)")
    p.add_argument("--ed", type=int, metavar="N", help="ED frame (0-based), instead of max LV volume")
    p.add_argument("--es", type=int, metavar="N", help="ES frame (0-based), instead of min LV volume")
    p.add_argument("--processes", type=int, default=1, metavar="N", help="worker processes (default 1)")
    p.add_argument("--no-pdf", action="store_true", help="skip report.pdf (faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_analyze)
    return p


def _usage_error(msg: str) -> int:
    print(f"napari-cinema analyze: {msg}", file=sys.stderr)
    return 2


def run_analyze(args: argparse.Namespace) -> int:
    from .batch import EngineSegmenter, LabelsFromFile, LabelsFromFolder, StudyLabels, discover_studies, run_batch

    if args.processes < 1:
        return _usage_error("--processes must be 1 or more")
    labels_for = segmenter = None
    if args.labels is not None:
        if args.labels == "auto":
            labels_for = StudyLabels()
        else:
            lp = Path(args.labels)
            if lp.is_dir():
                labels_for = LabelsFromFolder(lp, args.label_convention)
            elif lp.is_file():
                n = len(discover_studies(args.paths))
                if n != 1:
                    return _usage_error(f"--labels FILE is for one study, but the paths hold {n}; "
                                        f"give a labels folder (--labels DIR) or --labels auto")
                labels_for = LabelsFromFile(lp, args.label_convention)
            else:
                return _usage_error(f"--labels {lp}: no such file or folder (or use --labels auto)")
    else:
        try:
            EngineSegmenter.check_available()
        except RuntimeError as exc:
            return _usage_error(str(exc))
        segmenter = EngineSegmenter(args.model, args.device)
    analysis = {k: v for k, v in (("height_cm", args.height), ("weight_kg", args.weight),
                                  ("ed_frame", args.ed), ("es_frame", args.es)) if v is not None}
    result = run_batch(args.paths, args.out, labels_for=labels_for, segmenter=segmenter,
                       processes=args.processes, progress=not args.quiet, pdf=not args.no_pdf,
                       analysis=analysis)
    done, failed, skipped = result.n_ok, result.n_failed, result.n_skipped
    print(f"analyzed {done}, skipped {skipped} already done, failed {failed}; summary: {result.summary_path}")
    for r in result.rows:
        if r["status"] == "failed":
            print(f"  FAILED {r['study']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0
