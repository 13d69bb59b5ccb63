"""Qt dock widgets of napari-cinema (thin over :mod:`napari_cinema.api` and the Qt-free core).

- :class:`AnalysisWidget` ('Cine analysis'): cine layer, view, model, device; Run / Cancel in a worker.
- :class:`FunctionWidget` ('Cardiac function'): volume-time curves, ED/ES, measures, MAPSE, export.
- :class:`CorrectionWidget` ('Corrections'): cine correction tools, save / autosave to the correction
  store, stored corrections offered again, store browser.
- :class:`FinetuneWidget` ('Fine-tuning'): fine-tune on the store in a trainer subprocess, curves, Stop /
  Resume, before/after table; the new model is registered and listed by the analysis dock.
"""

from .analysis import AnalysisWidget
from .correction import CorrectionWidget
from .finetune import FinetuneWidget
from .function import FunctionWidget

__all__ = ["AnalysisWidget", "CorrectionWidget", "FinetuneWidget", "FunctionWidget"]
