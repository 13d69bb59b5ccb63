"""The correction store: model output and the annotator's corrected labels, side by side, versioned.

Layout (one folder per study, named by :func:`study_key`)::

    <root>/store.json                              {"format": "napari-cinema corrections", "layout": 1}
    <root>/<key>/image.nii.gz                      the cine (x, y, z, t) float32 with its affine; written once
    <root>/<key>/study.json                        the study header, written once: source, view, shape,
                                                   exact spacing and affine, frame times, ED/ES, patient,
                                                   DICOM identifiers, and the full identity digest
    <root>/<key>/versions/000001/original.nii.gz   the model output (x, y, z, t) uint8, internal labels
    <root>/<key>/versions/000001/final.nii.gz      the corrected labels, same grid and convention
    <root>/<key>/versions/000001/provenance.json   model id and weights sha256, user, time, app version,
                                                   source, view, label map, shape, spacing, ED/ES,
                                                   edited_frames (cumulative), edited_this_save,
                                                   changed_frames, autosave, base_version, history
    <root>/<key>/current.json                      the HEAD: {"version": n, "saved_at": .., "user": ..}
    <root>/<key>/.lock                             serialises saves of one study between processes

Labels use the internal convention (0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity) unless a
save gives another ``label_map``, which is then recorded in provenance.json.

Commit protocol. A save takes the study's lock, writes the new version into ``versions/.tmp-*``
(every file fsynced), renames that folder to ``versions/<n+1>`` and only then replaces ``current.json``
(``os.replace``). The version named by ``current.json`` is therefore always complete: a process killed
at any point leaves the previous version current, and its debris (``.tmp-*`` folders, a renamed but
uncommitted ``<n+1>``, temporary files of ``image.nii.gz``/``study.json``/``current.json``) is ignored by
readers and removed by the next save. A failed write (disk full) removes what it wrote and leaves HEAD as
it was.

Never overwritten silently: each save is a new version; ``base_version`` says which version the caller
started from, and a store whose current version differs raises :class:`StoreConflict`. The newest
``max_versions`` versions are kept (the current one never pruned); ``history`` in provenance.json keeps
the who/when/what of every earlier save.
"""

from __future__ import annotations

import errno
import getpass
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from napari_cinema.io.labels import LABEL_NAMES
from napari_cinema.io.study import CineLoadError, CineStudy, DicomRefs, PatientInfo
from napari_cinema.io.writers import atomic_write_text, write_image_nifti, write_labels_nifti

__all__ = [
    "CorrectionStore",
    "StoreConflict",
    "StoreError",
    "StoreWarning",
    "StoredCorrections",
    "StudyEntry",
    "default_store_root",
    "is_store",
    "study_key",
]

STORE_FORMAT = "napari-cinema corrections"
LAYOUT_VERSION = 1
MARKER = "store.json"
HEAD = "current.json"
IMAGE = "image.nii.gz"
STUDY = "study.json"
VERSIONS = "versions"
LOCK = ".lock"
ORIGINAL = "original.nii.gz"
FINAL = "final.nii.gz"
PROVENANCE = "provenance.json"
_TMP_PREFIX = ".tmp-"
_VERSION_DIR = re.compile(r"^\d{6,}$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LOCK_TIMEOUT_S = 60.0


class StoreError(Exception):
    """The store cannot do what was asked; the message names the study (folder or file) and the problem."""


class StoreConflict(StoreError):
    """The stored version is newer than the one the caller started from: saving would overwrite it."""


class StoreWarning(UserWarning):
    """A study in the store could not be read and was skipped (by :meth:`CorrectionStore.entries`)."""


# --------------------------------------------------------------------------------------------------
# locations and keys
# --------------------------------------------------------------------------------------------------


def default_store_root() -> Path:
    """``$NAPARI_CINEMA_HOME/corrections``, else ``platformdirs.user_data_dir('napari-cinema')/corrections``.

    The same base as the user's models (``napari_cinema.model.registry.user_models_dir``); read from the
    environment at each call.
    """
    home = os.environ.get("NAPARI_CINEMA_HOME")
    if home:
        return Path(os.path.expanduser(home)) / "corrections"
    try:
        from platformdirs import user_data_dir
    except ImportError:  # platformdirs comes with napari; the registry falls back the same way
        return Path.home() / ".local" / "share" / "napari-cinema" / "corrections"
    return Path(user_data_dir("napari-cinema")) / "corrections"


def _stem(source: str) -> str:
    name = Path(source).name if source else ""
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _slug(text: str | None) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text or "").strip("-._").lower()[:40].strip("-._")
    return s or "study"


