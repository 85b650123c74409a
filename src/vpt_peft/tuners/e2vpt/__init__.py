"""E2VPT (Han et al., ICCV 2023): deep visual prompts plus key-value prompts in every attention, with pruning.

Its peft type is ``KVPROMPT`` and its state-dict prefix ``kvprompt_`` (names saved adapters carry); the method,
its recipe and its CLI name are ``e2vpt``.
"""

from ...engine.registration import register_method
from .config import KVPromptConfig
from .layer import KVPromptBank, KVPromptLayer
from .model import KVPromptModel
from .pruning import (
    PruningResult,
    apply_pruning,
    effective_prompt_parameters,
    importance_scores,
    prune_prompts,
    select_pruning,
)
from .recipe import register_recipes

PEFT_TYPE = register_method("kvprompt", KVPromptConfig, KVPromptModel)
register_recipes()

__all__ = [
    "PEFT_TYPE",
    "KVPromptBank",
    "KVPromptConfig",
    "KVPromptLayer",
    "KVPromptModel",
    "PruningResult",
    "apply_pruning",
    "effective_prompt_parameters",
    "importance_scores",
    "prune_prompts",
    "select_pruning",
]
