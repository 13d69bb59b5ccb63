"""Qt dock widgets of napari-cinema (thin over :mod:`napari_cinema.api` and the Qt-free core).

- :class:`AnalysisWidget` ('Cine analysis'): cine layer, view, model, device; Run / Cancel in a worker.
- :class:`FunctionWidget` ('Cardiac function'): volume-time curves, ED/ES, measures, MAPSE, export.
"""

from .analysis import AnalysisWidget
from .function import FunctionWidget

__all__ = ["AnalysisWidget", "FunctionWidget"]
