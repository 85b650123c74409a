from __future__ import annotations

from ...engine.tuner import ClassifierPromptTuner
from .layer import VisualPromptLayer


class VisualPromptModel(ClassifierPromptTuner):
    """peft tuner for :class:`~vpt_peft.VisualPromptConfig`."""

    prefix = "vpt_"
    tuner_layer_cls = VisualPromptLayer
