"""Command-line twins of the training pipeline.

``register(subparsers)`` adds to the ``napari-cinema`` parser::

    train CONFIG [--resume] [--run-dir DIR] [--progress json|text|none] [--device auto|cpu|cuda|mps]
                 [--set KEY=VALUE ...]
    evaluate DATASET --out FILE [--model ID|RUN_DIR|WEIGHTS] [--labels acdc|mnms|mnms2|cinema]
                 [--split all|train|val] [--device ...]

Also runnable on its own (and under torchrun)::

    python -m napari_cinema.training.commands train CONFIG
    python -m torch.distributed.run --nproc_per_node 2 --standalone -m napari_cinema.training.commands train CONFIG

Exit status: 0 done (also after early stopping), 2 a problem the user can fix (bad config, data,
disk full; one line on stderr naming it), 3 stopped on request (stop file, SIGTERM, SIGINT) after
writing a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

__all__ = ["cmd_evaluate", "cmd_train", "main", "register"]


def _fail(command: str, message: str) -> int:
    print(f"napari-cinema {command}: {message}", file=sys.stderr)
    return 2


def _parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE (e.g. train.epochs=5)")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .datasets import DatasetError
    from .distributed import cleanup
    from .loop import EXIT_STOPPED, TrainingError, train

    progress = None if args.progress == "none" else args.progress
    try:
        overrides = _parse_sets(args.set)
        result = train(args.config, resume=args.resume, run_dir=args.run_dir, device=args.device,
                       progress=progress, overrides=overrides or None)
    except (ConfigError, DatasetError, TrainingError, ValueError, OSError) as exc:
        cleanup()
        return _fail("train", str(exc))
    except KeyboardInterrupt:
        cleanup()
        print("napari-cinema train: interrupted (no checkpoint written for the current step)", file=sys.stderr)
        return 130
    cleanup()
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_STOPPED if result.status == "stopped" else 0
    if result.status == "stopped":
        print(f"napari-cinema train: stopped ({result.reason}) at step {result.step} of {result.total_steps}; "
              f"checkpoint {result.weights}; continue with: napari-cinema train {args.config} --resume "
              f"--run-dir {result.run_dir}", file=sys.stderr)
        return EXIT_STOPPED
    best = result.best.get("value")
    msg = (f"{'early-stopped' if result.status == 'early_stopped' else 'finished'} after {result.step} steps; "
           f"run folder {result.run_dir}")
    if best is not None:
        msg += f"; best {result.monitor} {best:.4g} (step {result.best.get('step')})"
    if result.model_id:
        msg += f"; registered as {result.model_id!r}"
    print(msg, file=sys.stderr if progress == "json" else sys.stdout)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import EvaluationError, evaluate, write_json

    def progress(k: int, n: int, case: str) -> None:
        if not args.quiet:
            print(f"evaluate [{k + 1}/{n}] {case}", file=sys.stderr, flush=True)

    try:
        result = evaluate(args.dataset, model=args.model, labels=args.labels, device=args.device,
                          split=args.split, progress=progress)
    except (EvaluationError, ValueError, OSError, RuntimeError) as exc:
        return _fail("evaluate", str(exc))
    out = write_json(args.out, result)
    d, h = result.get("dice") or {}, result.get("hd95_mm") or {}

    def f(v: Any, fmt: str = ".3f") -> str:
        return "n/a" if v is None else format(v, fmt)

    parts = [f"{result['n_cases']} cases"]
    if d.get("mean") is not None:
        parts.append("Dice " + " ".join(f"{k} {f(d.get(k))}" for k in ("LV", "MYO", "RV", "mean")))
        parts.append("HD95 " + " ".join(f"{k} {f(h.get(k), '.1f')}" for k in ("LV", "MYO", "RV", "mean")) + " mm")
    if result.get("LVEF_mae_pct") is not None:
        parts.append(f"LVEF MAE {f(result['LVEF_mae_pct'], '.2f')} %")
    if result.get("accuracy") is not None:
        parts.append(f"accuracy {f(result['accuracy'])}, AUROC {f(result.get('auroc'))}")
    print(f"wrote {out}: " + "; ".join(parts))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``evaluate`` to the ``napari-cinema`` parser."""
    p = subparsers.add_parser(
        "train", help="fine-tune or pre-train a model from a YAML config (also under torchrun)",
        description="Train a CineMA-family model from one YAML config. Writes a run folder (config, metrics.jsonl, "
                    "checkpoints, card) and registers the finished model. Create RUN_DIR/STOP, or send SIGTERM/SIGINT, "
                    "to stop after the current step with a resumable checkpoint (exit status 3).",
    )
    p.add_argument("config", type=Path, help="training config (YAML)")
    p.add_argument("--resume", action="store_true", help="continue the newest interrupted run of this config exactly")
    p.add_argument("--run-dir", type=Path, help="the run folder to write (or, with --resume, to continue)")
    p.add_argument("--progress", choices=["json", "text", "none"], default="text",
                   help="progress on stdout: JSON lines (for GUIs), text, or none")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=None,
                   help="default: the config's train.device (auto)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.set_defaults(handler=cmd_train)

    p = subparsers.add_parser(
        "evaluate", help="score a model on a labelled dataset (Dice, HD95, EF/EDV/ESV errors)",
        description="Evaluate a model on an ACDC, M&Ms, M&Ms-2, Sunnybrook or correction-store dataset; "
                    "writes a metrics JSON (n_cases, dice, hd95_mm, LVEF_mae_pct, LVEDV_mae_ml, LVESV_mae_ml, "
                    "per_case).",
    )
    p.add_argument("dataset", type=Path, help="dataset folder (layout recognised) or image/_gt pair")
    p.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--model", help="registry id, run folder or .safetensors (default: the default model; "
                                   "for a correction store: its stored model output)")
    p.add_argument("--labels", choices=["acdc", "mnms", "mnms2", "cinema"],
                   help="label convention of the ground truth (default: from the layout)")
    p.add_argument("--split", choices=["all", "train", "val"], default="all",
                   help="ACDC: only this part of the fixed split (training/splits/acdc.json)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-cinema", description="napari-cinema training commands")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":  # pragma: no cover - torchrun / python -m entry
    raise SystemExit(main())
