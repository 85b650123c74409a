from __future__ import annotations

from ..prompt.model import PromptTunerModel
from .layer import KVPromptLayer


class KVPromptModel(PromptTunerModel):
    """peft tuner for :class:`~vpt_peft.KVPromptConfig`."""

    prefix = "kvprompt_"
    tuner_layer_cls = KVPromptLayer