def _existing_path(source: str) -> Path | None:
    if not source:
        return None
    try:
        p = Path(os.path.expanduser(source))
        return p.resolve() if p.exists() else None
    except (OSError, ValueError):
        return None


def _identity(study: CineStudy) -> tuple[str, str]:
    """(readable slug, full sha256 hex) identifying ``study`` across openings."""
    h = hashlib.sha256()

    def feed(*parts: Any) -> None:
        for p in parts:
            h.update(str(p).encode("utf-8", "surrogatepass"))
            h.update(b"\0")

    shape = "x".join(str(s) for s in study.shape)
    d = study.dicom
    if d is not None and d.sop_instance_uids:
        # The SOP instances name the exact images (one series can hold several cines).
        feed("dicom", d.study_instance_uid, *sorted(set(d.series_instance_uids)), shape)
        for row in d.sop_instance_uids:
            feed(*row)
        for row in d.frame_numbers or []:
            feed(*row)
        name = study.patient.patient_id or _stem(study.source)
    else:
        path = _existing_path(study.source)
        if path is not None:
            feed("file", path, shape)
        else:
            # No file behind it (a phantom, a layer): the pixels are what identifies it.
            feed("memory", study.source, shape)
            h.update(memoryview(np.ascontiguousarray(study.image, dtype=np.float32)).cast("B"))
        name = _stem(study.source) or study.patient.patient_id
    return _slug(name), h.hexdigest()


def study_key(study: CineStudy) -> str:
    """A stable, filesystem-safe, readable key: ``<slug of source stem or patient id>-<8 hex>``.

    The digest comes from the DICOM SOP/series instance UIDs when the study is DICOM, else from the
    resolved source path and the shape, else (no file behind the study: a phantom, an in-memory
    cine) from the source string, the shape and the pixels. The same study opened twice gets the same
    key; a study read back with :meth:`CorrectionStore.read_study` too (while its source file, if any,
    is still where it was).
    """
    slug, digest = _identity(study)
    return f"{slug}-{digest[:8]}"


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a correction store folder (its marker file, or a study folder with a HEAD)."""
    p = Path(path)
    try:
        if not p.is_dir():
            return False
        if (p / MARKER).is_file():
            return True
        return any(c.is_dir() and (c / HEAD).is_file() and (c / VERSIONS).is_dir() for c in p.iterdir())
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------


@dataclass
class StoredCorrections:
    """One stored version of a study's corrections (arrays (t, z, y, x) uint8)."""

    key: str
    folder: Path
    version: int
    original: np.ndarray  # the model output
    final: np.ndarray  # the corrected labels
    provenance: dict
    edited_frames: list[int]  # frames the annotator edited, over all saves
    changed_frames: list[int]  # frames where final != original

    @property
    def labelled_frames(self) -> list[int]:
        """Frames whose final labels are real: the edited ones, else every non-empty frame."""
        if self.edited_frames:
            return list(self.edited_frames)
        return [int(t) for t in np.flatnonzero(self.final.reshape(self.final.shape[0], -1).any(axis=1))]

    @property
    def label_map(self) -> dict[int, str]:
        return _label_map_from_json(self.provenance.get("label_map"), self.folder)


