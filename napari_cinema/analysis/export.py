"""Label exports: NIfTI with a JSON sidecar, and DICOM SEG referencing the source DICOM frames.

DICOM SEG (highdicom): one BINARY segmentation instance for the chosen cine frames, with one segment per
structure -- segment 1 RV cavity, 2 LV myocardium, 3 LV cavity (the internal label values, so a SEG
label map reads back as is). Every SEG frame references its source SOP instance (and frame number for
enhanced multi-frame sources) from ``study.dicom``, which is how :func:`read_dicom_seg` puts it back on
the study grid, independent of frame order. Empty frames are omitted (highdicom default).
Limitations: a stack merged from several DICOM series (one series per slice, UK Biobank style) cannot be
one SEG instance (the standard needs one source series) -- export NIfTI or per series.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import __version__
from ..io.labels import CONVENTIONS, LABEL_NAMES, LV, MYO, RV
from ..io.study import CineStudy
from ..io.writers import atomic_path, write_labels_nifti

# SNOMED CT codes for the segmented structures (DICOM CID 7151/7166 style).
SEGMENT_CODES = {
    RV: ("53085002", "Right ventricle", "RV", "right ventricular cavity (blood pool)"),
    MYO: ("49848007", "Left ventricle myocardium", "MYO", "left ventricular myocardium"),
    LV: ("87878005", "Left ventricle", "LV", "left ventricular cavity (blood pool, papillary muscles included "
                                             "as labelled)"),
}
CODE_TO_LABEL = {code: value for value, (code, *_rest) in SEGMENT_CODES.items()}
NAME_TO_LABEL = {"RV": RV, "MYO": MYO, "LV": LV}


def sidecar_path(nifti_path: str | Path) -> Path:
    p = Path(nifti_path)
    name = p.name
    for s in (".nii.gz", ".nii"):
        if name.endswith(s):
            return p.with_name(name[: -len(s)] + ".json")
    return p.with_suffix(".json")


def export_labels_nifti(path: str | Path, labels: np.ndarray, study: CineStudy, *,
                        model_info: Mapping[str, Any] | None = None, convention: str = "cinema",
                        frames: Sequence[int] | None = None, extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``labels`` (t, z, y, x; any label map of the study) as NIfTI (x, y, z, t) on the study's
    affine, in ``convention``, plus ``<name>.json`` beside it with label names, convention and
    provenance. Returns (nifti path, sidecar path)."""
    from .report import clean, now_iso

    labels = np.asarray(labels)
    if labels.ndim == 3:
        labels = labels[None]
    if labels.shape[1:] != study.image.shape[1:]:
        raise ValueError(f"labels {labels.shape} do not fit the study grid {study.image.shape}")
    nii = write_labels_nifti(path, labels, study.affine, frame_interval_ms=study.spacing[0], convention=convention)
    mapping = CONVENTIONS[convention]  # file value -> internal value
    if frames is None:
        frames = [t for t in range(labels.shape[0]) if labels[t].any()]
    side = {
        "format": "napari-cinema labels/1",
        "file": Path(nii).name,
        "axes": "x, y, z, t (NIfTI); the study array is (t, z, y, x)",
        "shape_xyzt": [int(labels.shape[3]), int(labels.shape[2]), int(labels.shape[1]), int(labels.shape[0])],
        "convention": convention,
        "label_names": {str(file_v): LABEL_NAMES[int_v] for file_v, int_v in sorted(mapping.items())},
        "label_descriptions": {str(file_v): (SEGMENT_CODES[int_v][3] if int_v in SEGMENT_CODES else "background")
                               for file_v, int_v in sorted(mapping.items())},
        "contouring_convention": "papillary muscles and trabeculae as labelled; ACDC/CineMA-style labels "
                                 "include them in the LV cavity",
        "labelled_frames": [int(t) for t in frames],
        "frame_interval_ms": study.spacing[0],
        "spacing_mm": {"dz": study.spacing[1], "dy": study.spacing[2], "dx": study.spacing[3]},
        "provenance": {
            "source_study": study.source,
            "study_instance_uid": None if study.dicom is None else study.dicom.study_instance_uid,
            "model": dict(model_info) if model_info else None,
            "software": f"napari-cinema {__version__}",
            "created": now_iso(),
        },
    }
    if extra:
        side.update(dict(extra))
    sp = sidecar_path(nii)
    with atomic_path(sp) as tmp:
        tmp.write_text(json.dumps(clean(side), indent=2, allow_nan=False))
    return Path(nii), sp


_DATE_KEYWORDS = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
_TIME_KEYWORDS = ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "PatientBirthTime")


