"""Build CineMA-family networks from the published configuration format.

A config is a mapping with (at least) ``data`` and ``model`` sections, as in the hub's
``config.yaml`` files and ``shared/spec/configs/*.yaml``; extra keys are ignored::

    task: segmentation              # segmentation | classification | regression (absent for the MAE)
    grad_ckpt: true                 # activation checkpointing; only acts while training
    data:
      sax: {patch_size: [192, 192, 16], in_chans: 1, spacing: [1, 1, 10]}
      lax: {patch_size: [256, 256], in_chans: 1, spacing: [1, 1]}
      class_column: pathology       # classification: out_chans = len(data[class_column])
      pathology: [DCM, HCM, MINF, NOR, RV]
      regression_column: ef         # regression: out_chans = 1, z-scoring from data[ef]
      ef: {mean: 27.7, std: 10.8}
    model:
      name: convunetr               # convunetr | convvit | mae (absent in the MAE config)
      views: sax                    # a view name or a list of them
      out_chans: 4
      n_frames: 1                   # ConvViT only
      convunetr:                    # the section named after the model
        size: base                  # a SIZE_PRESETS name, or a mapping of its keys
        enc_patch_size: [4, 4, 1]
        ...

Per view, ``data.<view>`` is used when present, else ``data.sax`` for 'sax' and ``data.lax`` for the
LAX views. The view's dimensionality is ``len(patch_size)``: a 2-element SAX ``patch_size`` builds a
2-D (per-slice) SAX model. Patch sizes / scale factors are given for 3-D and cut to the view's dims.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from .convunetr import ConvUNetR
from .convvit import ConvViT
from .mae import CineMAE

# ViT widths. tiny/base/large/huge are the reference presets (all published weights are 'base');
# mini/small/medium are ours, for fast CPU models through the same code.
SIZE_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(enc_embed_dim=16, enc_depth=1, enc_n_heads=2, dec_embed_dim=16, dec_depth=1, dec_n_heads=2),
    "mini": dict(enc_embed_dim=96, enc_depth=2, enc_n_heads=3, dec_embed_dim=64, dec_depth=1, dec_n_heads=2),
    "small": dict(enc_embed_dim=192, enc_depth=4, enc_n_heads=3, dec_embed_dim=128, dec_depth=2, dec_n_heads=4),
    "medium": dict(enc_embed_dim=384, enc_depth=6, enc_n_heads=6, dec_embed_dim=256, dec_depth=4, dec_n_heads=8),
    "base": dict(enc_embed_dim=768, enc_depth=12, enc_n_heads=12, dec_embed_dim=512, dec_depth=8, dec_n_heads=16),
    "large": dict(enc_embed_dim=1024, enc_depth=24, enc_n_heads=16, dec_embed_dim=512, dec_depth=8, dec_n_heads=16),
    "huge": dict(enc_embed_dim=1280, enc_depth=32, enc_n_heads=16, dec_embed_dim=512, dec_depth=8, dec_n_heads=16),
}

MODEL_KINDS = ("convunetr", "convvit", "mae")
MAE_VIEWS = ["sax", "lax_2c", "lax_3c", "lax_4c"]

# defaults of the reference fine-tuning configs
_DEFAULTS: dict[str, Any] = {
    "size": "base",
    "enc_patch_size": [4, 4, 1],
    "enc_scale_factor": [2, 2, 1],
    "enc_conv_chans": [64, 128],
    "enc_conv_n_blocks": 2,
    "dec_chans": [32, 64, 128, 256, 512],
    "dec_patch_size": [2, 2, 1],
    "dec_scale_factor": [2, 2, 1],
    "dec_kernel_size": 3,
    "dec_n_blocks": 2,
    "mlp_ratio": 4,
    "dropout": 0.0,
    "drop_path": 0.0,
}


# --------------------------------------------------------------------------------------------------
# config handling
# --------------------------------------------------------------------------------------------------


def to_plain(obj: Any) -> Any:
    """Deep copy into plain dicts/lists/scalars, YAML- and JSON-safe (tuples -> lists, numpy -> Python,
    paths -> str); also accepts OmegaConf-like mappings."""
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars
        return obj.tolist()
    return copy.deepcopy(obj)


def load_config(path_or_dict: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A config as a plain nested dict, from a YAML file or a mapping (deep-copied)."""
    if isinstance(path_or_dict, Mapping):
        return to_plain(path_or_dict)
    with Path(path_or_dict).open(encoding="utf-8") as f:
        loaded = yaml.safe_load(f)
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path_or_dict}: a config must be a YAML mapping")
    return to_plain(loaded)


