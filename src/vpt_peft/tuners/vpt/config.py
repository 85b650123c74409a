from __future__ import annotations

from dataclasses import dataclass

from ...engine.config import PromptConfigBase


@dataclass
class VisualPromptConfig(PromptConfigBase):
    """VPT (Jia et al., ECCV 2022): learnable prompt tokens after CLS, shallow or deep.

    ``VisualPromptConfig(num_prompts=50, deep=True)`` is VPT-deep with 50 prompts per layer: 460,800
    prompt parameters on ViT-B/16 (shallow: 38,400). Deep prompts take the exact key-value fast path by
    default (``prompt_path``); see docs/methods/vpt.md.
    """

    def __post_init__(self) -> None:
        from peft.utils.peft_types import PeftType

        self.peft_type = PeftType.VPT
        super().__post_init__()
