"""The published CineMA checkpoints on the Hugging Face hub (``mathpluscode/CineMA``).

Model ids map to hub files::

    cinema/pretrained                          -> pretrained/cinema.safetensors + pretrained/config.yaml
    cinema/<task>/<data>_<view>/<seed>         -> finetuned/<task>/<data>_<view>/<data>_<view>_<seed>.safetensors
                                                  + finetuned/<task>/<data>_<view>/config.yaml
    cinema/landmark_{heatmap,coordinate}/<view>/<seed>
                                               -> finetuned/landmark_.../<view>/<view>_<seed>.safetensors + config.yaml

Files are fetched with ``huggingface_hub.hf_hub_download`` into the standard Hugging Face cache (``HF_HUB_CACHE``,
``HF_HOME/hub`` or ``~/.cache/huggingface/hub``), read at call time so that the environment of the moment
counts. Offline use: with ``HF_HUB_OFFLINE=1``, or when the hub cannot be reached, files are resolved from
that cache (``local_files_only=True``); a file that is not cached raises HubUnavailable with what to do.

Each published model also has a built-in config (the ``data``/``model`` sections of the reference
configuration, from the compatibility spec) used when the hub's ``config.yaml`` is not cached; the hub's
own file wins when present.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import ModelError

__all__ = [
    "PRETRAINED_ID",
    "PUBLISHED_TASKS",
    "REPO_ID",
    "SEEDS",
    "DownloadCancelled",
    "HubError",
    "HubFiles",
    "HubUnavailable",
    "ProgressCallback",
    "PublishedModel",
    "UnknownPublishedModel",
    "cached_files",
    "download",
    "hub_cache_dir",
    "hub_offline",
    "is_published_id",
    "lfs_sha256",
    "parse_model_id",
    "published_ids",
    "published_models",
    "resolve",
]

REPO_ID = "mathpluscode/CineMA"
PREFIX = "cinema/"
PRETRAINED_ID = "cinema/pretrained"
SEEDS: tuple[int, ...] = (0, 1, 2)

#: task -> the <data>_<view> (landmark tasks: <view>) folders published for it
PUBLISHED_TASKS: dict[str, tuple[str, ...]] = {
    "segmentation": ("acdc_sax", "mnms_sax", "mnms2_sax", "mnms2_lax_4c"),
    "classification_cvd": ("acdc_sax", "mnms_sax", "mnms2_sax", "mnms2_lax_4c"),
    "classification_sex": ("mnms_sax",),
    "classification_vendor": ("mnms2_sax", "mnms2_lax_4c"),
    "regression_ef": ("acdc_sax", "mnms_sax", "mnms2_sax", "mnms2_lax_4c"),
    "regression_bmi": ("acdc_sax",),
    "regression_age": ("mnms_sax",),
    "landmark_heatmap": ("lax_2c", "lax_4c"),
    "landmark_coordinate": ("lax_2c", "lax_4c"),
}

ProgressCallback = Callable[[int, "int | None"], None]
"""``progress(done_bytes, total_bytes)``; total is None while unknown. Raising in it aborts the download."""

# ---- the reference configurations (shared/spec/configs) ------------------------------------------
_SAX = {"spacing": [1.0, 1.0, 10.0], "patch_size": [192, 192, 16], "in_chans": 1}
_LAX = {"spacing": [1.0, 1.0], "patch_size": [256, 256], "in_chans": 1}
_DATASETS: dict[str, dict[str, Any]] = {
    "acdc": {
        "blocks": ("sax",),
        "pathology": ["DCM", "HCM", "MINF", "NOR", "RV"],
        "bmi": {"mean": 25.561040294207242, "std": 4.732639548868183},
        "ef": {"mean": 27.698811590282546, "std": 10.848138374627386},
    },
    "mnms": {
        "blocks": ("sax",),
        "pathology": ["DCM", "HCM", "NOR", "ARV", "HHD"],
        "sex": ["M", "F"],
        "age": {"mean": 52.026666666666664, "std": 18.760570771166726},
        "ef": {"mean": 39.75061820807878, "std": 9.459011847661206},
    },
    "mnms2": {
        "blocks": ("sax", "lax"),
        "pathology": ["ARR", "CIA", "FALL", "HCM", "LV", "NOR"],
        "vendor": ["GE MEDICAL SYSTEMS", "Philips Medical Systems", "SIEMENS"],
        "ef": {"mean": 37.97920801605608, "std": 10.328604573626588},
    },
    "landmark": {"blocks": ("lax",)},
}
_ENCODER = {
    "size": "base",
    "enc_patch_size": [4, 4, 1],
    "enc_scale_factor": [2, 2, 1],
    "enc_conv_chans": [64, 128],
    "enc_conv_n_blocks": 2,
}
_DECODER = {"dec_chans": [32, 64, 128, 256, 512], "dec_patch_size": [2, 2, 1], "dec_scale_factor": [2, 2, 1]}
_DROP = {"dropout": 0.1, "drop_path": 0.1}


def _data_section(dataset: str, *, column: tuple[str, str] | None = None) -> dict[str, Any]:
    spec = _DATASETS[dataset]
    data: dict[str, Any] = {"name": dataset}
    for block in spec["blocks"]:
        data[block] = dict(_SAX if block == "sax" else _LAX)
    if column is not None:
        data[column[0]] = column[1]
    for key, value in spec.items():
        if key != "blocks":
            data[key] = value if not isinstance(value, (list, dict)) else type(value)(value)
    return data


# ---- ids ----------------------------------------------------------------------------------------


class HubError(ModelError):
    """The hub answered, but not with what was asked (missing file, refused access)."""


class DownloadCancelled(ModelError):
    """Raise this from a progress callback to stop a download (the partial file is kept for resuming)."""


class UnknownPublishedModel(ModelError):
    """Not an id of a published CineMA checkpoint."""

    def __init__(self, model_id: str, suggestions: list[str]):
        self.model_id = model_id
        self.suggestions = suggestions
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else "; `napari-cinema models list` shows them"
        super().__init__(f"{model_id!r} is not a published CineMA model{hint}")


class HubUnavailable(ModelError):
    """A published model is not cached and cannot be downloaded now."""

    def __init__(self, model_id: str, cache_path: Path, reason: str):
        self.model_id = model_id
        self.cache_path = cache_path
        self.reason = reason
        super().__init__(
            f"model {model_id} is not in the local cache ({cache_path}) and the hub cannot be reached ({reason}):"
            f" download it on a connected machine with `napari-cinema models download {model_id}`"
            f" or import the file with `napari-cinema models import FILE --id {model_id}`"
        )


@dataclass(frozen=True)
class PublishedModel:
    """One published checkpoint: its id and where its files are on the hub."""

    model_id: str
    task: str
    dataset: str | None  # acdc, mnms, mnms2, landmark; None for the pre-trained MAE
    view: str | None  # None for the pre-trained MAE (all four views)
    seed: int | None
    weights_file: str
    config_file: str

    @property
    def views(self) -> tuple[str, ...]:
        return (self.view,) if self.view else ("sax", "lax_2c", "lax_3c", "lax_4c")

    @property
    def overrides(self) -> dict[str, Any]:
        """Dotted-key overrides that pick this model out of its folder's (per-dataset) reference config."""
        if self.view is None:
            return {}
        out: dict[str, Any] = {"model.views": self.view}
        if self.task.startswith("classification_"):
            col = self.task.split("_", 1)[1]
            out["data.class_column"] = "pathology" if col == "cvd" else col
        elif self.task.startswith("regression_"):
            out["data.regression_column"] = self.task.split("_", 1)[1]
        return out

    def builtin_config(self) -> dict[str, Any]:
        """The reference ``data``/``model`` sections for this model (the spec's configs)."""
        if self.view is None:
            return {
                "grad_ckpt": True,
                "data": {"sax": dict(_SAX), "lax": dict(_LAX)},
                "model": {
                    "size": "base",
                    "views": ["sax", "lax_2c", "lax_3c", "lax_4c"],
                    "patch_size": [4, 4, 1],
                    "scale_factor": [2, 2, 1],
                    "enc_conv_chans": [64, 128],
                    "enc_conv_n_blocks": 2,
                },
            }
        assert self.dataset is not None
        if self.task in ("segmentation", "landmark_heatmap"):
            return {
                "grad_ckpt": True,
                "task": "segmentation",
                "data": _data_section(self.dataset),
                "model": {
                    "name": "convunetr",
                    "views": self.view,
                    "out_chans": 4 if self.task == "segmentation" else 3,
                    "convunetr": {**_ENCODER, **_DECODER, **_DROP},
                },
            }
        if self.task == "landmark_coordinate":
            return {
                "grad_ckpt": True,
                "task": "regression",
                "data": _data_section(self.dataset),
                "model": {"name": "convvit", "views": self.view, "n_frames": 1, "out_chans": 6,
                          "convvit": {**_ENCODER, **_DROP}},
            }
        kind, col = self.task.split("_", 1)
        if kind == "classification":
            col = "pathology" if col == "cvd" else col
            data = _data_section(self.dataset, column=("class_column", col))
            out_chans = None
        else:
            data = _data_section(self.dataset, column=("regression_column", col))
            out_chans = 1
        return {
            "grad_ckpt": True,
            "task": kind,
            "data": data,
            "model": {"name": "convvit", "views": self.view, "n_frames": 2, "out_chans": out_chans,
                      "convvit": {**_ENCODER, **_DROP}},
        }


