"""The model registry: every model napari-cinema can run, under one id each.

Sources:
- ``bundled``: shipped with the package, ``napari_cinema/models/<id>/`` holding ``model.safetensors``,
  ``config.yaml`` and ``card.md`` / ``card.json``;
- ``published``: the CineMA checkpoints on the hub, ``cinema/<task>/<data>_<view>/<seed>`` and
  ``cinema/pretrained`` (available = cached in the Hugging Face cache, or imported by hand);
- ``user`` / ``imported``: fine-tuned runs and imported files, in the user models folder
  ``$NAPARI_CINEMA_HOME/models`` (default ``platformdirs.user_data_dir('napari-cinema')/models``), one
  folder per id with the same three files. ``card.json`` records the source, the file's SHA-256 and
  where it came from.

Public API (module functions use the default locations, read from the environment at each call)::

    list_models(task=None, view=None, source=None) -> list[ModelInfo]
    get_model_info(model_id) -> ModelInfo                      # UnknownModel with close matches
    load_model(model_id, device='cpu', ...) -> LoadedModel
    register_model(run_dir_or_files, model_id, ...) -> ModelInfo
    import_model(file, model_id=None, config=None, overwrite=False) -> ModelInfo
    find_default(task='segmentation', view='sax') -> str | None
    ModelRegistry(bundled_dir=..., user_dir=..., cache_dir=...)  # the same, with explicit folders
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import hub
from .checkpoint import (
    CONFIG_NAME,
    CheckpointError,
    LoadedModel,
    ModelError,
    apply_overrides,
    cached_sha256,
    describe_config,
    find_config,
    load_model as _load_checkpoint,
    load_weights,
    read_config,
    read_header,
    sha256_file,
)

__all__ = [
    "SOURCES",
    "ModelInfo",
    "ModelRegistry",
    "RegistryError",
    "UnknownModel",
    "bundled_models_dir",
    "find_default",
    "get_model_info",
    "import_model",
    "list_models",
    "load_model",
    "preference",
    "register_model",
    "user_models_dir",
]

SOURCES = ("bundled", "published", "user", "imported")
WEIGHTS_NAME = "model.safetensors"
CARD_JSON = "card.json"
CARD_MD = "card.md"
_RUN_WEIGHTS = ("model.safetensors", "best.safetensors", "final.safetensors", "last.safetensors")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
SOURCE_RANK = {"bundled": 0, "user": 1, "imported": 2, "published": 3}


def preference(info: "ModelInfo") -> tuple:
    """Sort key of the models for one task and view, the default first: available ones, a card with
    ``default: true``, not ones whose card asks to be picked by hand (``opt_in``), bundled before user,
    imported and published ones, seed 0 first."""
    return (not info.available, not info.card.get("default", False), bool(info.card.get("opt_in")),
            SOURCE_RANK.get(info.source, 9), info.seed or 0, info.id)


class RegistryError(ModelError):
    """A registry operation a user can fix (bad id, existing id, missing config)."""


class UnknownModel(RegistryError):
    """No model has this id; the message lists close matches."""

    def __init__(self, model_id: str, suggestions: Sequence[str]):
        self.model_id = model_id
        self.suggestions = list(suggestions)
        hint = (f"; did you mean {', '.join(self.suggestions)}?" if self.suggestions
                else "; `napari-cinema models list` shows the known ids")
        super().__init__(f"unknown model {model_id!r}{hint}")


def user_models_dir() -> Path:
    """``$NAPARI_CINEMA_HOME/models``, else ``platformdirs.user_data_dir('napari-cinema')/models``."""
    home = os.environ.get("NAPARI_CINEMA_HOME")
    if home:
        return Path(os.path.expanduser(home)) / "models"
    try:
        from platformdirs import user_data_dir
    except ImportError:  # platformdirs comes with napari; keep a sane fallback
        return Path.home() / ".local" / "share" / "napari-cinema" / "models"
    return Path(user_data_dir("napari-cinema")) / "models"


def bundled_models_dir() -> Path:
    """``napari_cinema/models``: the models shipped with the package."""
    return Path(__file__).resolve().parents[1] / "models"


@dataclass
class ModelInfo:
    """One registry entry."""

    id: str
    source: str  # bundled | published | user | imported
    task: str
    views: tuple[str, ...]
    available: bool
    path: Path | None = None  # the weights file, when available
    config_path: Path | None = None
    classes: list[str] | None = None
    label_map: dict[int, str] | None = None
    landmark_names: tuple[str, ...] | None = None
    training_data: str | None = None
    regression_target: str | None = None
    regression_mean: float | None = None
    regression_std: float | None = None
    sha256: str | None = None  # recorded at registration, the hub's LFS hash, or computed when loaded
    description: str = ""
    seed: int | None = None
    location: str = ""  # where the weights are: 'package', 'hf-cache', 'user-dir', or '' when not available
    hub_files: dict[str, str] | None = None  # published: repo, weights, config
    card: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why a present entry cannot be used

    @property
    def view(self) -> str:
        return self.views[0] if self.views else ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (paths as strings, label-map keys as ints)."""
        return {
            "id": self.id,
            "source": self.source,
            "task": self.task,
            "views": list(self.views),
            "available": self.available,
            "path": None if self.path is None else str(self.path),
            "config_path": None if self.config_path is None else str(self.config_path),
            "classes": self.classes,
            "label_map": None if self.label_map is None else {int(k): v for k, v in self.label_map.items()},
            "landmark_names": None if self.landmark_names is None else list(self.landmark_names),
            "training_data": self.training_data,
            "regression_target": self.regression_target,
            "regression_mean": self.regression_mean,
            "regression_std": self.regression_std,
            "sha256": self.sha256,
            "description": self.description,
            "seed": self.seed,
            "location": self.location,
            "hub_files": self.hub_files,
            "problem": self.problem,
        }


