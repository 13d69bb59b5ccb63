"""The training loop: reference recipe defaults, run folder, exact resume, graceful stop, DDP.

Recipe (CINEMA_COMPAT.md): AdamW (betas 0.9/0.95, weight decay 0.05, none on norms, biases and
tokens), linear warm-up then cosine decay, layer-wise LR decay 0.75 when the encoder starts from
MAE weights, gradient clipping 5, bf16 autocast on CUDA, gradient accumulation, early stopping on
the task's validation metric.

Run folder (rank 0 writes it; ``output.dir/output.name``, ``-2``, ``-3``... when taken)::

    train.yaml            the resolved training config (what --resume reads)
    config.yaml           the model config (published format) - written by save_checkpoint
    metrics.jsonl         one JSON object per line: start, baseline, step, epoch, checkpoint, early_stop,
                          stopped, warning, done, error
    checkpoints/last.json pointer to the last good pair below (replaced atomically, last)
    checkpoints/last-<step>.safetensors + last-<step>.state.pt   weights + optimizer/scheduler/RNG state
    checkpoints/best.safetensors + best.json                    weights of the best validation round
    model.safetensors, card.md, card.json                        the finished model (registered)
    STOP                  create this file to stop gracefully after the current step

Every file is written to a temporary sibling and renamed, so a full disk or a kill while
checkpointing leaves the previous checkpoint intact and loadable.

Exact resume: the batch order of an epoch depends only on (seed, epoch); each sample's augmentation
only on its own seed; the state file holds the torch / numpy / python RNG states, the optimizer and
scheduler, and the position inside the epoch. A run interrupted after k steps and resumed ends with
the same weights, bit for bit, as an uninterrupted run (CPU, fixed seed, same number of workers).

Fine-tuning (``init.weights``): ``init.encoder_only`` takes only the encoder of those weights (another
task's model: its head and decoder start fresh), ``init.freeze_encoder`` freezes the encoder, and
``train.val_at_start`` validates the initial weights before the first step (a ``baseline`` event; the
card gets a before/after table). The baseline runs on fresh runs only, with every RNG state saved and
restored around it, so it changes neither the training nor an exact resume.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import math
import os
import random
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from napari_cinema.model.checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_training_state,
    load_weights,
    save_checkpoint,
    save_training_state,
    sha256_file,
)
from napari_cinema.model.factory import build_model

from . import distributed as D
from .config import ConfigError, data_base, load_train_config, model_config
from .datasets import DatasetError, describe_source, load_sources
from .tasks import EpochBatchSampler, Task, build_task

__all__ = [
    "ENCODER_PREFIXES",
    "EXIT_STOPPED",
    "DiskFullError",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "find_run_dir",
    "freeze_encoder",
    "load_encoder_weights",
    "load_last_checkpoint",
    "param_groups",
    "train",
]

EXIT_STOPPED = 3
STATE_FORMAT = "napari-cinema-train-state/1"
STOP_FILE = "STOP"


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and where the last good checkpoint is."""


class DiskFullError(TrainingError):
    """The disk filled up while writing a checkpoint; the previous checkpoint is intact."""


@dataclass
class TrainResult:
    status: str  # done | early_stopped | finished_by_user | stopped
    run_dir: Path
    step: int
    total_steps: int
    epoch: int
    best: dict[str, Any] = field(default_factory=dict)
    model_id: str | None = None
    weights: Path | None = None
    reason: str | None = None
    monitor: str | None = None


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def pick_device(name: str | None) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda: no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if name == "cuda" else torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise TrainingError("--device mps: MPS is not available")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise TrainingError(f"unknown device {name!r}; use auto, cpu, cuda or mps")


def autocast_factory(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument context factory: bf16 autocast on CUDA ('auto', 'bf16'), or on CPU only for 'bf16'."""
    use = False
    if precision == "bf16":
        use = device.type in ("cuda", "cpu")
    elif precision == "auto":
        use = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if not use:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def _layer_id(name: str, depth: int) -> int:
    if name.startswith(("enc_down_dict.", "encoder.cls_token", "encoder.pos_embed")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or name.endswith(".bias") or any(k in name for k in ("cls_token", "pos_embed", "mask_token"))


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on norms/biases/tokens; with ``layer_decay`` the LR of layer i of
    depth L is scaled by ``layer_decay ** (L + 1 - i)`` (conv stem = 0, ViT block k = k + 1, heads = L + 1)."""
    depth = len(getattr(getattr(model, "encoder", None), "blocks", []))
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = _layer_id(name, depth) if layer_decay else depth + 1
        nd = _no_decay(name, p)
        key = (lid, nd)
        if key not in groups:
            scale = float(layer_decay) ** (depth + 1 - lid) if layer_decay else 1.0
            groups[key] = {"params": [], "names": [], "lr": lr * scale, "lr_scale": scale,
                           "weight_decay": 0.0 if nd else weight_decay, "layer_id": lid}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    out = [groups[k] for k in sorted(groups)]
    for g in out:
        g.pop("names")
    return out


ENCODER_PREFIXES = ("enc_down_dict.", "encoder.", "enc_fusion_dict.")


def freeze_encoder(model: nn.Module) -> int:
    """Stop gradients to the encoder (conv stem, ViT, view fusion) of a ConvUNetR / ConvViT; returns how
    many parameter tensors were frozen (0 means the model has no recognised encoder)."""
    n = 0
    for name, p in model.named_parameters():
        if name.startswith(ENCODER_PREFIXES):
            p.requires_grad_(False)
            n += 1
    return n


def load_encoder_weights(model: nn.Module, path: Path) -> int:
    """Load only the encoder tensors (conv stem, ViT, view fusion) of ``path`` into ``model``; the rest
    of ``model`` keeps its fresh initialisation. Every encoder tensor of ``model`` must be in the file
    with its shape (same architecture and views), else a ConfigError says which are not."""
    from safetensors.torch import load_file

    try:
        file_sd = load_file(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"init.weights {path}: {exc}") from None
    wanted = {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
    if not wanted:
        raise ConfigError(f"init.encoder_only: the {type(model).__name__} has no encoder tensors to load")
    bad = [k for k, v in wanted.items() if k not in file_sd or tuple(file_sd[k].shape) != tuple(v.shape)]
    if bad:
        raise ConfigError(f"init.encoder_only: {path} does not hold this model's encoder ({len(bad)} of "
                          f"{len(wanted)} tensors missing or of another shape, e.g. {bad[:3]}): the encoder "
                          "sizes, views and input channels must match")
    model.load_state_dict({k: file_sd[k] for k in wanted}, strict=False)
    return len(wanted)


def lr_lambda_factory(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except RuntimeError:
            pass


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))


def _free_space(path: Path) -> str:
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown"
    return f"{free / 2**20:.0f} MiB"


def find_run_dir(out_dir: Path, name: str) -> Path | None:
    """The newest ``out_dir/name[-k]`` run folder that holds a last checkpoint."""
    candidates = [p for p in out_dir.glob(f"{name}*") if p.is_dir()
                  and (p.name == name or (p.name.startswith(name + "-") and p.name[len(name) + 1:].isdigit()))]
    candidates = [p for p in candidates if (p / "checkpoints" / "last.json").is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p / "checkpoints" / "last.json").stat().st_mtime)


