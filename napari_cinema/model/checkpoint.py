"""Checkpoints: safetensors weights, their config, hashes, and a loaded model with its task facts.

Weights are only ever read from safetensors files (a header plus raw tensors, no code), so a model file
from anywhere can be inspected and loaded without executing anything. ``torch.load`` is used only for
optimizer/training state files that napari-cinema wrote itself, and then with ``weights_only=True``.

A checkpoint is ``<name>.safetensors`` (fp32 ``state_dict()``, including the fixed ``pos_embed``
parameters) with ``config.yaml`` beside it, in the published CineMA format (``task``, ``data``,
``model``; extra keys tolerated). Our own files also embed the config in the safetensors header, so a
lone ``.safetensors`` of ours stays self-describing.

Public API::

    save_checkpoint(model, path, *, config, metadata) -> Path
    load_weights(model, path, *, strict=True) -> LoadReport          # raises CheckpointError
    read_header(path) -> (shapes, metadata)                           # no tensor data read
    sha256_file(path) -> str                                          # streamed, cached
    describe_config(config, model_id=None) -> dict                    # task, views, classes, ...
    load_model(weights, config=None, *, model_id=None, ...) -> LoadedModel
    save_training_state(path, state) / load_training_state(path)      # our own optimizer state only
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..io.writers import atomic_path, atomic_write_text
from .errors import TASKS, CheckpointError, ModelError
from .factory import apply_overrides
from .factory import to_plain as _plain

__all__ = [
    "CONFIG_NAME",
    "LANDMARK_NAMES",
    "SEGMENTATION_LABELS",
    "TASKS",
    "CheckpointError",
    "LoadReport",
    "LoadedModel",
    "ModelError",
    "apply_overrides",
    "atomic_write_text",
    "cached_sha256",
    "describe_config",
    "find_config",
    "load_model",
    "load_training_state",
    "load_weights",
    "mismatch_message",
    "read_config",
    "read_header",
    "save_checkpoint",
    "save_training_state",
    "sha256_file",
]

CONFIG_NAME = "config.yaml"
# header metadata keys written by save_checkpoint
META_CONFIG = "napari_cinema.config"
META_FORMAT = "napari_cinema.format"
FORMAT_VERSION = "1"

#: Segmentation label convention (ACDC / CineMA): 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity.
SEGMENTATION_LABELS: dict[int, str] = {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
#: Landmarks of the heat-map and coordinate models, in channel / output order.
LANDMARK_NAMES: tuple[str, ...] = ("mv_1", "mv_2", "apex")
#: Task names used in model ids and the registry.
_DATASET_NAMES = {"acdc": "ACDC", "mnms": "M&Ms", "mnms2": "M&Ms-2", "ukb": "UK Biobank", "landmark": "landmark"}
_MAX_LISTED = 8
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary sibling that replaces ``path`` only once complete."""
    with atomic_path(path) as tmp:
        write(tmp)


def _fmt_shape(shape: Sequence[int]) -> str:
    shape = tuple(int(s) for s in shape)
    return f"({shape[0]},)" if len(shape) == 1 else str(shape)


def _listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    more = len(items) - limit
    return shown + (f", ... {more} more" if more > 0 else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else ("es" if word.endswith("h") else "s"))


# --------------------------------------------------------------------------------------------------
# hashing
# --------------------------------------------------------------------------------------------------

