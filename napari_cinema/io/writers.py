"""Writers for results: label maps as NIfTI, with atomic replace so a crash never leaves half a file."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np

from .labels import from_internal


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it replaces ``final`` in one step.

    The temporary keeps the final suffix (``.nii.gz``) so writers that pick a format by name work.
    It is fsynced before the rename, so a crash or a full disk leaves either the old file or the new
    one, never half of one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes it private; results get ordinary modes
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it takes the place of ``final``.

    An existing ``final`` is moved aside first and removed only after the swap, so an interruption
    leaves the old folder or the new one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    old: Path | None = None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_image_nifti(path: str | Path, study) -> Path:
    """A CineStudy's cine as NIfTI (x, y, z, t) float32 with its affine (qform and sform) and frame
    interval in pixdim[4] (ms; unknown timing stays unknown on read), written atomically."""
    data = np.ascontiguousarray(np.transpose(study.image, (3, 2, 1, 0)), dtype=np.float32)
    img = nib.Nifti1Image(data, study.affine)
    img.set_qform(study.affine, code=1)
    img.set_sform(study.affine, code=1)
    dt, dz, dy, dx = study.spacing
    img.header.set_xyzt_units("mm", "msec" if dt else "unknown")
    img.header.set_zooms((dx, dy, dz, float(dt) if dt else 1.0))
    img.header["descrip"] = (study.description or "")[:79].encode("ascii", "replace")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def write_labels_nifti(path: str | Path, labels_tzyx: np.ndarray, affine: np.ndarray,
                       frame_interval_ms: float | None = None, convention: str = "cinema") -> Path:
    """Write (t, z, y, x) labels as a NIfTI (x, y, z, t) uint8 file in ``convention``."""
    labels = np.asarray(labels_tzyx)
    if labels.ndim == 3:
        labels = labels[None]
    if labels.ndim != 4:
        raise ValueError(f"labels must be (t, z, y, x), got shape {labels.shape}")
    data = np.transpose(from_internal(labels, convention), (3, 2, 1, 0))
    img = nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.uint8), np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm", "msec")
    if frame_interval_ms:
        zooms = list(img.header.get_zooms())
        zooms[3] = float(frame_interval_ms)
        img.header.set_zooms(zooms)
    img.header.set_intent("label")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
