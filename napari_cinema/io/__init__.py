"""Reading and writing cine studies (Qt-free)."""

from .load import load_studies, load_study, study_kind
from .study import CineLoadError, CineStudy, DicomRefs, PatientInfo

__all__ = ["CineLoadError", "CineStudy", "DicomRefs", "PatientInfo", "load_studies", "load_study", "study_kind"]
