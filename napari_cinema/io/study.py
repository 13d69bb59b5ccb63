"""CineStudy: the one in-memory form of a cine MR study.

Conventions (shared/DESIGN.md):
- ``image`` is (t, z, y, x) float32; SAX z = slices, LAX z = 1.
- ``spacing`` is (dt ms, dz mm, dy mm, dx mm); dt is ``None`` when the timing is unknown.
- ``affine`` maps a voxel index (x, y, z) = (column, row, slice), i.e. the array index reversed,
  to RAS millimetres, exactly as a NIfTI affine does. A NIfTI affine can therefore be used as is;
  DICOM's LPS geometry is converted on load.
- ``labels`` (same shape as ``image``, uint8) use the internal convention of :mod:`.labels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

VIEWS = ("sax", "lax_2c", "lax_3c", "lax_4c", "unknown")


class CineLoadError(ValueError):
    """A study could not be read; the message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


@dataclass
class PatientInfo:
    """What is known of the patient; every field is optional (None when unknown)."""

    patient_id: str | None = None
    height_cm: float | None = None
    weight_kg: float | None = None
    sex: str | None = None  # "M", "F" or "O" as in DICOM
    age_years: float | None = None
    heart_rate_bpm: float | None = None
    rr_interval_ms: float | None = None
    group: str | None = None  # diagnosis group when the dataset gives one (ACDC: DCM, HCM, ...)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class DicomRefs:
    """Per-frame DICOM identifiers, kept so that results can be written back (DICOM SEG)."""

    study_instance_uid: str
    series_instance_uids: list[str]
    # sop_instance_uids[t][z]; frame_numbers[t][z] is the 1-based frame within a multi-frame
    # instance (enhanced MR), or None for single-frame instances.
    sop_instance_uids: list[list[str]]
    frame_numbers: list[list[int | None]] | None = None
    sop_class_uid: str | None = None
    files: list[list[str]] | None = None


@dataclass
class CineStudy:
    image: np.ndarray
    spacing: tuple[float | None, float, float, float]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    view: str = "unknown"
    frame_times_ms: np.ndarray | None = None
    patient: PatientInfo = field(default_factory=PatientInfo)
    source: str = ""
    description: str = ""
    dicom: DicomRefs | None = None
    labels: np.ndarray | None = None
    # Frames (array indices) whose labels are real annotations; other frames hold 0 and mean "not labelled".
    labelled_frames: tuple[int, ...] = ()
    ed_frame: int | None = None
    es_frame: int | None = None
    # The frame numbers of the original acquisition (ACDC ships only its ED and ES frames).
    frame_numbers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        img = np.asarray(self.image)
        if img.ndim != 4:
            raise ValueError(f"CineStudy image must be (t, z, y, x), got shape {img.shape}")
        self.image = img.astype(np.float32, copy=False)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {self.view!r}")
        dt, dz, dy, dx = self.spacing
        self.spacing = (None if dt is None else float(dt), float(dz), float(dy), float(dx))
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != img.shape:
                raise ValueError(f"labels shape {labels.shape} differs from image shape {img.shape}")
            self.labels = labels.astype(np.uint8, copy=False)
            if not self.labelled_frames:
                self.labelled_frames = tuple(range(img.shape[0]))
        if self.frame_times_ms is not None:
            self.frame_times_ms = np.asarray(self.frame_times_ms, dtype=np.float64)

    # -- shape ---------------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return int(self.image.shape[0])

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[1])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        _, dz, dy, dx = self.spacing
        return dz * dy * dx / 1000.0

    @property
    def name(self) -> str:
        """A short name for layers and report folders."""
        if self.dicom is not None:
            # DICOM folders are often called 'dicom' or a number: the patient and series say more.
            parts = [self.patient.patient_id or Path(self.source).name, self.description]
            return " ".join(p for p in parts if p) or "cine"
        p = Path(self.source) if self.source else None
        if p is None:
            return "cine"
        n = p.name
        for suffix in (".nii.gz", ".nii", ".dcm"):
            if n.endswith(suffix):
                n = n[: -len(suffix)]
        return n or "cine"

    # -- napari ---------------------------------------------------------------------------------
    def napari_scale(self) -> tuple[float, float, float, float]:
        dt, dz, dy, dx = self.spacing
        return (dt if dt else 1.0, dz, dy, dx)

    def napari_units(self) -> tuple[str, str, str, str]:
        return ("ms" if self.spacing[0] else "", "mm", "mm", "mm")

    def header(self) -> "CineStudy":
        """A copy without the labels, carried in layer metadata (the image array is shared, not copied)."""
        return replace(self, labels=None)

    # -- geometry --------------------------------------------------------------------------------
    def world_coordinates(self, zyx: np.ndarray) -> np.ndarray:
        """RAS mm of (..., 3) voxel coordinates given in (z, y, x) array order."""
        zyx = np.asarray(zyx, dtype=np.float64)
        xyz1 = np.concatenate([zyx[..., ::-1], np.ones(zyx.shape[:-1] + (1,))], axis=-1)
        return (xyz1 @ self.affine.T)[..., :3]

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (the ``info`` command prints it)."""
        dt, dz, dy, dx = self.spacing
        return {
            "source": self.source,
            "view": self.view,
            "description": self.description,
            "shape_tzyx": list(self.shape),
            "frames": self.n_frames,
            "slices": self.n_slices,
            "rows": int(self.image.shape[2]),
            "columns": int(self.image.shape[3]),
            "frame_interval_ms": None if dt is None else round(dt, 3),
            "slice_spacing_mm": round(dz, 4),
            "pixel_spacing_mm": [round(dy, 4), round(dx, 4)],
            "frame_times_ms": None
            if self.frame_times_ms is None
            else [round(float(v), 2) for v in self.frame_times_ms],
            "affine_ras": [[round(float(v), 5) for v in row] for row in self.affine],
            "patient": self.patient.to_dict(),
            "ed_frame": self.ed_frame,
            "es_frame": self.es_frame,
            "frame_numbers": None if self.frame_numbers is None else list(self.frame_numbers),
            "has_labels": self.labels is not None,
            "labelled_frames": list(self.labelled_frames),
            "dicom_series": None if self.dicom is None else len(set(self.dicom.series_instance_uids)),
        }