def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``config`` with dotted-key overrides applied, e.g. ``{'model.views': 'sax'}``."""
    out = to_plain(config)
    for key, value in (overrides or {}).items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = to_plain(value)
    return out


def model_kind(config: Mapping[str, Any]) -> str:
    """'convunetr', 'convvit' or 'mae' for a config."""
    model = config.get("model") or {}
    name = model.get("name")
    if name is not None:
        name = str(name).lower()
        if name in ("mae", "cinema", "cinemae"):
            return "mae"
        if name in MODEL_KINDS:
            return name
        raise ValueError(f"unknown model.name {name!r}; expected one of {MODEL_KINDS}")
    for kind in ("convunetr", "convvit"):
        if kind in model:
            return kind
    return "mae"


def config_views(config: Mapping[str, Any]) -> list[str]:
    """``model.views`` as a list (a single name is allowed); MAE default: all four views."""
    views = (config.get("model") or {}).get("views")
    if views is None:
        if model_kind(config) == "mae":
            return list(MAE_VIEWS)
        raise ValueError("config has no model.views")
    return [views] if isinstance(views, str) else [str(v) for v in views]


def view_data(config: Mapping[str, Any], view: str) -> dict[str, Any]:
    """The data section of one view: ``data.<view>``, else ``data.sax`` / ``data.lax``."""
    data = config.get("data") or {}
    if isinstance(data.get(view), Mapping):
        return dict(data[view])
    key = "sax" if view.startswith("sax") else "lax"
    if isinstance(data.get(key), Mapping):
        return dict(data[key])
    raise ValueError(f"config has no data.{view} or data.{key} section (patch_size, in_chans)")


def model_section(config: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture settings: ``model.<name>`` merged over the reference defaults.

    The MAE config keeps them directly under ``model`` and names the first stride ``patch_size``
    and the later ones ``scale_factor``.
    """
    kind = model_kind(config)
    model = dict(config.get("model") or {})
    section = dict(_DEFAULTS)
    if kind == "mae":
        sub = {k: v for k, v in model.items() if k not in ("name", "views")}
        if "patch_size" in sub:
            sub.setdefault("enc_patch_size", sub["patch_size"])
        if "scale_factor" in sub:
            sub.setdefault("enc_scale_factor", sub["scale_factor"])
        nested = model.get("mae")
        if isinstance(nested, Mapping):
            sub.update(nested)
    else:
        sub = dict(model.get(kind) or {})
    section.update({k: v for k, v in sub.items() if v is not None})
    return section


def vit_size(section: Mapping[str, Any]) -> dict[str, int]:
    """ViT widths from ``size`` (preset name or mapping), with explicit per-key overrides."""
    size = section.get("size", "base")
    if isinstance(size, Mapping):
        widths = dict(SIZE_PRESETS["base"])
        widths.update({k: int(v) for k, v in size.items()})
    else:
        if size not in SIZE_PRESETS:
            raise ValueError(f"unknown size {size!r}; presets: {sorted(SIZE_PRESETS)}")
        widths = dict(SIZE_PRESETS[size])
    for key in list(widths):
        if section.get(key) is not None:
            widths[key] = int(section[key])
    return widths


def config_out_chans(config: Mapping[str, Any]) -> int:
    """Output channels as the reference derives them.

    ConvViT: ``len(data[data.class_column])`` for classification, 1 with ``data.regression_column``,
    else ``model.out_chans`` (e.g. 6 landmark coordinates). ConvUNetR: ``model.out_chans``.
    """
    data = config.get("data") or {}
    model = config.get("model") or {}
    if model_kind(config) == "convvit":
        if data.get("class_column") is not None:
            return len(data[data["class_column"]])
        if data.get("regression_column") is not None:
            return 1
    out = model.get("out_chans")
    if out is None:
        raise ValueError("config gives no model.out_chans (nor a data.class_column / data.regression_column)")
    return int(out)


def task_metadata(config: Mapping[str, Any]) -> dict[str, Any]:
    """What an inference engine needs besides the weights.

    Keys: ``kind``, ``task``, ``views``, ``image_size`` {view: size}, ``in_chans`` {view: int},
    ``spacing`` {view: list | None}, ``n_frames``, ``out_chans`` (None for the MAE),
    ``class_column`` / ``class_names`` (classification), ``regression_column`` /
    ``regression_mean`` / ``regression_std`` (z-scored regression; un-z-scoring is
    ``out * std + mean`` and belongs to the inference engine).
    """
    kind = model_kind(config)
    data = config.get("data") or {}
    model = config.get("model") or {}
    views = config_views(config)
    meta: dict[str, Any] = {
        "kind": kind,
        "task": config.get("task"),
        "views": views,
        "image_size": {v: tuple(int(s) for s in view_data(config, v)["patch_size"]) for v in views},
        "in_chans": {v: int(view_data(config, v).get("in_chans", 1)) for v in views},
        "spacing": {v: view_data(config, v).get("spacing") for v in views},
        "n_frames": int(model.get("n_frames") or 1) if kind == "convvit" else 1,
        "out_chans": None if kind == "mae" else config_out_chans(config),
        "class_column": None,
        "class_names": None,
        "regression_column": None,
        "regression_mean": None,
        "regression_std": None,
    }
    if kind == "convvit" and data.get("class_column") is not None:
        meta["class_column"] = data["class_column"]
        meta["class_names"] = [str(c) for c in data[data["class_column"]]]
    if kind == "convvit" and data.get("regression_column") is not None:
        col = data["regression_column"]
        meta["regression_column"] = col
        stats = data.get(col)
        if isinstance(stats, Mapping):
            meta["regression_mean"] = float(stats["mean"]) if stats.get("mean") is not None else None
            meta["regression_std"] = float(stats["std"]) if stats.get("std") is not None else None
    return meta


