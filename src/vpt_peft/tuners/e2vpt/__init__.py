from .config import KVPromptConfig
from .layer import KVPromptBank, KVPromptLayer
from .model import KVPromptModel
from .pruning import PruningResult, effective_prompt_parameters, importance_scores, prune_prompts, select_pruning

__all__ = [
    "KVPromptBank",
    "KVPromptConfig",
    "KVPromptLayer",
    "KVPromptModel",
    "PruningResult",
    "effective_prompt_parameters",
    "importance_scores",
    "prune_prompts",
    "select_pruning",
]
