"""VFPT (Zeng, Han et al., NeurIPS 2024): VPT whose first prompts pass through a 2-D Fourier transform."""

from ...engine.registration import register_method
from .config import FourierPromptConfig
from .layer import FourierPromptBank, FourierPromptLayer, fourier_transform
from .model import FourierPromptModel
from .recipe import register_recipes

PEFT_TYPE = register_method("vfpt", FourierPromptConfig, FourierPromptModel)
register_recipes()

__all__ = [
    "PEFT_TYPE",
    "FourierPromptBank",
    "FourierPromptConfig",
    "FourierPromptLayer",
    "FourierPromptModel",
    "fourier_transform",
]
