"""Open studies in a real napari window and save screenshots (run under Xvfb, e.g. `xvfb-run -s
"-screen 0 1280x800x24" .venv/bin/python scripts/screenshots.py`). Used for the README images.

With ../shared/data present a real study is captured too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _settle(n: int = 20) -> None:
    for _ in range(n):
        QApplication.processEvents()


def capture(viewer: napari.Viewer, out: Path) -> None:
    _settle()
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"saved {out}")


def show_frame(viewer: napari.Viewer, t: int, z: int | None = None) -> None:
    step = list(viewer.dims.current_step)
    step[0] = t
    if z is not None and len(step) > 1:
        step[1] = z
    viewer.dims.current_step = tuple(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()

    viewer = napari.Viewer(title="napari-cinema")
    viewer.window._qt_window.resize(1280, 800)

    viewer.open_sample("napari-cinema", "phantom_sax")
    show_frame(viewer, t=0, z=5)
    viewer.reset_view()
    capture(viewer, args.out / "phantom_sax.png")

    viewer.layers.clear()
    viewer.open_sample("napari-cinema", "phantom_lax_4c")
    show_frame(viewer, t=0)
    viewer.reset_view()
    capture(viewer, args.out / "phantom_lax_4c.png")

    sunnybrook = SHARED / "sunnybrook" / "SCD0000101" / "dicom"
    if sunnybrook.is_dir():
        viewer.layers.clear()
        viewer.open(str(sunnybrook), plugin="napari-cinema")
        show_frame(viewer, t=0, z=6)
        viewer.reset_view()
        capture(viewer, args.out / "sunnybrook_dicom.png")
    viewer.close()


if __name__ == "__main__":
    main()