def _new_run_dir(out_dir: Path, name: str) -> Path:
    base = out_dir / name
    if not base.exists() or not any(base.iterdir()):
        return base
    k = 2
    while (out_dir / f"{name}-{k}").exists():
        k += 1
    return out_dir / f"{name}-{k}"


def load_last_checkpoint(run_dir: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    """(weights, state file, pointer) of the last good checkpoint of a run folder."""
    run_dir = Path(run_dir)
    ptr = run_dir / "checkpoints" / "last.json"
    if not ptr.is_file():
        raise TrainingError(f"{run_dir}: no checkpoint to resume from (checkpoints/last.json is missing)")
    try:
        info = json.loads(ptr.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{ptr}: unreadable ({exc})") from None
    weights = run_dir / "checkpoints" / info["weights"]
    state = run_dir / "checkpoints" / info["state"]
    for p in (weights, state):
        if not p.is_file():
            raise TrainingError(f"{ptr} names {p.name}, which is missing")
    return weights, state, info


# --------------------------------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------------------------------


class RunLog:
    """metrics.jsonl writer (rank 0) plus the console (JSON lines on stdout, or text)."""

    def __init__(self, path: Path | None, progress: str | None, enabled: bool):
        self.path = path
        self.progress = progress
        self.enabled = enabled
        self._warned = False

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        rec = {"event": event, **_json_safe(fields), "time": _now()}
        if not self.enabled:
            return rec
        line = json.dumps(rec)
        if self.path is not None:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError as exc:
                if not self._warned:
                    warnings.warn(f"cannot append to {self.path}: {exc}", stacklevel=2)
                    self._warned = True
        if self.progress == "json":
            print(line, flush=True)
        elif self.progress == "text":
            print(self._text(rec), flush=True)
        return rec

    @staticmethod
    def _fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    def _text(self, rec: Mapping[str, Any]) -> str:
        ev = rec["event"]
        if ev in ("step", "epoch"):
            keys = [k for k in rec if k not in ("event", "time", "total_steps", "epochs", "monitor")]
            parts = [f"{k}={self._fmt(rec[k])}" for k in keys if rec[k] is not None]
            return f"[{ev}] step {rec.get('step')}/{rec.get('total_steps')} " + " ".join(
                p for p in parts if not p.startswith("step="))
        parts = [f"{k}={self._fmt(v)}" for k, v in rec.items() if k not in ("event", "time") and v is not None]
        return f"[{ev}] " + " ".join(parts)


# --------------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------------


class Trainer:
    """Build everything from a training config and run it; see :func:`train`."""

    def __init__(self, config: str | Path | Mapping[str, Any], *, resume: bool = False,
                 run_dir: str | Path | None = None, device: str | None = None, progress: str | None = None,
                 overrides: Mapping[str, Any] | None = None,
                 on_step: Callable[["Trainer", int], None] | None = None, finish: bool = False):
        self.config_arg = config
        self.resume = resume
        self.finish_now = finish  # end a resumed run here: its best checkpoint becomes the model
        self.run_dir_arg = Path(run_dir) if run_dir is not None else None
        self.device_arg = device
        self.progress = progress
        self.overrides = overrides
        self.on_step = on_step
        self._stop_reason: str | None = None
        self._old_handlers: dict[int, Any] = {}
        self._sigint_count = 0

    # -- stop handling ----------------------------------------------------------------------------
    def request_stop(self, reason: str = "requested") -> None:
        """Finish the current step, write the last checkpoint and return with status 'stopped'."""
        if self._stop_reason is None:
            self._stop_reason = reason

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):  # noqa: ARG001
            name = signal.Signals(signum).name
            if signum == signal.SIGINT:
                self._sigint_count += 1
                if self._sigint_count > 1:
                    raise KeyboardInterrupt
            self.request_stop(name)

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old_handlers[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # pragma: no cover
                pass

    def _restore_signals(self) -> None:
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old)
        self._old_handlers.clear()

    def _should_stop(self) -> bool:
        local = self._stop_reason is not None
        if not local and self.dist.is_main and self.run_dir is not None:
            for name in (STOP_FILE, STOP_FILE.lower()):
                if (self.run_dir / name).exists():
                    self.request_stop(f"stop file {name}")
                    local = True
                    break
        flag = D.all_reduce_max(1.0 if local else 0.0) if self.dist.enabled else (1.0 if local else 0.0)
        if flag and self._stop_reason is None:
            self._stop_reason = "stopped by another rank"
        return bool(flag)

    # -- setup --------------------------------------------------------------------------------------
    def _resolve_config(self) -> None:
        cfg = load_train_config(self.config_arg, self.overrides)
        self.cfg = cfg
        out_dir = Path(os.path.expanduser(str(cfg["output"]["dir"])))
        self.out_dir = out_dir if out_dir.is_absolute() else (Path.cwd() / out_dir)  # relative to the working dir

    def _setup_run_dir(self) -> None:
        name = str(self.cfg["output"]["name"])
        run_dir: str | None = None
        error: str | None = None
        if self.dist.is_main:
            try:
                if self.resume:
                    rd = self.run_dir_arg or find_run_dir(self.out_dir, name)
                    if rd is None:
                        raise TrainingError(
                            f"--resume: no run of {name!r} with a checkpoint in {self.out_dir}; pass --run-dir")
                    load_last_checkpoint(rd)
                else:
                    rd = self.run_dir_arg or _new_run_dir(self.out_dir, name)
                    if self.run_dir_arg is not None and (rd / "checkpoints" / "last.json").exists():
                        raise TrainingError(f"{rd} already holds a run; pass --resume to continue it")
                    rd.mkdir(parents=True, exist_ok=True)
                run_dir = str(Path(rd).resolve())
            except (TrainingError, OSError) as exc:
                error = str(exc)
        run_dir, error = D.broadcast_object((run_dir, error))
        if error:
            raise TrainingError(error)
        self.run_dir = Path(run_dir)
        if self.resume:
            # the run folder's resolved config is authoritative on resume
            saved = self.run_dir / "train.yaml"
            if saved.is_file():
                self.cfg = load_train_config(saved)
                self.cfg["_source"] = self.cfg.get("_source") or str(saved)

    def _write_config(self) -> None:
        if not self.dist.is_main:
            return
        cfg = {k: v for k, v in self.cfg.items()}
        base = data_base(self.cfg)
        if base is not None:
            cfg["data"] = dict(cfg["data"], root=str(base))
        atomic_write_text(self.run_dir / "train.yaml", yaml.safe_dump(_json_safe(cfg), sort_keys=False))

    def setup(self) -> None:
        self._resolve_config()
        dev = pick_device(self.device_arg or self.cfg["train"].get("device"))
        self.dist = D.init_distributed(dev.type)
        if dev.type == "cuda" and self.dist.enabled:
            dev = torch.device("cuda", self.dist.local_rank)
        self.device = dev
        self._setup_run_dir()
        self.log = RunLog(self.run_dir / "metrics.jsonl", self.progress, self.dist.is_main)
        if self.resume and self.dist.is_main:
            for name in (STOP_FILE, STOP_FILE.lower()):
                (self.run_dir / name).unlink(missing_ok=True)
        cfg = self.cfg
        if cfg["train"].get("threads"):
            torch.set_num_threads(int(cfg["train"]["threads"]))
        seed = int(cfg.get("seed", 0))
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

        # data
        base = data_base(cfg)
        self.base = base
        train_records = load_sources(cfg["data"]["train"], base, what="data.train")
        val_records = load_sources(cfg["data"]["val"], base, what="data.val") if cfg["data"].get("val") else []
        self.task: Task = build_task(cfg)
        self.task.setup(train_records, val_records)
        self.sources = {"train": [describe_source(s) for s in cfg["data"]["train"]],
                        "val": [describe_source(s) for s in (cfg["data"].get("val") or [])]}
        del train_records, val_records
        self.model_cfg = model_config(cfg)
        self._write_config()

        # model
        self.init_from: dict[str, Any] | None = None
        self.mae_from: dict[str, Any] | None = None  # the MAE the encoder started from (its terms carry over)
        torch.manual_seed(seed)
        try:
            model = build_model(self.model_cfg, grad_ckpt=bool(cfg.get("grad_ckpt", False)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"cannot build the model: {exc}") from exc
        self.pretrained = self._init_weights(model)
        self.model = model.to(self.device)
        oc = cfg["optim"]
        layer_decay = oc.get("layer_decay") if self.pretrained else None
        groups = param_groups(self.model, float(oc["lr"]), float(oc["weight_decay"]), layer_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=float(oc["lr"]), betas=tuple(oc["betas"]),
                                           weight_decay=float(oc["weight_decay"]))
        self.net: nn.Module = self.model
        # stochastic weight averaging: a uniform average of the weights at every epoch end from
        # train.average_from_epoch on; once it has started it is what is validated, kept and shipped
        self.average_from = cfg["train"].get("average_from_epoch")
        self.averaged: torch.optim.swa_utils.AveragedModel | None = None
        if self.average_from is not None:
            self.averaged = torch.optim.swa_utils.AveragedModel(self.model, use_buffers=True)
            self.averaged.eval()
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            multi_view = len(getattr(self.model, "views", [])) > 1
            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           find_unused_parameters=multi_view)
        torch.manual_seed(seed + 1000003 * self.dist.rank)

        # data loading
        tc = cfg["train"]
        self.dataset = self.task.train_dataset()
        self.sampler = EpochBatchSampler(self.dataset.groups, int(tc["batch_size"]), seed, rank=self.dist.rank,
                                         world_size=self.dist.world_size,
                                         samples_per_epoch=tc.get("samples_per_epoch"))
        nw = int(tc.get("num_workers") or 0)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=nw, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed), persistent_workers=False,
        )
        self.accum = int(tc["accum_steps"])
        self.micro_per_epoch = len(self.sampler)
        self.steps_per_epoch = self.micro_per_epoch // self.accum
        if self.steps_per_epoch < 1:
            raise DatasetError(f"an epoch has {self.micro_per_epoch} batches, fewer than train.accum_steps "
                               f"{self.accum}: lower accum_steps or batch_size")
        self.epochs = int(tc["epochs"])
        total = self.epochs * self.steps_per_epoch
        if tc.get("max_steps"):
            total = min(total, int(tc["max_steps"]))
        self.total_steps = total
        warm = oc.get("warmup_steps")
        if warm is None:
            warm = int(round(float(oc.get("warmup_epochs") or 0) * self.steps_per_epoch))
        self.warmup_steps = int(min(warm, max(0, total // 2)))
        min_ratio = float(oc.get("min_lr") or 0) / float(oc["lr"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda_factory(total, self.warmup_steps, min_ratio))
        self.autocast = autocast_factory(self.device, str(tc.get("precision", "auto")))
        self.monitor = str(tc.get("monitor") or self.task.monitor)
        self.mode = self.task.mode if self.monitor == self.task.monitor else ("min" if any(
            k in self.monitor for k in ("loss", "mae", "mm", "rmse", "error")) else "max")
        self.patience = int(tc.get("patience") or 0)
        # progress state
        self.step = 0
        self.epoch = 0
        self.micro = 0
        self.best: dict[str, Any] = {"value": None, "step": None, "epoch": None, "metrics": {}}
        self.bad_rounds = 0
        self.last_val: dict[str, Any] = {}
        self._epoch_loss: tuple[float, int] = (0.0, 0)  # running (sum, count) of the current epoch
        self.resumed_from: int | None = None
        self.baseline: dict[str, Any] = {}  # validation of the initial weights (train.val_at_start)
        if self.resume:
            self._load_state()

    def _resolve_weights_info(self, ref: str) -> tuple[Path, Any]:
        """(weights file, registry ModelInfo or None when ``ref`` is a file or folder)."""
        p = Path(os.path.expanduser(ref))
        if not p.is_absolute() and self.cfg.get("_source"):
            cand = Path(self.cfg["_source"]).parent / p
            if cand.exists():
                p = cand
        if p.is_dir():
            for name in ("model.safetensors", "checkpoints/best.safetensors"):
                if (p / name).is_file():
                    return p / name, None
        if p.is_file():
            return p, None
        try:
            from napari_cinema.model.registry import get_model_info

            info = get_model_info(ref)
        except Exception as exc:
            raise ConfigError(f"init: {ref!r} is neither a weights file nor a known model id ({exc})") from None
        if not info.available or info.path is None:
            raise ConfigError(f"init: model {ref!r} is not available locally ({info.problem or 'not downloaded'})")
        return Path(info.path), info

    def _init_weights(self, model: nn.Module) -> bool:
        init = self.cfg.get("init") or {}
        pretrained = False
        if init.get("mae"):
            from safetensors.torch import load_file

            from napari_cinema.model.transfer import load_mae_weights

            path, info = self._resolve_weights_info(str(init["mae"]))
            try:
                sd = load_file(str(path))
                load_mae_weights(model, sd, freeze=bool(init.get("freeze_encoder")))
            except (ValueError, OSError) as exc:
                raise ConfigError(f"init.mae {path}: {exc}") from None
            pretrained = True
            self.mae_from = _weights_facts(path, info)
        if init.get("encoder_only") and not init.get("weights"):
            raise ConfigError("init.encoder_only needs init.weights (the model whose encoder to take)")
        if init.get("weights"):
            ref = str(init["weights"])
            path, info = self._resolve_weights_info(ref)
            if init.get("encoder_only"):
                n_loaded = load_encoder_weights(model, path)
            else:
                load_weights(model, path, strict=True)
            pretrained = True
            self.init_from = _weights_facts(path, info)
            if init.get("encoder_only"):
                self.init_from["encoder_only_tensors"] = n_loaded
            if init.get("freeze_encoder"):
                n = freeze_encoder(model)
                if n == 0:
                    raise ConfigError(f"init.freeze_encoder: the {type(model).__name__} of {ref!r} has no "
                                      "encoder parameters to freeze")
                self.init_from["frozen_encoder_tensors"] = n
        return pretrained

    # -- checkpoints ------------------------------------------------------------------------------
    def _ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _gather_rng(self) -> list[dict[str, Any]]:
        state = _rng_state()
        if not self.dist.enabled:
            return [state]
        import torch.distributed as dist

        out: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(out, state)
        return out

    def _state(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "micro_batch": self.micro,
            "total_steps": self.total_steps,
            "world_size": self.dist.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_states,
            "best": _json_safe(self.best),
            "bad_rounds": self.bad_rounds,
            "last_val": _json_safe(self.last_val),
            "epoch_loss": [float(self._epoch_loss[0]), int(self._epoch_loss[1])],
            "baseline": _json_safe(self.baseline),
            "averaged": self.averaged.state_dict() if self._averaging() else None,
        }

    def _averaging(self) -> bool:
        return self.averaged is not None and int(self.averaged.n_averaged) > 0

    def _eval_model(self) -> nn.Module:
        """The weights that are validated and kept: the running average once it has started."""
        return self.averaged.module if self._averaging() else self.model

    def _on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only; its result, or its error, reaches every rank."""
        result, error, kind = None, None, None
        if self.dist.is_main:
            try:
                result = fn()
            except (TrainingError, DatasetError, ConfigError) as exc:
                if not self.dist.enabled:
                    raise
                error, kind = str(exc), type(exc).__name__
        if self.dist.enabled:
            result, error, kind = D.broadcast_object((result if self.dist.is_main else None, error, kind))
            if error is not None:
                cls = {"DiskFullError": DiskFullError, "DatasetError": DatasetError,
                       "ConfigError": ConfigError}.get(kind, TrainingError)
                raise cls(error)
        return result

    def save_last(self) -> None:
        """Write weights + state under new names, then point last.json at them; keep the old on failure."""
        rng_states = self._gather_rng()
        self._on_main(lambda: self._write_last(rng_states))

    def _write_last(self, rng_states: list[dict[str, Any]]) -> None:
        cdir = self._ckpt_dir()
        tag = f"last-{self.step:07d}"
        weights = cdir / f"{tag}.safetensors"
        state = cdir / f"{tag}.state.pt"
        prev = None
        if (cdir / "last.json").is_file():
            with contextlib.suppress(OSError, json.JSONDecodeError):
                prev = json.loads((cdir / "last.json").read_text(encoding="utf-8"))
        if prev and prev.get("weights") == weights.name:
            # the same step again (e.g. a stop right after an epoch-end checkpoint): nothing new to write
            return
        written: list[Path] = []
        try:
            cdir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.model, weights, config=self.model_cfg,
                            metadata={"step": self.step, "epoch": self.epoch, "kind": "last"})
            written.append(weights)
            save_training_state(state, self._state(rng_states))
            written.append(state)
            pointer = {"weights": weights.name, "state": state.name, "step": self.step, "epoch": self.epoch,
                       "micro_batch": self.micro, "total_steps": self.total_steps, "time": _now()}
            atomic_write_text(cdir / "last.json", json.dumps(pointer, indent=1) + "\n")
        except OSError as exc:
            keep = {prev["weights"], prev["state"]} if prev else set()
            for p in written:
                if p.name not in keep:
                    p.unlink(missing_ok=True)
            kept = (f"the last good checkpoint (step {prev['step']}, {cdir / prev['weights']}) is intact"
                    if prev else "no earlier checkpoint exists")
            if _is_disk_full(exc):
                raise DiskFullError(
                    f"the disk is full (No space left on device) while writing checkpoint {weights}: "
                    f"{_free_space(cdir)} free; {kept}. Free some space and continue with --resume") from exc
            raise TrainingError(f"could not write checkpoint {weights}: {exc.strerror or exc}; {kept}") from exc
        # drop older pairs only once the new pointer is in place
        for p in cdir.glob("last-*"):
            if p.name not in (weights.name, state.name):
                p.unlink(missing_ok=True)
        self.log.emit("checkpoint", kind="last", step=self.step, epoch=self.epoch, path=str(weights))

    def save_best(self) -> None:
        self._on_main(self._write_best)

    def _write_best(self) -> None:
        cdir = self._ckpt_dir()
        try:
            cdir.mkdir(parents=True, exist_ok=True)
            path = save_checkpoint(self._eval_model(), cdir / "best.safetensors", config=self.model_cfg,
                                   metadata={"step": self.step, "epoch": self.epoch, "kind": "best",
                                             "metrics": _json_safe(self.best.get("metrics", {}))})
            atomic_write_text(cdir / "best.json", json.dumps(_json_safe(self.best), indent=1) + "\n")
        except OSError as exc:
            if _is_disk_full(exc):
                raise DiskFullError(
                    f"the disk is full (No space left on device) while writing {cdir / 'best.safetensors'}: "
                    f"{_free_space(cdir)} free; the previous best and last checkpoints are intact. "
                    "Free some space and continue with --resume") from exc
            raise TrainingError(f"could not write {cdir / 'best.safetensors'}: {exc.strerror or exc}") from exc
        self.log.emit("checkpoint", kind="best", step=self.step, epoch=self.epoch, path=str(path),
                      **{self.monitor: self.best.get("value")})

    def _load_state(self) -> None:
        weights, state_path, info = load_last_checkpoint(self.run_dir)
        try:
            load_weights(self.model, weights, strict=True)
        except CheckpointError as exc:
            raise TrainingError(f"cannot resume: {exc}") from None
        state = load_training_state(state_path)
        if state.get("format") != STATE_FORMAT:
            raise TrainingError(f"{state_path}: not a napari-cinema training state ({state.get('format')!r})")
        if int(state["total_steps"]) != self.total_steps:
            warnings.warn(f"the resumed run plans {self.total_steps} steps, the checkpoint {state['total_steps']}: "
                          "the schedule follows the new plan", stacklevel=2)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.micro = int(state["micro_batch"])
        self.best = dict(state.get("best") or self.best)
        self.bad_rounds = int(state.get("bad_rounds", 0))
        self.last_val = dict(state.get("last_val") or {})
        self._epoch_loss = tuple(state.get("epoch_loss") or (0.0, 0))
        self.baseline = dict(state.get("baseline") or {})
        if state.get("averaged") is not None:
            if self.averaged is None:
                raise TrainingError(f"{state_path}: the run averages weights but train.average_from_epoch is not set")
            self.averaged.load_state_dict(state["averaged"])
        rngs = state["rng"]
        if int(state.get("world_size", 1)) != self.dist.world_size:
            warnings.warn("resuming with another number of processes: the data order differs from the "
                          "uninterrupted run", stacklevel=2)
        _set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        self.resumed_from = self.step

    # -- validation -------------------------------------------------------------------------------
    def _validate(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if self.dist.is_main and self.task.has_validation():
            model = self._eval_model()
            model.eval()
            with torch.no_grad():
                metrics = self.task.validate(model, self.device, self.autocast)
            self.model.train()
        metrics = D.broadcast_object(metrics)
        return metrics

    def _validate_baseline(self) -> None:
        """Score the initial weights (the base model of a fine-tuning run) before any step.

        Runs only on fresh runs, and every RNG state is put back afterwards: the training that follows,
        and a resumed run, see exactly the random numbers they would without it."""
        rng = _rng_state()
        t0 = time.perf_counter()
        try:
            metrics = self._validate()
        finally:
            _set_rng_state(rng)
        self.baseline = dict(metrics)
        base = self.init_from or {}
        self.log.emit("baseline", step=0, epoch=0, **metrics, monitor=self.monitor,
                      base_model=base.get("id") or base.get("path"), seconds=round(time.perf_counter() - t0, 2))

    def _improved(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        best = self.best.get("value")
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        self._install_signals()
        try:
            return self._fit()
        except (TrainingError, DatasetError, ConfigError) as exc:
            if getattr(self, "log", None) is not None:
                self.log.emit("error", message=str(exc), step=getattr(self, "step", None))
            raise
        finally:
            self._restore_signals()

    def _fit(self) -> TrainResult:
        self.setup()
        self.log.emit("start", run_dir=str(self.run_dir), task=self.task.name, views=self.task.views,
                      total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch, epochs=self.epochs,
                      step=self.step, resumed_from=self.resumed_from, world_size=self.dist.world_size,
                      device=str(self.device), train_samples=len(self.dataset),
                      train_cases=self.task.summary["train"]["cases"],
                      val_cases=self.task.summary.get("val", {}).get("cases", 0),
                      pretrained=self.pretrained, monitor=self.monitor)
        if (self.cfg["train"].get("val_at_start") and self.resumed_from is None and self.step == 0
                and self.task.has_validation()):
            self._validate_baseline()
        self.net.train()
        t_start = time.perf_counter()
        steps_at_start = self.step
        loss_sum, loss_n = 0.0, 0
        epoch_loss_sum, epoch_loss_n = float(self._epoch_loss[0]), int(self._epoch_loss[1])
        log_every = max(1, int(self.cfg["train"].get("log_every") or 10))
        ckpt_every = int(self.cfg["train"].get("checkpoint_every") or 0)
        val_every = max(1, int(self.cfg["train"].get("val_every") or 1))
        usable_micro = self.steps_per_epoch * self.accum
        status = "done"
        stop_reason = None
        finished_early = bool(self.patience and self.last_val and self.bad_rounds >= self.patience)
        if finished_early:  # resuming a run that had already stopped early: just finish it again
            status = "early_stopped"
        elif self.finish_now:  # the researcher ends a stopped run: no more steps
            finished_early = True
            status = "finished_by_user"

        def eta() -> float | None:
            done = self.step - steps_at_start
            if done <= 0:
                return None
            return (time.perf_counter() - t_start) / done * (self.total_steps - self.step)

        while not finished_early and self.step < self.total_steps and self.epoch < self.epochs:
            self.sampler.set_epoch(self.epoch, start_batch=self.micro)
            it = iter(self.loader)
            while self.micro + self.accum <= usable_micro and self.step < self.total_steps:
                step_loss = 0.0
                for a in range(self.accum):
                    batch = next(it)
                    sync = (contextlib.nullcontext() if not self.dist.enabled or a == self.accum - 1
                            else self.net.no_sync())
                    with sync:
                        with self.autocast():
                            loss = self.task.loss(self.net, batch, self.device)
                        (loss / self.accum).backward()
                    step_loss += float(loss.detach()) / self.accum
                    self.micro += 1
                bad = not math.isfinite(step_loss)
                if self.dist.enabled:  # every rank must stop together
                    bad = D.all_reduce_max(1.0 if bad else 0.0) > 0
                if bad:
                    raise TrainingError(
                        f"the training loss is {step_loss} at step {self.step + 1}: lower optim.lr or check the "
                        f"data; the last good checkpoint is in {self._ckpt_dir()}")
                clip = self.cfg["optim"].get("grad_clip")
                if clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                loss_sum += step_loss
                loss_n += 1
                epoch_loss_sum += step_loss
                epoch_loss_n += 1
                self._epoch_loss = (epoch_loss_sum, epoch_loss_n)
                if self.on_step is not None:
                    self.on_step(self, self.step)
                if self.step % log_every == 0 or self.step == self.total_steps:
                    mean = D.all_reduce_mean(loss_sum / max(1, loss_n))
                    self.log.emit("step", epoch=self.epoch + 1, step=self.step, total_steps=self.total_steps,
                                  train_loss=mean, lr=self.optimizer.param_groups[-1]["lr"], eta_s=eta())
                    loss_sum, loss_n = 0.0, 0
                if self.step < self.total_steps and self._should_stop():  # the last step just finishes
                    stop_reason = self._stop_reason
                    break
                if ckpt_every and self.step % ckpt_every == 0 and self.micro < usable_micro:
                    self.save_last()
            del it
            if stop_reason is not None:
                status = "stopped"
                break
            epoch_finished = self.micro + self.accum > usable_micro
            if epoch_finished:
                self.epoch += 1
                self.micro = 0
                if self.averaged is not None and self.epoch >= self.average_from:
                    self.averaged.update_parameters(self.model)
            last_round = self.step >= self.total_steps or self.epoch >= self.epochs
            metrics: dict[str, Any] = {}
            improved = False
            if (epoch_finished and self.epoch % val_every == 0) or last_round:
                metrics = self._validate()
                if metrics:
                    self.last_val = metrics
                    value = metrics.get(self.monitor)
                    improved = self._improved(value)
                    if improved:
                        self.best = {"value": value, "step": self.step, "epoch": self.epoch, "metrics": metrics,
                                     "averaged_epochs": int(self.averaged.n_averaged) if self._averaging() else None}
                        self.bad_rounds = 0
                        self.save_best()
                    else:
                        self.bad_rounds += 1
            ep_loss = D.all_reduce_mean(epoch_loss_sum / max(1, epoch_loss_n))
            epoch_loss_sum, epoch_loss_n = 0.0, 0
            self._epoch_loss = (0.0, 0)
            averaged = {"averaged_epochs": int(self.averaged.n_averaged)} if self._averaging() else {}
            self.log.emit("epoch", epoch=self.epoch, epochs=self.epochs, step=self.step,
                          total_steps=self.total_steps, train_loss=ep_loss, **metrics, **averaged,
                          monitor=self.monitor, is_best=improved, best=self.best.get("value"),
                          lr=self.optimizer.param_groups[-1]["lr"], eta_s=eta())
            self.save_last()
            if self.patience and metrics and self.bad_rounds >= self.patience and not last_round:
                status = "early_stopped"
                self.log.emit("early_stop", step=self.step, epoch=self.epoch, monitor=self.monitor,
                              best=self.best.get("value"), best_step=self.best.get("step"),
                              patience=self.patience)
                break

        if status == "stopped":
            self.save_last()
            weights, _, _ = load_last_checkpoint(self.run_dir) if self.dist.is_main else (None, None, None)
            self.log.emit("stopped", reason=stop_reason, step=self.step, total_steps=self.total_steps,
                          epoch=self.epoch, checkpoint=str(weights) if weights else None)
            weights = D.broadcast_object(weights)
            return TrainResult("stopped", self.run_dir, self.step, self.total_steps, self.epoch, self.best,
                               reason=stop_reason, weights=weights, monitor=self.monitor)
        model_id, final = self._on_main(lambda: self._finish(status)) or (None, None)
        return TrainResult(status, self.run_dir, self.step, self.total_steps, self.epoch, self.best,
                           model_id=model_id, weights=final, monitor=self.monitor)

    # -- the end ------------------------------------------------------------------------------------
    def _finish(self, status: str) -> tuple[str | None, Path | None]:
        from safetensors.torch import load_file

        cdir = self._ckpt_dir()
        best = cdir / "best.safetensors"
        if best.is_file():
            state = load_file(str(best))
            source = "best"
        else:
            state = {k: v.detach().cpu() for k, v in self._eval_model().state_dict().items()}
            source = "last"
        card = self._card(status, source)
        before, after = self.baseline.get(self.monitor), (card["metrics"]["validation"] or {}).get(self.monitor)
        if before is not None and after is not None and ((after < before) if self.mode == "max" else (after > before)):
            msg = (f"the new model's {self.monitor} ({after:.4g}) is worse than the base model's ({before:.4g}) on "
                   "the same validation cases: more or different corrections, fewer epochs or a lower lr may help")
            card.setdefault("warnings", []).append(msg)
            self.log.emit("warning", message=msg)
        try:
            final = save_checkpoint(state, self.run_dir / "model.safetensors", config=self.model_cfg,
                                    metadata={"step": self.best.get("step") or self.step, "kind": "final",
                                              "source": source})
            card["weights_sha256"] = sha256_file(final)
            atomic_write_text(self.run_dir / "card.json", json.dumps(_json_safe(card), indent=2) + "\n")
            atomic_write_text(self.run_dir / "card.md", _card_md(card))
        except OSError as exc:
            if _is_disk_full(exc):
                raise DiskFullError(f"the disk is full (No space left on device) while writing the final model in "
                                    f"{self.run_dir}; the checkpoints in {cdir} are intact") from exc
            raise TrainingError(f"could not write the final model in {self.run_dir}: {exc}") from exc
        model_id = None
        out = self.cfg["output"]
        if out.get("register", True):
            mid = str(out.get("model_id") or out.get("name"))
            try:
                from napari_cinema.model.registry import register_model

                info = register_model(self.run_dir, mid, card={k: card[k] for k in card if k != "metrics_history"},
                                      overwrite=bool(out.get("overwrite_model", True)))
                model_id = info.id
            except Exception as exc:  # registration must not lose a finished run
                warnings.warn(f"the model was trained but not registered as {mid!r}: {exc}", stacklevel=2)
                self.log.emit("warning", message=f"not registered as {mid!r}: {exc}")
        self.log.emit("done", status=status, step=self.step, total_steps=self.total_steps, epoch=self.epoch,
                      best=self.best.get("value"), best_step=self.best.get("step"), monitor=self.monitor,
                      baseline=self.baseline.get(self.monitor) if self.baseline else None,
                      weights=str(final), model_id=model_id, run_dir=str(self.run_dir))
        return model_id, final

    def _card(self, status: str, source: str) -> dict[str, Any]:
        from napari_cinema import __version__ as version  # type: ignore[attr-defined]

        types = {str(s.get("type")) for part in ("train", "val") for s in (self.cfg["data"].get(part) or [])}
        licence, note, cites = licence_for(types)
        base = self.init_from
        # weights that start from other weights (fine-tuning, an MAE encoder) derive from them: their terms come along
        for start, how in ((self.mae_from, "Encoder pre-trained as"), (self.init_from, "Fine-tuned from")):
            if start and start.get("licence"):
                licence, note, cites = inherit_terms((licence, note, cites), start, how)
        split = None
        acdc = [s for part in ("train", "val") for s in (self.cfg["data"].get(part) or [])
                if s.get("type") == "acdc" and s.get("split")]
        if acdc:
            from .datasets import acdc_split, split_file

            split = {"file": "training/splits/acdc.json", "rule": json.loads(split_file().read_text())["rule"],
                     "val_patients": acdc_split("val")}
        out = self.cfg["output"]
        mid = str(out.get("model_id") or out.get("name"))
        desc = out.get("description") or (
            f"{self.task.name.replace('_', ' ')} model ({', '.join(self.task.views)}), "
            f"trained with napari-cinema on {', '.join(self.sources['train'])}")
        cfg_text = yaml.safe_dump(_json_safe(self.model_cfg), sort_keys=True)
        return {
            "id": mid,
            "description": desc,
            "task": {"segmentation": "segmentation", "landmark_heatmap": "landmark_heatmap",
                     "mae": "pretrained"}.get(self.task.name, None) or self._task_id(),
            "views": list(self.task.views),
            "status": status,
            "weights_from": source,
            "training_data": _training_data(base.get("training_data") if base else None, types),
            "data": {"train_sources": self.sources["train"], "val_sources": self.sources["val"],
                     "train": self.task.summary.get("train"), "val": self.task.summary.get("val")},
            "split": split,
            "metrics": {"monitor": self.monitor, "best": self.best.get("value"), "best_step": self.best.get("step"),
                        "best_epoch": self.best.get("epoch"), "validation": self.best.get("metrics") or self.last_val},
            "steps": self.step,
            "total_steps": self.total_steps,
            "epochs_run": self.epoch,
            "weight_average": self._weight_average(source),
            "seed": int(self.cfg.get("seed", 0)),
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "licence": out.get("licence") or licence,
            "licence_note": note,
            "citations": cites,
            "config_sha256": hashlib.sha256(cfg_text.encode()).hexdigest(),
            "base_model": ({k: base[k] for k in ("id", "path", "sha256", "source", "licence")}
                           if base else None),
            "frozen_encoder": bool(base and base.get("frozen_encoder_tensors")),
            "pretrained_encoder": ({k: self.mae_from[k] for k in ("id", "path", "sha256", "licence")}
                                   if self.mae_from else None),
            "baseline": ({"model": base.get("id") or base.get("path") if base else None, "metrics": self.baseline}
                         if self.baseline else None),
            "created": _now(),
            "napari_cinema_version": version if isinstance(version, str) else None,
            "torch_version": torch.__version__,
            "run_dir": str(self.run_dir),
        }

    def _weight_average(self, source: str) -> dict[str, int] | None:
        """How many epoch ends the shipped weights average (the best checkpoint's count when it is shipped)."""
        n = self.best.get("averaged_epochs") if source == "best" else (
            int(self.averaged.n_averaged) if self._averaging() else None)
        return {"from_epoch": int(self.average_from), "epochs": int(n)} if n else None

    def _task_id(self) -> str:
        data = self.cfg["data"]
        if self.task.name == "classification":
            col = str(data.get("class_column"))
            return "classification_cvd" if col == "pathology" else f"classification_{col}"
        if self.task.name == "regression":
            return f"regression_{data.get('regression_column')}"
        return self.task.name


ACDC_CITATION = ("O. Bernard, A. Lalande, C. Zotti, F. Cervenansky, et al. \"Deep Learning Techniques for Automatic "
                 "MRI Cardiac Multi-structures Segmentation and Diagnosis: Is the Problem Solved?\" IEEE Transactions "
                 "on Medical Imaging 37(11):2514-2525, 2018. doi:10.1109/TMI.2018.2837502")


def _weights_facts(path: Path, info: Any) -> dict[str, Any]:
    """Id, hash and terms of weights a run starts from: a registry entry's card, or the card.json of the
    run folder or bundled model the file sits in."""
    card = dict(getattr(info, "card", None) or {})
    if info is None and (path.parent / "card.json").is_file():
        try:
            card = json.loads((path.parent / "card.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            card = {}
    return {"id": info.id if info is not None else card.get("id"), "path": str(path), "sha256": sha256_file(path),
            "source": info.source if info is not None else "file", "licence": card.get("licence"),
            "licence_note": card.get("licence_note"), "citations": card.get("citations") or [],
            "training_data": getattr(info, "training_data", None) or card.get("training_data")}


def _training_data(base: str | None, types: set[str]) -> str:
    """'acdc, mnms' or, fine-tuned, 'base data + new data' (once, when the base saw the same sources)."""
    own = ", ".join(sorted(types))
    return own if not base or base == own or base.startswith(own + " +") else f"{base} + {own}"


def inherit_terms(terms: tuple[str, str, list[str]], start: Mapping[str, Any], how: str
                  ) -> tuple[str, str, list[str]]:
    """(licence, note, citations) of weights trained from ``start`` (a base model or MAE: its card facts)."""
    licence, note, cites = terms
    inherited = str(start.get("licence_note") or "")
    own = "" if note and note in inherited else note  # a fine-tune of a model on the same data says it once
    origin = f"{how} {start.get('id') or start.get('path')} ({start['licence']}):"
    if inherited.startswith(origin):  # another stage of the same model: its origin is already said
        origin = ""
    note = f"{origin} {inherited} {own}".replace("  ", " ").strip()
    return (_stricter_licence(licence, str(start["licence"])), note,
            list(dict.fromkeys([*start.get("citations", []), *cites])))


def _stricter_licence(a: str, b: str) -> str:
    """The more restrictive of two licences: non-commercial beats research-only beats permissive."""
    def rank(lic: str) -> int:
        return 2 if "NC" in lic else 1 if "research" in lic.lower() else 0
    return a if rank(a) >= rank(b) else b


def licence_for(source_types: set[str]) -> tuple[str, str, list[str]]:
    """(licence, note, citations) of weights trained on these source types."""
    notes, cites = [], []
    licence = ("MIT (trained on synthetic phantoms only)" if source_types <= {"phantom"} else
               "research use only (the training data's terms of use: see note)")
    if "acdc" in source_types:
        licence = "CC BY-NC-SA 4.0"
        notes.append("Derived from the ACDC dataset (CC BY-NC-SA 4.0): non-commercial scientific research use only; "
                     "share alike; citing Bernard et al. 2018 is mandatory.")
        cites.append(ACDC_CITATION)
    others = sorted(source_types - {"acdc", "phantom"})
    if others:
        notes.append(f"Also trained on {', '.join(others)} data: their own terms of use apply (research use).")
    if not notes:
        notes.append("Synthetic training data only.")
    return licence, " ".join(notes), cites


def card_markdown(card: Mapping[str, Any]) -> str:
    """The model card as Markdown (card.md) from card.json's fields."""
    return _card_md(card)


def _card_md(card: Mapping[str, Any]) -> str:
    m = card.get("metrics") or {}
    val = m.get("validation") or {}
    lines = [f"# {card['id']}", "", str(card.get("description") or ""), "",
             f"- task: {card.get('task')} ({', '.join(card.get('views') or [])})",
             f"- licence: **{card.get('licence')}**. {card.get('licence_note')}",
             f"- training sources: {'; '.join(card['data']['train_sources'])}",
             f"- validation sources: {'; '.join(card['data']['val_sources']) or 'none'}"]
    if card.get("split"):
        lines.append(f"- ACDC split ({card['split']['file']}): {card['split']['rule']} Held out: "
                     f"{', '.join(card['split']['val_patients'])}")
    lines.append(f"- steps: {card.get('steps')} of {card.get('total_steps')}, epochs {card.get('epochs_run')}, "
                 f"seed {card.get('seed')}, status {card.get('status')}, weights from the {card.get('weights_from')} "
                 "checkpoint")
    if m.get("best") is not None:
        lines.append(f"- best {m.get('monitor')}: {m['best']:.4g} (step {m.get('best_step')})")
    avg = card.get("weight_average")
    if avg:
        first = int(avg["from_epoch"])
        lines.append(f"- weights: the average of the {avg['epochs']} epoch ends {first}-{first + int(avg['epochs']) - 1} "
                     f"(stochastic weight averaging, train.average_from_epoch {first})")
    base = card.get("base_model") or {}
    if base:
        lines.append(f"- fine-tuned from `{base.get('id') or base.get('path')}` (weights sha256 "
                     f"`{base.get('sha256')}`){', encoder frozen' if card.get('frozen_encoder') else ''}")

    def fmt(v: Any) -> str:
        return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    baseline = (card.get("baseline") or {}).get("metrics") or {}
    if baseline:
        base_name = (card.get("baseline") or {}).get("model")
        lines += ["", "## Before / after (same validation cases)", "",
                  f"| metric | base model ({base_name}) | this model |", "|---|---|---|"]
        for k in [k for k in baseline if k.startswith("val_")]:
            lines.append(f"| {k} | {fmt(baseline.get(k))} | {fmt(val.get(k))} |")
    if val:
        lines += ["", "## Validation metrics", "", "| metric | value |", "|---|---|"]
        for k, v in val.items():
            lines.append(f"| {k} | {fmt(v)} |")
    evaluations = card.get("evaluations") or []
    segmentation = [e for e in evaluations if e.get("dice")]
    if segmentation:
        lines += ["", "## End to end (`napari-cinema evaluate`: label-free centring, as in the app)", "",
                  "| data | cases | Dice LV | Dice MYO | Dice RV | Dice mean | HD95 mean mm | LVEF MAE |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in segmentation:
            d, h = e.get("dice") or {}, e.get("hd95_mm") or {}
            lines.append(f"| {e.get('data')} | {e.get('n_cases')} | {fmt(d.get('LV'))} | {fmt(d.get('MYO'))} | "
                         f"{fmt(d.get('RV'))} | {fmt(d.get('mean'))} | {fmt(h.get('mean'))} | "
                         f"{fmt(e.get('LVEF_mae_pct'))} |")
    landmarks = [e for e in evaluations if e.get("landmark_error_mm")]
    if landmarks:
        names = list(dict.fromkeys(k for e in landmarks for k in e["landmark_error_mm"]))
        lines += ["", "## End to end (`napari-cinema evaluate`): landmark error, mm", "",
                  "| data | cases | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for e in landmarks:
            lines.append(f"| {e.get('data')} | {e.get('n_cases')} | "
                         + " | ".join(fmt(e["landmark_error_mm"].get(n)) for n in names) + " |")
    others = [e for e in evaluations if not e.get("dice") and not e.get("landmark_error_mm")]
    if others:
        lines += ["", "## End to end (`napari-cinema evaluate`)", "",
                  "| data | cases | accuracy | AUROC | EF MAE (points) |", "|---|---|---|---|---|"]
        for e in others:
            lines.append(f"| {e.get('data')} | {e.get('n_cases')} | {fmt(e.get('accuracy'))} | "
                         f"{fmt(e.get('auroc'))} | {fmt(e.get('LVEF_mae_pct'))} |")
        notes = {k: v for e in others for k, v in (e.get("notes") or {}).items() if k == "centring"}
        if notes:
            lines += ["", f"Centring: {notes['centring']}."]
    if evaluations:
        lines += ["", "Reproduce: " + "; ".join(f"`{e['command']}`" for e in evaluations if e.get("command"))]
    if card.get("caveat"):
        lines += ["", f"**Caveat (shown in the app):** {card['caveat']}"]
    if card.get("status_note"):
        lines += ["", str(card["status_note"])]
    for w in card.get("warnings") or []:
        lines += ["", f"**Warning:** {w}"]
    if card.get("citations"):
        lines += ["", "## Citation", ""] + [f"- {c}" for c in card["citations"]]
    lines += ["", f"weights sha256: `{card.get('weights_sha256')}`", ""]
    return "\n".join(lines)


def train(config: str | Path | Mapping[str, Any], *, resume: bool = False, run_dir: str | Path | None = None,
          device: str | None = None, progress: str | None = None, overrides: Mapping[str, Any] | None = None,
          on_step: Callable[[Trainer, int], None] | None = None, finish: bool = False) -> TrainResult:
    """Train (or pre-train) from a config; the run folder, metrics log, checkpoints and card are written
    by rank 0 and the finished model is registered (``output.register``).

    Returns a :class:`TrainResult` with status 'done', 'early_stopped' or 'stopped' (a stop file,
    SIGTERM/SIGINT or :meth:`Trainer.request_stop`; the last checkpoint is then written and
    ``resume=True`` continues exactly; ``resume=True, finish=True`` ends such a run instead: its best
    checkpoint becomes the final model, with its card, registered; status 'finished_by_user'). Raises
    ConfigError, DatasetError or TrainingError (DiskFullError) with a message naming the problem.
    """
    if finish and not resume:
        raise ValueError("finish=True ends an interrupted run: it needs resume=True")
    trainer = Trainer(config, resume=resume, run_dir=run_dir, device=device, progress=progress,
                      overrides=overrides, on_step=on_step, finish=finish)
    return trainer.fit()
