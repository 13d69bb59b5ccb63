"""Qt-free clinical analysis of cine cardiac MR: volumes, ED/ES, EF, mass, BSA, rates, MAPSE,
AHA wall thickness, coverage checks, reference ranges, reports, exports and batch runs.

Every function here works on a :class:`~napari_cinema.io.study.CineStudy` and a (t, z, y, x) label map
in the internal convention (0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity). Nothing imports Qt
or napari; the GUI and the ``napari-cinema analyze`` command call the same functions.

Main entry points::

    from napari_cinema.analysis import analyze_study, run_batch
    report = analyze_study(study, labels, height_cm=180, weight_kg=80)
    report.to_json_dict()              # the DESIGN.md report fields, NaN-free
    write_report(report, out_dir)      # report.json, volumes.csv, report.pdf
"""

from __future__ import annotations

from .measures import (
    MYO_DENSITY_G_PER_ML,
    bsa_mosteller,
    ejection_fraction,
    structure_volumes,
)
from .cycle import detect_ed_es, filling_rates, heart_rate
from .landmarks import mapse
from .aha import AHA_SEGMENT_NAMES, aha_wall_thickness
from .coverage import coverage_warnings
from .reference_ranges import REFERENCE_RANGES, SOURCES, flag_measures
from .report import Report, write_report
from .batch import analyze_study, run_batch
from .export import export_labels_nifti, read_dicom_seg, write_dicom_seg

__all__ = [
    "AHA_SEGMENT_NAMES",
    "MYO_DENSITY_G_PER_ML",
    "REFERENCE_RANGES",
    "SOURCES",
    "Report",
    "aha_wall_thickness",
    "analyze_study",
    "bsa_mosteller",
    "coverage_warnings",
    "detect_ed_es",
    "ejection_fraction",
    "export_labels_nifti",
    "filling_rates",
    "flag_measures",
    "heart_rate",
    "mapse",
    "read_dicom_seg",
    "run_batch",
    "structure_volumes",
    "write_dicom_seg",
    "write_report",
]