_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def _sha_key(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, st.st_size, st.st_mtime_ns


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks; cached per (real path, size, mtime)."""
    key = _sha_key(path)
    with _SHA_LOCK:
        if key in _SHA_CACHE:
            return _SHA_CACHE[key]
    digest = hashlib.sha256()
    with open(key[0], "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _SHA_LOCK:
        _SHA_CACHE[key] = value
    return value


def cached_sha256(path: str | os.PathLike[str]) -> str | None:
    """The SHA-256 of ``path`` if it was already computed for its current size and mtime, else None."""
    try:
        key = _sha_key(path)
    except OSError:
        return None
    with _SHA_LOCK:
        return _SHA_CACHE.get(key)


# --------------------------------------------------------------------------------------------------
# safetensors files
# --------------------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """A hint on what a non-safetensors file is."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return ""
    if head.startswith(b"PK\x03\x04"):
        return (
            "; it looks like a PyTorch pickle/zip checkpoint (.pt/.pth/.ckpt), which is never loaded because"
            " unpickling can run code: convert it to safetensors where it came from"
        )
    if head[:1] == b"\x80":
        return "; it looks like a Python pickle, which is never loaded because unpickling can run code"
    if head.startswith((b"\x89HDF", b"\x93NUMPY")):
        return "; it looks like an HDF5/NumPy file, not safetensors"
    return ""


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and header metadata of a safetensors file, without reading tensor data.

    Raises CheckpointError for a missing, empty, truncated or non-safetensors file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file")
    if path.is_dir():
        raise CheckpointError(path, "is a folder, not a .safetensors file")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "the file is empty")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            shapes = {k: tuple(int(s) for s in f.get_slice(k).get_shape()) for k in f.keys()}
            metadata = dict(f.metadata() or {})
    except CheckpointError:
        raise
    except Exception as exc:  # SafetensorError (rust) and OSError
        detail = str(exc).strip() or type(exc).__name__
        if "incomplete metadata" in detail or "not fully covered" in detail:
            problem = f"truncated or corrupt safetensors file ({detail}); download or copy it again"
        else:
            problem = f"not a valid safetensors file ({detail}){_sniff(path)}"
        raise CheckpointError(path, problem) from None
    return shapes, metadata


def _common_prefix_hint(file_keys: Sequence[str], model_keys: Sequence[str]) -> str:
    """Explain a key-prefix mismatch such as 'module.' or 'model.' in front of every key."""
    if not file_keys or not model_keys:
        return ""
    for prefix in ("module.", "model.", "net.", "network.", "state_dict."):
        if all(k.startswith(prefix) for k in file_keys) and not any(k.startswith(prefix) for k in model_keys):
            return f"; every key in the file starts with {prefix!r}, which the model does not use"
    return ""


@dataclass
class LoadReport:
    """What ``load_weights`` did."""

    path: Path
    sha256: str
    n_tensors: int
    metadata: dict[str, str]
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def mismatch_message(
    missing: Sequence[str],
    unexpected: Sequence[str],
    mismatched: Sequence[tuple[str, Sequence[int], Sequence[int]]],
) -> str:
    """'3 missing keys (a, b, c), 1 shape mismatch (k: file (4, 32) vs model (3, 32))' (first few of each)."""
    parts = []
    if missing:
        parts.append(f"{_plural(len(missing), 'missing key')} ({_listing(list(missing))})")
    if unexpected:
        parts.append(f"{_plural(len(unexpected), 'unexpected key')} ({_listing(list(unexpected))})")
    if mismatched:
        items = [f"{k}: file {_fmt_shape(a)} vs model {_fmt_shape(b)}" for k, a, b in mismatched]
        parts.append(f"{_plural(len(mismatched), 'shape mismatch')} ({_listing(items)})")
    return ", ".join(parts)


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    expected_sha256: str | None = None,
) -> LoadReport:
    """Load a safetensors file into ``model`` in place.

    The header is checked against ``model.state_dict()`` before any tensor is read. With
    ``strict=True`` (default) any missing key, unexpected key or shape mismatch raises a
    CheckpointError listing the first few of each; with ``strict=False`` the matching tensors are
    loaded and the rest reported in the returned LoadReport. ``expected_sha256`` (e.g. the hub's
    LFS hash or the hash recorded at registration) is verified when given.
    """
    from safetensors import safe_open

    path = Path(path)
    file_shapes, metadata = read_header(path)
    digest = sha256_file(path)
    if expected_sha256 and digest.lower() != expected_sha256.lower():
        raise CheckpointError(
            path,
            f"sha256 {digest[:12]}... differs from the expected {expected_sha256[:12]}...: the file is corrupt or"
            " was changed; download or import it again",
        )
    state = model.state_dict()
    model_shapes = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in model_shapes if k not in file_shapes]
    unexpected = [k for k in file_shapes if k not in model_shapes]
    mismatched = [
        (k, file_shapes[k], model_shapes[k]) for k in model_shapes if k in file_shapes and file_shapes[k] != model_shapes[k]
    ]
    if strict and (missing or unexpected or mismatched):
        hint = _common_prefix_hint(list(file_shapes), list(model_shapes)) if missing and unexpected else ""
        raise CheckpointError(
            path, f"does not match the model: {mismatch_message(missing, unexpected, mismatched)}{hint}"
        )
    bad = {k for k, _, _ in mismatched}
    keys = [k for k in model_shapes if k in file_shapes and k not in bad]
    # Copy tensor by tensor into the model's own storage: peak memory stays ~ one model + one tensor.
    try:
        with torch.no_grad(), safe_open(str(path), framework="pt", device="cpu") as f:
            for key in keys:
                target = state[key]
                tensor = f.get_tensor(key)
                if not target.is_floating_point() and tensor.is_floating_point():
                    raise CheckpointError(path, f"{key}: float tensor in the file for an integer buffer")
                target.copy_(tensor)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(path, f"could not read the tensors ({exc}); the file may be corrupt") from None
    return LoadReport(
        path=path,
        sha256=digest,
        n_tensors=len(keys),
        metadata=metadata,
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )


