from __future__ import annotations

from ...engine.tuner import ClassifierPromptTuner
from .layer import KVPromptLayer


class KVPromptModel(ClassifierPromptTuner):
    """peft tuner for :class:`~vpt_peft.KVPromptConfig`."""

    prefix = "kvprompt_"
    tuner_layer_cls = KVPromptLayer
