"""Bundle a finished training run as a model shipped with the package (napari_cinema/models/<id>/).

Copies the run's model.safetensors and config.yaml, adds the end-to-end evaluations (``napari-cinema
evaluate`` JSON files) and a status note to its card, and writes card.json / card.md. Usage::

    python scripts/bundle_model.py runs/sax_seg --id default-sax-seg \\
        --eval "ACDC held-out split (15)=runs/eval/acdc.json=napari-cinema evaluate ../shared/data/acdc --split val --out acdc.json" \\
        --note "PRELIMINARY: ..."
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what an evaluate JSON may carry, by task: segmentation, then classification, then regression
EVALUATION_KEYS = ("dice", "hd95_mm", "LVEF_mae_pct", "LVEDV_mae_ml", "LVESV_mae_ml", "accuracy", "auroc",
                   "ef_mae", "landmark_error_mm", "notes")


def _measured(value) -> bool:
    """A metric that was computed (a classifier's evaluation has Dice fields, all null)."""
    if isinstance(value, dict):
        return any(v is not None for v in value.values())
    return value is not None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="finished run folder (model.safetensors, config.yaml, card.json)")
    p.add_argument("--id", required=True, help="bundled model id (folder name under napari_cinema/models)")
    p.add_argument("--eval", action="append", default=[], metavar="LABEL=FILE=COMMAND",
                   help="an evaluate JSON to add to the card, with its label and the command that made it")
    p.add_argument("--note", help="status note (e.g. below target) shown in the card and the description")
    p.add_argument("--description", help="replace the card's one-line description")
    p.add_argument("--opt-in", action="store_true",
                   help="the analysis dock never preselects it (e.g. it fails on real cines); the user picks it")
    p.add_argument("--caveat", help="one line the analysis dock shows beside the model (e.g. what it was "
                                    "validated on when labels are scarce)")
    args = p.parse_args()

    from napari_cinema.model.checkpoint import sha256_file
    from napari_cinema.training.loop import card_markdown

    card = json.loads((args.run / "card.json").read_text())
    card["id"] = args.id
    if args.description:
        card["description"] = args.description
    card["evaluations"] = []
    for spec in args.eval:
        label, path, command = spec.split("=", 2)
        r = json.loads(Path(path).read_text())
        entry = {"data": label, "n_cases": r["n_cases"], "command": command}
        entry.update({k: r[k] for k in EVALUATION_KEYS if _measured(r.get(k))})
        card["evaluations"].append(entry)
    if args.note:
        card["status_note"] = args.note
    if args.caveat:
        card["caveat"] = args.caveat
    card["opt_in"] = bool(args.opt_in)
    out = REPO / "napari_cinema" / "models" / args.id
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.yaml"):
        shutil.copyfile(args.run / name, out / name)
    card["weights_sha256"] = sha256_file(out / "model.safetensors")
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "card.md").write_text(card_markdown(card))
    print(f"bundled {args.run} as {out} (sha256 {card['weights_sha256'][:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