def _sanitize_source(ds):
    """Blank (type 2) dates/times that are not valid DICOM values -- anonymised data such as Sunnybrook
    writes '00000000' -- so highdicom can copy the patient and study modules. Only the in-memory copy
    of the header changes; the references (UIDs) are untouched."""
    from pydicom.valuerep import DA, TM

    for kw, cls in [(k, DA) for k in _DATE_KEYWORDS] + [(k, TM) for k in _TIME_KEYWORDS]:
        value = getattr(ds, kw, None)
        if value in (None, ""):
            continue
        try:
            cls(str(value))
        except (ValueError, TypeError, OverflowError):
            setattr(ds, kw, "")
    return ds


def _frames_to_write(labels: np.ndarray, frames: Sequence[int] | None) -> list[int]:
    if frames is None:
        frames = [t for t in range(labels.shape[0]) if labels[t].any()]
    frames = sorted({int(t) for t in frames})
    if not frames:
        raise ValueError("no labelled frame to write")
    return frames


def write_dicom_seg(study: CineStudy, labels: np.ndarray, out: str | Path, *,
                    frames: Sequence[int] | None = None, model_info: Mapping[str, Any] | None = None,
                    series_description: str = "napari-cinema segmentation", series_number: int = 9901,
                    manual: bool | None = None) -> list[Path]:
    """Write ``labels`` (t, z, y, x, internal convention) of the chosen cine ``frames`` (default: the
    frames that hold labels) as DICOM SEG referencing the study's source instances.

    A SEG instance cannot hold two frames at the same plane position (highdicom and the SEG module index
    frames by position), so a cine gives one SEG instance per cine frame, all in one new SEG series:
    ``out/SEG_t<frame>.dcm`` (``out`` is a folder); with a single frame and ``out`` ending in ``.dcm``,
    that file. ``manual`` marks the segments MANUAL (edited by a person) instead of AUTOMATIC (default:
    automatic when ``model_info`` names a model). Returns the written paths.
    """
    import pydicom
    from pydicom.uid import generate_uid

    refs = study.dicom
    if refs is None or not refs.files:
        raise ValueError("the study was not read from DICOM (no source instances to reference); "
                         "export NIfTI instead")
    labels = np.asarray(labels)
    if labels.shape != study.image.shape:
        raise ValueError(f"labels {labels.shape} do not match the study {study.image.shape}")
    frames = _frames_to_write(labels, frames)
    if len(set(refs.series_instance_uids)) > 1:
        raise ValueError(f"the stack was merged from {len(set(refs.series_instance_uids))} DICOM series; a DICOM "
                         f"SEG references one source series -- export NIfTI instead")
    multiframe = refs.frame_numbers is not None and any(
        f is not None for row in refs.frame_numbers for f in row)
    out = Path(out)
    single_file = out.suffix.lower() == ".dcm" and len(frames) == 1
    if not single_file:
        out.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    nz = study.n_slices
    rows, cols = study.image.shape[2:]
    written = []
    for number, t in enumerate(frames, 1):
        if not multiframe:
            sources = []
            for z in range(nz):
                ds = pydicom.dcmread(refs.files[t][z], stop_before_pixels=True)
                if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
                    raise ValueError(f"{refs.files[t][z]}: {ds.Rows}x{ds.Columns} pixels, the study has {rows}x{cols}")
                if ds.SOPInstanceUID != refs.sop_instance_uids[t][z]:
                    raise ValueError(f"{refs.files[t][z]} is not the instance recorded for frame {t}, slice {z}")
                sources.append(_sanitize_source(ds))
            pixel_array = labels[t].astype(np.uint8)
            fors = {getattr(ds, "FrameOfReferenceUID", None) for ds in sources}
            if len(fors) > 1:
                # Some anonymisers (Sunnybrook) give every instance of a series its own frame of
                # reference; a SEG has one, so the in-memory header copies share the first one's.
                for ds in sources:
                    ds.FrameOfReferenceUID = sources[0].FrameOfReferenceUID
        else:
            files = {refs.files[t][z] for z in range(nz)}
            if len(files) != 1:
                raise ValueError("a cine frame spans several enhanced multi-frame instances; not supported")
            ds = pydicom.dcmread(next(iter(files)), stop_before_pixels=True)
            sources = [_sanitize_source(ds)]
            pixel_array = np.zeros((int(ds.NumberOfFrames), rows, cols), np.uint8)
            for z in range(nz):
                pixel_array[int(refs.frame_numbers[t][z]) - 1] = labels[t, z]
        seg = _segmentation(sources, pixel_array, series_uid, series_number, number, model_info, manual,
                            f"{series_description} (frame {t})")
        path = out if single_file else out / f"SEG_t{t:03d}.dcm"
        with atomic_path(path) as tmp:
            seg.save_as(tmp)
        written.append(path)
    return written


