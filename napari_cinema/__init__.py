"""napari-cinema: cine cardiac MR analysis in napari with the CineMA model family."""

__version__ = "0.1.0"
