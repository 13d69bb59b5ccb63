"""The inference engine: run CineMA-family networks on a :class:`~napari_cinema.io.study.CineStudy`.

Qt-free; the GUI runs these functions in a worker thread and passes ``progress`` / ``cancel``.
All frames of a cine go through the network in batches (``batch_frames`` frames per forward pass,
chosen from free memory when not given) under ``torch.inference_mode()``. Results always come
back on the study's own voxel grid.

Public entry points: :func:`run_segmentation`, :func:`run_landmarks`, :func:`run_classification`,
:func:`run_regression` and the dispatcher :func:`run_model`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import torch

from napari_cinema.analysis.landmarks import landmarks_over_frames

from .centring import CentringInfo, HeartBox, centring_frames, find_heart, motion_centre, region_around
from .devices import (
    auto_batch_frames,
    autocast_dtype,
    describe_device,
    estimate_item_bytes,
    pick_device,
    precision_name,
)
from .postprocess import blood_pool_labels, keep_largest_pieces
from .preprocess import (
    AxisMap,
    Region,
    backward_matrices,
    fit_spacing,
    forward_matrices,
    minmax_scale,
    model_axes,
    region_to_study,
    study_frames_tensor,
    study_to_region,
)
from .sliding import DEFAULT_SHIFT_PASSES, phase_shifts, shift_averaged, sliding_dense, sliding_vector, windows
from .spec import LANDMARK_NAMES, ModelSpec, resolve_model, view_group

ProgressFn = Callable[[int, int, str], None]
CancelFn = Callable[[], Any]

CENTRING_MODES = ("auto", "motion", "downsample", "sliding", "none")
HEATMAP_BETA = 1000.0


class EngineError(ValueError):
    """A problem the user can fix (wrong view, too small a study, unknown ED/ES frames, ...)."""


class Cancelled(Exception):
    """The caller's ``cancel()`` asked to stop; no partial result is returned."""


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------


@dataclass
class SegmentationResult:
    """Labels ``(t, z, y, x)`` uint8 on the study's own grid (0 bg, 1 RV, 2 MYO, 3 LV) and provenance."""

    labels: np.ndarray
    provenance: dict[str, Any]
    label_names: dict[int, str] = field(default_factory=dict)

    def voxel_counts(self, label: int = 3) -> np.ndarray:
        """Voxels of ``label`` per frame."""
        return (self.labels == label).reshape(self.labels.shape[0], -1).sum(axis=1)

    def ed_es_frames(self) -> tuple[int, int]:
        """(ED, ES): the frames of largest and smallest LV cavity."""
        return ed_es_from_labels(self.labels)


@dataclass
class LandmarkResult:
    """Landmarks per frame: ``voxels`` (t, 3, 3) as (z, y, x) study voxel coordinates, ``world`` RAS mm."""

    names: tuple[str, ...]
    voxels: np.ndarray
    world: np.ndarray
    confidence: np.ndarray | None
    provenance: dict[str, Any]

    def as_dict(self, frame: int) -> dict[str, list[float]]:
        return {n: [float(v) for v in self.voxels[frame, k]] for k, n in enumerate(self.names)}


@dataclass
class ClassificationResult:
    """Class probabilities (in the model's class order) from the (ED, ES) pair."""

    classes: tuple[str, ...]
    probabilities: np.ndarray
    ed_frame: int
    es_frame: int | None
    provenance: dict[str, Any]

    @property
    def predicted(self) -> str:
        return self.classes[int(np.argmax(self.probabilities))]

    def as_dict(self) -> dict[str, float]:
        return {c: float(p) for c, p in zip(self.classes, self.probabilities)}


@dataclass
class RegressionResult:
    """A regressed value (e.g. EF in %) from the (ED, ES) pair: ``raw * std + mean``."""

    value: float
    raw: float
    target: str | None
    ed_frame: int
    es_frame: int | None
    provenance: dict[str, Any]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def ed_es_from_labels(labels_tzyx: np.ndarray, lv_label: int = 3) -> tuple[int, int]:
    """(ED, ES) frames from a label cine: largest and smallest LV cavity."""
    labels_tzyx = np.asarray(labels_tzyx)
    counts = (labels_tzyx == lv_label).reshape(labels_tzyx.shape[0], -1).sum(axis=1)
    if counts.size == 0 or counts.max() == 0:
        raise EngineError("the segmentation holds no LV cavity (label 3); ED/ES frames cannot be chosen")
    return int(np.argmax(counts)), int(np.argmin(counts))


def soft_argmax(heatmaps: torch.Tensor, beta: float = HEATMAP_BETA) -> torch.Tensor:
    """Soft-argmax of ``(B, K, *spatial)`` heat-maps -> ``(B, K, ndim)`` index coordinates.

    Coordinates are the expectation of the voxel indices under ``softmax(beta * heatmap)``.
    """
    b, k = heatmaps.shape[:2]
    spatial = heatmaps.shape[2:]
    flat = heatmaps.reshape(b, k, -1).double() * beta
    weights = torch.softmax(flat, dim=-1)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64, device=heatmaps.device) for s in spatial],
                           indexing="ij")
    coords = [torch.einsum("bkn,n->bk", weights, g.reshape(-1)) for g in grids]
    return torch.stack(coords, dim=-1)