def _build_published() -> dict[str, PublishedModel]:
    out = {
        PRETRAINED_ID: PublishedModel(
            PRETRAINED_ID, "pretrained", None, None, None, "pretrained/cinema.safetensors", "pretrained/config.yaml"
        )
    }
    for task, folders in PUBLISHED_TASKS.items():
        for folder in folders:
            if task.startswith("landmark_"):
                dataset, view = "landmark", folder
            else:
                dataset, view = folder.split("_", 1)
            for seed in SEEDS:
                model_id = f"{PREFIX}{task}/{folder}/{seed}"
                base = f"finetuned/{task}/{folder}"
                out[model_id] = PublishedModel(
                    model_id, task, dataset, view, seed, f"{base}/{folder}_{seed}.safetensors", f"{base}/config.yaml"
                )
    return out


_PUBLISHED = _build_published()


def published_models() -> list[PublishedModel]:
    """All published checkpoints (64: the MAE and 21 task/dataset/view folders x 3 seeds)."""
    return list(_PUBLISHED.values())


def published_ids() -> list[str]:
    return list(_PUBLISHED)


def is_published_id(model_id: str) -> bool:
    return model_id in _PUBLISHED


def parse_model_id(model_id: str) -> PublishedModel:
    """The PublishedModel of an id; UnknownPublishedModel (with close matches) otherwise."""
    try:
        return _PUBLISHED[model_id]
    except KeyError:
        pass
    if model_id.rstrip("/") + "/0" in _PUBLISHED:  # the seed was left out
        suggestions = [f"{model_id.rstrip('/')}/{s}" for s in SEEDS]
    else:
        suggestions = sorted(difflib.get_close_matches(model_id, list(_PUBLISHED), n=5, cutoff=0.6))
    raise UnknownPublishedModel(model_id, suggestions)


