from .config import VisualPromptConfig
from .layer import VisualPromptLayer
from .model import VisualPromptModel

__all__ = ["VisualPromptConfig", "VisualPromptLayer", "VisualPromptModel"]
