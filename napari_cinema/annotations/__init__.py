"""Corrections of model segmentations: the versioned correction store and the cine editing tools.

Qt-free; the GUI and the training pipeline both use it (see :mod:`.store` for the on-disk layout).
"""

from .edit import clear_slice, copy_frame, differing_frames, edited_frames, next_differing_frame
from .store import (
    CorrectionStore,
    StoreConflict,
    StoredCorrections,
    StoreError,
    StoreWarning,
    StudyEntry,
    default_store_root,
    is_store,
    study_key,
)

__all__ = [
    "CorrectionStore",
    "StoreConflict",
    "StoreError",
    "StoreWarning",
    "StoredCorrections",
    "StudyEntry",
    "clear_slice",
    "copy_frame",
    "default_store_root",
    "differing_frames",
    "edited_frames",
    "is_store",
    "next_differing_frame",
    "study_key",
]
