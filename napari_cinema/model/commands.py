"""``napari-cinema models ...``: the model registry on the command line.

    napari-cinema models list [--task T] [--view V] [--source S] [--available] [--json]
    napari-cinema models show ID [--json]
    napari-cinema models download ID [--force]
    napari-cinema models import FILE [--id ID] [--config YAML] [--overwrite]

``register(subparsers)`` adds the ``models`` command to the main parser. Errors a user can fix (unknown
id, hub unreachable, a file that does not match its config) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import TASKS, ModelError

__all__ = ["register", "main"]


def _fail(args: argparse.Namespace, exc: BaseException) -> int:
    action = getattr(args, "models_command", None) or ""
    print(f"napari-cinema models {action}: {exc}", file=sys.stderr)
    return 2


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _cmd_list(args: argparse.Namespace) -> int:
    from .registry import list_models

    infos = list_models(task=args.task, view=args.view, source=args.source,
                        available=True if args.available else None)
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    if not infos:
        print("no models match", file=sys.stderr)
        return 0
    rows = [
        [i.id, i.source, i.task, ",".join(i.views), i.training_data or "-",
         ("yes" if i.available else "no") + (f" ({i.location})" if i.available and i.location else "")]
        for i in infos
    ]
    print(_table(rows, ["ID", "SOURCE", "TASK", "VIEWS", "DATA", "AVAILABLE"]))
    n_avail = sum(i.available for i in infos)
    print(f"\n{len(infos)} models, {n_avail} available here; `napari-cinema models download ID` fetches a "
          "published one", file=sys.stderr)
    return 0


def _show_lines(d: dict[str, Any]) -> list[str]:
    lines = [d["id"]]
    order = ["source", "task", "views", "available", "location", "path", "config_path", "sha256", "training_data",
             "classes", "label_map", "landmark_names", "regression_target", "regression_mean", "regression_std",
             "seed", "description", "hub_files", "problem"]
    for key in order:
        value = d.get(key)
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        lines.append(f"  {key.replace('_', ' '):<18} {value}")
    return lines


def _cmd_show(args: argparse.Namespace) -> int:
    from .registry import get_model_info

    info = get_model_info(args.id)
    d = info.to_dict()
    if args.json:
        d["card"] = info.card
        print(json.dumps(d, indent=2, default=str))
    else:
        print("\n".join(_show_lines(d)))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from . import hub
    from .registry import get_model_info

    if not hub.is_published_id(args.id):
        info = get_model_info(args.id)  # raises UnknownModel with close matches for a typo
        print(f"napari-cinema models download: {args.id} is a {info.source} model, already local"
              f" ({info.path}); only published cinema/... models are downloaded", file=sys.stderr)
        return 2
    files = hub.download(args.id, show_progress=True, force_download=args.force)
    state = "downloaded" if files.downloaded else "already cached"
    print(f"{args.id}: {state} -> {files.weights}")
    if files.config is None:
        print("  (no config.yaml in the cache; the built-in reference config will be used)", file=sys.stderr)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .registry import import_model

    info = import_model(args.file, args.id, args.config, overwrite=args.overwrite)
    print(f"imported {args.file} as {info.id} ({info.task}, {', '.join(info.views)}) -> {info.path}")
    print(f"  sha256 {info.sha256}")
    return 0


def _run(handler: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(handler(args) or 0)
        except ModelError as exc:
            return _fail(args, exc)
        except OSError as exc:  # unreadable/unwritable paths
            return _fail(args, exc)

    return wrapped


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``models`` with its sub-commands to a parser's subparsers; returns the ``models`` parser."""
    parser = subparsers.add_parser("models", help="the model registry: list, show, download, import",
                                   description="List, inspect, download and import models.")
    sub = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    p = sub.add_parser("list", help="list bundled, published, user and imported models")
    p.add_argument("--task", choices=TASKS, help="only this task")
    p.add_argument("--view", help="only models for this view (sax, lax_2c, lax_4c; 'lax' for all LAX)")
    p.add_argument("--source", choices=["bundled", "published", "user", "imported"], help="only this source")
    p.add_argument("--available", action="store_true", help="only models usable now (no download needed)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_run(_cmd_list))

    p = sub.add_parser("show", help="describe one model: task, views, classes, files, sha256")
    p.add_argument("id", help="model id, e.g. cinema/segmentation/acdc_sax/0")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_run(_cmd_show))

    p = sub.add_parser("download", help="download a published CineMA model into the Hugging Face cache")
    p.add_argument("id", help="published model id, e.g. cinema/segmentation/acdc_sax/0")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(handler=_run(_cmd_download))

    p = sub.add_parser("import", help="validate a .safetensors file against its config and add it")
    p.add_argument("file", type=Path, help="the .safetensors weights")
    p.add_argument("--id", help="model id (default: the file name); a cinema/... id stands in for that"
                                " published model offline")
    p.add_argument("--config", type=Path, help="config.yaml (default: the one beside the file or embedded)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model with this id")
    p.set_defaults(handler=_run(_cmd_import))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``models ...`` alone (for tests and ``python -m napari_cinema.model.commands``)."""
    top = argparse.ArgumentParser(prog="napari-cinema")
    register(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
