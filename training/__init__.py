"""Fine-tuning and pre-training pipeline, installed as ``napari_cinema.training``."""
