"""DPT / CAVPT (Xing et al., TMM 2023): dual-modality prompt tuning of CLIP with class-aware visual prompts."""

from .config import DualPromptConfig
from .layer import DualPromptVisionBank, DualPromptVisionLayer
from .loss import DualPromptOutput, aux_loss, dual_prompt_loss
from .model import DualPromptModel
from .text import DualPromptTextLayer, TextPromptBank, tokenize_class_prompts
from .training import (
    DualPromptEpochCallback,
    dual_prompt_optimizer,
    dual_prompt_parameter_groups,
    dual_prompt_scheduler,
    few_shot_subset,
    set_epoch,
)

__all__ = [
    "DualPromptConfig",
    "DualPromptEpochCallback",
    "DualPromptModel",
    "DualPromptOutput",
    "DualPromptTextLayer",
    "DualPromptVisionBank",
    "DualPromptVisionLayer",
    "TextPromptBank",
    "aux_loss",
    "dual_prompt_loss",
    "dual_prompt_optimizer",
    "dual_prompt_parameter_groups",
    "dual_prompt_scheduler",
    "few_shot_subset",
    "set_epoch",
    "tokenize_class_prompts",
]
