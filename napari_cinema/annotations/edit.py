"""Pure numpy tools for correcting a cine segmentation (labels (t, z, y, x)), used by the GUI.

Each tool edits in place and returns what changed, so that the caller can record undo and the
edited frames (which :meth:`~napari_cinema.annotations.store.CorrectionStore.save` needs).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["clear_slice", "copy_frame", "differing_frames", "edited_frames", "next_differing_frame"]


def _check_cine(labels: np.ndarray, name: str = "labels") -> None:
    if np.ndim(labels) != 4:
        raise ValueError(f"{name} must be (t, z, y, x), got shape {np.shape(labels)}")


def _index(i: int, n: int, what: str) -> int:
    i = int(i)
    if not 0 <= i < n:
        raise IndexError(f"{what} {i} is outside 0..{n - 1}")
    return i


def copy_frame(labels: np.ndarray, src: int, dst_frames: int | Iterable[int],
               slices: Iterable[int] | None = None) -> list[int]:
    """Copy frame ``src``'s labels (only the z ``slices`` given, else all) onto ``dst_frames``.

    Returns the destination frames whose labels actually changed (``src`` itself is skipped).
    """
    _check_cine(labels)
    n_t, n_z = labels.shape[:2]
    src = _index(src, n_t, "source frame")
    dsts = [dst_frames] if isinstance(dst_frames, (int, np.integer)) else list(dst_frames)
    dsts = sorted({_index(t, n_t, "destination frame") for t in dsts} - {src})
    zs = slice(None) if slices is None else sorted({_index(z, n_z, "slice") for z in slices})
    source = labels[src][zs].copy()  # a copy: labels[src] must not change under our feet
    changed = []
    for t in dsts:
        if not np.array_equal(labels[t][zs], source):
            labels[t][zs] = source
            changed.append(t)
    return changed


def clear_slice(labels: np.ndarray, t: int, z: int, label: int | None = None) -> bool:
    """Erase slice ``z`` of frame ``t`` (only ``label`` when given); True when anything was erased."""
    _check_cine(labels)
    t = _index(t, labels.shape[0], "frame")
    z = _index(z, labels.shape[1], "slice")
    plane = labels[t, z]  # a view: erasing it edits ``labels``
    if label is not None and int(label) == 0:
        return False  # background is what erasing leaves
    mask = plane != 0 if label is None else plane == int(label)
    if not mask.any():
        return False
    plane[mask] = 0
    return True


def differing_frames(final: np.ndarray, original: np.ndarray) -> list[int]:
    """Frames where ``final`` and ``original`` (t, z, y, x) differ."""
    _check_cine(final, "final")
    if np.shape(final) != np.shape(original):
        raise ValueError(f"final {np.shape(final)} and original {np.shape(original)} differ in shape")
    diff = np.asarray(final) != np.asarray(original)
    return [int(t) for t in np.flatnonzero(diff.reshape(diff.shape[0], -1).any(axis=1))]


def next_differing_frame(final: np.ndarray, original: np.ndarray, current: int, step: int = 1) -> int | None:
    """The next frame after ``current`` (before it for a negative ``step``) where the labels differ.

    Wraps around the cycle and never returns ``current``; None when no other frame differs.
    """
    if step == 0:
        raise ValueError("step must be non-zero")
    frames = set(differing_frames(final, original))
    n = np.shape(final)[0]
    direction = 1 if step > 0 else -1
    for k in range(1, n):
        t = (int(current) + direction * k) % n
        if t in frames:
            return t
    return None


def edited_frames(before: np.ndarray, after: np.ndarray) -> list[int]:
    """Frames an edit changed, from the labels before and after it."""
    return differing_frames(after, before)