# ---- cache and offline --------------------------------------------------------------------------

_TRUE = {"1", "on", "yes", "true", "y"}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now, or was when the hub was imported."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.strip().lower() in _TRUE or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now (HF_HUB_CACHE, HF_HOME/hub, default)."""
    from huggingface_hub import constants

    def expand(value: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(value)))

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return expand(os.environ[var])
    if os.environ.get("HF_HOME"):
        return expand(os.environ["HF_HOME"]) / "hub"
    return expand(str(constants.HF_HUB_CACHE))


def _repo_cache(cache_dir: Path) -> Path:
    return cache_dir / ("models--" + REPO_ID.replace("/", "--"))


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def lfs_sha256(path: str | os.PathLike[str]) -> str | None:
    """The SHA-256 the hub gave a cached LFS file: the name of the blob its snapshot link points to."""
    name = Path(os.path.realpath(path)).name
    return name if _SHA256_RE.match(name) else None


@dataclass(frozen=True)
class HubFiles:
    """Local paths of a published model's files (inside the Hugging Face cache)."""

    model_id: str
    weights: Path
    config: Path | None  # None: not cached; use PublishedModel.builtin_config()
    sha256: str | None  # the hub's hash of the weights (LFS), when known
    downloaded: bool  # fetched from the hub during this call


