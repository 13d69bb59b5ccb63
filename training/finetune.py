"""Fine-tune a segmentation model from an annotator's corrections.

The correction store (:mod:`napari_cinema.annotations.store`) keeps, per study, the model output and the
corrected masks with the frames the annotator edited. :func:`plan_finetune` turns a
:class:`FinetuneRequest` (base model, store, optional extra labelled datasets, a few settings) into a
training config that starts from the base model's own config and weights, after checking everything a
user can get wrong *before* anything is written; :func:`write_finetune_config` writes it as
``RUN_DIR/finetune.yaml``, which ``napari-cinema train`` runs (and ``--resume`` continues) like any
other config. The command line twin is ``napari-cinema finetune`` (:mod:`.commands`).

What the config sets (the rest is the base model's config and the training defaults):

- ``init.weights`` = the base model (registry id, or the weights file of a run folder / file),
  ``init.freeze_encoder`` for ``train_layers='decoder'``;
- ``data.train`` / ``data.val``: the store's corrected studies split by key (a stable hash, so a study
  stays on its side when more corrections arrive) plus the extra datasets (training only);
- ``optim.lr``, ``train.epochs`` / ``batch_size`` / ``samples_per_epoch`` / ``device``, and
  ``train.val_at_start: true``: the base model is scored on the validation studies first, so the
  run's card shows base model vs fine-tuned model on the same cases;
- ``output``: the new model's id (default ``<base>-ft-<YYYYmmdd-HHMMSS>``), registration, description.

The store is only read, here and in training.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "FINETUNE_CONFIG",
    "TRAIN_LAYERS",
    "BaseModel",
    "FinetuneError",
    "FinetunePlan",
    "FinetuneRequest",
    "plan_finetune",
    "resolve_base_model",
    "write_finetune_config",
]

FINETUNE_CONFIG = "finetune.yaml"
TRAIN_LAYERS = ("all", "decoder")
#: data layouts (as ``evaluate`` recognises them) that can train, with the views they hold
_LAYOUT_VIEWS = {"acdc": ("sax",), "mnms": ("sax",), "sunnybrook": ("sax",), "mnms2": ("sax", "lax_4c")}
# checkpoint space: two (weights, optimizer state ~2x weights) pairs while the last one is replaced,
# the best weights, the final model and its registered copy, plus logs
_DISK_FACTOR = 10
_DISK_MARGIN = 32 * 2**20


class FinetuneError(ValueError):
    """A fine-tuning request that cannot run; the message names the model / folder and the problem."""


@dataclass
class FinetuneRequest:
    """What to fine-tune, from what, and how (see the module docstring)."""

    base_model: str  # registry id, run folder or .safetensors
    store: str | Path | None = None  # correction store root (None: the default store)
    datasets: list = field(default_factory=list)  # extra labelled dataset folders (training only)
    epochs: int = 10
    lr: float = 1e-4
    train_layers: str = "all"  # 'all' | 'decoder' (encoder frozen)
    device: str = "auto"
    batch_size: int = 8
    samples_per_epoch: int = 256
    val_fraction: float = 0.2  # of the store's studies, held out for validation (stable by key)
    seed: int = 0
    model_id: str | None = None  # default f"{base name}-ft-{YYYYmmdd-HHMMSS}"
    description: str = ""
    run_dir: str | Path | None = None  # where checkpoints go (default runs/<model id>); its disk is checked


@dataclass
class FinetunePlan:
    config: dict
    model_id: str
    train_cases: list[str]
    val_cases: list[str]
    warnings: list[str]
    run_dir: Path | None = None
    base: "BaseModel | None" = None


@dataclass
class BaseModel:
    """A trainable segmentation model: where its weights are and the config that builds it."""

    ref: str  # what the user gave
    id: str | None  # registry id (None for a file / run folder)
    weights: Path
    config: dict[str, Any]
    view: str
    sha256: str
    card: dict[str, Any]

    @property
    def name(self) -> str:
        """A short name for new model ids: the id with '/' as '-', else the file or folder name."""
        if self.id:
            return self.id.replace("/", "-")
        p = Path(self.ref)
        stem = p.name if p.is_dir() else p.stem
        return stem.replace("/", "-") or "model"


# --------------------------------------------------------------------------------------------------
# the base model
# --------------------------------------------------------------------------------------------------


def _weights_in(folder: Path) -> Path | None:
    for name in ("model.safetensors", "checkpoints/best.safetensors"):
        if (folder / name).is_file():
            return folder / name
    return None


def resolve_base_model(ref: str) -> BaseModel:
    """The base model of a fine-tuning run: a registry id, a run folder or a ``.safetensors`` file.

    FinetuneError when it is unknown, not available here (with how to get it), not a single-view
    segmentation model, or its config cannot be read.
    """
    from napari_cinema.model.checkpoint import (
        CheckpointError,
        apply_overrides,
        describe_config,
        find_config,
        read_config,
        sha256_file,
    )

    if not ref or not str(ref).strip():
        raise FinetuneError("no base model given: pass a registry id (`napari-cinema models list`), "
                            "a run folder or a .safetensors file")
    ref = str(ref)
    p = Path(os.path.expanduser(ref))
    card: dict[str, Any] = {}
    model_id: str | None = None
    if p.exists():
        if p.is_dir():
            weights = _weights_in(p)
            if weights is None:
                raise FinetuneError(f"base model {ref}: the folder holds no model.safetensors or "
                                    "checkpoints/best.safetensors (is the run finished?)")
            cfg_path = p / "config.yaml"
        elif p.suffix == ".safetensors":
            weights, cfg_path = p, p.parent / "config.yaml"
        else:
            raise FinetuneError(f"base model {ref}: not a .safetensors file, a run folder or a registry id")
        try:
            config = read_config(cfg_path) if cfg_path.is_file() else find_config(weights)
        except CheckpointError as exc:
            raise FinetuneError(f"base model {ref}: {exc}") from None
        if config is None:
            raise FinetuneError(f"base model {ref}: no config.yaml beside {weights.name} and none embedded in it")
        card_path = weights.parent / "card.json"
        if not card_path.is_file() and p.is_dir():
            card_path = p / "card.json"
        if card_path.is_file():
            import json

            try:
                loaded = json.loads(card_path.read_text(encoding="utf-8"))
                card = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                card = {}
        facts = describe_config(config)
        task = facts["task"]
    else:
        from napari_cinema.model import hub
        from napari_cinema.model.registry import UnknownModel, get_model_info

        try:
            info = get_model_info(ref)
        except UnknownModel as exc:
            raise FinetuneError(f"base model: {exc}") from None
        model_id, task, card = info.id, info.task, dict(info.card or {})
        if task != "segmentation":  # said before "not downloaded": downloading would not help
            raise FinetuneError(f"base model {ref!r} is a {task} model: fine-tuning from corrections trains "
                                "segmentation models only")
        if not info.available or info.path is None or not Path(info.path).is_file():
            if info.source == "published":
                raise FinetuneError(
                    f"base model {ref!r} is not downloaded: run `napari-cinema models download {ref}` (needs the "
                    f"internet once), or import the file with `napari-cinema models import FILE --id {ref}`")
            raise FinetuneError(f"base model {ref!r} cannot be used: {info.problem or 'its weights are missing'}"
                                f"{'; re-register or re-import it' if info.source in ('user', 'imported') else ''}")
        weights = Path(info.path)
        try:
            if info.source == "published":
                pm = hub.parse_model_id(ref)
                config = read_config(info.config_path) if info.config_path else pm.builtin_config()
                config = apply_overrides(config, pm.overrides)
            else:
                config = read_config(info.config_path) if info.config_path else find_config(weights)
                if config is not None and isinstance(card.get("overrides"), Mapping):
                    config = apply_overrides(config, card["overrides"])
        except CheckpointError as exc:
            raise FinetuneError(f"base model {ref!r}: {exc}") from None
        if config is None:
            raise FinetuneError(f"base model {ref!r}: no model config found beside {weights}")
        facts = describe_config(config, ref)
    if task != "segmentation":
        raise FinetuneError(f"base model {ref!r} is a {task} model: fine-tuning from corrections trains "
                            "segmentation models only")
    views = list(facts["views"])
    if len(views) != 1:
        raise FinetuneError(f"base model {ref!r} segments views {views or 'unknown'}; fine-tuning needs a "
                            "single-view segmentation model")
    try:
        sha = sha256_file(weights)
    except OSError as exc:
        raise FinetuneError(f"base model {ref!r}: cannot read {weights} ({exc.strerror or exc})") from None
    return BaseModel(ref=ref, id=model_id, weights=weights, config=copy.deepcopy(dict(config)), view=views[0],
                     sha256=sha, card=card)


# --------------------------------------------------------------------------------------------------
# corrections and datasets
# --------------------------------------------------------------------------------------------------


def _store_entries(root: Path, notes: list[str]) -> list[Any]:
    """The store's studies, read without creating or changing anything in it; studies the store
    skips as unreadable are reported in ``notes``."""
    import warnings

    from napari_cinema.annotations.store import CorrectionStore, StoreError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            entries = list(CorrectionStore(root).entries())
        notes.extend(str(w.message) for w in caught)
        return entries
    except StoreError as exc:
        raise FinetuneError(f"correction store {root}: {exc}") from None
    except OSError as exc:
        raise FinetuneError(f"correction store {root}: cannot read it ({exc.strerror or exc})") from None


def holdout(keys: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, val) keys: the ``round(fraction * n)`` keys (at least 1, at most n - 1) with the smallest
    SHA-256 go to validation. Stable per key: adding studies never moves an old one to the other side
    unless it is displaced by a new one with a smaller hash."""
    keys = list(keys)
    n = len(keys)
    if n < 2 or fraction <= 0:
        return keys, []
    n_val = min(n - 1, max(1, int(round(fraction * n))))
    order = sorted(keys, key=lambda k: hashlib.sha256(k.encode("utf-8")).hexdigest())
    val = set(order[:n_val])
    return [k for k in keys if k not in val], [k for k in keys if k in val]