@dataclass
class StudyEntry:
    """One row of a store browser (the current version of one study)."""

    key: str
    folder: Path
    source: str
    view: str
    n_frames: int
    edited_frames: list[int]
    changed_frames: list[int]
    version: int
    saved_at: str
    saved_by: str
    model_id: str
    autosave: bool

    @property
    def uncorrected_frames(self) -> list[int]:
        edited = set(self.edited_frames)
        return [t for t in range(self.n_frames) if t not in edited]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers): still record something
        return "unknown"


def _vname(version: int) -> str:
    return f"{int(version):06d}"


def _app_version() -> str:
    from napari_cinema import __version__

    return __version__


def _label_map(label_map: Mapping[int, str] | None, key: str) -> dict[int, str]:
    if label_map is None:
        return dict(LABEL_NAMES)
    try:
        out = {int(k): str(v) for k, v in label_map.items()}
    except (TypeError, ValueError, AttributeError):
        raise StoreError(f"{key}: label_map must map integer label values to names, got {label_map!r}") from None
    if 0 not in out:
        raise StoreError(f"{key}: label_map {out} has no background value 0")
    if any(not 0 <= k <= 255 for k in out):
        raise StoreError(f"{key}: label_map values must lie in 0..255 (stored as uint8), got {sorted(out)}")
    return out


def _label_map_from_json(raw: Any, where: Path) -> dict[int, str]:
    if not raw:
        return dict(LABEL_NAMES)
    try:
        return {int(k): str(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError):
        raise StoreError(f"{where}: label_map {raw!r} in provenance.json is not value -> name") from None


def _check_values(u8: np.ndarray, label_map: Mapping[int, str], what: str) -> None:
    present = np.flatnonzero(np.bincount(u8.ravel(), minlength=256))  # O(n), unlike np.unique
    bad = [int(v) for v in present if int(v) not in label_map]
    if bad:
        raise StoreError(f"{what}: label values {bad} are outside the label map "
                         f"{ {int(k): v for k, v in sorted(label_map.items())} }")


def _as_labels(arr: Any, what: str, shape: tuple[int, ...] | None, label_map: Mapping[int, str]) -> np.ndarray:
    """``arr`` as (t, z, y, x) uint8 after checking shape and values; StoreError starts with ``what``
    (the study and which labels, or the file)."""
    a = np.asarray(arr)
    if shape is not None and a.shape != tuple(shape):
        raise StoreError(f"{what}: labels have shape {a.shape}, the study is {tuple(shape)} (t, z, y, x)")
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all() or np.any(a != np.round(a)):
            raise StoreError(f"{what}: labels hold non-integer values")
    elif a.dtype.kind not in "iu":
        raise StoreError(f"{what}: labels have type {a.dtype}, expected integers")
    if a.size and (a.min() < 0 or a.max() > 255):
        bad = np.unique(a[(a < 0) | (a > 255)])[:10]
        raise StoreError(f"{what}: label values {[int(v) for v in bad]} are outside the label map "
                         f"{ {int(k): v for k, v in sorted(label_map.items())} }")
    u8 = a.astype(np.uint8, copy=False)
    _check_values(u8, label_map, what)
    return u8


def _frame_list(frames: Any, n_frames: int, key: str) -> list[int]:
    if frames is None:
        return []
    if isinstance(frames, (int, np.integer)):
        frames = [frames]
    try:
        out = sorted({int(t) for t in frames})
    except (TypeError, ValueError):
        raise StoreError(f"{key}: edited_frames must be frame indices, got {frames!r}") from None
    bad = [t for t in out if not 0 <= t < n_frames]
    if bad:
        raise StoreError(f"{key}: edited frames {bad} are outside the study's {n_frames} frames (0..{n_frames - 1})")
    return out


def _differing(a: np.ndarray, b: np.ndarray) -> list[int]:
    return [int(t) for t in np.flatnonzero((a != b).reshape(a.shape[0], -1).any(axis=1))]


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{path}: missing ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(data, dict):
        raise StoreError(f"{path}: {what} is not a JSON object")
    return data


@contextmanager
def _locked(path: Path, key: str) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes, released by the OS if the holder dies."""
    try:
        f = open(path, "a+b")
    except OSError as exc:
        raise StoreError(f"{path.parent}: cannot lock the study for saving ({exc.strerror or exc})") from None
    try:
        try:
            import fcntl
        except ImportError:  # Windows
            fcntl = None  # type: ignore[assignment]
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                if fcntl is not None:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    import msvcrt

                    f.seek(0)
                    msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise StoreError(f"{path.parent}: another process has been saving corrections for {key} "
                                     f"for over {_LOCK_TIMEOUT_S:.0f} s; try again") from None
                time.sleep(0.05)
        yield
    finally:
        f.close()  # closing releases the lock


def _study_header(study: CineStudy, key: str, digest: str) -> dict[str, Any]:
    d = study.dicom
    return {
        "format": STORE_FORMAT,
        "key": key,
        "identity_sha256": digest,
        "source": study.source,
        "view": study.view,
        "description": study.description,
        "shape": list(study.shape),
        "spacing": [None if v is None else float(v) for v in study.spacing],
        "affine": [[float(v) for v in row] for row in study.affine],
        "frame_times_ms": None if study.frame_times_ms is None else [float(v) for v in study.frame_times_ms],
        "ed_frame": study.ed_frame,
        "es_frame": study.es_frame,
        "frame_numbers": None if study.frame_numbers is None else [int(v) for v in study.frame_numbers],
        "patient": study.patient.to_dict(),
        "dicom": None if d is None else {
            "study_instance_uid": d.study_instance_uid,
            "series_instance_uids": list(d.series_instance_uids),
            "sop_instance_uids": [list(r) for r in d.sop_instance_uids],
            "frame_numbers": None if d.frame_numbers is None else [list(r) for r in d.frame_numbers],
            "sop_class_uid": d.sop_class_uid,
        },
        "written_at": _now(),
    }


def _read_labels_nifti(path: Path, shape: tuple[int, ...] | None, label_map: Mapping[int, str]) -> np.ndarray:
    """A stored label file as (t, z, y, x) uint8; StoreError names the file and the problem."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing") from None
    except Exception as exc:  # nibabel raises many types for truncated files
        raise StoreError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise StoreError(f"{path}: expected (x, y, z, t) labels, got shape {data.shape}")
    labels = np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)))
    return _as_labels(labels, str(path), shape, label_map)