def _segmentation(sources, pixel_array, series_uid, series_number, instance_number, model_info, manual,
                  description):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    automatic = (manual is False) or (manual is None and bool(model_info and model_info.get("id")))
    algo = None
    if automatic:
        info = dict(model_info or {})
        algo = hd.AlgorithmIdentificationSequence(
            name=str(info.get("id") or "napari-cinema")[:64],
            family=codes.DCM.ArtificialIntelligence,
            version=str(info.get("sha256") or info.get("version") or __version__)[:64],
        )
    descriptions = []
    for value in (RV, MYO, LV):
        code, meaning, label, _ = SEGMENT_CODES[value]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=label,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(code, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if automatic
            else hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            algorithm_identification=algo,
        ))
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer="napari-cinema",
        manufacturer_model_name="napari-cinema",
        software_versions=str(__version__),
        device_serial_number="napari-cinema",
        series_description=description[:64],
        content_description="RV, LV myocardium and LV cavity",
        content_label="CINEMA",
    )


def seg_files(path: str | Path | Sequence[str | Path]) -> list[Path]:
    """The SEG files of ``path``: a file, a folder (its ``*.dcm``), or a list of files."""
    if isinstance(path, (list, tuple)):
        return [Path(p) for p in path]
    p = Path(path)
    if p.is_dir():
        return sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() == ".dcm")
    return [p]


def _segment_values(ds) -> dict[int, int]:
    """SEG segment number -> internal label value, from the segment label or its property type code."""
    out = {}
    for item in ds.SegmentSequence:
        num = int(item.SegmentNumber)
        label = str(getattr(item, "SegmentLabel", "")).strip().upper()
        value = NAME_TO_LABEL.get(label)
        if value is None and "SegmentedPropertyTypeCodeSequence" in item:
            value = CODE_TO_LABEL.get(str(item.SegmentedPropertyTypeCodeSequence[0].CodeValue))
        if value is None:
            raise ValueError(f"SEG segment {num} ({label or 'no label'}) is not RV, MYO or LV")
        out[num] = value
    return out


def read_dicom_seg(path: str | Path | Sequence[str | Path], study: CineStudy) -> np.ndarray:
    """Read DICOM SEG (ours or any BINARY/FRACTIONAL/LABELMAP SEG of RV/MYO/LV) back onto the study
    grid: labels (t, z, y, x) uint8, internal convention. ``path`` is a SEG file, a folder of them (as
    :func:`write_dicom_seg` writes one per cine frame) or a list. Each SEG frame is placed by its
    referenced source SOP instance UID (and frame number); what is not referenced stays 0. Raises
    ValueError when a SEG references instances that are not part of ``study``."""
    import highdicom as hd

    refs = study.dicom
    if refs is None:
        raise ValueError("the study has no DICOM references to match the SEG against")
    lookup: dict[tuple[str, int | None], tuple[int, int]] = {}
    for t, row in enumerate(refs.sop_instance_uids):
        for z, uid in enumerate(row):
            fn = None if refs.frame_numbers is None else refs.frame_numbers[t][z]
            lookup[(str(uid), None if fn is None else int(fn))] = (t, z)
    out = np.zeros(study.image.shape, np.uint8)
    files = seg_files(path)
    if not files:
        raise ValueError(f"{path}: no DICOM SEG files")
    for f in files:
        seg = hd.seg.segread(str(f))
        seg_type = str(seg.SegmentationType)
        values = _segment_values(seg)
        pix = seg.pixel_array
        if pix.ndim == 2:
            pix = pix[None]
        threshold = 0.5 * float(getattr(seg, "MaximumFractionalValue", 1) or 1) if seg_type == "FRACTIONAL" else 0
        unknown = 0
        for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
            src = fg.DerivationImageSequence[0].SourceImageSequence[0]
            uid = str(src.ReferencedSOPInstanceUID)
            fn = getattr(src, "ReferencedFrameNumber", None)
            if isinstance(fn, (list, tuple)) or (fn is not None and hasattr(fn, "__iter__") and not isinstance(fn, str)):
                fn = list(fn)[0]
            key = (uid, None if fn is None else int(fn))
            if key not in lookup and (uid, None) in lookup:
                key = (uid, None)
            if key not in lookup:
                unknown += 1
                continue
            t, z = lookup[key]
            frame = pix[i]
            if seg_type == "LABELMAP":  # pixel values are segment numbers
                for num, value in values.items():
                    out[t, z][frame == num] = value
            else:
                num = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                out[t, z][frame > threshold] = values[num]
        if unknown:
            raise ValueError(f"{f}: {unknown} SEG frame(s) reference instances that are not in this study")
    return out
