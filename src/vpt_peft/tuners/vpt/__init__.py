"""VPT (Jia et al., ECCV 2022): learnable prompt tokens after CLS, shallow or deep."""

from ...engine.registration import register_method
from .config import VisualPromptConfig
from .layer import VisualPromptLayer
from .model import VisualPromptModel
from .recipe import register_recipes

PEFT_TYPE = register_method("vpt", VisualPromptConfig, VisualPromptModel)
register_recipes()

__all__ = ["PEFT_TYPE", "VisualPromptConfig", "VisualPromptLayer", "VisualPromptModel"]
