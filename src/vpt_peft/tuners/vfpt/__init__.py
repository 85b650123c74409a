from .config import FourierPromptConfig
from .layer import FourierPromptBank, FourierPromptLayer, fourier_transform
from .model import FourierPromptModel

__all__ = ["FourierPromptBank", "FourierPromptConfig", "FourierPromptLayer", "FourierPromptModel", "fourier_transform"]
