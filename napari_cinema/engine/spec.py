"""``ModelSpec``: what the inference engine needs to know about a network besides its weights.

The engine is written against a small protocol so that any callable torch module plugs in:

* the module is called with a dict ``{view: tensor}``; tensors are ``(B, C, x, y, z)`` for 3-D
  models and ``(B, C, x, y)`` for 2-D ones (LAX, or per-slice SAX models);
* it returns either ``{view: logits}`` with logits ``(B, out, *spatial)`` (ConvUNetR: segmentation,
  landmark heat-maps) or a tensor ``(B, out)`` (ConvViT: classification, regression, landmark
  coordinates).

A spec is read from the published CineMA configuration format (``shared/spec/configs/*.yaml``,
the hub's ``config.yaml``) with :meth:`ModelSpec.from_config`, or from a registry ``LoadedModel``
with :meth:`ModelSpec.from_loaded`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

TASKS = ("segmentation", "landmark_heatmap", "landmark_coordinate", "classification", "regression")
MODEL_VIEWS = ("sax", "lax_2c", "lax_3c", "lax_4c")
LANDMARK_NAMES = ("mv_1", "mv_2", "apex")
SEGMENTATION_LABELS = {0: "background", 1: "RV", 2: "MYO", 3: "LV"}

# Reference geometry (CINEMA_COMPAT.md, "Views and geometry"), in the model's (x, y[, z]) order.
DEFAULT_SPACING = {"sax": (1.0, 1.0, 10.0), "lax": (1.0, 1.0)}
DEFAULT_PATCH = {"sax": (192, 192, 16), "lax": (256, 256)}


def view_group(view: str) -> str:
    """'sax' or 'lax' (all long-axis views share geometry)."""
    return "sax" if view.startswith("sax") else "lax"


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _token_px(model: Mapping[str, Any], name: str) -> int:
    """In-plane input pixels per ViT token: the first conv stride times each conv stage's scale
    (the CineMA defaults, 4 x 2 x 2 = 16, where the config leaves them out)."""
    sub = _get(model, name) if name else None
    sub = sub if isinstance(sub, Mapping) else model
    patch = _get(sub, "enc_patch_size") or _get(sub, "patch_size") or [4]
    scale = _get(sub, "enc_scale_factor") or _get(sub, "scale_factor") or [2]
    n_conv = len(_get(sub, "enc_conv_chans") or [64, 128])
    return int(patch[0]) * int(scale[0]) ** n_conv


@dataclass(frozen=True)
class ModelSpec:
    """Inference contract of one network for one view.

    ``spacing`` and ``patch_size`` are in the model's axis order (x, y[, z]); their length is the
    network's dimensionality (2: each slice is an input, 3: each frame volume is an input).
    ``intensity_scope``: 'input' scales each network input to [0, 1] (the reference: a slice for 2-D
    models, a volume for 3-D ones, both frames together for ED/ES pairs); 'volume' scales each
    frame's whole volume (for per-slice models trained that way). ``token_px``: input pixels per
    ViT token in plane (the grid that shifted passes of :func:`run_segmentation` straddle).
    """

    task: str
    view: str
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    in_chans: int = 1
    out_chans: int = 4
    n_frames: int = 1
    classes: tuple[str, ...] | None = None
    regression_target: str | None = None
    regression_mean: float | None = None
    regression_std: float | None = None
    model_id: str | None = None
    sha256: str | None = None
    label_map: Mapping[int, str] | None = None
    landmark_names: tuple[str, ...] = LANDMARK_NAMES
    intensity_scope: str = "input"
    token_px: int = 16
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.view not in MODEL_VIEWS:
            raise ValueError(f"unknown model view {self.view!r}; expected one of {MODEL_VIEWS}")
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "patch_size", tuple(int(s) for s in self.patch_size))
        if len(self.patch_size) not in (2, 3) or len(self.spacing) != len(self.patch_size):
            raise ValueError(
                f"spacing {self.spacing} and patch_size {self.patch_size} must both have 2 or 3 elements"
            )
        if any(s <= 0 for s in self.spacing) or any(p <= 0 for p in self.patch_size):
            raise ValueError(f"spacing {self.spacing} and patch_size {self.patch_size} must be positive")
        if view_group(self.view) == "lax" and len(self.patch_size) != 2:
            raise ValueError(f"{self.view} models are 2-D; got patch_size {self.patch_size}")
        if int(self.token_px) < 1:
            raise ValueError(f"token_px must be positive, got {self.token_px}")
        if self.intensity_scope not in ("input", "volume"):
            raise ValueError(f"intensity_scope must be 'input' or 'volume', got {self.intensity_scope!r}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.task == "segmentation" and self.label_map is None:
            object.__setattr__(self, "label_map", dict(SEGMENTATION_LABELS))

    # -- derived ----------------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """2 for per-slice (LAX or 2-D SAX) networks, 3 for volume networks."""
        return len(self.patch_size)

    @property
    def view_group(self) -> str:
        return view_group(self.view)

    @property
    def input_channels(self) -> int:
        """Channels of the network input: ``in_chans * n_frames`` (ED+ES models take 2)."""
        return self.in_chans * self.n_frames

    def with_ids(self, model_id: str | None = None, sha256: str | None = None) -> "ModelSpec":
        return replace(self, model_id=model_id or self.model_id, sha256=sha256 or self.sha256)

    # -- constructors -----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], view: str | None = None, *,
                    model_id: str | None = None, sha256: str | None = None) -> "ModelSpec":
        """Read the published config format (``task``, ``data``, ``model`` sections).

        ``view`` picks one of ``model.views``; it may be omitted when the model has a single view.
        Extra keys are tolerated. Landmark models are recognised from ``data.name: landmark``
        (heat-maps are published as task 'segmentation', coordinates as 'regression').
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        data = _get(config, "data", {}) or {}
        model = _get(config, "model", {}) or {}
        views = _get(model, "views")
        if views is None:
            raise ValueError("config has no model.views")
        views = [views] if isinstance(views, str) else [str(v) for v in views]
        if view is None:
            if len(views) != 1:
                raise ValueError(f"the model has several views {views}; pass view=")
            view = views[0]
        if view not in views:
            raise ValueError(f"view {view!r} is not among the model's views {views}")
        group = view_group(view)
        vdata = _get(data, view)
        if not isinstance(vdata, Mapping):
            vdata = _get(data, group)
        if not isinstance(vdata, Mapping):
            vdata = {}
        patch = tuple(int(p) for p in (_get(vdata, "patch_size") or DEFAULT_PATCH[group]))
        ndim = len(patch)
        spacing = _get(vdata, "spacing") or DEFAULT_SPACING[group]
        spacing = tuple(float(s) for s in list(spacing)[:ndim])
        if len(spacing) < ndim:
            spacing = spacing + DEFAULT_SPACING["sax"][len(spacing):ndim]
        in_chans = int(_get(vdata, "in_chans", 1) or 1)
        scope = str(_get(vdata, "intensity_scope", "input") or "input")
        n_frames = int(_get(model, "n_frames", 1) or 1)

        raw_task = str(_get(config, "task", "") or "").lower()
        name = str(_get(model, "name", "") or "").lower()
        data_name = str(_get(data, "name", "") or "").lower()
        class_col = _get(data, "class_column")
        reg_col = _get(data, "regression_column")
        out = _get(model, "out_chans")
        classes = None
        reg_mean = reg_std = None
        if raw_task in TASKS and raw_task not in ("segmentation", "regression"):
            task = raw_task
        elif raw_task == "segmentation" or (not raw_task and name == "convunetr"):
            task = "landmark_heatmap" if data_name == "landmark" else "segmentation"
        elif raw_task == "regression":
            task = "landmark_coordinate" if (data_name == "landmark" or reg_col is None and out == 6) else "regression"
        elif raw_task == "classification" or class_col is not None:
            task = "classification"
        else:
            raise ValueError(
                f"config task {raw_task or None!r} (model {name or None!r}) is not an inference task the engine "
                f"runs; expected one of {TASKS}"
            )
        if task == "classification":
            if class_col is None or _get(data, class_col) is None:
                raise ValueError("classification config has no data.class_column list of classes")
            classes = tuple(str(c) for c in _get(data, class_col))
            out = len(classes)
        elif task == "regression":
            if reg_col is not None:
                stats = _get(data, reg_col)
                if isinstance(stats, Mapping):
                    reg_mean = None if stats.get("mean") is None else float(stats["mean"])
                    reg_std = None if stats.get("std") is None else float(stats["std"])
            out = 1 if out is None else out
        elif task == "landmark_heatmap":
            out = 3 if out is None else out
        elif task == "landmark_coordinate":
            out = 6 if out is None else out
        elif out is None:
            out = 4
        return cls(
            task=task, view=view, spacing=spacing, patch_size=patch, in_chans=in_chans,
            out_chans=int(out), n_frames=n_frames, classes=classes,
            regression_target=None if reg_col is None else str(reg_col),
            regression_mean=reg_mean, regression_std=reg_std, model_id=model_id, sha256=sha256,
            intensity_scope=scope, token_px=_token_px(model, name),
        )

    @classmethod
    def from_loaded(cls, loaded: Any, view: str | None = None) -> "ModelSpec":
        """From a registry ``LoadedModel`` (fields model, config, model_id, sha256, classes, ...).

        The config gives the geometry; explicit fields of ``loaded`` (classes, label_map,
        regression mean/std, view) win over the config when present.
        """
        config = _get(loaded, "config")
        if config is None:
            raise ValueError("the loaded model carries no config")
        if view is None:
            views = _get(loaded, "views")
            if isinstance(views, str):
                view = views
            elif views is not None and len(views) == 1:
                view = list(views)[0]
            else:
                view = _get(loaded, "view") or None
        spec = cls.from_config(config, view, model_id=_get(loaded, "model_id"), sha256=_get(loaded, "sha256"))
        changes: dict[str, Any] = {}
        classes = _get(loaded, "classes")
        if spec.task == "classification" and classes:
            changes["classes"] = tuple(str(c) for c in classes)
        label_map = _get(loaded, "label_map")
        if spec.task == "segmentation" and isinstance(label_map, Mapping) and label_map:
            changes["label_map"] = dict(label_map)
        for key in ("regression_mean", "regression_std"):
            value = _get(loaded, key)
            if spec.task == "regression" and value is not None:
                changes[key] = float(value)
        target = _get(loaded, "regression_target")
        if spec.task == "regression" and target:
            changes["regression_target"] = str(target)
        names = _get(loaded, "landmark_names")
        if spec.task.startswith("landmark") and names:
            changes["landmark_names"] = tuple(str(n) for n in names)
        return replace(spec, **changes) if changes else spec


def resolve_model(model: Any, spec: "ModelSpec | None" = None, view: str | None = None) -> tuple[Any, "ModelSpec"]:
    """(callable module, spec) from what a caller passed.

    ``model`` is a torch module (then ``spec`` is required unless the module carries the factory's
    ``config``), or a registry ``LoadedModel`` (an object with ``model`` and ``config`` fields), whose
    spec is read with :meth:`ModelSpec.from_loaded` unless ``spec`` is given.
    """
    loaded = None
    module = model
    if not callable(model) and _get(model, "model") is not None:
        loaded, module = model, _get(model, "model")
    if not callable(module):
        raise TypeError(f"the model must be a callable torch module, got {type(module).__name__}")
    if spec is None:
        if loaded is not None and _get(loaded, "config") is not None:
            spec = ModelSpec.from_loaded(loaded, view)
        elif isinstance(getattr(module, "config", None), Mapping):
            spec = ModelSpec.from_config(module.config, view)
        else:
            raise ValueError("no ModelSpec given and the model carries no config to read one from")
    return module, spec
