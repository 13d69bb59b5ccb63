"""Does the MAE pre-trained here beat training from scratch at 25 %, 50 % and 100 % of the labels?

A miniature of the CineMA recipe's central claim, on the default SAX segmentation network
(``training/configs/sax_seg.yaml``: ConvUNetR mini, 128 x 128 at 1.5 mm). For each label fraction the
ACDC training patients of the fixed split (``training/splits/acdc.json``; 55 patients) are subsampled
per diagnosis group (the first k of each group by patient number, so 25 % keeps every group), and two
runs train with the same seed, schedule and number of steps: one from random weights, one whose encoder
starts from the MAE (``init.mae``; layer-wise LR decay as in the recipe). Only ACDC labels train here
(no M&Ms / Sunnybrook / phantoms), so the fraction is the only thing that changes.

Each run is a real ``napari-cinema train`` subprocess; the table reports its best validation Dice
(label-centred crops of the 15 held-out ACDC patients, ED + ES, as logged by the trainer) and the end to
end score of its final model on the same patients by ``training/evaluate.py`` (label-free centring, the
numbers a user gets).

Usage::

    python bench/pretraining.py --mae napari_cinema/models/default-mae-mini/model.safetensors   # the full table
    python bench/pretraining.py --mae M --fractions 25 --epochs 1 --samples-per-epoch 64   # smoke check

Defaults are sized for 2 CPU cores: six runs of 8 epochs x 800 samples (batch 32: 200 steps each), a
short budget: the table says which start learns more from the same few steps, not how good either gets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")


def acdc_group(folder: Path) -> str:
    for line in (folder / "Info.cfg").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Group":
            return value.strip()
    raise ValueError(f"{folder}/Info.cfg has no Group")


def label_subset(acdc_root: Path, fraction: float) -> list[str]:
    """ACDC training patients of the fixed split, the first ``fraction`` of each diagnosis group."""
    from napari_cinema.training.datasets import acdc_split

    held_out = set(acdc_split("val"))
    by_group: dict[str, list[str]] = {g: [] for g in GROUPS}
    for folder in sorted(p for p in acdc_root.iterdir() if p.is_dir() and (p / "Info.cfg").exists()):
        if folder.name not in held_out:
            by_group.setdefault(acdc_group(folder), []).append(folder.name)
    chosen = []
    for names in by_group.values():
        chosen += names[: max(1, round(len(names) * fraction))]
    return sorted(chosen)


def run_config(base: dict, patients: list[str], acdc_root: Path, mae: Path | None, args) -> dict:
    cfg = json.loads(json.dumps(base))  # deep copy
    cfg.pop("_source", None)
    cfg["data"]["root"] = str(acdc_root.parent)
    cfg["data"]["train"] = [{"type": "acdc", "root": acdc_root.name, "patients": patients}]
    cfg["data"]["val"] = [{"type": "acdc", "root": acdc_root.name, "split": "val"}]
    cfg["init"] = {"mae": str(mae) if mae else None, "weights": None, "freeze_encoder": False}
    cfg["train"].update({"epochs": args.epochs, "samples_per_epoch": args.samples_per_epoch, "val_every": 2,
                         "patience": 0, "device": args.device, "checkpoint_every": 0})
    cfg["optim"]["warmup_epochs"] = 1
    cfg["output"].update({"register": False, "model_id": None})
    return cfg


def best_val(run_dir: Path) -> float | None:
    best = None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if ev.get("event") == "done":
            best = ev.get("best")
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mae", type=Path, required=True, help="MAE weights (a finished mae_pretrain run's model)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "acdc")
    p.add_argument("--config", type=Path, default=REPO / "training" / "configs" / "sax_seg.yaml")
    p.add_argument("--fractions", type=float, nargs="+", default=[25, 50, 100], help="percent of the labels")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--samples-per-epoch", type=int, default=800)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "pretraining")
    p.add_argument("--no-evaluate", action="store_true", help="skip the end-to-end evaluation")
    args = p.parse_args()
    if not args.data.is_dir():
        print(f"ACDC data not found at {args.data}", file=sys.stderr)
        return 2
    if not args.mae.is_file():
        print(f"MAE weights not found: {args.mae}", file=sys.stderr)
        return 2

    from napari_cinema.training.evaluate import evaluate

    base = yaml.safe_load(args.config.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for frac in args.fractions:
        patients = label_subset(args.data, frac / 100.0)
        for init in ("scratch", "mae"):
            name = f"f{int(frac)}_{init}"
            run_dir = args.out / name
            cfg = run_config(base, patients, args.data, args.mae if init == "mae" else None, args)
            cfg_path = args.out / f"{name}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "napari_cinema", "train", str(cfg_path), "--run-dir", str(run_dir),
                   "--progress", "none"]
            if (run_dir / "metrics.jsonl").exists() and not (run_dir / "model.safetensors").exists():
                cmd.append("--resume")
            if not (run_dir / "model.safetensors").exists():
                subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
            row = {"fraction_pct": frac, "patients": len(patients), "init": init, "val_dice": best_val(run_dir),
                   "train_s": round(time.perf_counter() - t0, 1)}
            if not args.no_evaluate:
                r = evaluate(args.data, model=str(run_dir), split="val", device=args.device)
                row.update({"e2e_dice_mean": r["dice"]["mean"], "e2e_dice": r["dice"],
                            "LVEF_mae_pct": r["LVEF_mae_pct"]})
            rows.append(row)
            print(json.dumps(row), flush=True)
    # results.json holds every fraction measured so far: this run's rows replace the same (fraction, start)
    results = args.out / "results.json"
    earlier = json.loads(results.read_text()) if results.is_file() else []
    done = {(r["fraction_pct"], r["init"]) for r in rows}
    rows = sorted([r for r in earlier if (r["fraction_pct"], r["init"]) not in done] + rows,
                  key=lambda r: (r["fraction_pct"], r["init"] != "scratch"))
    results.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| labels | patients | init | val Dice (label-centred) | end-to-end Dice | LVEF MAE |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        e2e = f"{r['e2e_dice_mean']:.3f}" if r.get("e2e_dice_mean") is not None else "-"
        mae = f"{r['LVEF_mae_pct']:.2f}" if r.get("LVEF_mae_pct") is not None else "-"
        print(f"| {r['fraction_pct']:g} % | {r['patients']} | {r['init']} | {r['val_dice']:.3f} | {e2e} | {mae} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
