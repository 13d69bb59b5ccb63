"""Inference engine (Qt-free): preprocessing, centring, sliding window, frame batching, devices.

Typical use::

    from napari_cinema.engine import ModelSpec, run_segmentation
    spec = ModelSpec.from_config(config, "sax")
    result = run_segmentation(study, model, spec, device="auto", progress=print)
    result.labels  # (t, z, y, x) uint8 on the study's grid
"""

from .devices import (
    DeviceUnavailable,
    autocast_dtype,
    available_devices,
    cpu_bf16_is_faster,
    describe_device,
    pick_device,
    set_cpu_bf16,
)
from .engine import (
    Cancelled,
    ClassificationResult,
    EngineError,
    LandmarkResult,
    RegressionResult,
    SegmentationResult,
    choose_batch_frames,
    ed_es_from_labels,
    landmarks_from_segmentation,
    run_classification,
    run_landmarks,
    run_model,
    run_regression,
    run_segmentation,
    soft_argmax,
)
from .sliding import DEFAULT_SHIFT_PASSES
from .spec import LANDMARK_NAMES, TASKS, ModelSpec, resolve_model

__all__ = [
    "Cancelled",
    "ClassificationResult",
    "DEFAULT_SHIFT_PASSES",
    "DeviceUnavailable",
    "EngineError",
    "LANDMARK_NAMES",
    "LandmarkResult",
    "ModelSpec",
    "RegressionResult",
    "SegmentationResult",
    "TASKS",
    "autocast_dtype",
    "available_devices",
    "choose_batch_frames",
    "cpu_bf16_is_faster",
    "describe_device",
    "ed_es_from_labels",
    "landmarks_from_segmentation",
    "pick_device",
    "resolve_model",
    "run_classification",
    "run_landmarks",
    "run_model",
    "run_regression",
    "run_segmentation",
    "set_cpu_bf16",
    "soft_argmax",
]