def save_checkpoint(
    model: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.state_dict()`` as fp32 safetensors, and ``config.yaml`` beside it, atomically.

    ``path`` is the ``.safetensors`` file, or a folder (then ``<folder>/model.safetensors``).
    Floating tensors are stored as contiguous fp32 on the CPU; the fixed ``pos_embed`` parameters are
    part of ``state_dict()`` and so are kept. ``metadata`` values are stored as strings (non-strings
    as JSON) in the safetensors header, together with the config as JSON. Returns the weights path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / "model.safetensors"
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        t = value.detach().to("cpu")
        t = t.to(torch.float32) if t.is_floating_point() else t
        tensors[key] = t.contiguous().clone()  # clone: safetensors refuses tensors that share storage
    cfg = _plain(config)
    header: dict[str, str] = {"format": "pt", META_FORMAT: FORMAT_VERSION, META_CONFIG: json.dumps(cfg)}
    for key, value in (metadata or {}).items():
        header[str(key)] = value if isinstance(value, str) else json.dumps(_plain(value))
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    atomic_write_text(path.parent / CONFIG_NAME, yaml.safe_dump(cfg, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------------


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A config.yaml as a plain dict; CheckpointError when it is not a readable YAML mapping."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the config ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise CheckpointError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, Mapping):
        raise CheckpointError(path, "a model config must be a YAML mapping with 'data' and 'model' sections")
    if not isinstance(loaded.get("model"), Mapping):
        raise CheckpointError(path, "the config has no 'model' section")
    return _plain(loaded)


def find_config(weights: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The config of a weights file: ``config.yaml`` beside it, else the one embedded in its header."""
    weights = Path(weights)
    beside = weights.parent / CONFIG_NAME
    if beside.is_file():
        return read_config(beside)
    _, metadata = read_header(weights)
    if META_CONFIG in metadata:
        try:
            cfg = json.loads(metadata[META_CONFIG])
        except json.JSONDecodeError:
            raise CheckpointError(weights, "the config embedded in the file header is not valid JSON") from None
        if isinstance(cfg, dict):
            return cfg
    return None


def _model_kind(config: Mapping[str, Any]) -> str:
    model = config.get("model") or {}
    name = str(model.get("name") or "").lower()
    if name in ("convunetr", "convvit"):
        return name
    if name in ("mae", "cinema", "cinemae"):
        return "mae"
    for kind in ("convunetr", "convvit"):
        if kind in model:
            return kind
    return "mae"


def _views(config: Mapping[str, Any], kind: str) -> tuple[str, ...]:
    views = (config.get("model") or {}).get("views")
    if views is None:
        return ("sax", "lax_2c", "lax_3c", "lax_4c") if kind == "mae" else ()
    return (str(views),) if isinstance(views, str) else tuple(str(v) for v in views)


def describe_config(config: Mapping[str, Any], model_id: str | None = None) -> dict[str, Any]:
    """Task facts of a published-format config.

    Returns ``task`` (one of TASKS, or the config's own task string), ``kind``, ``views``,
    ``classes`` (output order), ``label_map`` {int: name}, ``landmark_names``, ``regression_target``,
    ``regression_mean``, ``regression_std``, ``n_frames``, ``out_chans`` and ``training_data``.
    The id (e.g. ``cinema/landmark_heatmap/lax_4c/0``) breaks ties the config leaves open.
    """
    data = config.get("data") or {}
    model = config.get("model") or {}
    kind = _model_kind(config)
    section = model.get(kind) if isinstance(model.get(kind), Mapping) else {}
    raw_task = str(config.get("task") or "").lower()
    id_task = model_id.split("/")[1] if model_id and model_id.startswith("cinema/") and "/" in model_id[7:] else ""
    data_name = str(data.get("name") or "").lower()
    class_column = data.get("class_column")
    regression_column = data.get("regression_column")
    out_chans = model.get("out_chans")

    if id_task in TASKS:
        task = id_task
    elif raw_task in TASKS and raw_task != "segmentation":
        task = raw_task
    elif kind == "mae" and not raw_task:
        task = "pretrained"
    elif raw_task == "segmentation":
        task = "landmark_heatmap" if data_name == "landmark" else "segmentation"
    elif raw_task == "classification":
        col = str(class_column or "pathology")
        task = "classification_cvd" if col == "pathology" else f"classification_{col}"
    elif raw_task == "regression":
        if data_name == "landmark" or (regression_column is None and out_chans == 6):
            task = "landmark_coordinate"
        else:
            task = f"regression_{regression_column or 'value'}"
    else:
        task = raw_task or {"convunetr": "segmentation", "convvit": "regression", "mae": "pretrained"}[kind]

    info: dict[str, Any] = {
        "task": task,
        "kind": kind,
        "views": _views(config, kind),
        "classes": None,
        "label_map": None,
        "landmark_names": None,
        "regression_target": None,
        "regression_mean": None,
        "regression_std": None,
        "n_frames": int(model.get("n_frames") or 1) if kind == "convvit" else 1,
        "out_chans": None if out_chans is None else int(out_chans),
        "training_data": _DATASET_NAMES.get(data_name, data_name or None),
        "size": (section or {}).get("size") if kind != "mae" else model.get("size"),
    }
    explicit_labels = data.get("label_map") or config.get("label_map")
    if task == "segmentation":
        if isinstance(explicit_labels, Mapping):
            label_map = {int(k): str(v) for k, v in explicit_labels.items()}
        elif out_chans in (None, 4):
            label_map = dict(SEGMENTATION_LABELS)
        else:
            label_map = {i: ("background" if i == 0 else f"class_{i}") for i in range(int(out_chans))}
        info["label_map"] = label_map
        info["classes"] = [label_map[k] for k in sorted(label_map)]
        info["out_chans"] = info["out_chans"] or len(label_map)
    elif task in ("landmark_heatmap", "landmark_coordinate"):
        names = data.get("landmark_names") or list(LANDMARK_NAMES)
        info["landmark_names"] = tuple(str(n) for n in names)
        if task == "landmark_heatmap":
            info["label_map"] = dict(enumerate(info["landmark_names"]))
    elif task.startswith("classification"):
        col = class_column or ("pathology" if task == "classification_cvd" else task.split("_", 1)[-1])
        classes = data.get(col)
        if isinstance(classes, Sequence) and not isinstance(classes, str):
            info["classes"] = [str(c) for c in classes]
            info["label_map"] = dict(enumerate(info["classes"]))
            info["out_chans"] = len(info["classes"])
    elif task.startswith("regression"):
        col = regression_column or task.split("_", 1)[-1]
        info["regression_target"] = col
        stats = data.get(col)
        if isinstance(stats, Mapping):
            info["regression_mean"] = None if stats.get("mean") is None else float(stats["mean"])
            info["regression_std"] = None if stats.get("std") is None else float(stats["std"])
        info["out_chans"] = info["out_chans"] or 1
    return info


# --------------------------------------------------------------------------------------------------
# loaded models
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A network with its weights loaded and everything inference and provenance need."""

    model: nn.Module
    config: dict[str, Any]
    model_id: str
    weights_path: Path
    sha256: str
    task: str
    views: tuple[str, ...]
    classes: list[str] | None = None
    label_map: dict[int, str] | None = None
    regression_target: str | None = None
    regression_mean: float | None = None
    regression_std: float | None = None
    landmark_names: tuple[str, ...] | None = None
    n_frames: int = 1
    training_data: str | None = None
    source: str = "file"
    device: str = "cpu"
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def view(self) -> str:
        """The first (usually the only) view."""
        return self.views[0] if self.views else ""

    def unscale(self, value: Any) -> Any:
        """Regression output back to physical units: ``value * std + mean`` (identity without stats)."""
        if self.regression_mean is None or self.regression_std is None:
            return value
        return value * self.regression_std + self.regression_mean

    def provenance(self) -> dict[str, Any]:
        """JSON-friendly facts for layer metadata and reports (model id, weights hash, label map)."""
        return {
            "model_id": self.model_id,
            "source": self.source,
            "weights": str(self.weights_path),
            "sha256": self.sha256,
            "task": self.task,
            "views": list(self.views),
            "label_map": None if self.label_map is None else {int(k): v for k, v in self.label_map.items()},
            "classes": self.classes,
            "landmark_names": None if self.landmark_names is None else list(self.landmark_names),
        }


def _build(config: dict[str, Any]) -> nn.Module:
    from .factory import build_model

    try:
        return build_model(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"cannot build a network from the config: {exc}") from exc


def load_model(
    weights: str | os.PathLike[str],
    config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    model_id: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
    source: str = "file",
    expected_sha256: str | None = None,
    build: Callable[[dict[str, Any]], nn.Module] | None = None,
) -> LoadedModel:
    """Build the network a config describes, load ``weights`` into it and return a LoadedModel.

    ``config``: a mapping, a path to a config.yaml, or None for the one beside the file (or embedded in
    it). ``overrides`` are dotted keys applied to the config first (e.g. ``{'model.views': 'sax'}``).
    The model is returned in eval mode on ``device``.
    """
    weights = Path(weights)
    if config is None:
        cfg = find_config(weights)
        if cfg is None:
            raise CheckpointError(weights, f"no {CONFIG_NAME} beside the file and none embedded in it: pass a config")
    elif isinstance(config, Mapping):
        cfg = _plain(config)
    else:
        cfg = read_config(config)
    cfg = apply_overrides(cfg, overrides)
    facts = describe_config(cfg, model_id)
    net = (build or _build)(cfg)
    report = load_weights(net, weights, strict=strict, expected_sha256=expected_sha256)
    net.eval()
    net.to(device)
    return LoadedModel(
        model=net,
        config=cfg,
        model_id=model_id or weights.stem,
        weights_path=weights,
        sha256=report.sha256,
        task=facts["task"],
        views=tuple(facts["views"]),
        classes=facts["classes"],
        label_map=facts["label_map"],
        regression_target=facts["regression_target"],
        regression_mean=facts["regression_mean"],
        regression_std=facts["regression_std"],
        landmark_names=facts["landmark_names"],
        n_frames=facts["n_frames"],
        training_data=facts["training_data"],
        source=source,
        device=str(device),
        metadata=report.metadata,
    )


# --------------------------------------------------------------------------------------------------
# training state (our own files only)
# --------------------------------------------------------------------------------------------------


def save_training_state(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write optimizer/scheduler/step state (tensors, numbers, strings, containers) atomically."""
    path = Path(path)
    _atomic_write(path, lambda tmp: torch.save(dict(state), tmp))
    return path


def load_training_state(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by save_training_state, with ``torch.load(weights_only=True)``."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except Exception as exc:
        raise CheckpointError(path, f"not a training-state file napari-cinema can read ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, "not a training-state file (expected a dict)")
    return state
