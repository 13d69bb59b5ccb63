"""DICOM cine reader and writer (Qt-free; pydicom 3 and numpy only).

Reading is done in two passes so that big folders stay fast:

1. *scan*: every file's header is read with ``stop_before_pixels``; the images are grouped by
   SeriesInstanceUID and orientation, and per-slice series (UK Biobank exports one series per SAX
   slice) are merged back into one stack;
2. *load*: only the chosen group's pixels are read.

Geometry comes from ImagePositionPatient / ImageOrientationPatient only (never SliceLocation, which is
wrong in real data such as Sunnybrook). Slices are ordered along the slice normal (row x column
cosines), so the returned RAS affine is always right-handed in (column, row, slice) and maps a voxel
index (x, y, z) to RAS millimetres like a NIfTI affine.

Every problem that makes the result wrong (a missing slice or frame, a truncated file, several cines
in one folder, a localiser instead of a cine) raises :class:`CineLoadError` naming the path and the
problem; harmless oddities (stray non-DICOM files, slightly uneven spacing) only warn.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import struct
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    RE_VALID_UID,
    UID,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from .study import CineLoadError, CineStudy, DicomRefs, PatientInfo

__all__ = [
    "DicomCineWarning",
    "DicomScan",
    "SeriesGroup",
    "read_dicom_cine",
    "read_dicom_cines",
    "scan_dicom",
    "scan_dicom_report",
    "view_from_description",
    "write_dicom_cine",
]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.4"
_MULTIFRAME_CLASSES = {ENHANCED_MR_STORAGE, LEGACY_ENHANCED_MR_STORAGE}
# Pixel-bearing objects that are not images of the patient (results written back, dose maps).
_NOT_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
}
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}

_ORIENT_TOL = 1e-3  # max cosine difference for "same orientation" (~0.06 degrees)
_POS_TOL = 0.05  # mm along the normal below which two images are at the same slice position
_SPACING_RTOL = 0.02  # relative slice-spacing spread accepted as uniform
_SPACING_WARN_RTOL = 0.10  # beyond this a non-uniform stack is an error, below it a warning
_CARDINAL_COS = 0.966  # |normal . axis| above this (15 degrees) names the plane axial/coronal/sagittal
_MIN_SAX_POSITIONS = 5

_LOCALISER_RE = re.compile(
    r"locali[sz]er|\bscout|survey|3[\s_-]*plane|three[\s_-]*plane|tri[\s_-]*pilot|\bpilot|\bloc\b",
    re.IGNORECASE,
)
# View keywords, matched on the description with every non-alphanumeric run turned into a space.
# Long-axis keywords are tried first: they are more specific than the short-axis ones.
_VIEW_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("lax_4c", re.compile(r"\b(4\s?ch\w*|4\s?cv|4\s?c|four\s?chambers?|hla)\b")),
    ("lax_2c", re.compile(r"\b(2\s?ch\w*|2\s?cv|2\s?c|two\s?chambers?|vla)\b")),
    ("lax_3c", re.compile(r"\b(3\s?ch\w*|3\s?cv|3\s?c|three\s?chambers?|lvot)\b")),
    ("sax", re.compile(r"\b(sa|sax|sa\s?stack|short\s?axis|sh\s?ax|sa\s?cine|cine\s?sa)\b")),
)
_VIEW_WORDS = {"sax": "sax", "lax_2c": "2ch", "lax_3c": "3ch", "lax_4c": "4ch", "unknown": ""}
# A per-slice suffix ("CINE_segmented_SAX_b3", "sax 10") that differs between per-slice series.
_SLICE_SUFFIX_RE = re.compile(r"[\s_\-]+(?:b|sl|slice|s)?\d+$", re.IGNORECASE)


class DicomCineWarning(UserWarning):
    """Something odd but harmless in a DICOM cine (skipped files, slightly uneven spacing)."""


# ---------------------------------------------------------------------------------------------
# small value helpers
# ---------------------------------------------------------------------------------------------
def _float(value: Any) -> float | None:
    """A DICOM numeric value as float, None when absent, empty or malformed."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (list, tuple, MultiValue)):
            value = value[0]
        v = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return v if np.isfinite(v) else None


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _int(value: Any) -> int | None:
    v = _float(value)
    return None if v is None else int(round(v))


def _str(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _strings(value: Any) -> tuple[str, ...]:
    """A multi-valued string element as a tuple (a single value comes back as a plain str)."""
    if value is None or value == "":
        return ()
    if isinstance(value, (str, bytes)):
        return (str(value),)
    return tuple(str(v) for v in value)


def _first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    seq = None if ds is None else ds.get(keyword)
    return seq[0] if seq else None


def _normal(iop: np.ndarray) -> np.ndarray:
    n = np.cross(iop[:3], iop[3:])
    return n / (np.linalg.norm(n) or 1.0)


def _plane_name(iop: np.ndarray | None) -> str:
    if iop is None:
        return "no geometry"
    n = np.abs(_normal(iop))
    axis = int(np.argmax(n))
    if n[axis] < _CARDINAL_COS:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]  # LPS: x normal = sagittal, y = coronal, z = axial


def view_from_description(description: str) -> str | None:
    """The view named by a series description or protocol ('sax', 'lax_4c', ...), or None."""
    text = re.sub(r"[^a-z0-9]+", " ", description.lower()).strip()
    if not text:
        return None
    for view, pattern in _VIEW_PATTERNS:
        if pattern.search(text):
            return view
    return None


