"""Fine-tuning and pre-training pipeline, installed as ``napari_cinema.training``.

Public API::

    from napari_cinema.training import train, evaluate_dataset, load_train_config
    result = train("training/configs/sax_seg.yaml", progress="json")   # TrainResult
    result = train(config, resume=True, run_dir=result.run_dir)          # continue exactly
    metrics = evaluate_dataset("../shared/data/acdc", model="default-sax-seg", split="val")

Modules: :mod:`.config` (one YAML per run), :mod:`.datasets` (sources with explicit label maps),
:mod:`.transforms` (resampling, crops, MONAI augmentation), :mod:`.tasks` (samples, losses, metrics per
task), :mod:`.losses`, :mod:`.loop` (the trainer, run folder, checkpoints), :mod:`.distributed`
(torchrun / DDP), :mod:`.evaluate` and :mod:`.commands` (``train`` and ``evaluate`` sub-commands).
Heavy imports (torch, MONAI) happen on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate_dataset", "load_train_config", "train"]


def train(*args: Any, **kwargs: Any):
    """See :func:`napari_cinema.training.loop.train`."""
    from .loop import train as _train

    return _train(*args, **kwargs)


def evaluate_dataset(*args: Any, **kwargs: Any):
    """See :func:`napari_cinema.training.evaluate.evaluate` (the submodule owns the name ``evaluate``)."""
    from .evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def load_train_config(*args: Any, **kwargs: Any):
    """See :func:`napari_cinema.training.config.load_train_config`."""
    from .config import load_train_config as _load

    return _load(*args, **kwargs)
