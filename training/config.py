"""One YAML config per run: ``task``, ``data``, ``model`` (the published CineMA format, so
:func:`napari_cinema.model.factory.build_model` reads it as is), ``init``, ``optim``, ``train``, ``output``.

Example (2-D per-slice SAX segmentation)::

    task: segmentation          # segmentation | landmark_heatmap | regression | classification | mae
    seed: 0
    data:
      name: acdc                # training-data tag kept in the model config
      root: ../../../shared/data  # base of relative source roots (env NAPARI_CINEMA_DATA wins)
      sax: {patch_size: [128, 128], spacing: [1.5, 1.5], in_chans: 1}
      label_map: {0: background, 1: RV, 2: MYO, 3: LV}
      train: [{type: acdc, root: acdc, split: train}, {type: sunnybrook, root: sunnybrook}]
      val: [{type: acdc, root: acdc, split: val}]
    model: {name: convunetr, views: sax, out_chans: 4, convunetr: {size: mini, ...}}
    init: {mae: null, weights: null}
    optim: {lr: 3.0e-4, betas: [0.9, 0.95], weight_decay: 0.05, layer_decay: 0.75, grad_clip: 5.0}
    train: {epochs: 100, batch_size: 16, patience: 15}
    output: {dir: runs, name: sax_seg, model_id: my-sax-seg, register: true}

Relative paths: source roots against ``data.root`` (see :func:`data_base`), ``output.dir`` against the
working directory, ``init.mae`` / ``init.weights`` against the config file's folder (or a registry id).

Every section but ``data`` / ``model`` has defaults (:data:`DEFAULTS`); unknown keys in ``init``,
``optim``, ``train`` and ``output`` are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from napari_cinema.model.factory import config_views, load_config, model_kind, view_data

from .transforms import AUGMENT_DEFAULTS

__all__ = [
    "DEFAULTS",
    "TASKS",
    "ConfigError",
    "data_base",
    "load_train_config",
    "model_config",
    "validate_config",
]

TASKS = ("segmentation", "landmark_heatmap", "regression", "classification", "mae")
TASK_ALIASES = {"pretrain": "mae", "pretraining": "mae", "mae_pretrain": "mae", "landmark": "landmark_heatmap",
                "heatmap": "landmark_heatmap", "seg": "segmentation", "ef_regression": "regression",
                "classification_cvd": "classification", "regression_ef": "regression"}
TASK_MODEL = {"segmentation": "convunetr", "landmark_heatmap": "convunetr", "regression": "convvit",
              "classification": "convvit", "mae": "mae"}

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "grad_ckpt": False,
    # encoder_only: take only the encoder of init.weights (a regressor started from a classifier)
    "init": {"mae": None, "weights": None, "freeze_encoder": False, "encoder_only": False},
    "optim": {
        "lr": 3.0e-4,
        "min_lr": 1.0e-6,
        "betas": [0.9, 0.95],
        "weight_decay": 0.05,
        "warmup_epochs": 1.0,
        "warmup_steps": None,  # overrides warmup_epochs
        "layer_decay": 0.75,  # only applied when the encoder starts from pre-trained (MAE) weights
        "grad_clip": 5.0,
        "label_smoothing": 0.1,
    },
    "train": {
        "epochs": 50,
        "max_steps": None,  # stop after this many optimizer steps (the schedule spans them)
        "batch_size": 16,
        "accum_steps": 1,
        "samples_per_epoch": None,  # resample each epoch to this many samples (None: every item once)
        "num_workers": 2,
        "threads": None,  # torch CPU threads of each process (None: torch's default)
        "val_every": 1,  # epochs
        "val_at_start": False,  # validate the initial weights first ('baseline' event; fine-tuning before/after)
        "val_batch_size": None,
        "patience": 15,  # validation rounds without improvement before early stopping (0: never)
        "monitor": None,  # default per task
        "precision": "auto",  # auto (bf16 autocast on CUDA) | bf16 | fp32
        "device": "auto",
        "log_every": 10,  # steps between 'step' events
        "checkpoint_every": 0,  # steps between 'last' checkpoints (0: at each epoch end)
        "val_hd95": True,
        "average_from_epoch": None,  # average the weights of every epoch end from this epoch on (SWA)
        "augment": dict(AUGMENT_DEFAULTS),
        "mask_ratio": None,  # MAE only; None: the model's (0.75)
    },
    "output": {
        "dir": "runs",
        "name": None,  # default: the config file's stem
        "model_id": None,  # registry id of the finished model; default: output.name
        "register": True,
        "overwrite_model": True,
        "description": None,
        "licence": None,  # default derived from the training data
    },
}
_CHECKED_SECTIONS = ("init", "optim", "train", "output")


class ConfigError(ValueError):
    """A training config a user must fix; the message names the file and the key."""


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = {k: copy.deepcopy(v) for k, v in base.items()}
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def data_base(config: Mapping[str, Any]) -> Path | None:
    """The folder relative source roots are resolved against.

    ``$NAPARI_CINEMA_DATA`` when set; else ``data.root`` (absolute, or relative to the config file's
    folder, else to the working directory); else the config file's folder.
    """
    env = os.environ.get("NAPARI_CINEMA_DATA")
    if env:
        return Path(os.path.expanduser(env)).resolve()
    src = config.get("_source")
    src_dir = Path(src).resolve().parent if src else None
    root = (config.get("data") or {}).get("root")
    if root:
        p = Path(os.path.expanduser(str(root)))
        if p.is_absolute():
            return p
        if src_dir is not None and (src_dir / p).exists():
            return (src_dir / p).resolve()
        return p.resolve()
    return src_dir


def load_train_config(path_or_dict: str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
    """Read a training config, apply dotted overrides, merge the defaults and validate it."""
    from napari_cinema.model.factory import apply_overrides

    where = str(path_or_dict) if not isinstance(path_or_dict, Mapping) else "<config>"
    try:
        raw = load_config(path_or_dict)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    raw = apply_overrides(raw, overrides)
    if not isinstance(path_or_dict, Mapping):
        raw.setdefault("_source", str(Path(path_or_dict).resolve()))
    cfg = _merge(DEFAULTS, raw)
    if cfg["train"].get("augment") is not None:
        cfg["train"]["augment"] = _merge(AUGMENT_DEFAULTS, cfg["train"]["augment"])
    if not cfg["output"].get("name"):
        cfg["output"]["name"] = Path(raw["_source"]).stem if raw.get("_source") else "run"
    validate_config(cfg, where=str(raw.get("_source", where)))
    return cfg


def validate_config(cfg: Mapping[str, Any], where: str = "<config>") -> None:
    """ConfigError for an unknown task or model, missing sections or unknown keys."""
    task = cfg.get("task")
    if task is None:
        raise ConfigError(f"{where}: no 'task'; expected one of {', '.join(TASKS)}")
    task = TASK_ALIASES.get(str(task).lower(), str(task).lower())
    if task not in TASKS:
        raise ConfigError(f"{where}: unknown task {cfg.get('task')!r}; expected one of {', '.join(TASKS)}")
    if isinstance(cfg, dict):
        cfg["task"] = task
    for section in ("data", "model"):
        if not isinstance(cfg.get(section), Mapping):
            raise ConfigError(f"{where}: the config needs a '{section}' section")
    for section in _CHECKED_SECTIONS:
        known = set(DEFAULTS[section])
        given = cfg.get(section) or {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"{where}: '{section}' must be a mapping")
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                              f"known: {', '.join(sorted(known))}")
    aug = (cfg.get("train") or {}).get("augment") or {}
    unknown = sorted(set(aug) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join('train.augment.' + k for k in unknown)}")
    if float(aug.get("rot90_prob") or 0) > 0:
        for key in ("sax", "lax"):
            patch = ((cfg.get("data") or {}).get(key) or {}).get("patch_size")
            if patch is not None and int(patch[0]) != int(patch[1]):
                raise ConfigError(f"{where}: train.augment.rot90_prob needs a square in-plane patch; "
                                  f"data.{key}.patch_size is {list(patch)}")
    try:
        kind = model_kind(cfg)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if kind != TASK_MODEL[task]:
        raise ConfigError(f"{where}: task {task!r} trains a {TASK_MODEL[task]} model, but model.name is {kind!r}")
    try:
        views = config_views(cfg)
        for v in views:
            if v not in ("sax", "lax_2c", "lax_3c", "lax_4c"):
                raise ConfigError(f"{where}: unknown view {v!r} in model.views")
            view_data(cfg, v)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if task != "mae" and len(views) != 1:
        raise ConfigError(f"{where}: a {task} run trains one view; model.views is {views}")
    tr = cfg["train"]
    for key in ("epochs", "batch_size", "accum_steps"):
        if not isinstance(tr.get(key), int) or tr[key] < 1:
            raise ConfigError(f"{where}: train.{key} must be a positive integer, got {tr.get(key)!r}")
    avg = tr.get("average_from_epoch")
    if avg is not None and (not isinstance(avg, int) or isinstance(avg, bool) or not 1 <= avg <= tr["epochs"]):
        raise ConfigError(f"{where}: train.average_from_epoch must be an epoch number from 1 to train.epochs "
                          f"({tr['epochs']}) or null, got {avg!r}")
    oc = cfg["optim"]
    try:
        if float(oc["lr"]) <= 0 or float(oc.get("min_lr") or 0) < 0 or float(oc["weight_decay"]) < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: optim.lr must be > 0 and optim.min_lr, optim.weight_decay >= 0") from None
    if tr.get("precision") not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"{where}: train.precision must be auto, bf16 or fp32")
    data = cfg["data"]
    if not data.get("train"):
        raise ConfigError(f"{where}: data.train lists no data sources")
    if task == "classification" and not data.get("class_column"):
        raise ConfigError(f"{where}: a classification run needs data.class_column (e.g. pathology)")
    if task == "regression" and not data.get("regression_column"):
        raise ConfigError(f"{where}: a regression run needs data.regression_column (e.g. ef)")
    try:
        from napari_cinema.model.factory import model_section, vit_size

        vit_size(model_section(cfg))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


_MODEL_DATA_KEYS = ("name", "class_column", "regression_column", "label_map", "landmark_names", "heatmap_sigma")


def model_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The published-format config of the trained model (what goes beside its weights).

    Keeps ``task`` (in the published vocabulary where it has one), ``grad_ckpt``, the geometry of each
    view, the label map / classes / regression statistics, and the ``model`` section; drops the
    training-only keys (sources, optimiser, ...).
    """
    task = cfg["task"]
    data = cfg.get("data") or {}
    out_data: dict[str, Any] = {}
    for key in _MODEL_DATA_KEYS:
        if data.get(key) is not None:
            out_data[key] = copy.deepcopy(data[key])
    for view in ("sax", "lax", "lax_2c", "lax_3c", "lax_4c"):
        if isinstance(data.get(view), Mapping):
            out_data[view] = copy.deepcopy(dict(data[view]))
    if data.get("class_column"):
        col = data["class_column"]
        if data.get(col) is not None:
            out_data[col] = list(data[col])
    if data.get("regression_column"):
        col = data["regression_column"]
        if isinstance(data.get(col), Mapping):
            out_data[col] = dict(data[col])
    out: dict[str, Any] = {"grad_ckpt": bool(cfg.get("grad_ckpt", False))}
    if task == "landmark_heatmap":
        out["task"] = "landmark_heatmap"
        out_data["name"] = "landmark"
        out_data.setdefault("landmark_names", ["mv_1", "mv_2", "apex"])
    elif task != "mae":
        out["task"] = task
    if "label_map" in out_data:
        out_data["label_map"] = {int(k): str(v) for k, v in out_data["label_map"].items()}
    out["data"] = out_data
    out["model"] = copy.deepcopy(dict(cfg["model"]))
    return out