# --------------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------------


class CorrectionStore:
    """A folder of versioned corrections, one sub-folder per study (see the module docstring)."""

    def __init__(self, root: str | Path | None = None, max_versions: int = 20):
        self.root = Path(os.path.expanduser(str(root))) if root is not None else default_store_root()
        if int(max_versions) < 1:
            raise ValueError(f"max_versions must be at least 1, got {max_versions}")
        self.max_versions = int(max_versions)

    def __repr__(self) -> str:
        return f"CorrectionStore({str(self.root)!r})"

    is_store = staticmethod(is_store)

    # -- addressing -----------------------------------------------------------------------------
    def _resolve(self, study_or_key: CineStudy | str) -> tuple[str, Path]:
        if isinstance(study_or_key, CineStudy):
            key = study_key(study_or_key)
        elif isinstance(study_or_key, str):
            key = study_or_key
            if not _KEY.match(key):
                raise StoreError(f"{key!r} is not a study key of the correction store {self.root}")
        else:
            raise TypeError(f"expected a CineStudy or a study key, got {type(study_or_key).__name__}")
        return key, self.root / key

    def folder(self, study_or_key: CineStudy | str) -> Path:
        """The study's folder (it may not exist yet)."""
        return self._resolve(study_or_key)[1]

    @staticmethod
    def _head(folder: Path) -> dict | None:
        path = folder / HEAD
        if not path.is_file():
            return None
        head = _read_json(path, "HEAD pointer")
        v = head.get("version")
        if not isinstance(v, int) or v < 1:
            raise StoreError(f"{path}: 'version' must be a positive integer, got {v!r}")
        return head

    @staticmethod
    def _version_dirs(folder: Path) -> dict[int, Path]:
        vdir = folder / VERSIONS
        if not vdir.is_dir():
            return {}
        return {int(p.name): p for p in vdir.iterdir() if p.is_dir() and _VERSION_DIR.match(p.name)}

    def keys(self) -> list[str]:
        """Keys of every study with a committed version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / HEAD).is_file())

    def versions(self, study_or_key: CineStudy | str) -> list[int]:
        """Committed versions still on disk, oldest first ([] for a study not in the store)."""
        _, folder = self._resolve(study_or_key)
        head = self._head(folder)
        if head is None:
            return []
        return sorted(v for v in self._version_dirs(folder) if v <= head["version"])

    # -- reading --------------------------------------------------------------------------------
    def load(self, study_or_key: CineStudy | str) -> StoredCorrections | None:
        """The current (newest complete) version of a study, None when the store has none."""
        key, folder = self._resolve(study_or_key)
        head = self._head(folder)
        if head is None:
            return None
        return self._read_version(key, folder, head["version"])

    def load_version(self, study_or_key: CineStudy | str, version: int) -> StoredCorrections:
        key, folder = self._resolve(study_or_key)
        available = self.versions(key)
        if int(version) not in available:
            raise StoreError(f"{folder}: no version {version} of the corrections for {key} "
                             f"(stored: {available or 'none'})")
        return self._read_version(key, folder, int(version))

    def _read_provenance(self, folder: Path, version: int) -> dict:
        return _read_json(folder / VERSIONS / _vname(version) / PROVENANCE, "provenance")

    def _read_version(self, key: str, folder: Path, version: int) -> StoredCorrections:
        vdir = folder / VERSIONS / _vname(version)
        if not vdir.is_dir():
            raise StoreError(f"{vdir}: version {version} of the corrections for {key} is missing")
        prov = self._read_provenance(folder, version)
        label_map = _label_map_from_json(prov.get("label_map"), vdir / PROVENANCE)
        shape = tuple(int(s) for s in prov["shape"]) if prov.get("shape") else None
        original = _read_labels_nifti(vdir / ORIGINAL, shape, label_map)
        final = _read_labels_nifti(vdir / FINAL, shape or original.shape, label_map)
        if original.shape != final.shape:
            raise StoreError(f"{vdir}: original {original.shape} and final {final.shape} labels differ in shape")
        edited = sorted(int(t) for t in prov.get("edited_frames") or [])
        return StoredCorrections(key=key, folder=folder, version=int(version), original=original, final=final,
                                 provenance=prov, edited_frames=edited, changed_frames=_differing(final, original))

    def _entry(self, key: str, folder: Path, head: dict, prov: dict) -> StudyEntry:
        shape = prov.get("shape") or [0]
        return StudyEntry(
            key=key, folder=folder, source=str(prov.get("source", "")), view=str(prov.get("view", "unknown")),
            n_frames=int(shape[0]), edited_frames=sorted(int(t) for t in prov.get("edited_frames") or []),
            changed_frames=sorted(int(t) for t in prov.get("changed_frames") or []),
            version=int(head["version"]), saved_at=str(prov.get("saved_at", "")),
            saved_by=str(prov.get("user", "")), model_id=str(prov.get("model_id", "")),
            autosave=bool(prov.get("autosave", False)),
        )

    def entry(self, study_or_key: CineStudy | str) -> StudyEntry | None:
        """One study's browser row (its current version; provenance only, no label files), None when
        the store has none for it."""
        key, folder = self._resolve(study_or_key)
        head = self._head(folder)
        if head is None:
            return None
        return self._entry(key, folder, head, self._read_provenance(folder, head["version"]))

    def entries(self) -> list[StudyEntry]:
        """Every study in the store (its current version), sorted by key; unreadable ones are skipped
        with a :class:`StoreWarning`."""
        out = []
        for key in self.keys():
            try:
                found = self.entry(key)
            except (StoreError, OSError, ValueError, TypeError, KeyError) as exc:
                warnings.warn(f"correction store {self.root}: skipped study {key}: {exc}", StoreWarning,
                              stacklevel=2)
                continue
            if found is not None:  # None: removed meanwhile
                out.append(found)
        return out

    def read_study(self, key: CineStudy | str, *, labels: bool = True) -> CineStudy:
        """The stored cine with its geometry, view, ED/ES and patient data (for training and review).

        With ``labels`` the current final labels are attached, ``labelled_frames`` being the edited
        frames (every non-empty frame when none are recorded).
        """
        from napari_cinema.io.load import load_study

        key, folder = self._resolve(key)
        image_path = folder / IMAGE
        if not image_path.is_file():
            raise StoreError(f"{folder}: no {IMAGE}; {key} is not in the correction store {self.root}")
        try:
            study = load_study(image_path)
        except CineLoadError as exc:
            raise StoreError(f"correction store study {key}: {exc}") from None
        meta = _read_json(folder / STUDY, "study header") if (folder / STUDY).is_file() else {}
        head = self._head(folder)
        prov = self._read_provenance(folder, head["version"]) if head else {}
        self._apply_header(study, meta, prov, folder)
        if labels and head is not None:
            stored = self._read_version(key, folder, head["version"])
            if stored.final.shape != study.shape:
                raise StoreError(f"{folder}: labels {stored.final.shape} do not match {IMAGE} {study.shape}")
            frames = stored.labelled_frames
            if frames:
                study.labels = stored.final
                study.labelled_frames = tuple(frames)
        return study

    @staticmethod
    def _apply_header(study: CineStudy, meta: Mapping[str, Any], prov: Mapping[str, Any], folder: Path) -> None:
        """Put back what NIfTI cannot hold (or holds in float32) from study.json and provenance."""
        from napari_cinema.io.study import VIEWS

        view = prov.get("view") or meta.get("view")
        if view in VIEWS:
            study.view = str(view)
        if meta.get("source"):
            study.source = str(meta["source"])
        elif prov.get("source"):
            study.source = str(prov["source"])
        if meta.get("description") is not None:
            study.description = str(meta["description"])
        spacing = meta.get("spacing")
        if spacing and len(spacing) == 4:
            file_sp = np.asarray(study.spacing[1:], float)
            exact = np.asarray(spacing[1:], float)
            if not np.allclose(file_sp, exact, rtol=1e-4, atol=1e-4):
                raise StoreError(f"{folder / STUDY}: spacing {spacing[1:]} disagrees with {IMAGE} {list(file_sp)}")
            study.spacing = (None if spacing[0] is None else float(spacing[0]), *(float(v) for v in exact))
        if meta.get("affine"):
            aff = np.asarray(meta["affine"], np.float64)
            if aff.shape == (4, 4) and np.allclose(aff, study.affine, rtol=1e-4, atol=1e-3):
                study.affine = aff  # the float64 original; the file's sform is float32
        if meta.get("frame_times_ms") is not None and len(meta["frame_times_ms"]) == study.n_frames:
            study.frame_times_ms = np.asarray(meta["frame_times_ms"], np.float64)
        if meta.get("frame_numbers") is not None:
            study.frame_numbers = tuple(int(v) for v in meta["frame_numbers"])
        if isinstance(meta.get("patient"), dict):
            known = set(PatientInfo.__dataclass_fields__)
            study.patient = PatientInfo(**{k: v for k, v in meta["patient"].items() if k in known})
        for name in ("ed_frame", "es_frame"):
            v = prov.get(name, meta.get(name))
            if isinstance(v, int) and 0 <= v < study.n_frames:
                setattr(study, name, v)
        d = meta.get("dicom")
        if isinstance(d, dict) and d.get("sop_instance_uids"):
            study.dicom = DicomRefs(
                study_instance_uid=str(d.get("study_instance_uid", "")),
                series_instance_uids=[str(s) for s in d.get("series_instance_uids") or []],
                sop_instance_uids=[[str(s) for s in row] for row in d["sop_instance_uids"]],
                frame_numbers=d.get("frame_numbers"),
                sop_class_uid=d.get("sop_class_uid"),
            )

    # -- writing --------------------------------------------------------------------------------
    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not (self.root / MARKER).is_file():
                atomic_write_text(self.root / MARKER, json.dumps(
                    {"format": STORE_FORMAT, "layout": LAYOUT_VERSION, "created_at": _now()}, indent=1) + "\n")
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot create the correction store ({exc.strerror or exc})") from None

    def _clean_stale(self, folder: Path, current: int | None) -> None:
        """Remove what killed saves left behind (called under the study's lock)."""
        vdir = folder / VERSIONS
        if vdir.is_dir():
            for p in vdir.iterdir():
                if p.name.startswith(_TMP_PREFIX):
                    shutil.rmtree(p, ignore_errors=True)
            # A save killed between renaming its folder and moving HEAD leaves exactly <current + 1>.
            orphan = vdir / _vname((current or 0) + 1)
            if orphan.is_dir():
                shutil.rmtree(orphan, ignore_errors=True)
        for name in (IMAGE, STUDY, HEAD):
            for p in folder.glob(f".{name}.*"):  # atomic_path temporaries
                try:
                    p.unlink()
                except OSError:
                    pass

    def _prune(self, folder: Path, current: int) -> None:
        dirs = self._version_dirs(folder)
        committed = sorted(v for v in dirs if v <= current)
        keep = set(committed[-self.max_versions:]) | {current}
        for v in committed:
            if v not in keep:
                shutil.rmtree(dirs[v], ignore_errors=True)

    def _write_study_files(self, folder: Path, study: CineStudy, key: str, digest: str) -> None:
        header_path = folder / STUDY
        if header_path.is_file():
            old = _read_json(header_path, "study header")
            if old.get("identity_sha256") not in (None, digest):
                raise StoreError(f"{folder}: holds another study under the key {key} (source "
                                 f"{old.get('source')!r}); this one is {study.source!r}")
        else:
            atomic_write_text(header_path, json.dumps(_study_header(study, key, digest), indent=1) + "\n")
        image_path = folder / IMAGE
        if image_path.is_file():
            try:
                shape = nib.load(str(image_path)).shape
            except Exception as exc:
                raise StoreError(f"{image_path}: unreadable ({type(exc).__name__}: {exc})") from None
            tzyx = tuple(reversed(tuple(shape) + (1,) * (4 - len(shape))))
            if tzyx != study.shape:
                raise StoreError(f"{image_path}: holds a {tzyx} cine, the study {study.shape} (t, z, y, x) "
                                 f"is a different one under the same key {key}")
        else:
            write_image_nifti(image_path, study)

    def save(self, study: CineStudy, original: Any, final: Any, *, model_id: str, model_sha256: str | None,
             edited_frames: Iterable[int] | None, user: str | None = None, autosave: bool = False,
             base_version: int | None = None, label_map: Mapping[int, str] | None = None) -> StudyEntry:
        """Store ``final`` (the corrected labels) beside ``original`` (the model output) as a new version.

        ``edited_frames`` are the frames the annotator edited (they are added to those of earlier
        versions); ``base_version`` is the version the caller loaded or started from (None: a study new
        to the store; a base for a study the store no longer holds is accepted, nothing is overwritten).
        An edited frame may be left empty (the annotator erased it). Raises StoreConflict when the store
        holds another current version, StoreError for bad input, nothing to save, or a failed write
        (the previous version then stays current and the partial files are removed).
        """
        if not isinstance(study, CineStudy):
            raise TypeError(f"study must be a CineStudy, got {type(study).__name__}")
        slug, digest = _identity(study)
        key = f"{slug}-{digest[:8]}"
        folder = self.root / key
        if not isinstance(model_id, str):
            raise StoreError(f"{key}: model_id must be a string (the model that produced 'original')")
        lm = _label_map(label_map, key)
        shape = study.shape
        original = _as_labels(original, f"{key}: original", shape, lm)
        final = _as_labels(final, f"{key}: final", shape, lm)
        edited_now = _frame_list(edited_frames, shape[0], key)
        changed = _differing(final, original)
        if not edited_now and not changed:
            raise StoreError(f"{key}: nothing to save: no frame was edited and the labels equal the model output")
        user = user or _current_user()

        self._ensure_root()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{folder}: cannot create the study folder ({exc.strerror or exc})") from None
        with _locked(folder / LOCK, key):
            head = self._head(folder)
            current = head["version"] if head else None
            if current is not None and base_version != current:
                raise StoreConflict(
                    f"corrections for {key} were saved as version {current} by {head.get('user', '?')} at "
                    f"{head.get('saved_at', '?')}, but you started from "
                    f"{'no stored version' if base_version is None else f'version {base_version}'}; "
                    f"load the stored corrections first so that their work is not overwritten ({folder})")
            self._clean_stale(folder, current)
            prev = self._read_provenance(folder, current) if current is not None else None
            edited_all = sorted(set(int(t) for t in (prev or {}).get("edited_frames") or []) | set(edited_now))
            existing = self._version_dirs(folder)
            version = max([current or 0, *existing]) + 1
            now = _now()
            dt, dz, dy, dx = study.spacing
            history = list((prev or {}).get("history") or [])
            if prev is not None:
                history.append({k: prev.get(k) for k in ("version", "saved_at", "user", "model_id",
                                                          "edited_this_save", "edited_frames", "autosave")})
            prov = {
                "format": STORE_FORMAT,
                "key": key,
                "version": version,
                "base_version": base_version,
                "model_id": model_id,
                "model_sha256": model_sha256,
                "user": user,
                "saved_at": now,
                "app_version": _app_version(),
                "source": study.source,
                "view": study.view,
                "label_map": {str(k): v for k, v in sorted(lm.items())},
                "shape": list(shape),
                "spacing": [dt, dz, dy, dx],
                "ed_frame": study.ed_frame,
                "es_frame": study.es_frame,
                "edited_frames": edited_all,
                "edited_this_save": edited_now,
                "changed_frames": changed,
                "autosave": bool(autosave),
                "history": history,
            }
            vdir = folder / VERSIONS
            tmp: Path | None = None
            committed: Path | None = None
            head_moved = False
            try:
                self._write_study_files(folder, study, key, digest)
                vdir.mkdir(exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=vdir))
                write_labels_nifti(tmp / ORIGINAL, original, study.affine, frame_interval_ms=dt)
                write_labels_nifti(tmp / FINAL, final, study.affine, frame_interval_ms=dt)
                atomic_write_text(tmp / PROVENANCE, json.dumps(prov, indent=1) + "\n")
                _fsync_dir(tmp)
                target = vdir / _vname(version)
                try:
                    os.rename(tmp, target)  # refuses an existing (non-empty) folder: no overwrite
                except OSError as exc:
                    if target.exists():
                        raise StoreConflict(f"{target}: another save of {key} took version {version} meanwhile; "
                                            "load the stored corrections first") from None
                    raise exc
                tmp, committed = None, target
                _fsync_dir(vdir)
                atomic_write_text(folder / HEAD, json.dumps(
                    {"version": version, "saved_at": now, "user": user, "autosave": bool(autosave)}) + "\n")
                head_moved = True
                _fsync_dir(folder)
            except BaseException as exc:  # also an interrupt: take back what this save wrote
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                if head_moved:  # committed; nothing after the HEAD write can fail, but never undo it
                    raise
                if committed is not None:
                    shutil.rmtree(committed, ignore_errors=True)
                if not isinstance(exc, OSError):
                    raise
                kept = (f"the previous version ({current}) is intact" if current is not None
                        else "nothing was stored for this study")
                if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                    raise StoreError(f"disk full while saving corrections for {key} in {folder}; {kept}") from exc
                raise StoreError(f"could not save corrections for {key} in {folder} "
                                 f"({exc.strerror or exc}); {kept}") from exc
            self._prune(folder, version)
        head = {"version": version}
        return self._entry(key, folder, head, prov)
