"""Pack the labelled SAX training data into one small archive for a remote training machine.

A GPU machine may take only a few tens of MB per transfer. The SAX segmentation task only ever reads a
192 mm window around the labelled heart (plus 20 mm of centre jitter), so each subject is cropped in-plane
to ``--half-mm`` around its labels' centroid (one box for ED and ES, as the loaders require equal shapes).
ACDC's float intensities are stored as 12-bit integers with a NIfTI scale (error <= 1.2e-4 on [0, 1],
far below the images' noise). The folder layout is kept, so the archive unpacks to a data root that
``NAPARI_CINEMA_DATA`` can point at (training/configs/sax_seg_gpu.yaml).

    python scripts/pack_training_data.py ../shared/data --out train_data.tar.xz

Sunnybrook (DICOM) is not packed: its series are large and hold LV contours only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import nibabel as nib
import nibabel.openers
import numpy as np

LEVELS = 4095  # 12 bits


def heart_box(gts: list[Path], spacing_xy: tuple[float, float], half_mm: float) -> tuple[slice, slice]:
    """In-plane slices covering ``half_mm`` around each label volume's foreground centroid (their union)."""
    lo, hi = [np.inf, np.inf], [-np.inf, -np.inf]
    for gt in gts:
        g = np.asanyarray(nib.load(gt).dataobj)
        fg = np.argwhere(g > 0)
        if not len(fg):
            raise ValueError(f"{gt}: no labelled voxel, cannot find the heart")
        c = fg.mean(axis=0)[:2]
        for i in range(2):
            lo[i] = min(lo[i], np.floor(c[i] - half_mm / spacing_xy[i]))
            hi[i] = max(hi[i], np.ceil(c[i] + half_mm / spacing_xy[i]) + 1)
    shape = nib.load(gts[0]).shape
    return tuple(slice(max(0, int(lo[i])), min(shape[i], int(hi[i]))) for i in range(2))


def crop_nifti(src: Path, dst: Path, box: tuple[slice, slice], quantise: bool) -> None:
    img = nib.load(src)
    aff = img.affine.copy()
    aff[:3, 3] = aff[:3, :3] @ np.array([box[0].start, box[1].start, 0]) + aff[:3, 3]
    if quantise:
        a = img.get_fdata(dtype=np.float64)[box]
        if a.min() < 0 or a.max() > 1 + 1e-6:
            raise ValueError(f"{src}: expected intensities in [0, 1] (ACDC), found {a.min():g}..{a.max():g}")
        out = nib.Nifti1Image(np.round(a * LEVELS).astype(np.int16), aff, img.header.copy())
        out.set_data_dtype(np.int16)
        out.header.set_slope_inter(1.0 / LEVELS, 0.0)
    else:
        out = nib.Nifti1Image(np.ascontiguousarray(np.asanyarray(img.dataobj)[box]), aff, img.header.copy())
        out.header.set_slope_inter(*img.header.get_slope_inter())
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, dst)


def pack_pairs(pairs: list[tuple[Path, Path]], out_dir: Path, half_mm: float, quantise: bool) -> None:
    """Crop (image, labels) pairs of one subject with one common box."""
    zooms = nib.load(pairs[0][0]).header.get_zooms()[:2]
    box = heart_box([gt for _, gt in pairs], (float(zooms[0]), float(zooms[1])), half_mm)
    for img, gt in pairs:
        crop_nifti(img, out_dir / img.name, box, quantise)
        crop_nifti(gt, out_dir / gt.name, box, False)


def pack(data: Path, out: Path, half_mm: float = 120.0) -> dict[str, int]:
    counts = {"acdc": 0, "mnms": 0, "mnms2": 0}
    level = nibabel.openers.Opener.default_compresslevel
    # stored uncompressed inside: xz compresses the whole archive far better than gzip per file
    nibabel.openers.Opener.default_compresslevel = 0
    try:
        return _pack(data, out, half_mm, counts)
    finally:
        nibabel.openers.Opener.default_compresslevel = level


def _pack(data: Path, out: Path, half_mm: float, counts: dict[str, int]) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for pdir in sorted((data / "acdc").glob("patient*")):
            pairs = [(gt.with_name(gt.name.replace("_gt", "")), gt) for gt in sorted(pdir.glob("*_gt.nii.gz"))]
            if pairs:
                pack_pairs(pairs, root / "acdc" / pdir.name, half_mm, quantise=True)
                shutil.copy2(pdir / "Info.cfg", root / "acdc" / pdir.name / "Info.cfg")
                counts["acdc"] += 1
        for ed_gt in sorted((data / "mnms").glob("*_sa_ED_gt.nii.gz")):
            sid = ed_gt.name[: -len("_sa_ED_gt.nii.gz")]
            pairs = [(ed_gt.with_name(f"{sid}_sa_{ph}.nii.gz"), ed_gt.with_name(f"{sid}_sa_{ph}_gt.nii.gz"))
                     for ph in ("ED", "ES")]
            pack_pairs(pairs, root / "mnms", half_mm, quantise=False)
            counts["mnms"] += 1
        for sdir in sorted(p for p in (data / "mnms2").glob("*") if p.is_dir()):
            sid = sdir.name
            pairs = [(sdir / f"{sid}_SA_{ph}.nii.gz", sdir / f"{sid}_SA_{ph}_gt.nii.gz") for ph in ("ED", "ES")]
            if all(p.exists() for pair in pairs for p in pair):
                pack_pairs(pairs, root / "mnms2" / sid, half_mm, quantise=False)
                counts["mnms2"] += 1
        tmp_out = out.with_name(out.name + ".part")
        with tarfile.open(tmp_out, "w:xz", preset=9) as tar:
            tar.add(root, arcname="data")
        tmp_out.replace(out)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="data root holding acdc/, mnms/, mnms2/")
    p.add_argument("--out", type=Path, required=True, help="archive to write (.tar.xz)")
    p.add_argument("--half-mm", type=float, default=120.0,
                   help="half-width of the kept square around the heart (default 120: window 96 + jitter 20)")
    args = p.parse_args(argv)
    try:
        counts = pack(args.data, args.out, args.half_mm)
    except (OSError, ValueError) as exc:
        print(f"pack_training_data: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB; subjects {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