# --------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------


def _per_view(value: Any, views: list[str], dims: dict[str, int]) -> dict[str, list[int]]:
    """A size given once for 3-D (cut to each view's dims) or as a {view: size} mapping."""
    if isinstance(value, Mapping):
        return {v: [int(s) for s in value[v]][: dims[v]] for v in views}
    if isinstance(value, int):
        return {v: [int(value)] * dims[v] for v in views}
    return {v: [int(s) for s in value][: dims[v]] for v in views}


def build_model(
    config: str | Path | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    grad_ckpt: bool | None = None,
) -> nn.Module:
    """Build the ConvUNetR, ConvViT or MAE described by ``config`` (random weights).

    Args:
        config: a config mapping (published format) or a path to its YAML.
        overrides: dotted-key overrides applied first, e.g. ``{'model.views': 'sax'}``.
        grad_ckpt: activation checkpointing in the transformer/conv blocks; default: the config's
            top-level ``grad_ckpt`` (False when absent). It only acts in training mode with
            gradients enabled, so inference is never slowed by it.

    The returned module carries ``views``, ``out_chans`` (not the MAE), ``image_size_dict``,
    ``in_chans_dict``, ``config`` (the resolved config), ``kind``, ``task``, ``metadata``
    (:func:`task_metadata`), and for ConvViT ``class_names``, ``regression_mean``, ``regression_std``.
    """
    cfg = apply_overrides(load_config(config), overrides)
    kind = model_kind(cfg)
    meta = task_metadata(cfg)
    views = meta["views"]
    section = model_section(cfg)
    widths = vit_size(section)
    image_size = {v: list(meta["image_size"][v]) for v in views}
    dims = {v: len(image_size[v]) for v in views}
    for v in views:
        if dims[v] not in (2, 3):
            raise ValueError(f"view {v}: patch_size {image_size[v]} must have 2 or 3 elements")
    in_chans = {v: int(section.get("in_chans") or meta["in_chans"][v]) for v in views}
    enc_patch = _per_view(section["enc_patch_size"], views, dims)
    enc_scale = _per_view(section["enc_scale_factor"], views, dims)
    common = dict(
        enc_patch_size_dict=enc_patch,
        enc_scale_factor_dict=enc_scale,
        enc_conv_chans=[int(c) for c in section["enc_conv_chans"]],
        enc_conv_n_blocks=int(section["enc_conv_n_blocks"]),
        enc_embed_dim=widths["enc_embed_dim"],
        enc_depth=widths["enc_depth"],
        enc_n_heads=widths["enc_n_heads"],
        mlp_ratio=float(section["mlp_ratio"]),
    )
    model: nn.Module
    if kind == "convunetr":
        model = ConvUNetR(
            image_size_dict=image_size,
            in_chans_dict=in_chans,
            out_chans=meta["out_chans"],
            dec_chans=[int(c) for c in section["dec_chans"]],
            dec_patch_size_dict=_per_view(section["dec_patch_size"], views, dims),
            dec_scale_factor_dict=_per_view(section["dec_scale_factor"], views, dims),
            dec_kernel_size=int(section["dec_kernel_size"]),
            dec_n_blocks=int(section["dec_n_blocks"]),
            dropout=float(section["dropout"]),
            drop_path=float(section["drop_path"]),
            **common,
        )
    elif kind == "convvit":
        model = ConvViT(
            image_size_dict=image_size,
            in_chans_dict=in_chans,
            n_frames=meta["n_frames"],
            out_chans=meta["out_chans"],
            drop_path=float(section["drop_path"]),
            **common,
        )
    else:
        model = CineMAE(
            image_size_dict=image_size,
            in_chans_dict=in_chans,
            dec_embed_dim=widths["dec_embed_dim"],
            dec_depth=widths["dec_depth"],
            dec_n_heads=widths["dec_n_heads"],
            mask_ratio=float(section.get("mask_ratio", 0.75)),
            norm_target=bool(section.get("norm_target", False)),
            **common,
        )
    enable = bool(cfg.get("grad_ckpt", False)) if grad_ckpt is None else bool(grad_ckpt)
    model.set_grad_ckpt(enable)
    model.config = cfg
    model.kind = kind
    model.task = meta["task"]
    model.metadata = meta
    if kind == "convvit":
        model.class_names = meta["class_names"]
        model.regression_column = meta["regression_column"]
        model.regression_mean = meta["regression_mean"]
        model.regression_std = meta["regression_std"]
    return model


def count_parameters(model: nn.Module) -> int:
    """All parameters, including the fixed ``pos_embed`` ones (as the published counts)."""
    return sum(p.numel() for p in model.parameters())