_TASK_WORDS = {
    "segmentation": "ventricle segmentation",
    "landmark_heatmap": "landmark heat-maps (mitral valve hinges, apex)",
    "landmark_coordinate": "landmark coordinates (mitral valve hinges, apex)",
    "classification_cvd": "cardiovascular disease classification",
    "classification_sex": "sex classification",
    "classification_vendor": "scanner vendor classification",
    "regression_ef": "ejection fraction regression",
    "regression_bmi": "BMI regression",
    "regression_age": "age regression",
    "pretrained": "masked-autoencoder foundation model",
}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _read_card(folder: Path) -> dict[str, Any]:
    card: dict[str, Any] = {}
    path = folder / CARD_JSON
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                card = loaded
        except (OSError, json.JSONDecodeError):
            card = {}
    md = folder / CARD_MD
    if md.is_file() and not card.get("description"):
        try:
            for line in md.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    card["description"] = line
                    break
        except OSError:
            pass
    return card


def _info_from_facts(model_id: str, source: str, facts: Mapping[str, Any], **extra: Any) -> ModelInfo:
    return ModelInfo(
        id=model_id,
        source=source,
        task=facts["task"],
        views=tuple(facts["views"]),
        classes=facts["classes"],
        label_map=facts["label_map"],
        landmark_names=facts["landmark_names"],
        training_data=facts["training_data"],
        regression_target=facts["regression_target"],
        regression_mean=facts["regression_mean"],
        regression_std=facts["regression_std"],
        **extra,
    )


def _check_new_id(model_id: str) -> None:
    if not isinstance(model_id, str) or len(model_id) > 200 or not _ID_RE.match(model_id):
        raise RegistryError(
            f"invalid model id {model_id!r}: use letters, digits, '.', '_', '-' and '/' between parts"
        )
    if model_id.startswith(hub.PREFIX) and not hub.is_published_id(model_id):
        raise RegistryError(
            f"model ids under {hub.PREFIX!r} are reserved for the published CineMA checkpoints;"
            f" {model_id!r} is not one of them"
        )


