from __future__ import annotations

from ...engine.bank import PromptBank
from ...engine.sidecar import PromptAdapterLayer


class VisualPromptLayer(PromptAdapterLayer):
    """Holds each VPT adapter's :class:`PromptBank` under ``vpt_prompts.<adapter>.prompt_embeddings``."""

    adapter_layer_names = ("vpt_prompts",)
    bank_cls = PromptBank