def _dataset_source(path: Path, view: str, base_ref: str) -> dict[str, Any]:
    from .evaluate import EvaluationError, detect_layout

    try:
        layout = detect_layout(path)
    except EvaluationError as exc:
        raise FinetuneError(f"dataset {path}: {exc}") from None
    except OSError as exc:
        raise FinetuneError(f"dataset {path}: cannot read it ({exc.strerror or exc})") from None
    if layout not in _LAYOUT_VIEWS:
        raise FinetuneError(
            f"dataset {path}: a {layout!r} layout cannot train a model; use an ACDC, M&Ms, M&Ms-2 or Sunnybrook "
            "folder, or a correction store (--store)")
    views = _LAYOUT_VIEWS[layout]
    if view not in views:
        raise FinetuneError(f"dataset {path} ({layout}) holds {' and '.join(views)} labels, but the base model "
                            f"{base_ref!r} segments {view}")
    spec: dict[str, Any] = {"type": layout, "root": str(path.resolve())}
    if layout == "mnms2":
        spec["views"] = [view]
    return spec


# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------


def _check_settings(req: FinetuneRequest) -> None:
    def whole(name: str, value: Any, minimum: int = 1) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise FinetuneError(f"{name} must be a whole number >= {minimum}, got {value!r}")

    whole("epochs", req.epochs)
    whole("batch_size", req.batch_size)
    whole("samples_per_epoch", req.samples_per_epoch)
    whole("seed", req.seed, 0)
    try:
        lr = float(req.lr)
    except (TypeError, ValueError):
        raise FinetuneError(f"lr must be a number > 0, got {req.lr!r}") from None
    if not math.isfinite(lr) or lr <= 0:
        raise FinetuneError(f"lr must be a number > 0, got {req.lr!r}")
    if req.train_layers not in TRAIN_LAYERS:
        raise FinetuneError(f"unknown train_layers {req.train_layers!r}: use 'all' (every layer) or 'decoder' "
                            "(the encoder stays frozen)")
    try:
        vf = float(req.val_fraction)
    except (TypeError, ValueError):
        raise FinetuneError(f"val_fraction must be a number in [0, 1), got {req.val_fraction!r}") from None
    if not 0 <= vf < 1:
        raise FinetuneError(f"val_fraction must be in [0, 1), got {req.val_fraction!r}")
    if str(req.device).lower() not in ("auto", "cpu", "cuda", "mps") and not str(req.device).startswith("cuda:"):
        raise FinetuneError(f"unknown device {req.device!r}: use auto, cpu, cuda or mps")
    from .loop import TrainingError, pick_device

    try:
        pick_device(str(req.device))  # a missing GPU is found now, not after the config is written
    except TrainingError as exc:
        raise FinetuneError(str(exc)) from None


