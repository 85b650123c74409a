from __future__ import annotations

from ..prompt.model import PromptTunerModel
from .layer import FourierPromptLayer


class FourierPromptModel(PromptTunerModel):
    """peft tuner for :class:`~vpt_peft.FourierPromptConfig` (all machinery shared with VPT)."""

    prefix = "vfpt_"
    tuner_layer_cls = FourierPromptLayer
