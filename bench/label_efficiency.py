"""Label efficiency of fine-tuning the default SAX model from corrections: how much do 1, 2, 5 corrected
studies improve it on patients it has never seen?

Data. The 15 ACDC patients held out by the fixed split (``training/splits/acdc.json``, 3 per diagnosis
group) were never used to train ``default-sax-seg`` (they are its validation set; no weights were
fitted to them). Pool: the first held-out patient of each group (DCM, HCM, MINF, NOR, RV: 5 patients);
test: the other 10. Why not M&Ms or Sunnybrook: their subjects here (2-3 per site) are in the default
model's training data, so "new" corrections from them would be studies the model has already learnt,
and too few remain for a test set. Why not other ACDC patients: the 55 training patients are in the
training data too.

For each n in ``--sizes`` (default 1, 2, 5 = the whole pool), a temporary correction store is built
from the first n pool patients exactly as the correction widget would save them: the base model's
output on the ED and ES frames as ``original``, the expert labels as ``final`` (they stand in for an
annotator's corrections), ``edited_frames`` = ED and ES. ``napari-cinema finetune`` then fine-tunes the
base model on it (a subprocess, as a user would run it; all n studies train: ``--val-fraction 0`` by
default, since the test patients measure the result), and the base model and each fine-tuned model are
scored end to end on the 10 test patients by ``training/evaluate.py``'s ``evaluate()`` (the engine with
its label-free centring, ED and ES frames, Dice per structure and LVEF error).

The fine-tuned models are registered in a temporary ``NAPARI_CINEMA_HOME`` (removed afterwards unless
``--keep``): the user's registry is never touched; the base model is bundled, so it resolves there too.

Usage::

    python bench/label_efficiency.py                                   # the full benchmark (n = 1, 2, 5)
    python bench/label_efficiency.py --sizes 1 --epochs 1 --samples-per-epoch 16 --test 2   # smoke check
    python bench/label_efficiency.py --out label_efficiency.json --device cuda --epochs 20

Defaults are sized for 2 CPU cores: three fine-tuning runs of 5 epochs x 96 samples (batch 8, 60 steps)
plus four evaluations of 10 patients. Measured on 2 CPU cores shared with another training run (load
average ~5): a fine-tuning step took ~3.7 s and evaluating one patient (ED + ES) ~15-20 s, i.e. ~20 min
for the whole benchmark; with the cores to itself expect a third of that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")


def pool_and_test(split_path: Path | None = None) -> tuple[list[str], list[str]]:
    """(pool, test): the first held-out ACDC patient of each diagnosis group, and the other ten."""
    from napari_cinema.training.datasets import split_file

    data = json.loads((split_path or split_file()).read_text(encoding="utf-8"))
    held = set(data["val"])
    pool, test = [], []
    for group in GROUPS:
        members = sorted(p for p in data["groups"][group] if p in held)
        if not members:
            raise SystemExit(f"{split_path or split_file()}: no held-out patient in group {group}")
        pool.append(members[0])
        test.extend(members[1:])
    return pool, sorted(test)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    d = result.get("dice") or {}
    return {"n_cases": result.get("n_cases"), "dice": {k: d.get(k) for k in ("LV", "MYO", "RV", "mean")},
            "hd95_mm": result.get("hd95_mm"), "LVEF_mae_pct": result.get("LVEF_mae_pct"),
            "LVEDV_mae_ml": result.get("LVEDV_mae_ml"), "LVESV_mae_ml": result.get("LVESV_mae_ml"),
            "per_case": [{"case": r["case"], "dice": r["dice"], "LVEF_pct": r.get("LVEF_pct")}
                         for r in result.get("per_case") or []]}


def score(model: str, test_dir: Path, device: str) -> tuple[dict[str, Any], float]:
    from napari_cinema.training.evaluate import evaluate

    t0 = time.perf_counter()
    result = evaluate(test_dir, model=model, device=device, split="all")
    return summary(result), time.perf_counter() - t0


def build_store(root: Path, patients: list[str], acdc: Path, base: str, device: str,
                cache: dict[str, Any]) -> list[str]:
    """A correction store of ``patients``: base-model output as original, expert labels as final."""
    import numpy as np

    from napari_cinema.annotations.store import CorrectionStore
    from napari_cinema.engine import run_segmentation
    from napari_cinema.io.nifti import read_acdc_patient
    from napari_cinema.model.registry import load_model

    store = CorrectionStore(root)
    keys = []
    for pid in patients:
        if pid not in cache:
            if "__model__" not in cache:
                cache["__model__"] = load_model(base, "cpu")
            loaded = cache["__model__"]
            study = read_acdc_patient(acdc / pid)
            frames = [study.ed_frame, study.es_frame]
            pred = run_segmentation(study, loaded, device=device, frames=frames).labels
            cache[pid] = (study, pred)
        study, pred = cache[pid]
        truth = np.asarray(study.labels, np.uint8)  # expert labels on ED and ES: the 'corrections'
        entry = store.save(study, pred, truth, model_id=base, model_sha256=getattr(cache["__model__"], "sha256", None),
                           edited_frames=[study.ed_frame, study.es_frame], user="label-efficiency-bench")
        keys.append(entry.key)
    return keys


def finetune(store: Path, run_dir: Path, model_id: str, args: argparse.Namespace, env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "napari_cinema", "finetune", "--base", args.base, "--store", str(store),
           "--run-dir", str(run_dir), "--model-id", model_id, "--epochs", str(args.epochs),
           "--samples-per-epoch", str(args.samples_per_epoch), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr), "--layers", args.layers, "--val-fraction", str(args.val_fraction),
           "--device", args.device, "--progress", "none", "--set", "train.num_workers=0",
           "--set", "train.log_every=1000000"]
    if args.threads:
        cmd += ["--set", f"train.threads={args.threads}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=str(run_dir.parent), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"fine-tuning failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def fmt(v: Any, spec: str = ".3f") -> str:
    return "  n/a" if v is None else format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'n studies':>10} | {'Dice LV':>7} {'MYO':>6} {'RV':>6} {'mean':>6} | {'LVEF MAE':>8} | "
            f"{'tune s':>7} {'eval s':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        m = r["metrics"]
        d = m["dice"]
        label = "0 (base)" if r["n"] == 0 else str(r["n"])
        lines.append(f"{label:>10} | {fmt(d['LV']):>7} {fmt(d['MYO']):>6} {fmt(d['RV']):>6} {fmt(d['mean']):>6} | "
                     f"{fmt(m['LVEF_mae_pct'], '.2f'):>8} | {fmt(r.get('finetune_s'), '.0f'):>7} "
                     f"{fmt(r['eval_s'], '.0f'):>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                    help="data root holding acdc/ (default ../shared/data beside the repository)")
    ap.add_argument("--base", default="default-sax-seg", help="model to fine-tune (default default-sax-seg)")
    ap.add_argument("--sizes", default="1,2,5", help="numbers of corrected studies, comma-separated (max 5)")
    ap.add_argument("--test", type=int, default=10, help="score on the first N of the 10 test patients")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--samples-per-epoch", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--layers", choices=["all", "decoder"], default="all")
    ap.add_argument("--val-fraction", type=float, default=0.0,
                    help="held-out share of the corrected studies during fine-tuning (default 0: all train)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary stores, runs and model folder")
    args = ap.parse_args(argv)

    acdc = args.data / "acdc"
    if not acdc.is_dir():
        ap.error(f"no ACDC folder at {acdc} (pass --data)")
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--sizes {args.sizes!r}: expected comma-separated integers")
    pool, test = pool_and_test()
    if not sizes or sizes[0] < 1 or sizes[-1] > len(pool):
        ap.error(f"--sizes must lie in 1..{len(pool)} (the pool: {', '.join(pool)})")
    if not 1 <= args.test <= len(test):
        ap.error(f"--test must lie in 1..{len(test)}")
    test = test[:args.test]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="label-efficiency-"))
    home = work / "home"
    env = dict(os.environ, NAPARI_CINEMA_HOME=str(home))
    env.pop("NAPARI_CINEMA_DATA", None)
    os.environ["NAPARI_CINEMA_HOME"] = str(home)  # this process's store / registry look-ups too
    test_dir = work / "test"
    test_dir.mkdir()
    for pid in test:
        (test_dir / pid).symlink_to((acdc / pid).resolve(), target_is_directory=True)
    print(f"base {args.base}; pool {', '.join(pool)}; test ({len(test)}) {', '.join(test)}; work folder {work}",
          flush=True)
    t_all = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        metrics, secs = score(args.base, test_dir, args.device)
        rows.append({"n": 0, "model": args.base, "studies": [], "metrics": metrics, "eval_s": secs})
        print(f"base: Dice mean {fmt(metrics['dice']['mean'])}, LVEF MAE {fmt(metrics['LVEF_mae_pct'], '.2f')} "
              f"({secs:.0f} s)", flush=True)
        cache: dict[str, Any] = {}
        for n in sizes:
            store = work / f"store-{n}"
            keys = build_store(store, pool[:n], acdc, args.base, args.device, cache)
            run = work / f"run-{n}"
            tune_s = finetune(store, run, f"bench/label-efficiency-{n}", args, env)
            metrics, secs = score(str(run), test_dir, args.device)
            card = json.loads((run / "card.json").read_text(encoding="utf-8"))
            rows.append({"n": n, "model": str(run), "studies": pool[:n], "store_keys": keys, "metrics": metrics,
                         "finetune_s": tune_s, "eval_s": secs, "steps": card.get("steps")})
            print(f"n={n}: fine-tuned in {tune_s:.0f} s ({card.get('steps')} steps); Dice mean "
                  f"{fmt(metrics['dice']['mean'])}, LVEF MAE {fmt(metrics['LVEF_mae_pct'], '.2f')} ({secs:.0f} s)",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t_all
    print()
    print(table(rows))
    print(f"\n{len(test)} test patients, ED + ES, label-free centring; fine-tuning {args.epochs} epochs x "
          f"{args.samples_per_epoch} samples (batch {args.batch_size}, lr {args.lr}, layers {args.layers}) on "
          f"{args.device}; total {total:.0f} s")
    if args.out:
        from napari_cinema.training.evaluate import write_json

        write_json(args.out, {"base": args.base, "pool": pool, "test": test, "sizes": sizes,
                              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              "rows": rows, "total_s": total})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