def _check_model_id(model_id: str, base: BaseModel) -> None:
    from napari_cinema.model.registry import ModelRegistry, RegistryError, UnknownModel, _check_new_id

    try:
        _check_new_id(model_id)
    except RegistryError as exc:
        raise FinetuneError(f"model id: {exc}") from None
    if model_id in (base.id, base.ref):
        raise FinetuneError(f"model id {model_id!r} is the base model's: the fine-tuned model needs its own id")
    try:
        info = ModelRegistry().get_model_info(model_id)
    except UnknownModel:
        return
    where = f" ({info.path.parent})" if info.path is not None else ""
    raise FinetuneError(f"model id {model_id!r} is already taken by a {info.source} model{where}; "
                        "choose another --model-id")


def _free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or would: its first existing parent)."""
    p = path.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _check_disk(run_dir: Path, base: BaseModel) -> None:
    size = base.weights.stat().st_size
    need = _DISK_FACTOR * size + _DISK_MARGIN
    try:
        free = _free_bytes(run_dir)
    except OSError as exc:
        raise FinetuneError(f"run folder {run_dir}: cannot check its free disk space ({exc.strerror or exc})") from None
    if free < need:
        raise FinetuneError(
            f"not enough free disk space for run folder {run_dir}: {free / 2**20:.0f} MiB free, fine-tuning "
            f"{base.ref!r} ({size / 2**20:.1f} MiB weights) needs about {need / 2**20:.0f} MiB for its checkpoints; "
            "free some space or choose a run folder on another disk (--run-dir)")


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------


def _edited(entry: Any) -> list[int]:
    return [int(t) for t in (getattr(entry, "edited_frames", None) or [])]


def plan_finetune(req: FinetuneRequest) -> FinetunePlan:
    """Check a request and build its training config; FinetuneError (nothing written) when it cannot run."""
    from .config import ConfigError, load_train_config

    _check_settings(req)
    base = resolve_base_model(req.base_model)
    view = base.view
    warnings_: list[str] = []

    # corrections
    datasets = [Path(os.path.expanduser(str(d))) for d in (req.datasets or [])]
    explicit_store = req.store is not None and str(req.store) != ""
    from napari_cinema.annotations.store import default_store_root

    # the default store is only read when it exists; a missing one is fine when datasets are given
    root = Path(os.path.expanduser(str(req.store))) if explicit_store else default_store_root()
    entries: list[Any] = []
    if root.is_dir():
        entries = _store_entries(root, warnings_)
    elif root.exists():
        raise FinetuneError(f"correction store {root}: not a folder")
    store_note = f"correction store {root}"
    if not entries and not datasets:
        state = "holds no saved studies" if root.is_dir() else "does not exist"
        raise FinetuneError(f"no corrections to learn from: the {store_note} {state} (correct some "
                            "segmentations and save them, or pass labelled datasets)")
    edited = [e for e in entries if _edited(e)]
    unedited = [str(e.key) for e in entries if not _edited(e)]
    if entries and not edited and not datasets:
        raise FinetuneError(
            f"no corrections to learn from: the {len(entries)} studies in the {store_note} have no edited frames "
            "(saved model output that nobody corrected or confirmed teaches the model nothing)")
    if unedited:
        warnings_.append(f"{len(unedited)} studies without edited frames are left out: {', '.join(unedited)}")
    usable = [e for e in edited if str(e.view) == view]
    other = [e for e in edited if str(e.view) != view]
    if edited and not usable and not datasets:
        other_views = sorted({str(e.view) for e in other})
        raise FinetuneError(
            f"the corrections in the {store_note} are of view {', '.join(other_views)}, but the base model "
            f"{base.ref!r} segments {view}: pick a {', '.join(other_views)} segmentation model as the base")
    if other:
        warnings_.append(f"{len(other)} corrected studies of another view than {view} are left out: "
                         + ", ".join(f"{e.key} ({e.view})" for e in other))
    keys = [str(e.key) for e in usable]
    train_keys, val_keys = holdout(keys, float(req.val_fraction))
    if len(keys) == 1 and float(req.val_fraction) > 0:
        val_keys = list(keys)
        warnings_.append(f"only one corrected study ({keys[0]}): it is used for training and validation, so the "
                         "before/after scores measure fit to that study, not generalisation")
    elif keys and not val_keys:
        warnings_.append("no validation studies (val_fraction 0): no before/after comparison; the final model is "
                         "the last step's weights")
    elif not keys:
        warnings_.append("no corrected studies of this view: training on the datasets only, without validation "
                         "(no before/after comparison)")
    edited_frames = sum(len(_edited(e)) for e in usable)

    sources_train: list[dict[str, Any]] = []
    if train_keys:
        sources_train.append({"type": "store", "root": str(root.resolve()), "cases": list(train_keys)})
    for d in datasets:
        sources_train.append(_dataset_source(d, view, base.ref))
    sources_val = [{"type": "store", "root": str(root.resolve()), "cases": list(val_keys)}] if val_keys else []

    # the new model
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    model_id = req.model_id or f"{base.name}-ft-{stamp}"
    _check_model_id(model_id, base)
    run_dir = Path(os.path.expanduser(str(req.run_dir))) if req.run_dir else Path("runs") / model_id.replace("/", "-")
    run_dir = run_dir.resolve()
    _check_disk(run_dir, base)

    base_label = base.id or str(base.weights)
    n_store = len(train_keys) + len(set(val_keys) - set(train_keys))
    description = req.description or (
        f"{base_label} fine-tuned on {n_store} corrected {view} studies ({edited_frames} edited frames) from "
        f"{root}" + (f" and {len(datasets)} dataset(s)" if datasets else "")
        + (", encoder frozen" if req.train_layers == "decoder" else ""))
    bc = base.config
    config: dict[str, Any] = {
        "task": "segmentation",
        "seed": int(req.seed),
        "grad_ckpt": bool(bc.get("grad_ckpt", False)),
        "data": {**copy.deepcopy(dict(bc.get("data") or {})), "train": sources_train, "val": sources_val},
        "model": copy.deepcopy(dict(bc["model"])),
        "init": {"mae": None, "weights": base.id or str(base.weights.resolve()),
                 "freeze_encoder": req.train_layers == "decoder"},
        "optim": {"lr": float(req.lr)},
        "train": {"epochs": int(req.epochs), "batch_size": int(req.batch_size),
                  "samples_per_epoch": int(req.samples_per_epoch), "device": str(req.device),
                  "val_every": 1, "val_at_start": True},
        "output": {"dir": str(run_dir.parent), "name": run_dir.name, "model_id": model_id, "register": True,
                   "overwrite_model": False, "description": description},
    }
    config["data"].pop("root", None)  # every source root is absolute
    try:
        load_train_config(copy.deepcopy(config))
    except ConfigError as exc:
        raise FinetuneError(f"base model {base.ref!r} cannot be fine-tuned here: {exc}") from None
    return FinetunePlan(config=config, model_id=model_id, train_cases=list(train_keys), val_cases=list(val_keys),
                        warnings=warnings_, run_dir=run_dir, base=base)


def write_finetune_config(req_or_plan: FinetuneRequest | FinetunePlan, run_dir: str | Path) -> Path:
    """Write ``run_dir/finetune.yaml`` (atomically) for ``napari-cinema train``; returns its path.

    A request is planned first (with ``run_dir`` as its run folder). The config's ``output.dir`` /
    ``output.name`` point at ``run_dir``, so ``napari-cinema train RUN_DIR/finetune.yaml --resume``
    finds the run even without ``--run-dir``.
    """
    from napari_cinema.model.checkpoint import atomic_write_text

    run_dir = Path(os.path.expanduser(str(run_dir))).resolve()
    if isinstance(req_or_plan, FinetuneRequest):
        req = copy.copy(req_or_plan)
        req.run_dir = run_dir
        plan = plan_finetune(req)
    else:
        plan = req_or_plan
    config = copy.deepcopy(plan.config)
    config["output"]["dir"], config["output"]["name"] = str(run_dir.parent), run_dir.name
    base = plan.base
    header = ["# napari-cinema fine-tuning config (napari-cinema finetune); run or continue it with",
              f"#   napari-cinema train {run_dir / FINETUNE_CONFIG} --run-dir {run_dir} [--resume]"]
    if base is not None:
        header.append(f"# base model: {base.id or base.weights} (weights sha256 {base.sha256})")
    header.append(f"# new model id: {plan.model_id}")
    header.append(f"# training studies ({len(plan.train_cases)}): {', '.join(plan.train_cases) or 'none'}")
    header.append(f"# validation studies ({len(plan.val_cases)}): {', '.join(plan.val_cases) or 'none'}")
    for w in plan.warnings:
        header.append(f"# warning: {w}")
    text = "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(run_dir / FINETUNE_CONFIG, text)
    except OSError as exc:
        raise FinetuneError(f"cannot write {run_dir / FINETUNE_CONFIG}: {exc.strerror or exc}") from None