def _resolve_view(study, spec: ModelSpec, view: str | None) -> str:
    study_view = view if view is not None else study.view
    if study_view in (None, "", "unknown"):
        raise EngineError(
            f"the study's view is unknown; pass view= (e.g. view='{spec.view}') to run the {spec.view} model on it"
        )
    if study_view != spec.view:
        hint = "" if view is not None else f"; if the study really is {spec.view}, override the view"
        name = f"the model {spec.model_id}" if spec.model_id else "the model"
        raise EngineError(f"view mismatch: {name} is a {spec.view} model but the study is {study_view}{hint}")
    return study_view


@dataclass
class CineStudyView:
    """The shape facts of a study the batch sizing needs (a single-slice view for landmarks)."""

    image: np.ndarray
    spacing: tuple

    @property
    def shape(self):
        return tuple(self.image.shape)

    @property
    def n_frames(self) -> int:
        return int(self.image.shape[0])


def _check_study(study) -> None:
    image = getattr(study, "image", None)
    if image is None or np.ndim(image) != 4:
        raise EngineError("the study has no (t, z, y, x) image")
    t, z, y, x = image.shape
    if t < 1:
        raise EngineError("the study has no frames")
    if z < 1:
        raise EngineError("the study has no slices")
    if y < 2 or x < 2:
        raise EngineError(f"the study is too small: {y} x {x} pixels per slice (at least 2 x 2 needed)")
    _dt, dz, dy, dx = study.spacing
    for name, s in (("slice", dz), ("row", dy), ("column", dx)):
        if not np.isfinite(s) or s <= 0:
            raise EngineError(f"the study's {name} spacing {s} mm is not a positive number")


def _patch3(spec: ModelSpec, axes: tuple[AxisMap, AxisMap, AxisMap]) -> tuple[int, int, int]:
    p = spec.patch_size
    return (p[0], p[1], p[2]) if spec.ndim == 3 else (p[0], p[1], axes[2].m)


def _call_cancel(cancel: CancelFn | None) -> None:
    if cancel is None:
        return
    if cancel():
        raise Cancelled("inference cancelled")