class ModelRegistry:
    """The registry over explicit folders (the module functions use the default ones)."""

    def __init__(
        self,
        *,
        bundled_dir: str | os.PathLike[str] | None = None,
        user_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ):
        self.bundled_dir = Path(bundled_dir) if bundled_dir is not None else bundled_models_dir()
        self.user_dir = Path(user_dir) if user_dir is not None else user_models_dir()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None  # None: hub_cache_dir() at call time

    # ---- scanning -------------------------------------------------------------------------------

    def _folder_entry(self, model_id: str, folder: Path, source: str, location: str) -> ModelInfo:
        card = _read_card(folder)
        weights = folder / WEIGHTS_NAME
        config_path = folder / CONFIG_NAME
        source = str(card.get("source") or source) if source != "bundled" else "bundled"
        try:
            config = read_config(config_path) if config_path.is_file() else find_config(weights)
            if config is None:
                raise CheckpointError(folder, f"no {CONFIG_NAME}")
            overrides = card.get("overrides") if isinstance(card.get("overrides"), Mapping) else None
            facts = describe_config(apply_overrides(config, overrides), model_id)
        except CheckpointError as exc:
            return ModelInfo(id=model_id, source=source, task=str(card.get("task") or "unknown"), views=(),
                             available=False, path=weights, card=card, problem=str(exc))
        for key in ("task", "training_data"):
            if card.get(key):
                facts = dict(facts, **{key: str(card[key])})
        return _info_from_facts(
            model_id,
            source,
            facts,
            available=weights.is_file(),
            path=weights,
            config_path=config_path if config_path.is_file() else None,
            sha256=card.get("sha256") or cached_sha256(weights),
            description=str(card.get("description") or ""),
            location=location if weights.is_file() else "",
            card=card,
            problem=None if weights.is_file() else f"{weights} is missing",
        )

    def _bundled(self) -> dict[str, ModelInfo]:
        out: dict[str, ModelInfo] = {}
        if not self.bundled_dir.is_dir():
            return out
        for folder in sorted(self.bundled_dir.iterdir()):
            if folder.is_dir() and not folder.name.startswith((".", "_")) and (folder / WEIGHTS_NAME).exists():
                out[folder.name] = self._folder_entry(folder.name, folder, "bundled", "package")
        return out

    def _user_folder(self, model_id: str) -> Path:
        return self.user_dir.joinpath(*model_id.split("/"))

    def _user(self) -> dict[str, ModelInfo]:
        out: dict[str, ModelInfo] = {}
        if not self.user_dir.is_dir():
            return out
        for weights in sorted(self.user_dir.rglob(WEIGHTS_NAME)):
            rel = weights.parent.relative_to(self.user_dir)
            if any(part.startswith(".") for part in rel.parts) or not rel.parts:
                continue  # staging / backup folders
            model_id = rel.as_posix()
            out[model_id] = self._folder_entry(model_id, weights.parent, "user", "user-dir")
        return out

    def _cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else hub.hub_cache_dir()

    def _published(self, pm: hub.PublishedModel, local_copy: ModelInfo | None, cache: Path) -> ModelInfo:
        files = hub.cached_files(pm.model_id, cache_dir=cache)
        config = pm.builtin_config()
        if files is not None and files.config is not None:
            try:
                config = read_config(files.config)
            except CheckpointError:
                pass
        facts = describe_config(apply_overrides(config, pm.overrides), pm.model_id)
        if files is not None:
            path, config_path, sha, location = files.weights, files.config, files.sha256, "hf-cache"
            sha = cached_sha256(files.weights) or sha
        elif local_copy is not None and local_copy.available:
            path, config_path, sha, location = local_copy.path, local_copy.config_path, local_copy.sha256, "user-dir"
        else:
            path, config_path, sha, location = None, None, None, ""
        desc = _TASK_WORDS.get(pm.task, pm.task.replace("_", " "))
        if pm.task == "pretrained":
            facts = dict(facts, training_data="UK Biobank")
        seed = f", seed {pm.seed}" if pm.seed is not None else ""
        return _info_from_facts(
            pm.model_id,
            "published",
            facts,
            available=path is not None,
            path=path,
            config_path=config_path,
            sha256=sha,
            description=f"CineMA {desc} ({', '.join(facts['views'])}{seed})",
            seed=pm.seed,
            location=location,
            hub_files={"repo": hub.REPO_ID, "weights": pm.weights_file, "config": pm.config_file},
            card=dict(local_copy.card) if local_copy is not None and location == "user-dir" else {},
        )

    def _all(self) -> dict[str, ModelInfo]:
        entries = dict(self._bundled())
        user = self._user()
        cache = self._cache()
        for pm in hub.published_models():
            entries[pm.model_id] = self._published(pm, user.pop(pm.model_id, None), cache)
        for model_id, info in user.items():
            entries.setdefault(model_id, info)
        return entries

    # ---- queries --------------------------------------------------------------------------------

    def list_models(self, task: str | None = None, view: str | None = None, source: str | None = None,
                    available: bool | None = None) -> list[ModelInfo]:
        """All entries, optionally filtered (``view='lax'`` matches every LAX view)."""
        out = []
        for info in self._all().values():
            if task is not None and info.task != task:
                continue
            if view is not None and not any(v == view or v.startswith(view + "_") for v in info.views):
                continue
            if source is not None and info.source != source:
                continue
            if available is not None and info.available != available:
                continue
            out.append(info)
        return out

    def _unknown(self, model_id: str, ids: Sequence[str]) -> UnknownModel:
        if model_id.rstrip("/") + "/0" in ids:
            return UnknownModel(model_id, [f"{model_id.rstrip('/')}/{s}" for s in hub.SEEDS])
        return UnknownModel(model_id, sorted(difflib.get_close_matches(model_id, list(ids), n=5, cutoff=0.6)))

    def get_model_info(self, model_id: str) -> ModelInfo:
        """The entry of one id; UnknownModel (listing close matches) when there is none."""
        if hub.is_published_id(model_id):
            folder = self._user_folder(model_id)
            local = self._folder_entry(model_id, folder, "imported", "user-dir") if (
                folder / WEIGHTS_NAME).is_file() else None
            return self._published(hub.parse_model_id(model_id), local, self._cache())
        bundled = self.bundled_dir / model_id
        if "/" not in model_id and (bundled / WEIGHTS_NAME).exists():
            return self._folder_entry(model_id, bundled, "bundled", "package")
        if _ID_RE.match(model_id):
            folder = self._user_folder(model_id)
            if (folder / WEIGHTS_NAME).exists():
                return self._folder_entry(model_id, folder, "user", "user-dir")
        raise self._unknown(model_id, list(self._all()))

    def find_default(self, task: str = "segmentation", view: str = "sax") -> str | None:
        """The first available model for a task and view in :func:`preference` order. None when nothing is
        available."""
        found = sorted(self.list_models(task=task, view=view, available=True), key=preference)
        return found[0].id if found else None

    # ---- loading --------------------------------------------------------------------------------

    def load_model(
        self,
        model_id: str,
        device: str = "cpu",
        *,
        download: bool = True,
        progress: hub.ProgressCallback | None = None,
        show_progress: bool = False,
    ) -> LoadedModel:
        """Build the network of ``model_id`` and load its weights (strict), in eval mode on ``device``.

        A published model that is neither cached nor imported is downloaded (``download=True``) into the
        Hugging Face cache, with ``progress(done_bytes, total_bytes)``; offline that raises HubUnavailable.
        """
        info = self.get_model_info(model_id)
        if info.source == "published":
            pm = hub.parse_model_id(model_id)
            if info.location == "user-dir" and info.path is not None:
                config = read_config(info.config_path) if info.config_path else pm.builtin_config()
                weights, expected = info.path, info.card.get("sha256")
            else:
                files = hub.resolve(model_id, download=download, progress=progress, show_progress=show_progress,
                                    cache_dir=self._cache())
                config = read_config(files.config) if files.config is not None else pm.builtin_config()
                weights, expected = files.weights, files.sha256
            return _load_checkpoint(weights, config, model_id=model_id, overrides=pm.overrides, device=device,
                                    source="published", expected_sha256=expected)
        if not info.available or info.path is None:
            raise RegistryError(f"model {model_id!r} cannot be loaded: {info.problem or 'its weights are missing'}")
        overrides = info.card.get("overrides") if isinstance(info.card.get("overrides"), Mapping) else None
        return _load_checkpoint(info.path, info.config_path, model_id=model_id, overrides=overrides, device=device,
                                source=info.source, expected_sha256=info.card.get("sha256"))

    # ---- adding models --------------------------------------------------------------------------

    def register_model(
        self,
        run_dir_or_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        model_id: str,
        *,
        config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        card: Mapping[str, Any] | None = None,
        source: str = "user",
        overwrite: bool = False,
        link: bool = False,
    ) -> ModelInfo:
        """Add a model to the user models folder under ``model_id``, atomically.

        ``run_dir_or_files``: a run folder (``model.safetensors``, else best/final/last, else its only
        ``*.safetensors``; ``config.yaml``; optional ``card.md`` / ``card.json``), a ``.safetensors``
        file (config beside it or embedded), or a list of files (weights, config, card). The files are
        staged in a hidden folder and moved into place with one rename; ``link=True`` hard-links the
        weights when possible instead of copying. An existing id is an error unless ``overwrite=True``.
        The weights are not validated here (``import_model`` does that).
        """
        _check_new_id(model_id)
        if source not in ("user", "imported"):
            raise RegistryError(f"source must be 'user' or 'imported', not {source!r}")
        if "/" not in model_id and (self.bundled_dir / model_id / WEIGHTS_NAME).exists():
            raise RegistryError(f"{model_id!r} is a bundled model id; choose another id")
        weights, cfg, card_md, card_json = self._gather(run_dir_or_files, config)
        if cfg is None:
            raise RegistryError(f"{weights}: no {CONFIG_NAME} beside it and none embedded in it; pass a config")
        read_header(weights)  # a readable safetensors file at least
        target = self._user_folder(model_id)
        if target.exists() and not overwrite:
            raise RegistryError(
                f"model {model_id!r} already exists ({target}); pass overwrite=True (--overwrite) to replace it"
            )
        facts = describe_config(cfg, model_id)
        self.user_dir.mkdir(parents=True, exist_ok=True)
        staging = self.user_dir / f".staging-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            dest = staging / WEIGHTS_NAME
            if link:
                try:
                    os.link(weights, dest)
                except OSError:
                    shutil.copy2(weights, dest)
            else:
                shutil.copy2(weights, dest)
            (staging / CONFIG_NAME).write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
            record: dict[str, Any] = dict(card_json or {})
            record.update(dict(card or {}))
            record.update({
                "id": model_id,
                "source": source,
                "task": record.get("task") or facts["task"],
                "views": list(facts["views"]),
                "sha256": sha256_file(dest),
                "registered": _now(),
                "origin": str(Path(weights).resolve()),
            })
            record.setdefault("training_data", facts["training_data"])
            (staging / CARD_JSON).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
            if card_md is not None:
                shutil.copy2(card_md, staging / CARD_MD)
            else:
                lines = [f"# {model_id}", "", str(record.get("description") or f"{facts['task']} model "
                         f"({', '.join(facts['views'])}), {source}."), "",
                         f"- weights sha256: `{record['sha256']}`", f"- from: `{record['origin']}`",
                         f"- registered: {record['registered']}"]
                (staging / CARD_MD).write_text("\n".join(lines) + "\n", encoding="utf-8")
            self._move_into_place(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.get_model_info(model_id)

    def _move_into_place(self, staging: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        backup = None
        if target.exists():
            backup = self.user_dir / f".replaced-{uuid.uuid4().hex[:12]}"
            os.replace(target, backup)
        try:
            os.replace(staging, target)
        except OSError as exc:
            if backup is not None:
                os.replace(backup, target)
            raise RegistryError(f"cannot move the model into {target}: {exc.strerror or exc}") from None
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)

    @staticmethod
    def _gather(
        src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        config: Mapping[str, Any] | str | os.PathLike[str] | None,
    ) -> tuple[Path, dict[str, Any] | None, Path | None, dict[str, Any] | None]:
        """(weights, config dict, card.md, card.json dict) from a run folder, a file or a list of files."""
        weights: Path | None = None
        config_path: Path | None = None
        card_md: Path | None = None
        card_json: dict[str, Any] | None = None
        if isinstance(src, (str, os.PathLike)):
            src = Path(src)
            if src.is_dir():
                for name in _RUN_WEIGHTS:
                    if (src / name).is_file():
                        weights = src / name
                        break
                else:
                    found = sorted(src.glob("*.safetensors")) or sorted(src.glob("checkpoints/*.safetensors"))
                    if len(found) != 1:
                        raise RegistryError(
                            f"{src}: expected {' or '.join(_RUN_WEIGHTS)} (or a single *.safetensors),"
                            f" found {len(found)} safetensors files"
                        )
                    weights = found[0]
                files = [p for p in (src / CONFIG_NAME, src / CARD_MD, src / CARD_JSON) if p.is_file()]
            else:
                weights, files = src, []
        else:
            files = []
            for item in src:
                p = Path(item)
                if p.suffix == ".safetensors":
                    if weights is not None:
                        raise RegistryError(f"two weights files given: {weights} and {p}")
                    weights = p
                else:
                    files.append(p)
            if weights is None:
                raise RegistryError("no .safetensors file among the files given")
        for p in files:
            if p.suffix in (".yaml", ".yml"):
                config_path = p
            elif p.name.endswith(".md"):
                card_md = p
            elif p.suffix == ".json":
                try:
                    loaded = json.loads(p.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    raise RegistryError(f"{p}: not a readable JSON card ({exc})") from None
                card_json = loaded if isinstance(loaded, dict) else None
        if not weights.is_file():
            raise CheckpointError(weights, "no such file")
        if config is not None:
            cfg = dict(config) if isinstance(config, Mapping) else read_config(config)
        elif config_path is not None:
            cfg = read_config(config_path)
        else:
            cfg = find_config(weights)
        return weights, cfg, card_md, card_json

    def import_model(
        self,
        file: str | os.PathLike[str],
        model_id: str | None = None,
        config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        overwrite: bool = False,
        link: bool = False,
        card: Mapping[str, Any] | None = None,
    ) -> ModelInfo:
        """Validate a safetensors file against the network its config builds (strict), then register it.

        ``config``: a mapping or YAML path; default: ``config.yaml`` beside the file, else the config
        embedded in the file, else (for a published id such as ``cinema/segmentation/acdc_sax/0``) that
        model's reference config. ``model_id`` defaults to the file name without its suffix. Nothing is
        copied when validation fails; an existing id is an error unless ``overwrite=True``.
        """
        file = Path(file)
        read_header(file)
        model_id = model_id or re.sub(r"[^A-Za-z0-9._-]+", "-", file.stem).strip("-.") or "imported"
        _check_new_id(model_id)
        target = self._user_folder(model_id)
        if target.exists() and not overwrite:
            raise RegistryError(
                f"model {model_id!r} already exists ({target}); pass overwrite=True (--overwrite) to replace it"
            )
        pm = hub.parse_model_id(model_id) if hub.is_published_id(model_id) else None
        if config is not None:
            cfg = dict(config) if isinstance(config, Mapping) else read_config(config)
        else:
            cfg = find_config(file)
            if cfg is None and pm is not None:
                cfg = pm.builtin_config()
        if cfg is None:
            raise RegistryError(f"{file}: no {CONFIG_NAME} beside it and none embedded in it; pass --config CONFIG")
        if pm is not None:
            cfg = apply_overrides(cfg, pm.overrides)
        _validate(file, cfg)
        record = {"origin_sha256": sha256_file(file)}
        record.update(dict(card or {}))
        return self.register_model(file, model_id, config=cfg, card=record, source="imported",
                                   overwrite=overwrite, link=link)


def _validate(weights: Path, config: dict[str, Any]) -> None:
    """Build the network of ``config`` and load ``weights`` into it strictly (CheckpointError if not)."""
    from .factory import build_model

    try:
        net = build_model(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryError(f"cannot build a network from the config: {exc}") from exc
    load_weights(net, weights, strict=True)
    del net


# ---- module-level API on the default folders ----------------------------------------------------


def _default() -> ModelRegistry:
    return ModelRegistry()


def list_models(task: str | None = None, view: str | None = None, source: str | None = None,
                available: bool | None = None) -> list[ModelInfo]:
    """All registry entries, optionally filtered by task, view ('lax' matches all LAX views) and source."""
    return _default().list_models(task=task, view=view, source=source, available=available)


def get_model_info(model_id: str) -> ModelInfo:
    """The entry of one id; UnknownModel (listing close matches) when there is none."""
    return _default().get_model_info(model_id)


def load_model(model_id: str, device: str = "cpu", **kwargs: Any) -> LoadedModel:
    """Build and load a registered model (strict); see ModelRegistry.load_model."""
    return _default().load_model(model_id, device, **kwargs)


def register_model(run_dir_or_files: Any, model_id: str, **kwargs: Any) -> ModelInfo:
    """Add a run's weights + config (+ card) to the user models folder; see ModelRegistry.register_model."""
    return _default().register_model(run_dir_or_files, model_id, **kwargs)


def import_model(file: str | os.PathLike[str], model_id: str | None = None,
                 config: Mapping[str, Any] | str | os.PathLike[str] | None = None, **kwargs: Any) -> ModelInfo:
    """Validate a safetensors file (strict) and add it to the user models folder; see ModelRegistry.import_model."""
    return _default().import_model(file, model_id, config, **kwargs)


def find_default(task: str = "segmentation", view: str = "sax") -> str | None:
    """An available model id for a task and view (bundled first), or None."""
    return _default().find_default(task, view)
