from __future__ import annotations

from ...engine.tuner import ClassifierPromptTuner
from .layer import FourierPromptLayer


class FourierPromptModel(ClassifierPromptTuner):
    """peft tuner for :class:`~vpt_peft.FourierPromptConfig` (all machinery shared with VPT)."""

    prefix = "vfpt_"
    tuner_layer_cls = FourierPromptLayer
