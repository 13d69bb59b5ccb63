"""Print how long reading studies takes: DICOM header scan, full DICOM cine, NIfTI, the phantom.

Usage: python bench/io_loading.py [PATH ...]   (defaults to the shared Sunnybrook and ACDC data)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from napari_cinema.io import load_study
from napari_cinema.io.dicom import scan_dicom

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(paths: list[str]) -> None:
    targets = [Path(p) for p in paths] or [
        SHARED / "sunnybrook" / "SCD0000101" / "dicom",
        SHARED / "acdc" / "patient023",
        SHARED / "mnms2" / "001" / "001_LA_CINE.nii.gz",
    ]
    print(f"{'study':60s} {'shape (t,z,y,x)':>20s} {'scan s':>8s} {'load s':>8s}")
    for path in targets:
        if not path.exists():
            print(f"{str(path):60s} missing")
            continue
        study = load_study(path)
        scan = timed(lambda: scan_dicom(path)) if path.is_dir() and study.dicom is not None else float("nan")
        load = timed(lambda: load_study(path))
        print(f"{str(path)[-60:]:60s} {str(study.shape):>20s} {scan:8.2f} {load:8.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