def _cached(filename: str, cache_dir: Path, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(REPO_ID, filename, cache_dir=str(cache_dir), revision=revision)
    return Path(found) if isinstance(found, str) and os.path.exists(found) else None


def cached_files(model_id: str, *, cache_dir: str | os.PathLike[str] | None = None, revision: str | None = None
                 ) -> HubFiles | None:
    """The cached files of a published model, or None when its weights are not cached (no network)."""
    pm = parse_model_id(model_id)
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    weights = _cached(pm.weights_file, cache, revision)
    if weights is None:
        return None
    return HubFiles(model_id, weights, _cached(pm.config_file, cache, revision), lfs_sha256(weights), False)


# ---- downloading --------------------------------------------------------------------------------


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning 'the hub cannot be reached now' (fall back to the cache)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    errors: list[type[BaseException]] = [
        LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError, HfHubHTTPError,
    ]
    for module in ("httpx2", "httpx", "requests"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout"):
            cls = getattr(mod, name, None) or getattr(getattr(mod, "exceptions", None), name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                errors.append(cls)
    return tuple(errors)


def _progress_class(progress: ProgressCallback | None, show: bool) -> type:
    """A tqdm class for ``hf_hub_download(tqdm_class=...)`` that reports bytes to ``progress``.

    It counts ``update()`` calls itself, so the callback works when the bar is not displayed. The
    ``update_transfer`` method makes huggingface_hub's Xet path use a single (aggregated) bar.
    """
    from tqdm.std import tqdm as std_tqdm

    class _ProgressBar(std_tqdm):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            self._done_bytes = int(kwargs.get("initial") or 0)
            if show:
                kwargs.setdefault("file", sys.stderr)
                kwargs.setdefault("dynamic_ncols", True)
                kwargs["disable"] = False
            else:
                kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._emit()

        def _emit(self) -> None:
            if progress is not None:
                total = getattr(self, "total", None)
                progress(self._done_bytes, int(total) if total else None)

        def update(self, n: float | None = 1) -> bool | None:
            self._done_bytes += int(n or 0)
            self._emit()
            return super().update(n)

        def update_transfer(self, n: float | None = 1) -> None:  # network bytes (Xet); disk bytes count
            return None

        def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            return None

    return _ProgressBar


def _hub_endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _probe(endpoint: str | None, timeout: float = 3.0) -> str | None:
    """None when a TCP connection to the hub opens, else why not.

    huggingface_hub retries an unreachable hub with back-off (~25 s) before it gives up on a file that
    is not cached; this quick check answers at once instead. Skipped (None) behind a proxy, where a
    direct connection says nothing.
    """
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                       "all_proxy")):
        return None
    url = urlsplit(_hub_endpoint(endpoint))
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"


def _fetch(filename: str, *, model_id: str, cache: Path, revision: str | None, offline: bool, endpoint: str | None,
           tqdm_class: type | None, force: bool, offline_reason: str = "HF_HUB_OFFLINE is set") -> tuple[Path, bool]:
    """Path of one hub file in the cache, downloading it unless offline. Returns (path, downloaded)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    common = dict(repo_id=REPO_ID, filename=filename, cache_dir=str(cache), revision=revision)
    reason = offline_reason if offline else ""
    if not offline:
        before = _cached(filename, cache, revision)
        try:
            path = hf_hub_download(**common, endpoint=endpoint, tqdm_class=tqdm_class, force_download=force)
            return Path(path), before is None or force
        except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError, RemoteEntryNotFoundError) as exc:
            raise HubError(f"{REPO_ID}: cannot get {filename} ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                           ) from exc
        except _network_errors() as exc:
            cause = exc.__cause__ or exc
            reason = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else 'no connection'}"
    try:
        return Path(hf_hub_download(**common, local_files_only=True)), False
    except LocalEntryNotFoundError:
        raise HubUnavailable(model_id, _repo_cache(cache), reason or "no connection") from None


def resolve(
    model_id: str,
    *,
    download: bool = True,
    progress: ProgressCallback | None = None,
    show_progress: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    force_download: bool = False,
) -> HubFiles:
    """Local paths of a published model's weights and config, downloading what is missing.

    Offline (``HF_HUB_OFFLINE=1``, ``download=False``, or the hub unreachable) the files come from the
    cache through ``hf_hub_download(local_files_only=True)``; a missing weights file raises
    HubUnavailable. A config.yaml the cache lacks is not an error offline (``HubFiles.config`` is None:
    use ``PublishedModel.builtin_config()``). ``progress(done, total)`` reports the weights download;
    ``show_progress`` draws a bar on stderr.
    """
    pm = parse_model_id(model_id)
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    offline = hub_offline() or not download
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else "downloads disabled"
    if not offline and (force_download or _cached(pm.weights_file, cache, revision) is None):
        why = _probe(endpoint)
        if why is not None:
            offline, reason = True, why
    common = dict(model_id=model_id, cache=cache, revision=revision, endpoint=endpoint)
    try:
        config, _ = _fetch(pm.config_file, offline=offline, tqdm_class=_progress_class(None, False),
                           force=force_download, offline_reason=reason, **common)
    except HubUnavailable as exc:
        config = None
        offline, reason = True, exc.reason  # the hub could not be reached just now: do not wait a second time
    except HubError:
        config = None  # the hub has no config.yaml there: the built-in reference config stands in
    tqdm_class = _progress_class(progress, show_progress)
    weights, downloaded = _fetch(pm.weights_file, offline=offline, tqdm_class=tqdm_class, force=force_download,
                                 offline_reason=reason, **common)
    if progress is not None and not downloaded:
        size = weights.stat().st_size
        progress(size, size)
    return HubFiles(model_id, weights, config, lfs_sha256(weights), downloaded)


def download(model_id: str, **kwargs: Any) -> HubFiles:
    """Make sure a published model is in the cache (``resolve`` with ``download=True``)."""
    kwargs["download"] = True
    return resolve(model_id, **kwargs)
