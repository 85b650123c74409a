"""DPT / CAVPT (Xing et al., TMM 2023): dual-modality prompt tuning of CLIP with class-aware visual prompts."""

from ...engine.registration import register_method
from ...recipes.dpt import (
    DualPromptEpochCallback,
    dual_prompt_optimizer,
    dual_prompt_parameter_groups,
    dual_prompt_scheduler,
    few_shot_subset,
    set_epoch,
)
from .config import DualPromptConfig
from .layer import DualPromptVisionBank, DualPromptVisionLayer
from .loss import DualPromptOutput, aux_loss, dual_prompt_loss
from .model import DualPromptModel
from .recipe import register_recipes
from .text import DualPromptTextLayer, TextPromptBank, tokenize_class_prompts

PEFT_TYPE = register_method("dpt", DualPromptConfig, DualPromptModel)
register_recipes()

__all__ = [
    "PEFT_TYPE",
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
