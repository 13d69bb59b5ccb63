"""Command-line twins of the training pipeline.

``register(subparsers)`` adds to the ``napari-cinema`` parser::

    train CONFIG [--resume] [--run-dir DIR] [--progress json|text|none] [--device auto|cpu|cuda|mps]
                 [--set KEY=VALUE ...]
    evaluate DATASET --out FILE [--model ID|RUN_DIR|WEIGHTS] [--labels acdc|mnms|mnms2|cinema]
                 [--split all|train|val] [--device ...] [--shift-passes N] [--orientation NAME]
    finetune --base ID [--store DIR] [--data DIR ...] [--epochs N] [--lr X] [--layers all|decoder]
                 [--run-dir DIR] [--model-id ID] [--config-only] [--progress ...] [--device ...]

Also runnable on its own (and under torchrun)::

    python -m napari_cinema.training.commands train CONFIG
    python -m torch.distributed.run --nproc_per_node 2 --standalone -m napari_cinema.training.commands train CONFIG

Exit status: 0 done (also after early stopping), 2 a problem the user can fix (bad config, data,
disk full; one line on stderr naming it), 3 stopped on request (stop file, SIGTERM, SIGINT) after
writing a resumable checkpoint. ``finetune`` writes RUN_DIR/finetune.yaml and then runs exactly what
``train RUN_DIR/finetune.yaml --run-dir RUN_DIR`` runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

__all__ = ["cmd_evaluate", "cmd_finetune", "cmd_train", "main", "register"]


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
    try:
        overrides = _parse_sets(args.set)
    except ValueError as exc:
        return _fail("train", str(exc))
    if args.finish and not args.resume:
        return _fail("train", "--finish ends an interrupted run: use it with --resume (and --run-dir)")
    return _run_training("train", args.config, resume=args.resume, run_dir=args.run_dir, device=args.device,
                         progress=args.progress, overrides=overrides or None, finish=args.finish)


def _run_training(command: str, config: Path, *, resume: bool, run_dir: Path | None, device: str | None,
                  progress: str, overrides: dict[str, Any] | None, finish: bool = False) -> int:
    """The one code path of ``train`` and ``finetune``: train, then report the outcome and exit status."""
    from .config import ConfigError
    from .datasets import DatasetError
    from .distributed import cleanup
    from .loop import EXIT_STOPPED, TrainingError, train

    progress = None if progress == "none" else progress
    try:
        result = train(config, resume=resume, run_dir=run_dir, device=device, progress=progress,
                       overrides=overrides, finish=finish)
    except (ConfigError, DatasetError, TrainingError, ValueError, OSError) as exc:
        cleanup()
        return _fail(command, str(exc))
    except KeyboardInterrupt:
        cleanup()
        print(f"napari-cinema {command}: interrupted (no checkpoint written for the current step)", file=sys.stderr)
        return 130
    cleanup()
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_STOPPED if result.status == "stopped" else 0
    if result.status == "stopped":
        print(f"napari-cinema {command}: stopped ({result.reason}) at step {result.step} of {result.total_steps}; "
              f"checkpoint {result.weights}; continue with: napari-cinema train {config} --resume "
              f"--run-dir {result.run_dir}", file=sys.stderr)
        return EXIT_STOPPED
    best = result.best.get("value")
    ended = {"early_stopped": "early-stopped", "finished_by_user": "ended by --finish"}.get(result.status, "finished")
    msg = (f"{ended} after {result.step} of {result.total_steps} steps; "
           f"run folder {result.run_dir}")
    if best is not None:
        msg += f"; best {result.monitor} {best:.4g} (step {result.best.get('step')})"
    if result.model_id:
        msg += f"; registered as {result.model_id!r}"
    print(msg, file=sys.stderr if progress == "json" else sys.stdout)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    import json

    from .finetune import FINETUNE_CONFIG, FinetuneError, FinetuneRequest, plan_finetune, write_finetune_config

    req = FinetuneRequest(
        base_model=args.base, store=args.store, datasets=list(args.data or []), epochs=args.epochs, lr=args.lr,
        train_layers=args.layers, device=args.device, batch_size=args.batch_size,
        samples_per_epoch=args.samples_per_epoch, val_fraction=args.val_fraction, seed=args.seed,
        model_id=args.model_id, description=args.description or "", run_dir=args.run_dir)
    try:
        overrides = _parse_sets(args.set)
        plan = plan_finetune(req)
        run_dir = plan.run_dir
        if (run_dir / "checkpoints" / "last.json").exists():
            raise FinetuneError(
                f"{run_dir} already holds a run: continue it with `napari-cinema train {run_dir / FINETUNE_CONFIG} "
                f"--run-dir {run_dir} --resume`, or choose another --run-dir")
        if overrides:
            from napari_cinema.model.factory import apply_overrides

            from .config import ConfigError, load_train_config

            plan.config = apply_overrides(plan.config, overrides)
            try:
                load_train_config(plan.config)
            except ConfigError as exc:
                raise FinetuneError(f"--set: {exc}") from None
        path = write_finetune_config(plan, run_dir)
    except (FinetuneError, ValueError) as exc:
        return _fail("finetune", str(exc))
    for w in plan.warnings:
        print(f"napari-cinema finetune: warning: {w}", file=sys.stderr)
    base = plan.base
    summary = (f"fine-tuning {base.id or base.weights if base else args.base} on {len(plan.train_cases)} training / "
               f"{len(plan.val_cases)} validation corrected studies -> model {plan.model_id!r}; config {path}")
    if args.progress == "json":
        # one line a GUI can read before training starts; not part of metrics.jsonl
        print(json.dumps({"event": "plan", "config": str(path), "run_dir": str(run_dir), "model_id": plan.model_id,
                          "base_model": (base.id or str(base.weights)) if base else args.base,
                          "base_sha256": base.sha256 if base else None, "train_cases": plan.train_cases,
                          "val_cases": plan.val_cases, "warnings": plan.warnings,
                          "config_only": bool(args.config_only)}), flush=True)
    elif args.progress == "text" or args.config_only:
        print(summary, flush=True)
    if args.config_only:
        print(f"run it with: napari-cinema train {path} --run-dir {run_dir}", file=sys.stderr)
        return 0
    return _run_training("finetune", path, resume=False, run_dir=run_dir, device=None, progress=args.progress,
                         overrides=None)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import EvaluationError, evaluate, write_json

    def progress(k: int, n: int, case: str) -> None:
        if not args.quiet:
            print(f"evaluate [{k + 1}/{n}] {case}", file=sys.stderr, flush=True)

    try:
        result = evaluate(args.dataset, model=args.model, labels=args.labels, device=args.device,
                          split=args.split, progress=progress, shift_passes=args.shift_passes,
                          orientation=args.orientation)
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
    p.add_argument("--finish", action="store_true",
                   help="with --resume: end the stopped run now; its best checkpoint becomes the model (card, "
                        "registration) without further steps")
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
    p.add_argument("--shift-passes", type=int, metavar="N",
                   help="segmentation passes at shifted token-grid phases, averaged (default: the engine's, as "
                        "the app runs it; 1: a single pass)")
    p.add_argument("--orientation", default="stored", metavar="NAME",
                   help="store every slice another way first: rot90, rot180, rot270, flip_x, flip_y, transpose, "
                        "antitranspose. Does the model depend on how a scanner wrote the images? (default: stored)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=cmd_evaluate)

    p = subparsers.add_parser(
        "finetune", help="fine-tune a segmentation model on the corrections in a correction store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a segmentation model from corrected segmentations (the correction store) and "
                    "register the result as a new model.\n\n"
                    "Checks everything first (corrections present and of the base model's view, base model "
                    "trainable and downloaded, disk space, settings), writes RUN_DIR/finetune.yaml, then trains "
                    "exactly as `napari-cinema train RUN_DIR/finetune.yaml --run-dir RUN_DIR` does: the base model "
                    "is scored on the held-out corrected studies first (a 'baseline' event), the run folder gets "
                    "checkpoints, metrics.jsonl and a card with a before/after table.\n\n"
                    "Stop: create RUN_DIR/STOP (or SIGTERM/SIGINT); exit status 3. Continue a stopped run with\n"
                    "  napari-cinema train RUN_DIR/finetune.yaml --run-dir RUN_DIR --resume\n"
                    "Exit status 2: a problem to fix (message on stderr).",
    )
    p.add_argument("--base", required=True, metavar="ID",
                   help="base model: registry id (napari-cinema models list), run folder or .safetensors")
    p.add_argument("--store", type=Path, metavar="DIR", help="correction store folder (default: the user's store)")
    p.add_argument("--data", type=Path, nargs="+", action="extend", metavar="DIR",
                   help="extra labelled datasets to train on (ACDC, M&Ms, M&Ms-2, Sunnybrook layouts)")
    p.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    p.add_argument("--layers", choices=["all", "decoder"], default="all",
                   help="train every layer, or the decoder only with the encoder frozen (default all)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--samples-per-epoch", type=int, default=256, help="samples drawn per epoch (default 256)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of the corrected studies held out for validation, chosen by key (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--run-dir", type=Path, metavar="DIR", help="run folder (default runs/<model id>)")
    p.add_argument("--progress", choices=["json", "text", "none"], default="text",
                   help="progress on stdout: JSON lines (a 'plan' line, then the training events), text, or none")
    p.add_argument("--model-id", metavar="ID", help="id of the new model (default <base>-ft-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--description", help="one-line description for the model card")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a value of the written config, e.g. --set train.num_workers=0 (repeatable)")
    p.add_argument("--config-only", action="store_true",
                   help="only check and write RUN_DIR/finetune.yaml; train it later with `napari-cinema train`")
    p.set_defaults(handler=cmd_finetune)


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
