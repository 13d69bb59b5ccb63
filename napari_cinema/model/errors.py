"""Model-side errors and task names, importable without torch (the CLI catches these cheaply)."""

from __future__ import annotations

import os

TASKS: tuple[str, ...] = (
    "segmentation",
    "landmark_heatmap",
    "landmark_coordinate",
    "classification_cvd",
    "classification_sex",
    "classification_vendor",
    "regression_ef",
    "regression_bmi",
    "regression_age",
    "pretrained",
)


class ModelError(ValueError):
    """Base of the model-side errors a user can fix (bad file, unknown id, hub unreachable).

    The message is one line, fit to print as is.
    """


class CheckpointError(ModelError):
    """A checkpoint file cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
