from __future__ import annotations

from ..prompt.model import PromptTunerModel
from .layer import VisualPromptLayer


class VisualPromptModel(PromptTunerModel):
    """peft tuner for :class:`~vpt_peft.VisualPromptConfig`."""

    prefix = "vpt_"
    tuner_layer_cls = VisualPromptLayer