def _parse_age(value: Any) -> float | None:
    """DICOM AS ('053Y', '006M', '010W', '003D') -> years."""
    m = re.fullmatch(r"\s*(\d+)\s*([DWMY]?)\s*", _str(value).upper())
    if not m:
        return None
    n = float(m.group(1))
    return {"": n, "Y": n, "M": n / 12.0, "W": n * 7 / 365.25, "D": n / 365.25}[m.group(2)]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _or(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def _short(path: str | Path, root: Path | None = None) -> str:
    """A path relative to the scanned folder, for readable messages."""
    p = Path(path)
    if root is not None:
        try:
            rel = p.relative_to(root)
            return str(rel) if str(rel) != "." else p.name
        except ValueError:
            pass
    return str(p)


# ---------------------------------------------------------------------------------------------
# scanning: one _Frame per 2-D image (a single-frame file or one frame of a multi-frame file)
# ---------------------------------------------------------------------------------------------
@dataclass
class _Frame:
    path: str
    frame: int | None  # 1-based frame in a multi-frame file; None for a single-frame file
    study_uid: str
    series_uid: str
    series_number: int | None
    description: str
    protocol: str
    modality: str
    sop_class: str
    sop_uid: str
    image_type: tuple[str, ...]
    rows: int
    cols: int
    samples: int
    pixel_spacing: np.ndarray | None  # (row spacing, column spacing) = (dy, dx)
    iop: np.ndarray | None
    ipp: np.ndarray | None
    thickness: float | None
    spacing_between: float | None
    trigger_ms: float | None
    order: int  # InstanceNumber (single frame) or temporal index / frame number (multi-frame)
    cardiac_images: int | None
    slope: float
    intercept: float
    file_info: dict[str, Any]  # per-file values shared by its frames (patient, rhythm)
    broken: str | None = None  # why the pixel data cannot be read, found while scanning

    @property
    def localiser(self) -> bool:
        if any("LOCALIZER" in t.upper() for t in self.image_type):
            return True
        return bool(_LOCALISER_RE.search(f"{self.description} {self.protocol}"))


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A DICOM stream without the 128-byte preamble (old exports): a plausible first tag."""
    if len(head) < 8:
        return False
    group, elem = struct.unpack("<HH", head[:4])
    return group in (0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028) and elem < 0x0200


def _pixel_element_problem(fp, ds: Dataset, size: int) -> tuple[bool, str | None]:
    """After a ``stop_before_pixels`` read ``fp`` sits on the pixel element (pydicom rewinds to
    its tag). Read that element's header to learn whether there are pixels and whether the file
    is long enough to hold them, without reading them: truncated copies are caught at scan time."""
    pos = fp.tell()
    if pos >= size - 8:
        return False, None
    implicit, little = ds.original_encoding if ds.original_encoding[0] is not None else (False, True)
    endian = "<" if little in (True, None) else ">"
    head = fp.read(12)
    group, elem = struct.unpack(endian + "HH", head[:4])
    if (group, elem) not in _PIXEL_TAGS:
        return False, None
    if implicit:
        (length,), hdr = struct.unpack(endian + "L", head[4:8]), 8
    elif head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"UN", b"OV"):
        (length,), hdr = struct.unpack(endian + "L", head[8:12]), 12
    else:
        (length,), hdr = struct.unpack(endian + "H", head[6:8]), 8
    if length == 0xFFFFFFFF:  # encapsulated (compressed): checked when decoded
        return True, None
    have = size - pos - hdr
    if have < length:
        return True, f"truncated: pixel data needs {length} bytes, the file holds {max(have, 0)}"
    rows, cols = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    bits = _int(ds.get("BitsAllocated")) or 16
    frames = _int(ds.get("NumberOfFrames")) or 1
    samples = _int(ds.get("SamplesPerPixel")) or 1
    expected = rows * cols * frames * samples * bits // 8
    if (group, elem) == (0x7FE0, 0x0010) and expected and length < expected:
        return True, f"pixel data holds {length} bytes, {rows}x{cols}x{frames} pixels need {expected}"
    return True, None


def _read_header(path: str) -> tuple[str, list[_Frame] | str]:
    """('image', frames) | ('not_dicom', '') | ('not_image', what) | ('corrupt', why)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            head = fp.read(132)
            if len(head) == 132 and head[128:132] == b"DICM":
                force = False
            elif _looks_like_raw_dicom(head):
                force = True
            else:
                return "not_dicom", ""
            fp.seek(0)
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
            except InvalidDicomError:
                return "not_dicom", ""
            except Exception as exc:  # pydicom raises many kinds on garbage
                return "corrupt", f"unreadable DICOM header ({type(exc).__name__}: {exc})"
            has_pixels, broken = _pixel_element_problem(fp, ds, size)
    except OSError as exc:
        return "corrupt", f"cannot read ({exc.strerror or exc})"
    except struct.error as exc:
        return "corrupt", f"unreadable DICOM ({exc})"

    meta = getattr(ds, "file_meta", None)
    sop_class = _str(ds.get("SOPClassUID")) or _str(meta.get("MediaStorageSOPClassUID") if meta else "")
    if not has_pixels:
        # pydicom stops silently at the end of a truncated file, so an *image* object without
        # pixels is a damaged file, whereas reports, presentation states, DICOMDIRs are not images.
        if sop_class and "Image Storage" in UID(sop_class).name:
            return "corrupt", f"{UID(sop_class).name} object ends before its pixel data (truncated?)"
        return "not_image", UID(sop_class).name if sop_class else "no pixel data"
    if sop_class in _NOT_IMAGE_CLASSES:
        return "not_image", UID(sop_class).name
    rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
    if not rows or not cols:
        return "corrupt", "image without Rows/Columns"
    try:
        frames = _frames_from_header(path, ds, sop_class, rows, cols)
    except Exception as exc:  # malformed functional groups and the like
        return "corrupt", f"malformed image header ({type(exc).__name__}: {exc})"
    if broken:
        for f in frames:
            f.broken = broken
    return "image", frames


def _file_info(ds: Dataset) -> dict[str, Any]:
    return {
        "patient_id": _str(ds.get("PatientID")) or None,
        "patient_size": _float(ds.get("PatientSize")),
        "patient_weight": _float(ds.get("PatientWeight")),
        "patient_sex": _str(ds.get("PatientSex")).upper() or None,
        "patient_age": _parse_age(ds.get("PatientAge")),
        "heart_rate": _float(ds.get("HeartRate")),
        "nominal_interval": _float(ds.get("NominalInterval")),
    }


def _frames_from_header(path: str, ds: Dataset, sop_class: str, rows: int, cols: int) -> list[_Frame]:
    info = _file_info(ds)
    common = dict(
        path=path,
        study_uid=_str(ds.get("StudyInstanceUID")),
        series_uid=_str(ds.get("SeriesInstanceUID")) or f"(no series uid) {Path(path).parent}",
        series_number=_int(ds.get("SeriesNumber")),
        description=_str(ds.get("SeriesDescription")),
        protocol=_str(ds.get("ProtocolName")),
        modality=_str(ds.get("Modality")),
        sop_class=sop_class,
        sop_uid=_str(ds.get("SOPInstanceUID")),
        image_type=_strings(ds.get("ImageType")),
        rows=rows,
        cols=cols,
        samples=_int(ds.get("SamplesPerPixel")) or 1,
        cardiac_images=_int(ds.get("CardiacNumberOfImages")),
        file_info=info,
    )
    n_frames = _int(ds.get("NumberOfFrames")) or 1
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    # Only true multi-frame objects use functional groups: classic single-frame MR from some
    # exporters (Sunnybrook) carries an empty PerFrameFunctionalGroupsSequence.
    base = _classic_values(ds)
    if per_frame and (sop_class in _MULTIFRAME_CLASSES or n_frames > 1):
        return [
            _enhanced_frame(base, per_frame[i] if i < len(per_frame) else None, shared, i, common)
            for i in range(n_frames)
        ]
    if n_frames == 1:
        return [_Frame(frame=None, order=_int(ds.get("InstanceNumber")) or 0, **base, **common)]
    # Classic multi-frame without functional groups: frames are successive time points.
    frame_time = _float(ds.get("FrameTime"))
    frames = []
    for i in range(n_frames):
        values = dict(base, trigger_ms=None if frame_time is None else i * frame_time)
        frames.append(_Frame(frame=i + 1, order=i + 1, **values, **common))
    return frames


def _classic_values(ds: Dataset) -> dict[str, Any]:
    return dict(
        pixel_spacing=_floats(ds.get("PixelSpacing") or (), 2),
        iop=_floats(ds.get("ImageOrientationPatient") or (), 6),
        ipp=_floats(ds.get("ImagePositionPatient") or (), 3),
        thickness=_float(ds.get("SliceThickness")),
        spacing_between=_float(ds.get("SpacingBetweenSlices")),
        trigger_ms=_float(ds.get("TriggerTime")),
        slope=_or(_float(ds.get("RescaleSlope")), 1.0),
        intercept=_or(_float(ds.get("RescaleIntercept")), 0.0),
    )


def _enhanced_frame(
    top: dict[str, Any], item: Dataset | None, shared: Dataset | None, i: int, common: dict[str, Any]
) -> _Frame:
    """One frame of an enhanced multi-frame object: per-frame functional groups, then the shared
    groups, then the top-level attributes (legacy converted objects keep some there)."""

    def group(keyword: str) -> Dataset | None:
        return _first_item(item, keyword) or _first_item(shared, keyword)

    empty = Dataset()
    pos = group("PlanePositionSequence") or empty
    ori = group("PlaneOrientationSequence") or empty
    meas = group("PixelMeasuresSequence") or empty
    sync = group("CardiacSynchronizationSequence") or empty
    content = group("FrameContentSequence") or empty
    pvt = group("PixelValueTransformationSequence") or empty
    rr = _float(sync.get("RRIntervalTimeNominal"))
    if rr:
        common["file_info"].setdefault("rr_nominal", rr)
    temporal = _int(content.get("TemporalPositionIndex"))
    return _Frame(
        frame=i + 1,
        order=_or(temporal, i + 1),
        pixel_spacing=_or(_floats(meas.get("PixelSpacing") or (), 2), top["pixel_spacing"]),
        iop=_or(_floats(ori.get("ImageOrientationPatient") or (), 6), top["iop"]),
        ipp=_or(_floats(pos.get("ImagePositionPatient") or (), 3), top["ipp"]),
        thickness=_or(_float(meas.get("SliceThickness")), top["thickness"]),
        spacing_between=_or(_float(meas.get("SpacingBetweenSlices")), top["spacing_between"]),
        trigger_ms=_or(_float(sync.get("NominalCardiacTriggerDelayTime")), top["trigger_ms"]),
        slope=_or(_float(pvt.get("RescaleSlope")), top["slope"]),
        intercept=_or(_float(pvt.get("RescaleIntercept")), top["intercept"]),
        **common,
    )


# ---------------------------------------------------------------------------------------------
# groups
# ---------------------------------------------------------------------------------------------
@dataclass
class SeriesGroup:
    """Images of one series (or of per-slice series merged into one stack) with one orientation."""

    series_instance_uid: str
    series_description: str
    orientation: tuple[float, ...]  # the 6 ImageOrientationPatient cosines (LPS); () if none
    n_files: int
    n_positions: int  # distinct slice positions along the normal
    n_frames_per_position: int  # the most common count (see frame_counts when uneven)
    modality: str
    series_number: int | None = None
    series_instance_uids: tuple[str, ...] = ()  # more than one when per-slice series were merged
    protocol_name: str = ""
    rows: int = 0
    columns: int = 0
    pixel_spacing: tuple[float, float] | None = None  # (row, column) spacing in mm
    plane: str = "oblique"  # axial | coronal | sagittal | oblique | no geometry
    is_localizer: bool = False
    multi_frame: bool = False
    frame_counts: tuple[int, ...] = ()  # frames at each position, in slice order
    view: str = "unknown"  # guessed from description and geometry
    index: int = 0  # position in the scan listing (``series="#index"`` selects it)
    patient_id: str = ""
    frames: list[_Frame] = field(default_factory=list, repr=False)

    @property
    def n_images(self) -> int:
        return len(self.frames)

    @property
    def is_cine(self) -> bool:
        """A candidate cine: several frames per position, real geometry, not a localiser."""
        return not self.is_localizer and self.n_frames_per_position >= 2 and len(self.orientation) == 6

    def describe(self) -> str:
        name = self.series_description or self.protocol_name or "(no description)"
        num = f"series {self.series_number} " if self.series_number is not None else ""
        n_series = len(self.series_instance_uids)
        merged = f", {n_series} series merged" if n_series > 1 else ""
        frames = _plural(self.n_frames_per_position, "frame")
        if len(set(self.frame_counts)) > 1:
            frames = f"{min(self.frame_counts)}-{max(self.frame_counts)} frames (uneven)"
        kind = "localiser" if self.is_localizer else (self.view if self.view != "unknown" else "")
        return (
            f"#{self.index} {num}'{name}' [{self.modality or '?'}]: {_plural(self.n_positions, 'position')}"
            f" x {frames}, {self.rows}x{self.columns}, {self.plane}{', ' + kind if kind else ''}{merged}"
            f"{', patient ' + self.patient_id if self.patient_id else ''} (uid {self.series_instance_uid})"
        )

    def _positions(self) -> tuple[np.ndarray, list[list[_Frame]]]:
        """Slice positions along the normal (ascending) and the frames at each."""
        return _cluster_positions(self.frames)


def _cluster_positions(frames: list[_Frame]) -> tuple[np.ndarray, list[list[_Frame]]]:
    if not frames or frames[0].iop is None:
        return np.zeros(1), [list(frames)]
    n = _normal(frames[0].iop)
    proj = np.array([float(f.ipp @ n) if f.ipp is not None else np.nan for f in frames])
    order = np.argsort(proj, kind="stable")
    centres: list[float] = []
    members: list[list[_Frame]] = []
    for i in order:
        if centres and abs(proj[i] - centres[-1]) <= _POS_TOL:
            members[-1].append(frames[i])
        else:
            centres.append(float(proj[i]))
            members.append([frames[i]])
    return np.array(centres), members


_Clusters = dict[str, list[tuple["np.ndarray | None", list[_Frame]]]]


def _add_by_orientation(by_series: _Clusters, f: _Frame) -> None:
    """Put ``f`` in its series' orientation cluster (a tolerance, not rounding: rounding splits
    orientations that straddle a rounding boundary)."""
    clusters = by_series.setdefault(f.series_uid, [])
    for ref, members in clusters:
        if f.iop is None and ref is None or (
            f.iop is not None and ref is not None and np.max(np.abs(f.iop - ref)) <= _ORIENT_TOL
        ):
            members.append(f)
            return
    clusters.append((f.iop, [f]))


def _make_group(frames: list[_Frame]) -> SeriesGroup:
    first = frames[0]
    centres, members = _cluster_positions(frames)
    counts = tuple(len(m) for m in members)
    per_position = Counter(counts).most_common(1)[0][0]
    uids = tuple(dict.fromkeys(f.series_uid for m in members for f in m))  # in slice order
    spacing = first.pixel_spacing
    g = SeriesGroup(
        series_instance_uid=uids[0],
        series_description=first.description,
        orientation=tuple(round(float(v), 6) for v in first.iop) if first.iop is not None else (),
        n_files=len({f.path for f in frames}),
        n_positions=len(centres),
        n_frames_per_position=per_position,
        modality=first.modality,
        series_number=first.series_number,
        series_instance_uids=uids,
        protocol_name=first.protocol,
        rows=first.rows,
        columns=first.cols,
        pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        plane=_plane_name(first.iop),
        is_localizer=any(f.localiser for f in frames),
        multi_frame=any(f.frame is not None for f in frames),
        frame_counts=counts,
        patient_id=first.file_info.get("patient_id") or "",
        frames=frames,
    )
    g.view = _guess_view(g)
    return g


def _guess_view(g: SeriesGroup) -> str:
    if g.is_localizer:
        return "unknown"
    named = view_from_description(g.series_description) or view_from_description(g.protocol_name)
    if named:
        return named
    # A cine of many parallel oblique slices is a short-axis stack; one LAX plane cannot be named
    # from its own geometry alone, nor can a static stack (T2, black blood) be called a SAX cine.
    if g.n_frames_per_position >= 2 and g.n_positions >= _MIN_SAX_POSITIONS and g.plane == "oblique":
        return "sax"
    return "unknown"


def _merge_key(g: SeriesGroup) -> tuple:
    stem = _SLICE_SUFFIX_RE.sub("", g.series_description).lower()
    proto = _SLICE_SUFFIX_RE.sub("", g.protocol_name).lower()
    ps = None if g.pixel_spacing is None else tuple(round(v, 3) for v in g.pixel_spacing)
    study = g.frames[0].study_uid
    return (study, stem, proto, g.rows, g.columns, ps, g.n_frames_per_position, g.modality)


def _merge_per_slice_series(groups: list[SeriesGroup]) -> list[SeriesGroup]:
    """UK Biobank (and some PACS exports) store each SAX slice as its own series. Merge single-
    position series that share the study, orientation, description/protocol (minus a per-slice
    suffix like ``_b3``), matrix, pixel spacing and frame count, and lie at different positions."""
    singles = [g for g in groups if g.n_positions == 1 and g.is_cine]
    buckets: list[list[SeriesGroup]] = []
    for g in singles:
        for bucket in buckets:
            ref = bucket[0]
            if _merge_key(ref) == _merge_key(g) and np.max(
                np.abs(np.array(ref.orientation) - np.array(g.orientation))
            ) <= _ORIENT_TOL * 10:
                bucket.append(g)
                break
        else:
            buckets.append([g])
    merged_away: set[int] = set()
    out = [g for g in groups]
    for bucket in buckets:
        if len(bucket) < 2:
            continue
        # One slice acquired twice (a repeated breath-hold) leaves two series at one position:
        # keep the later one, as the reader of the scan would, but say so.
        n = _normal(bucket[0].frames[0].iop)
        by_pos: dict[float, list[SeriesGroup]] = {}
        for g in bucket:
            p = float(g.frames[0].ipp @ n)
            key = next((k for k in by_pos if abs(k - p) <= _POS_TOL), p)
            by_pos.setdefault(key, []).append(g)
        if len(by_pos) < 2:
            continue
        chosen = []
        for p, gs in sorted(by_pos.items()):
            gs = sorted(gs, key=lambda g: (g.series_number or 0, g.series_instance_uid))
            if len(gs) > 1:
                warnings.warn(
                    f"{len(gs)} series at slice position {p:.2f} mm "
                    f"({', '.join(repr(g.series_description) for g in gs)}); using the last, series "
                    f"{gs[-1].series_number}",
                    DicomCineWarning,
                    stacklevel=4,
                )
            chosen.append(gs[-1])
        frames = [f for g in chosen for f in g.frames]
        merged = _make_group(frames)
        merged.series_description = _SLICE_SUFFIX_RE.sub("", bucket[0].series_description)
        merged.protocol_name = _SLICE_SUFFIX_RE.sub("", bucket[0].protocol_name)
        merged.view = _guess_view(merged)
        merged_away.update(id(g) for g in bucket)
        out.append(merged)
    return [g for g in out if id(g) not in merged_away]


# ---------------------------------------------------------------------------------------------
# the scan
# ---------------------------------------------------------------------------------------------
@dataclass
class DicomScan:
    """What a folder holds: the image groups and the files that were skipped, and why."""

    root: Path
    groups: list[SeriesGroup]
    n_files: int = 0
    not_dicom: list[str] = field(default_factory=list)
    not_image: list[tuple[str, str]] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # unreadable headers

    @property
    def cines(self) -> list[SeriesGroup]:
        return [g for g in self.groups if g.is_cine]

    def skipped_summary(self) -> str:
        parts = []
        if self.not_dicom:
            parts.append(_plural(len(self.not_dicom), "non-DICOM file"))
        if self.not_image:
            kinds = Counter(k for _, k in self.not_image)
            parts.append(
                f"{_plural(len(self.not_image), 'DICOM file')} without an image ("
                + ", ".join(f"{n} {k}" for k, n in kinds.most_common(3))
                + ")"
            )
        if self.corrupt:
            parts.append(self.corrupt_summary())
        return "; ".join(parts)

    def corrupt_summary(self, limit: int = 5) -> str:
        if not self.corrupt:
            return ""
        shown = ", ".join(f"{_short(p, self.root)} ({why})" for p, why in self.corrupt[:limit])
        more = f" and {len(self.corrupt) - limit} more" if len(self.corrupt) > limit else ""
        return f"{_plural(len(self.corrupt), 'corrupt DICOM file')}: {shown}{more}"

    def describe(self) -> str:
        lines = [f"{self.root}: {self.n_files} files, {len(self.groups)} image group(s)"]
        lines += [f"  {g.describe()}" for g in self.groups]
        skipped = self.skipped_summary()
        if skipped:
            lines.append(f"  skipped: {skipped}")
        return "\n".join(lines)


def _list_files(path: Path, recursive: bool = True) -> list[str]:
    if path.is_file():
        return [str(path)]
    if not recursive:
        return sorted(str(p) for p in path.iterdir() if p.is_file())
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    return out


def _scan_files(root: Path, files: Iterable[str]) -> DicomScan:
    scan = DicomScan(root=root, groups=[])
    by_series: _Clusters = {}
    with warnings.catch_warnings():
        # Real headers are full of invalid-but-harmless values (UIDs with leading zeros ...).
        warnings.simplefilter("ignore")
        for path in files:
            scan.n_files += 1
            status, result = _read_header(path)
            if status == "not_dicom":
                scan.not_dicom.append(path)
            elif status == "not_image":
                scan.not_image.append((path, str(result)))
            elif status == "corrupt":
                scan.corrupt.append((path, str(result)))
            else:
                for f in result:  # type: ignore[union-attr]
                    _add_by_orientation(by_series, f)
    groups = [_make_group(members) for clusters in by_series.values() for _, members in clusters]
    groups = _merge_per_slice_series(groups)
    # Acquisition order: series number, then the first instance (keeps a 3-plane scout's planes in order).
    groups.sort(
        key=lambda g: (
            g.series_number is None,
            g.series_number or 0,
            g.series_instance_uid,
            min(f.order for f in g.frames),
        )
    )
    for i, g in enumerate(groups):
        g.index = i
    scan.groups = groups
    return scan


def scan_dicom_report(path: str | Path, *, recursive: bool = True) -> DicomScan:
    """Scan ``path`` (a folder, recursively, or one file) and return the groups and skipped files."""
    p = Path(path)
    if not p.exists():
        raise CineLoadError(p, "no such file or folder")
    return _scan_files(p if p.is_dir() else p.parent, _list_files(p, recursive))


def scan_dicom(path: str | Path) -> list[SeriesGroup]:
    """Group every readable DICOM image under ``path`` by series and orientation (headers only)."""
    return scan_dicom_report(path).groups


# ---------------------------------------------------------------------------------------------
# choosing and loading a group
# ---------------------------------------------------------------------------------------------
def _no_cine_message(scan: DicomScan) -> str:
    if not scan.groups:
        what = scan.skipped_summary() or "the folder is empty"
        return f"no DICOM images found ({scan.n_files} file{'s' if scan.n_files != 1 else ''}: {what})"
    parts = []
    locs = [g for g in scan.groups if g.is_localizer]
    if locs:
        n_series = len({u for g in locs for u in g.series_instance_uids})
        names = sorted({repr(g.series_description or g.protocol_name) for g in locs})
        inner = ", ".join(
            f"{g.plane} {g.n_images}{' images' if i == 0 else ''}" for i, g in enumerate(locs)
        )
        single = ", single frame each" if all(g.n_frames_per_position == 1 for g in locs) else ""
        unit = "series" if n_series == len(locs) else f"stacks in {n_series} series {', '.join(names)}"
        parts.append(f"{len(locs)} localiser {unit} ({inner}){single}")
    statics = [g for g in scan.groups if not g.is_localizer and g.n_frames_per_position < 2]
    if statics:
        parts.append(
            f"{len(statics)} single-frame series ("
            + ", ".join(
                f"'{g.series_description or '?'}' {g.plane} {_plural(g.n_images, 'image')}"
                for g in statics
            )
            + f"), not {'a cine' if len(statics) == 1 else 'cines'}"
        )
    nogeo = [g for g in scan.groups if g.n_frames_per_position > 1 and not (g.orientation or g.is_localizer)]
    if nogeo:
        parts.append(f"{len(nogeo)} series without ImagePositionPatient/ImageOrientationPatient")
    skipped = scan.skipped_summary()
    if skipped:
        parts.append(f"skipped {skipped}")
    return "no cine found: " + "; ".join(parts)


def _select(scan: DicomScan, series: str | int | None, source: Path) -> SeriesGroup:
    if series is not None:
        key = str(series).strip()
        matches = [
            g
            for g in scan.groups
            if key in g.series_instance_uids
            or key == f"#{g.index}"
            or (g.series_number is not None and key == str(g.series_number))
            or (key.lower() == g.series_description.lower() and key)
        ]
        if len(matches) > 1 and sum(g.is_cine for g in matches) == 1:
            matches = [g for g in matches if g.is_cine]
        if not matches:
            listing = "\n  ".join(g.describe() for g in scan.groups) or "(no image series)"
            raise CineLoadError(source, f"no series matches {key!r}; the folder holds:\n  {listing}")
        if len(matches) > 1:
            listing = "\n  ".join(g.describe() for g in matches)
            raise CineLoadError(
                source, f"{len(matches)} groups match {key!r}; pick one with series='#index':\n  {listing}"
            )
        return matches[0]
    cines = scan.cines
    if not cines:
        raise CineLoadError(source, _no_cine_message(scan))
    if len(cines) > 1:
        listing = "\n  ".join(g.describe() for g in cines)
        raise CineLoadError(
            source,
            f"{len(cines)} cine series found; choose one with series= (a SeriesInstanceUID, series "
            f"number, description or '#index'), or read them all with read_dicom_cines:\n  {listing}",
        )
    return cines[0]


def _hint(scan: DicomScan) -> str:
    """Unreadable files are the usual cause of a hole: name them with any structural error."""
    return f" ({scan.corrupt_summary()})" if scan.corrupt else ""


def _where(f: _Frame, root: Path) -> str:
    return _short(f.path, root) + (f" frame {f.frame}" if f.frame is not None else "")


def _order_frames(
    members: list[_Frame], pos_mm: float, source: Path, root: Path
) -> tuple[list[_Frame], bool]:
    """Frames at one position in time order: TriggerTime, or InstanceNumber when trigger times are
    missing or all equal (ungated exports). Returns (frames, ordered_by_trigger)."""
    triggers = [f.trigger_ms for f in members]
    if all(t is not None for t in triggers) and len(set(triggers)) == len(triggers):
        return sorted(members, key=lambda f: (f.trigger_ms, f.order)), True
    if all(t is not None for t in triggers) and len(set(triggers)) > 1:
        dup = [t for t, n in Counter(triggers).items() if n > 1]
        clash = [_where(f, root) for f in members if f.trigger_ms == dup[0]]
        raise CineLoadError(
            source,
            f"at slice position {pos_mm:.2f} mm several images share TriggerTime {dup[0]:g} ms "
            f"({', '.join(clash[:4])}): repeated acquisitions or several echoes in one series?",
        )
    orders = [f.order for f in members]
    if len(set(orders)) != len(orders):
        raise CineLoadError(
            source,
            f"cannot order the frames at slice position {pos_mm:.2f} mm: "
            "no TriggerTime and repeated InstanceNumbers",
        )
    return sorted(members, key=lambda f: f.order), False


def _check_uniform(g: SeriesGroup, source: Path) -> None:
    sizes = Counter((f.rows, f.cols) for f in g.frames)
    if len(sizes) > 1:
        listing = ", ".join(f"{r}x{c} ({n} images)" for (r, c), n in sizes.most_common())
        raise CineLoadError(
            source, f"images of different sizes in one series ({g.series_description!r}): {listing}"
        )
    spacings = [f.pixel_spacing for f in g.frames]
    if any(s is None for s in spacings):
        raise CineLoadError(source, f"series {g.series_description!r} has images without PixelSpacing")
    arr = np.array(spacings)
    if np.max(np.abs(arr - arr[0])) > 1e-3 * max(float(arr[0].max()), 1e-6):
        found = sorted({tuple(round(float(v), 4) for v in s) for s in arr})
        raise CineLoadError(source, f"different pixel spacings in one series: {found}")
    if any(f.samples != 1 for f in g.frames):
        raise CineLoadError(source, "colour (RGB) images are not a cine MR acquisition")
    if any(f.ipp is None for f in g.frames):
        raise CineLoadError(source, "images without ImagePositionPatient: the slice geometry is unknown")


def _slice_spacing(
    g: SeriesGroup, centres: np.ndarray, members: list[list[_Frame]], source: Path, root: Path, hint: str
) -> float:
    """dz from the positions along the normal (checked uniform; a gap of a whole number of spacings
    is a missing slice, named by its position), replaced by SpacingBetweenSlices only when that
    agrees with the geometry (vendors fill it inconsistently). A single slice uses SliceThickness."""
    sbs = [abs(f.spacing_between) for f in g.frames if f.spacing_between]
    sbs_value = float(np.median(sbs)) if sbs else None
    if len(centres) == 1:
        thick = [f.thickness for f in g.frames if f.thickness]
        if thick:
            return float(np.median(thick))
        if sbs_value:
            return sbs_value
        warnings.warn(
            f"{source}: single slice without SliceThickness; using 1 mm", DicomCineWarning, stacklevel=3
        )
        return 1.0
    diffs = np.diff(centres)
    step = float(np.median(diffs))
    tol = max(2 * _POS_TOL, _SPACING_RTOL * step)
    for k, d in enumerate(diffs):
        ratio = d / step
        if ratio > 1.5 and abs(ratio - round(ratio)) * step <= tol:
            missing = ", ".join(f"{centres[k] + j * step:.2f} mm" for j in range(1, int(round(ratio))))
            raise CineLoadError(
                source,
                f"missing slice: a gap of {d:.2f} mm between slice {k} at {centres[k]:.2f} mm "
                f"({_where(members[k][0], root)}) and slice {k + 1} at {centres[k + 1]:.2f} mm "
                f"({_where(members[k + 1][0], root)}) where the spacing is {step:.2f} mm; no image at "
                f"{missing} along the slice normal{hint}",
            )
    spread = float(np.max(np.abs(diffs - step)))
    if spread > _SPACING_WARN_RTOL * step:
        raise CineLoadError(
            source,
            f"non-uniform slice spacing ({', '.join(f'{d:.2f}' for d in diffs)} mm): not one stack{hint}",
        )
    mean = float((centres[-1] - centres[0]) / (len(centres) - 1))
    if spread > tol:
        warnings.warn(
            f"{source}: slice spacing varies ({diffs.min():.2f}-{diffs.max():.2f} mm); "
            f"using the mean {mean:.3f} mm",
            DicomCineWarning,
            stacklevel=3,
        )
        return mean
    # The header value is exact where the positions carry rounding; trust it only when it agrees
    # closely enough that the last slice moves by well under a pixel.
    if sbs_value and abs(sbs_value - mean) <= max(0.02, 2e-3 * mean):
        return sbs_value
    return mean


def _read_pixels(path: str, frames_wanted: list[_Frame], source: Path) -> dict[int | None, np.ndarray]:
    """Decode one file; returns {frame number: 2-D float array with the rescale applied}."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise CineLoadError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
        try:
            arr = ds.pixel_array
        except Exception as exc:
            tsyntax = _str(ds.file_meta.get("TransferSyntaxUID")) if hasattr(ds, "file_meta") else ""
            extra = f" (transfer syntax {UID(tsyntax).name})" if tsyntax else ""
            raise CineLoadError(path, f"cannot decode the pixel data{extra}: {exc}") from exc
    rows, cols = frames_wanted[0].rows, frames_wanted[0].cols
    arr = np.asarray(arr).reshape(-1, rows, cols)
    out = {}
    for f in frames_wanted:
        idx = 0 if f.frame is None else f.frame - 1
        if idx >= arr.shape[0]:
            raise CineLoadError(
                path, f"frame {f.frame} is missing from the pixel data ({arr.shape[0]} frames)"
            )
        img = arr[idx].astype(np.float64)
        if f.slope != 1.0 or f.intercept != 0.0:
            img = img * f.slope + f.intercept
        out[f.frame] = img
    if _str(ds.get("PhotometricInterpretation")) == "MONOCHROME1":
        warnings.warn(
            f"{path}: MONOCHROME1 (inverted) pixels kept as stored", DicomCineWarning, stacklevel=3
        )
    return out


def _patient(frames: list[_Frame]) -> PatientInfo:
    """Patient data; numbers vary a little per slice (the heart rate is logged per acquisition), so
    take the median over the files of the cine; text takes the most common value."""
    infos = list({f.path: f.file_info for f in frames}.values())

    def number(key: str) -> float | None:
        values = [i[key] for i in infos if i.get(key)]  # 0 means "not recorded" in these tags
        return float(np.median(values)) if values else None

    def text(key: str) -> str | None:
        values = [i[key] for i in infos if i.get(key)]
        return Counter(values).most_common(1)[0][0] if values else None

    size = number("patient_size")
    # PatientSize is metres; some software writes centimetres into it.
    height = None
    if size is not None:
        height = size * 100.0 if size < 3.0 else size if 50.0 <= size <= 250.0 else None
    sex = text("patient_sex")
    return PatientInfo(
        patient_id=text("patient_id"),
        height_cm=height,
        weight_kg=number("patient_weight"),
        sex=sex if sex in ("M", "F", "O") else None,
        age_years=number("patient_age"),
        heart_rate_bpm=number("heart_rate"),
        rr_interval_ms=number("nominal_interval") or number("rr_nominal"),
    )


def _missing_time(frames: list[_Frame], complete: list[list[_Frame]]) -> str:
    """Where a slice's missing frame falls in the cycle, from the trigger times of complete slices."""
    times = sorted(f.trigger_ms for f in frames if f.trigger_ms is not None)
    ref_rows = [sorted(f.trigger_ms for f in m if f.trigger_ms is not None) for m in complete]
    if len(times) != len(frames) or not ref_rows or any(len(r) != len(complete[0]) for r in ref_rows):
        return ""
    ref = np.mean(np.array(ref_rows), axis=0)
    if len(times) >= len(ref):
        return ""
    for i, r in enumerate(ref):
        if i >= len(times) or abs(times[i] - r) > abs(times[i] - ref[min(i + 1, len(ref) - 1)]):
            return f" (no frame near trigger time {r:.0f} ms, frame {i})"
    return ""


def _load_group(g: SeriesGroup, scan: DicomScan, source: Path) -> CineStudy:
    root = scan.root
    if g.is_localizer:
        raise CineLoadError(source, f"{g.describe()} is a localiser, not a cine")
    if not g.orientation:
        raise CineLoadError(source, f"{g.describe()}: no ImageOrientationPatient, the geometry is unknown")
    _check_uniform(g, source)
    broken = [f for f in g.frames if f.broken]
    centres, members = g._positions()
    if broken:
        where = []
        for f in broken[:5]:
            k = next(i for i, m in enumerate(members) if f in m)
            where.append(f"{_short(f.path, root)} (slice {k}: {f.broken})")
        raise CineLoadError(
            broken[0].path,
            f"{_plural(len(broken), 'corrupt file')} in the cine, which would leave a hole: "
            + "; ".join(where),
        )
    if g.n_frames_per_position < 2:
        raise CineLoadError(
            source,
            f"not a cine: {g.describe()} has a single frame per position "
            f"(a static {'stack' if g.n_positions > 1 else 'image'})",
        )
    counts = [len(m) for m in members]
    if len(set(counts)) > 1:
        expected = Counter(counts).most_common(1)[0][0]
        odd = [
            f"slice {k} at {centres[k]:.2f} mm ({_where(members[k][0], root)}) has {c}"
            + _missing_time(members[k], [m for m in members if len(m) == expected])
            for k, c in enumerate(counts)
            if c != expected
        ]
        raise CineLoadError(
            source,
            f"different numbers of frames per slice position (most have {expected}): "
            + "; ".join(odd[:6])
            + _hint(scan),
        )
    n_t = counts[0]
    cardiac = Counter(f.cardiac_images for f in g.frames if f.cardiac_images).most_common(1)
    if cardiac and cardiac[0][0] != n_t:
        if n_t < cardiac[0][0]:
            raise CineLoadError(
                source,
                f"incomplete cine: {n_t} frames per slice where CardiacNumberOfImages is {cardiac[0][0]}"
                + _hint(scan),
            )
        warnings.warn(
            f"{source}: {n_t} frames per slice but CardiacNumberOfImages is {cardiac[0][0]}",
            DicomCineWarning,
            stacklevel=3,
        )

    ordered: list[list[_Frame]] = []  # [z][t]
    by_trigger = True
    for k, m in enumerate(members):
        frames, timed = _order_frames(m, float(centres[k]), source, root)
        ordered.append(frames)
        by_trigger &= timed
    dz = _slice_spacing(g, centres, members, source, root, _hint(scan))

    # Pixels: each file decoded once (an enhanced file holds every frame).
    by_file: dict[str, list[_Frame]] = {}
    for f in g.frames:
        by_file.setdefault(f.path, []).append(f)
    n_z = len(members)
    image = np.empty((n_t, n_z, g.rows, g.columns), dtype=np.float32)
    index = {(id(f)): (t, z) for z, frames in enumerate(ordered) for t, f in enumerate(frames)}
    for path, frames in by_file.items():
        pixels = _read_pixels(path, frames, source)
        for f in frames:
            t, z = index[id(f)]
            image[t, z] = pixels[f.frame]

    # Geometry (LPS): columns step along IOP[0:3] * dx, rows along IOP[3:6] * dy, slices along the
    # normal * dz from the first (most negative along the normal) position; then LPS -> RAS.
    first = ordered[0][0]
    iop = first.iop
    dy, dx = (float(v) for v in first.pixel_spacing)  # PixelSpacing = (row spacing, column spacing)
    normal = _normal(iop)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * dx
    lps[:3, 1] = iop[3:] * dy
    lps[:3, 2] = normal * dz
    lps[:3, 3] = first.ipp
    if n_z > 1:
        last = ordered[-1][0].ipp
        shift = (last - first.ipp) - normal * float((last - first.ipp) @ normal)
        if np.linalg.norm(shift) > 0.5 * min(dx, dy):
            warnings.warn(
                f"{source}: slice origins drift {np.linalg.norm(shift):.2f} mm in plane across the "
                "stack; the affine keeps the slices on the normal",
                DicomCineWarning,
                stacklevel=2,
            )
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    frame_times = None
    dt = None
    if by_trigger:
        times = np.array([[f.trigger_ms for f in frames] for frames in ordered], dtype=np.float64)
        frame_times = times.mean(axis=0)  # (z, t) -> t: trigger times differ per slice (Sunnybrook)
        dt = float(np.median(np.diff(frame_times))) if n_t > 1 else None
        if dt is not None and dt <= 0:
            dt = None

    refs = DicomRefs(
        study_instance_uid=first.study_uid,
        series_instance_uids=list(dict.fromkeys(frames[0].series_uid for frames in ordered)),
        sop_instance_uids=[[ordered[z][t].sop_uid for z in range(n_z)] for t in range(n_t)],
        frame_numbers=(
            [[ordered[z][t].frame for z in range(n_z)] for t in range(n_t)] if g.multi_frame else None
        ),
        sop_class_uid=first.sop_class,
        files=[[ordered[z][t].path for z in range(n_z)] for t in range(n_t)],
    )
    if scan.corrupt:
        # Nothing is missing from the cine, so unreadable stray files are only worth a warning.
        warnings.warn(f"{source}: skipped {scan.corrupt_summary()}", DicomCineWarning, stacklevel=3)
    return CineStudy(
        image=image,
        spacing=(dt, dz, dy, dx),
        affine=affine,
        view=g.view,
        frame_times_ms=frame_times,
        patient=_patient(g.frames),
        source=str(source),
        description=g.series_description or g.protocol_name,
        dicom=refs,
    )


def _scan_for(path: str | Path) -> tuple[DicomScan, Path, SeriesGroup | None]:
    """Scan what ``path`` names. A single file means its folder's group holding that file, except
    a multi-frame file, which is read on its own."""
    p = Path(path)
    if not p.exists():
        raise CineLoadError(p, "no such file or folder")
    if p.is_dir():
        return _scan_files(p, _list_files(p)), p, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status, result = _read_header(str(p))
    if status == "not_dicom":
        raise CineLoadError(p, "not a DICOM file")
    if status == "not_image":
        raise CineLoadError(p, f"not an image ({result})")
    if status == "corrupt":
        raise CineLoadError(p, str(result))
    frames: list[_Frame] = result  # type: ignore[assignment]
    if len(frames) > 1:
        scan = _scan_files(p.parent, [str(p)])
        source = p
    else:
        scan = _scan_files(p.parent, _list_files(p.parent, recursive=False))
        source = p.parent
    holder = next((g for g in scan.groups if any(f.path == str(p) for f in g.frames)), None)
    return scan, source, holder


def read_dicom_cine(path: str | Path, *, series: str | int | None = None) -> CineStudy:
    """Read one cine from a DICOM folder (searched recursively) or file.

    ``series`` picks a group when the folder holds several cines: a SeriesInstanceUID, a
    SeriesNumber, a SeriesDescription (case-insensitive) or ``'#index'`` from :func:`scan_dicom`.
    A single file selects the group holding it in its folder (or, for an enhanced multi-frame
    file, the file alone). Raises :class:`CineLoadError` naming the path and the problem.
    """
    scan, source, holder = _scan_for(path)
    group = holder if (holder is not None and series is None) else _select(scan, series, source)
    return _load_group(group, scan, source)


def read_dicom_cines(path: str | Path) -> list[CineStudy]:
    """Every cine in a folder, one study per cine-able group (mixed folders split). A file path
    reads the one group holding that file, as :func:`read_dicom_cine` does."""
    scan, source, holder = _scan_for(path)
    groups = [holder] if holder is not None else scan.cines
    if not groups:
        raise CineLoadError(source, _no_cine_message(scan))
    return [_load_group(g, scan, source) for g in groups]


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _ds(value: float) -> DSfloat:
    """A DS that always fits its 16 characters (positions, cosines and slopes keep ~12 digits)."""
    return DSfloat(float(value), auto_format=True)


def _quantise(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """uint16 pixels and (slope, intercept). Integer images that fit are stored exactly."""
    lo, hi = float(np.min(image)), float(np.max(image))
    if np.all(image == np.round(image)) and hi - lo <= 65535:
        intercept = 0.0 if lo >= 0 and hi <= 65535 else lo
        return (image - intercept).astype(np.uint16), 1.0, intercept
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    # The slope goes through a 16-character DS: quantise with the value that will be read back.
    slope = float(_ds(slope))
    pixels = np.clip(np.round((image.astype(np.float64) - lo) / slope), 0, 65535).astype(np.uint16)
    return pixels, slope, lo


def write_dicom_cine(
    study: CineStudy,
    out_dir: str | Path,
    *,
    series_description: str | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> list[Path]:
    """Write ``study`` as single-frame MR Image Storage files, one per slice per frame.

    Geometry comes from the RAS affine (converted to LPS); pixels are uint16 with
    RescaleSlope/Intercept (float images round-trip within 1e-3 of their range). The series
    description names the view so that :func:`read_dicom_cine` finds it again. Returns the paths
    in InstanceNumber order (slice-major, frames fastest).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_t, n_z, n_y, n_x = study.shape
    dt, dz, dy, dx = study.spacing

    # Directions come from the affine, sizes from ``spacing`` (the explicit contract; a study built
    # without an affine has the identity there). They normally agree; say so when they do not.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ study.affine  # RAS -> LPS
    axes = lps[:3, :3]
    norms = np.linalg.norm(axes, axis=0)
    if np.any(norms == 0):
        raise ValueError("affine has a zero-length axis")
    row_cos, col_cos, slice_dir = (axes / norms).T  # along columns (x), rows (y), slices (z)
    if abs(float(row_cos @ col_cos)) > 1e-3:
        raise ValueError("affine rows and columns are not perpendicular: DICOM cannot store a sheared plane")
    sizes = np.array([dx, dy, dz], dtype=np.float64)
    checked = 3 if n_z > 1 else 2  # a single slice's z column is only its thickness
    if not np.allclose(norms[:checked], sizes[:checked], rtol=1e-3, atol=1e-5):
        warnings.warn(
            f"affine voxel sizes {np.round(norms, 4).tolist()} differ from spacing (dx, dy, dz) "
            f"{sizes.tolist()}; writing the spacing",
            DicomCineWarning,
            stacklevel=2,
        )
    normal = np.cross(row_cos, col_cos)
    if n_z > 1 and float(slice_dir @ normal) < 0:
        # Positions are what counts: the reader orders slices along row x column, so a left-handed
        # affine reads back with its slices reversed (same voxels in world space).
        warnings.warn(
            "left-handed affine: slices will read back in reverse order", DicomCineWarning, stacklevel=2
        )
    origin = lps[:3, 3]
    slice_step = slice_dir * dz

    if study.frame_times_ms is not None and len(study.frame_times_ms) == n_t:
        times: list[float] | None = [float(v) for v in study.frame_times_ms]
    elif dt:
        times = [t * float(dt) for t in range(n_t)]
    else:
        times = None

    if not np.all(np.isfinite(study.image)):
        raise ValueError("image holds NaN or infinite values; DICOM pixels cannot store them")
    pixels, slope, intercept = _quantise(study.image)
    view_word = _VIEW_WORDS.get(study.view, "")
    description = series_description or f"cine {view_word}".strip()
    if view_word and view_from_description(description) != study.view:
        description = f"{description} {view_word}"
    p = study.patient
    pid = patient_id or p.patient_id or "ANONYMOUS"
    # Results join the original study, unless its UID is invalid (Sunnybrook's have leading zeros),
    # which would make every written file invalid.
    original_study = study.dicom.study_instance_uid if study.dicom else None
    if original_study and not (len(original_study) <= 64 and RE_VALID_UID.match(original_study)):
        original_study = None
    study_uid = study_instance_uid or original_study or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    frame_of_ref = generate_uid()
    now = _dt.datetime.now()
    rr = p.rr_interval_ms or (60000.0 / p.heart_rate_bpm if p.heart_rate_bpm else None)
    hr = p.heart_rate_bpm or (60000.0 / p.rr_interval_ms if p.rr_interval_ms else None)

    # Attributes common to every instance.
    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 192"
    base.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    base.SOPClassUID = MR_IMAGE_STORAGE
    base.StudyDate = base.SeriesDate = base.ContentDate = now.strftime("%Y%m%d")
    base.StudyTime = base.SeriesTime = base.ContentTime = now.strftime("%H%M%S")
    base.AccessionNumber = ""
    base.Modality = "MR"
    base.Manufacturer = "napari-cinema"
    base.ReferringPhysicianName = ""
    base.StudyDescription = "cine MR"
    base.SeriesDescription = description[:64]
    base.PatientName = patient_name or pid
    base.PatientID = pid
    base.PatientBirthDate = ""
    base.PatientSex = p.sex if p.sex in ("M", "F", "O") else ""
    if p.age_years is not None and 0 <= p.age_years < 1000:
        base.PatientAge = f"{int(round(p.age_years)):03d}Y"
    if p.height_cm:
        base.PatientSize = _ds(p.height_cm / 100.0)  # DICOM PatientSize is metres
    if p.weight_kg:
        base.PatientWeight = _ds(p.weight_kg)
    base.ScanningSequence = "GR"
    base.SequenceVariant = "NONE"
    base.ScanOptions = ""
    base.MRAcquisitionType = "2D"
    base.EchoTime = ""
    base.RepetitionTime = ""
    base.EchoTrainLength = ""
    base.SliceThickness = _ds(dz)
    base.SpacingBetweenSlices = _ds(dz)
    if rr:
        base.NominalInterval = int(round(rr))
    if hr:
        base.HeartRate = int(round(hr))
    base.CardiacNumberOfImages = n_t
    base.StudyInstanceUID = study_uid
    base.SeriesInstanceUID = series_uid
    base.StudyID = "1"
    base.SeriesNumber = 901
    base.AcquisitionNumber = 1
    base.FrameOfReferenceUID = frame_of_ref
    base.PositionReferenceIndicator = ""
    base.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row_cos, col_cos])]
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows = n_y
    base.Columns = n_x
    base.PixelSpacing = [_ds(dy), _ds(dx)]  # (row spacing, column spacing)
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 0
    base.RescaleIntercept = _ds(intercept)
    base.RescaleSlope = _ds(slope)
    base.RescaleType = "US"
    lo, hi = float(study.image.min()), float(study.image.max())
    base.WindowCenter = _ds((lo + hi) / 2)
    base.WindowWidth = _ds(max(hi - lo, 1e-3))

    paths: list[Path] = []
    for z in range(n_z):
        ipp = origin + z * slice_step
        for t in range(n_t):
            ds = Dataset()
            ds.update(base)
            sop_uid = generate_uid()
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = z * n_t + t + 1
            ds.ImagePositionPatient = [_ds(v) for v in ipp]
            ds.SliceLocation = _ds(float(ipp @ normal))
            if times is not None:
                ds.TriggerTime = _ds(times[t])
            ds.PixelData = np.ascontiguousarray(pixels[t, z]).tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = UID(MR_IMAGE_STORAGE)
            meta.MediaStorageSOPInstanceUID = UID(sop_uid)
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            meta.ImplementationVersionName = "NAPARI_CINEMA"
            ds.file_meta = meta
            path = out / f"IM_{z:03d}_{t:03d}.dcm"
            ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
            paths.append(path)
    return paths
