"""Machinery shared by every visual-prompt method: base config, prompt banks and hooks, and the tuner."""

from .config import PromptConfigBase
from .layer import PromptAdapterLayer, PromptBank
from .model import AdapterMismatchError, PromptTunerModel

__all__ = ["AdapterMismatchError", "PromptAdapterLayer", "PromptBank", "PromptConfigBase", "PromptTunerModel"]