class _Runner:
    """Holds the module, device and bookkeeping for one engine call."""

    def __init__(self, model: Any, spec: ModelSpec, device: str | torch.device, precision: str,
                 progress: ProgressFn | None, cancel: CancelFn | None):
        self.spec = spec
        self.device = pick_device(device)
        self.dtype = autocast_dtype(self.device, precision)
        self.module = model
        if isinstance(model, torch.nn.Module):
            model.eval()
            model.to(self.device)
        self.progress = progress
        self.cancel = cancel
        self.timings = {"preprocess_s": 0.0, "model_s": 0.0, "postprocess_s": 0.0, "centring_s": 0.0}
        self.done = 0
        self.total = 0
        self.t_start = time.perf_counter()
        self.batch_frames = 1
        self.warnings: list[str] = []

    # -- bookkeeping --
    def check(self) -> None:
        _call_cancel(self.cancel)

    def tick(self, n: int, message: str) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done), message)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # -- network call --
    def call(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on ``(B, C, X, Y, Z)``; returns float32 ``(B, K, X, Y, Z)`` or ``(B, K)``."""
        spec = self.spec
        b, c, nx, ny, nz = x.shape
        xin = x.permute(0, 4, 1, 2, 3).reshape(b * nz, c, nx, ny) if spec.ndim == 2 else x
        self._sync()
        t0 = time.perf_counter()
        with self.autocast():
            out = self.module({spec.view: xin})
        if isinstance(out, Mapping):
            out = out[spec.view] if spec.view in out else next(iter(out.values()))
        out = out.float()
        self._sync()
        self.timings["model_s"] += time.perf_counter() - t0
        if out.ndim == 2:
            return out.reshape(b, nz, -1).mean(dim=1) if spec.ndim == 2 else out
        if spec.ndim == 2:
            if out.ndim != 4 or tuple(out.shape[2:]) != (nx, ny):
                raise EngineError(f"the network returned {tuple(out.shape)} for an input of {tuple(xin.shape)}")
            out = out.reshape(b, nz, out.shape[1], nx, ny).permute(0, 2, 3, 4, 1)
        elif out.ndim != 5 or tuple(out.shape[2:]) != (nx, ny, nz):
            raise EngineError(f"the network returned {tuple(out.shape)} for an input of {tuple(xin.shape)}")
        return out

    def dense(self, activation: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def predict(x: torch.Tensor) -> torch.Tensor:
            out = self.call(x)
            return torch.softmax(out, dim=1) if activation == "softmax" else torch.sigmoid(out)

        return predict

    def provenance(self, study, study_view: str, centring: CentringInfo | None, extra: dict | None = None) -> dict:
        from napari_cinema import __version__

        self.timings["total_s"] = time.perf_counter() - self.t_start
        spec = self.spec
        prov = {
            "engine": "napari_cinema.engine",
            "version": __version__,
            "task": spec.task,
            "model_id": spec.model_id,
            "sha256": spec.sha256,
            "model_view": spec.view,
            "study_view": study_view,
            "study_source": getattr(study, "source", ""),
            "device": str(self.device),
            "device_description": describe_device(self.device),
            "precision": precision_name(self.dtype),
            "batch_frames": int(self.batch_frames),
            "model_spacing_mm": list(spec.spacing),
            "patch_size": list(spec.patch_size),
            "centring": None if centring is None else centring.to_dict(),
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "warnings": list(self.warnings) + ([] if centring is None else list(centring.warnings)),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if extra:
            prov.update(extra)
        return prov


def choose_batch_frames(study, spec: ModelSpec, device: str | torch.device = "auto") -> int:
    """Frames per forward pass for ``study`` on ``device`` (what ``batch_frames=None`` uses).

    GPUs: as many frames as fit in half the free memory (estimated per frame), at most 64. CPUs:
    batching frames measured no faster on CPU (bench/inference.py: larger batches only cost memory
    bandwidth), so a forward pass gets about 8 images for per-slice (2-D) networks (one 10-slice SAX
    frame; 8 LAX frames) and one volume for 3-D networks, within the memory available.
    """
    dev = pick_device(device)
    axes = model_axes(study.shape, study.spacing, spec.spacing, spec.ndim)
    patch = _patch3(spec, axes)
    slices = patch[2] if spec.ndim == 2 else 1
    item = estimate_item_bytes(int(np.prod(patch)), 1, spec.out_chans)
    cpu_cap = max(1, 8 // max(1, slices)) if spec.ndim == 2 else 1
    return auto_batch_frames(dev, max(1, study.n_frames), item, cpu_cap=cpu_cap)


def _items_per_chunk(runner: _Runner, study, spec: ModelSpec, n_items: int, batch_frames: int | None) -> int:
    if batch_frames is not None:
        if int(batch_frames) < 1:
            raise EngineError(f"batch_frames must be at least 1, got {batch_frames}")
        return min(int(batch_frames), max(1, n_items))
    return min(choose_batch_frames(study, spec, runner.device), max(1, n_items))


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower()
                                              or "can't allocate memory" in str(exc).lower())


def _normalise(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    per_slice = spec.ndim == 2 and spec.intensity_scope == "input"
    return minmax_scale(x, per_slice=per_slice)


def _dense_chunks(runner: _Runner, image: np.ndarray, frames: list[int], region: Region,
                  patch: tuple[int, int, int], activation: str, message: str, shifts: list[int] | None = None):
    """Yield ``(frame indices, activations (B, K, L...))`` for chunks of ``runner.batch_frames`` frames.

    ``shifts``: average each network input over these in-plane shifts (:func:`.sliding.shift_averaged`).
    Out of memory on a chunk halves the chunk size (kept for the rest of the run) and retries.
    """
    spec = runner.spec
    fmats = forward_matrices(region, runner.device)
    predict = shift_averaged(runner.dense(activation), shifts or [0])
    n_win = len(windows(tuple(max(s, p) for s, p in zip(region.shape, patch)), patch))
    before = (lambda k, n: runner.check()) if n_win > 1 else None
    pos = 0
    while pos < len(frames):
        idx = frames[pos:pos + runner.batch_frames]
        runner.check()
        try:
            t0 = time.perf_counter()
            x = study_frames_tensor(image[idx], runner.device)
            x = _normalise(study_to_region(x, region, fmats), spec)
            runner.timings["preprocess_s"] += time.perf_counter() - t0
            out = sliding_dense(x, patch, predict, before_window=before)
        except Exception as exc:  # noqa: BLE001 - only memory errors are handled here
            if not _is_oom(exc):
                raise
            x = out = None
            if runner.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(idx) == 1:
                raise EngineError(f"out of memory on {describe_device(runner.device)} even for one frame") from exc
            runner.batch_frames = max(1, len(idx) // 2)
            runner.warnings.append(f"out of memory: batch reduced to {runner.batch_frames} frame(s)")
            continue
        yield idx, out
        pos += len(idx)
        lo, hi = idx[0], idx[-1]
        runner.tick(len(idx), f"{message} {lo + 1}-{hi + 1} of {image.shape[0]}" if hi > lo else
                    f"{message} {lo + 1} of {image.shape[0]}")


# --------------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------------


def _first_pass(runner: _Runner, study, frames: list[int], axes, patch, mode: str) -> HeartBox | None:
    """Run the network on ``frames`` (around the motion peak, or over the whole field of view) and
    find the heart."""
    image = study.image
    if mode == "motion":
        centre = motion_centre(image, study.spacing[1:])
        if centre is None:
            return None
        centre_mm = _centre_mm_from_voxel(axes, centre)
        # 1.5 network inputs in plane (sliding windows): room for a large heart off the motion peak
        wide = tuple(min(ax.m, int(round(1.5 * p))) if k < 2 else p for k, (ax, p) in enumerate(zip(axes, patch)))
        region = region_around(axes, wide, centre_mm)
        heart = None
        for _grow in range(3):  # a heart cut by the region's edge: run again on a region that holds it
            near = [ax.from_mm(centre_mm[k]) - region.start[k] for k, ax in enumerate(axes)]
            labels = []
            for _idx, out in _dense_chunks(runner, image, frames, region, patch, "softmax",
                                           "centring (motion) frame"):
                labels.append(out.argmax(dim=1).to(torch.uint8).cpu().numpy())
            heart = find_heart(np.concatenate(labels), axes, offset=region.start, near_xyz=near)
            if heart is None:
                return None
            bigger = region_around(axes, patch, heart.centre_mm, heart.lo_mm, heart.hi_mm)
            bigger = Region(axes, tuple(min(a, b) for a, b in zip(bigger.start, region.start)),
                            tuple(max(a, b) for a, b in zip(bigger.stop, region.stop)))
            if bigger == region:
                break
            runner.total += len(frames)
            region, centre_mm = bigger, heart.centre_mm
        return heart
    if mode == "downsample":
        t = fit_spacing(axes, patch)
        p_axes = (axes[0].rescaled(t), axes[1].rescaled(t), axes[2])
    else:
        p_axes = axes
    region = Region.full(p_axes)
    labels = []
    for _idx, out in _dense_chunks(runner, image, frames, region, patch, "softmax", f"centring ({mode}) frame"):
        labels.append(out.argmax(dim=1).to(torch.uint8).cpu().numpy())
    return find_heart(np.concatenate(labels), p_axes)


def _centre_mm_from_voxel(axes, centre_zyx) -> np.ndarray:
    z, y, x = (float(v) for v in centre_zyx)
    return np.array([axes[0].study_mm(x), axes[1].study_mm(y), axes[2].study_mm(z)])


def _study_voxel_from_mm(axes, centre_mm) -> list[float]:
    ix = axes[0].to_study(axes[0].from_mm(centre_mm[0]))
    iy = axes[1].to_study(axes[1].from_mm(centre_mm[1]))
    iz = axes[2].to_study(axes[2].from_mm(centre_mm[2]))
    return [round(float(iz), 3), round(float(iy), 3), round(float(ix), 3)]


def _choose_region(runner: _Runner, study, axes, patch, centring: str,
                   centre_zyx=None) -> tuple[Region, CentringInfo]:
    t0 = time.perf_counter()
    fits = all(ax.m <= p for ax, p in zip(axes, patch))
    info: CentringInfo
    if centre_zyx is not None:
        centre = _centre_mm_from_voxel(axes, centre_zyx)
        region = region_around(axes, patch, centre)
        info = CentringInfo("given", centre_voxel_zyx=[float(v) for v in centre_zyx])
    elif fits:
        region = Region.full(axes)
        info = CentringInfo("fov")
    else:
        frames = centring_frames(study.n_frames, study.ed_frame, study.es_frame)
        modes = {"auto": ["motion", "downsample", "sliding"], "motion": ["motion"], "downsample": ["downsample"],
                 "sliding": ["sliding"], "none": []}[centring]
        heart = None
        used = "image-centre"
        warnings = []
        for mode in modes:
            runner.total += len(frames)
            heart = _first_pass(runner, study, frames, axes, patch, mode)
            if heart is not None:
                used = mode
                break
            warnings.append(f"first pass ({mode}) found no LV")
        if heart is None:
            region = region_around(axes, patch, None)
            if modes:
                warnings.append("no LV found: the crop is centred on the image")
            info = CentringInfo("image-centre", frames=frames, warnings=warnings)
        else:
            region = region_around(axes, patch, heart.centre_mm, heart.lo_mm, heart.hi_mm)
            info = CentringInfo(used, frames=frames, centre_voxel_zyx=_study_voxel_from_mm(axes, heart.centre_mm),
                                lv_volume_ml=round(heart.lv_volume_ml, 2), warnings=warnings)
    info.region = region.describe()
    info.seconds = time.perf_counter() - t0
    runner.timings["centring_s"] += info.seconds
    return region, info


def run_segmentation(study, model, spec: ModelSpec | None = None, *, device: str | torch.device = "auto",
                     batch_frames: int | None = None, progress: ProgressFn | None = None,
                     cancel: CancelFn | None = None, view: str | None = None, centring: str = "auto",
                     centre_zyx: tuple[float, float, float] | None = None, precision: str = "auto",
                     frames: list[int] | None = None, keep_largest: bool = True,
                     shift_passes: int = DEFAULT_SHIFT_PASSES) -> SegmentationResult:
    """Segment every frame of ``study``; labels ``(t, z, y, x)`` uint8 on the study's own grid.

    Args:
        study: a CineStudy (image (t, z, y, x), spacing (dt, dz, dy, dx)).
        model: a callable torch module (``{view: tensor} -> {view: logits}``) or a registry
            LoadedModel (then ``spec`` may be omitted).
        spec: the model's :class:`ModelSpec` (task 'segmentation').
        device: 'auto' | 'cpu' | 'cuda' | 'mps'.
        batch_frames: frames per forward pass; None: from free memory.
        progress: ``progress(done, total, message)`` after each chunk.
        cancel: polled between chunks and windows; returning True (or raising :class:`Cancelled`)
            stops the run with :class:`Cancelled`.
        view: overrides the study's view for the compatibility check (e.g. for view 'unknown').
        centring: 'auto' (first pass around the motion peak, then a downsampled whole-field pass,
            then a full-resolution sliding pass, then the image centre), 'motion', 'downsample',
            'sliding' or 'none' (image centre); only used when the field of view is larger than the
            network input.
        centre_zyx: an explicit crop centre in study voxels (z, y, x); skips the first pass.
        precision: 'auto' | 'fp32' | 'bf16' | 'fp16' (see :func:`~.devices.autocast_dtype`).
        frames: only these frames (others stay 0); default all.
        keep_largest: keep only the largest connected piece of each blood pool (LV, RV, LA, RA) per
            frame (:mod:`.postprocess`); False returns the network's labels as they are.
        shift_passes: network passes per input, shifted in plane to evenly spread phases of the
            token grid and averaged (:func:`.sliding.phase_shifts`); 1 is a single pass (fastest),
            the default 3 is more accurate (measured in README's table) at about 3x the model time.
    """
    module, spec = resolve_model(model, spec)
    if spec.task != "segmentation":
        raise EngineError(f"run_segmentation needs a segmentation model, got a {spec.task} model")
    if centring not in CENTRING_MODES:
        raise EngineError(f"unknown centring {centring!r}; choose one of {CENTRING_MODES}")
    _check_study(study)
    study_view = _resolve_view(study, spec, view)
    runner = _Runner(module, spec, device, precision, progress, cancel)
    axes = model_axes(study.shape, study.spacing, spec.spacing, spec.ndim)
    patch = _patch3(spec, axes)
    frame_list = list(range(study.n_frames)) if frames is None else [int(f) for f in frames]
    if any(f < 0 or f >= study.n_frames for f in frame_list):
        raise EngineError(f"frames {frame_list} outside 0..{study.n_frames - 1}")
    if not frame_list:
        raise EngineError("no frames to segment")
    if int(shift_passes) < 1:
        raise EngineError(f"shift_passes must be at least 1, got {shift_passes}")
    shifts = phase_shifts(spec.token_px, int(shift_passes))
    runner.total = len(frame_list)
    out_labels = np.zeros(study.shape, dtype=np.uint8)
    names = {int(k): str(v) for k, v in (spec.label_map or {}).items()}
    pools = blood_pool_labels(names) if keep_largest else []
    stray_voxels = 0

    with torch.inference_mode():
        runner.check()
        runner.batch_frames = _items_per_chunk(runner, study, spec, len(frame_list), batch_frames)
        region, info = _choose_region(runner, study, axes, patch, centring, centre_zyx)
        bmats = backward_matrices(region, runner.device)
        for idx, probs in _dense_chunks(runner, study.image, frame_list, region, patch, "softmax",
                                        "segmenting frame", shifts):
            t0 = time.perf_counter()
            p = region_to_study(probs, region, 0, bmats)
            lab = p.movedim(1, -1).contiguous().argmax(dim=-1).to(torch.uint8).permute(0, 3, 2, 1).cpu().numpy()
            stray_voxels += keep_largest_pieces(lab, pools)
            out_labels[idx] = lab
            runner.timings["postprocess_s"] += time.perf_counter() - t0
    cleanup = {"largest_piece_of": [names[v] for v in pools], "voxels_removed": stray_voxels}
    prov = runner.provenance(study, study_view, info, {"frames": len(frame_list), "cleanup": cleanup,
                                                       "shift_passes_px": shifts})
    return SegmentationResult(labels=out_labels, provenance=prov, label_names=names)


# --------------------------------------------------------------------------------------------------
# landmarks
# --------------------------------------------------------------------------------------------------


def run_landmarks(study, model, spec: ModelSpec | None = None, *, device: str | torch.device = "auto",
                  batch_frames: int | None = None, progress: ProgressFn | None = None,
                  cancel: CancelFn | None = None, view: str | None = None,
                  centre_zyx: tuple[float, float, float] | None = None, slice_index: int = 0,
                  precision: str = "auto", beta: float = HEATMAP_BETA) -> LandmarkResult:
    """Mitral valve hinge points and apex per frame of a LAX study.

    Heat-map models: sigmoid, windows averaged over the field of view (or one input around
    ``centre_zyx``), then soft-argmax (``beta``) per channel. Coordinate models: the 6 outputs
    (x1, y1, x2, y2, x3, y3) in [0, 1] times the network input size, on one input centred on
    ``centre_zyx`` (default the image centre). Coordinates come back as study voxels (z, y, x) with
    z = ``slice_index``, and as RAS mm through the study's affine.
    """
    module, spec = resolve_model(model, spec)
    if spec.task not in ("landmark_heatmap", "landmark_coordinate"):
        raise EngineError(f"run_landmarks needs a landmark model, got a {spec.task} model")
    _check_study(study)
    study_view = _resolve_view(study, spec, view)
    if not 0 <= slice_index < study.n_slices:
        raise EngineError(f"slice_index {slice_index} outside 0..{study.n_slices - 1}")
    image = study.image[:, slice_index:slice_index + 1]
    runner = _Runner(module, spec, device, precision, progress, cancel)
    shape = (study.n_frames, 1, *study.shape[2:])
    axes = model_axes(shape, study.spacing, spec.spacing, spec.ndim)
    patch = _patch3(spec, axes)
    n_t = study.n_frames
    runner.total = n_t
    k = len(spec.landmark_names)
    coords_xyz = np.zeros((n_t, k, 3))
    conf = np.zeros((n_t, k)) if spec.task == "landmark_heatmap" else None
    t_c = time.perf_counter()
    if centre_zyx is not None:
        cz, cy, cx = centre_zyx
        region = region_around(axes, patch, _centre_mm_from_voxel(axes, (0.0, cy, cx)))
        info = CentringInfo("given", centre_voxel_zyx=[float(v) for v in centre_zyx])
    elif spec.task == "landmark_heatmap":
        region = Region.full(axes)
        fits = all(ax.m <= p for ax, p in zip(axes, patch))
        info = CentringInfo("fov" if fits else "sliding")
    else:
        region = region_around(axes, patch, None)
        fits = all(ax.m <= p for ax, p in zip(axes, patch))
        info = CentringInfo("fov" if fits else "image-centre")
    info.region = region.describe()
    info.seconds = time.perf_counter() - t_c

    with torch.inference_mode():
        runner.check()
        frames = list(range(n_t))
        if spec.task == "landmark_heatmap":
            lax = CineStudyView(image, study.spacing)
            runner.batch_frames = _items_per_chunk(runner, lax, spec, n_t, batch_frames)
            for idx, heat in _dense_chunks(runner, image, frames, region, patch, "sigmoid", "landmarks frame"):
                t0 = time.perf_counter()
                heat = heat[:, :k, :, :, 0].cpu()  # soft-argmax in float64 on the CPU (MPS has no float64)
                w = soft_argmax(heat, beta).numpy()  # (B, K, 2) region (x, y)
                w = np.concatenate([w, np.zeros(w.shape[:-1] + (1,))], axis=-1)
                coords_xyz[idx] = region.to_study(w)
                conf[idx] = heat.reshape(heat.shape[0], k, -1).amax(dim=-1).cpu().numpy()
                runner.timings["postprocess_s"] += time.perf_counter() - t0
        else:
            if any(s > p for s, p in zip(region.shape, patch)):
                raise EngineError("internal: coordinate models need one network input")  # pragma: no cover
            chunk = _items_per_chunk(runner, CineStudyView(image, study.spacing), spec, n_t, batch_frames)
            runner.batch_frames = chunk
            fmats = forward_matrices(region, runner.device)
            for c0 in range(0, n_t, chunk):
                idx = frames[c0:c0 + chunk]
                runner.check()
                t0 = time.perf_counter()
                x = _normalise(study_to_region(study_frames_tensor(image[idx], runner.device), region, fmats), spec)
                runner.timings["preprocess_s"] += time.perf_counter() - t0
                out = sliding_vector(x, patch, runner.call)  # one window
                if out.shape[1] < 2 * k:
                    raise EngineError(f"a coordinate model must return {2 * k} numbers, got {out.shape[1]}")
                w = out[:, : 2 * k].reshape(len(idx), k, 2).cpu().numpy().astype(np.float64)
                w = w * np.array([patch[0], patch[1]], dtype=np.float64)
                w = np.concatenate([w, np.zeros(w.shape[:-1] + (1,))], axis=-1)
                coords_xyz[idx] = region.to_study(w)
                runner.tick(len(idx), f"landmarks frame {idx[-1] + 1} of {n_t}")
    voxels = np.stack([np.full(coords_xyz.shape[:2], float(slice_index)), coords_xyz[..., 1], coords_xyz[..., 0]], -1)
    world = study.world_coordinates(voxels)
    prov = runner.provenance(study, study_view, info, {"frames": n_t, "slice_index": slice_index,
                                                        "beta": beta if spec.task == "landmark_heatmap" else None})
    names = tuple(spec.landmark_names) if spec.landmark_names else LANDMARK_NAMES
    return LandmarkResult(names=names, voxels=voxels, world=world, confidence=conf, provenance=prov)


def landmarks_from_segmentation(study, segmentation: SegmentationResult, *, view: str | None = None,
                                slice_index: int = 0) -> LandmarkResult:
    """Mitral valve hinges and apex per frame, read off a 2- or 4-chamber segmentation.

    The landmarks when no landmark model is run: the ends of the LV cavity border that no myocardium
    covers (the mitral opening) and the tip of the LV wall on the long axis
    (:func:`napari_cinema.analysis.landmarks.landmarks_from_labels`, the rule that also derives the
    reference landmarks from expert labels). A frame whose labels show no opening gets NaN.
    """
    view = view or study.view
    t0 = time.perf_counter()
    _, _, dy, dx = study.spacing
    try:
        voxels, missing = landmarks_over_frames(segmentation.labels, view, (dy, dx), slice_index)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    seg_prov = segmentation.provenance or {}
    prov = {
        "engine": "napari_cinema.engine",
        "task": "landmarks_from_segmentation",
        "model_id": seg_prov.get("model_id"),
        "sha256": seg_prov.get("sha256"),
        "study_view": view,
        "study_source": getattr(study, "source", ""),
        "frames": int(voxels.shape[0]),
        "slice_index": slice_index,
        "frames_without_landmarks": missing,
        "timings_s": {"total_s": round(time.perf_counter() - t0, 4)},
        "warnings": [f"no mitral opening in the segmentation of frame(s) {', '.join(str(t + 1) for t in missing)}"]
        if missing else [],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return LandmarkResult(names=LANDMARK_NAMES, voxels=voxels, world=study.world_coordinates(voxels),
                          confidence=None, provenance=prov)


# --------------------------------------------------------------------------------------------------
# classification / regression from the (ED, ES) pair
# --------------------------------------------------------------------------------------------------


def _ed_es(study, ed_frame, es_frame, segmentation) -> tuple[int, int | None, str]:
    if ed_frame is not None and es_frame is not None:
        return int(ed_frame), int(es_frame), "given"
    source = "given"
    ed = es = None
    if segmentation is not None:
        labels = segmentation.labels if hasattr(segmentation, "labels") else np.asarray(segmentation)
        ed, es = ed_es_from_labels(labels)
        source = "segmentation"
    elif study.ed_frame is not None and study.es_frame is not None:
        ed, es = study.ed_frame, study.es_frame
        source = "study"
    ed = int(ed_frame) if ed_frame is not None else ed
    es = int(es_frame) if es_frame is not None else es
    if ed is None or es is None:
        raise EngineError(
            "ED/ES frames are unknown: pass ed_frame/es_frame, a segmentation result, or a study with ED/ES"
        )
    return int(ed), int(es), source


def _run_pair(study, model, spec, *, task: str, ed_frame, es_frame, segmentation, device, progress, cancel,
              view, centre_zyx, precision):
    module, spec = resolve_model(model, spec)
    if spec.task != task:
        raise EngineError(f"this needs a {task} model, got a {spec.task} model")
    _check_study(study)
    study_view = _resolve_view(study, spec, view)
    ed, es, source = _ed_es(study, ed_frame, es_frame, segmentation)
    for name, f in (("ED", ed), ("ES", es)):
        if not 0 <= f < study.n_frames:
            raise EngineError(f"{name} frame {f} outside 0..{study.n_frames - 1}")
    frames = [ed, es][: max(1, spec.n_frames)]
    if spec.n_frames > 2:
        raise EngineError(f"models taking {spec.n_frames} frames are not supported")
    runner = _Runner(module, spec, device, precision, progress, cancel)
    axes = model_axes(study.shape, study.spacing, spec.spacing, spec.ndim)
    patch = _patch3(spec, axes)
    runner.total = 1
    t_c = time.perf_counter()
    heart = None
    if segmentation is not None and centre_zyx is None:
        labels = segmentation.labels if hasattr(segmentation, "labels") else np.asarray(segmentation)
        ident = tuple(AxisMap.identity(ax.n, ax.s) for ax in axes)
        heart = find_heart(np.transpose(labels[frames], (0, 3, 2, 1)), ident, min_lv_ml=0.0)
    if centre_zyx is not None:
        region = region_around(axes, patch, _centre_mm_from_voxel(axes, centre_zyx))
        info = CentringInfo("given", centre_voxel_zyx=[float(v) for v in centre_zyx])
    elif heart is not None:
        region = region_around(axes, patch, heart.centre_mm, heart.lo_mm, heart.hi_mm)
        info = CentringInfo("segmentation", centre_voxel_zyx=_study_voxel_from_mm(axes, heart.centre_mm),
                            lv_volume_ml=round(heart.lv_volume_ml, 2))
    else:
        region = Region.full(axes)
        fits = all(ax.m <= p for ax, p in zip(axes, patch))
        info = CentringInfo("fov" if fits else "sliding")
    info.region = region.describe()
    info.seconds = time.perf_counter() - t_c
    runner.timings["centring_s"] += info.seconds
    with torch.inference_mode():
        runner.check()
        t0 = time.perf_counter()
        x = study_frames_tensor(study.image[frames], runner.device)  # (F, 1, X, Y, Z)
        x = x[:, 0][None]  # (1, F, X, Y, Z): frames as channels
        x = _normalise(study_to_region(x, region), spec)  # both frames scaled together
        runner.timings["preprocess_s"] += time.perf_counter() - t0

        def predict(xw: torch.Tensor) -> torch.Tensor:
            out = runner.call(xw)
            return torch.softmax(out, dim=-1) if task == "classification" else out

        out = sliding_vector(x, patch, predict, before_window=lambda k, n: runner.check())
        runner.tick(1, f"{task} done")
    prov = runner.provenance(study, study_view, info, {"ed_frame": ed, "es_frame": es if spec.n_frames > 1 else None,
                                                        "ed_es_source": source})
    return spec, out[0].cpu().numpy().astype(np.float64), ed, (es if spec.n_frames > 1 else None), prov


def run_classification(study, model, spec: ModelSpec | None = None, *, ed_frame: int | None = None,
                       es_frame: int | None = None, segmentation=None, device: str | torch.device = "auto",
                       progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                       view: str | None = None, centre_zyx=None, precision: str = "auto") -> ClassificationResult:
    """Class probabilities from the (ED, ES) pair (2 input channels, min-max over both frames).

    ED/ES: the arguments, else from ``segmentation`` (largest / smallest LV), else the study's.
    The input is cropped around the segmentation's LV when one is given, else the field of view is
    covered by windows whose softmax outputs are averaged.
    """
    spec, probs, ed, es, prov = _run_pair(study, model, spec, task="classification", ed_frame=ed_frame,
                                          es_frame=es_frame, segmentation=segmentation, device=device,
                                          progress=progress, cancel=cancel, view=view, centre_zyx=centre_zyx,
                                          precision=precision)
    classes = spec.classes or tuple(f"class_{i}" for i in range(len(probs)))
    if len(classes) != len(probs):
        raise EngineError(f"the model gave {len(probs)} outputs for {len(classes)} classes {list(classes)}")
    return ClassificationResult(classes=tuple(classes), probabilities=probs, ed_frame=ed, es_frame=es, provenance=prov)


def run_regression(study, model, spec: ModelSpec | None = None, *, ed_frame: int | None = None,
                   es_frame: int | None = None, segmentation=None, device: str | torch.device = "auto",
                   progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                   view: str | None = None, centre_zyx=None, precision: str = "auto") -> RegressionResult:
    """A regressed value (e.g. EF %) from the (ED, ES) pair: output * std + mean (the config's z-scoring)."""
    spec, out, ed, es, prov = _run_pair(study, model, spec, task="regression", ed_frame=ed_frame,
                                        es_frame=es_frame, segmentation=segmentation, device=device,
                                        progress=progress, cancel=cancel, view=view, centre_zyx=centre_zyx,
                                        precision=precision)
    raw = float(out[0])
    mean = spec.regression_mean if spec.regression_mean is not None else 0.0
    std = spec.regression_std if spec.regression_std is not None else 1.0
    if spec.regression_mean is None or spec.regression_std is None:
        prov.setdefault("warnings", []).append("no regression mean/std in the config: the raw output is returned")
    return RegressionResult(value=raw * std + mean, raw=raw, target=spec.regression_target, ed_frame=ed,
                            es_frame=es, provenance=prov)


def run_model(study, model, spec: ModelSpec | None = None, **kwargs):
    """Dispatch on the spec's task to the matching ``run_*`` function."""
    module, spec = resolve_model(model, spec)
    fn = {
        "segmentation": run_segmentation,
        "landmark_heatmap": run_landmarks,
        "landmark_coordinate": run_landmarks,
        "classification": run_classification,
        "regression": run_regression,
    }[spec.task]
    return fn(study, module, spec, **kwargs)


__all__ = [
    "Cancelled",
    "ClassificationResult",
    "EngineError",
    "LandmarkResult",
    "RegressionResult",
    "SegmentationResult",
    "choose_batch_frames",
    "ed_es_from_labels",
    "landmarks_from_segmentation",
    "run_classification",
    "run_landmarks",
    "run_model",
    "run_regression",
    "run_segmentation",
    "soft_argmax",
    "view_group",
]
