"""vpt_peft: visual prompt tuning (VPT, VFPT, E2VPT, DPT) as peft methods for Hugging Face vision transformers.

``import vpt_peft`` registers the methods with peft, after which ``peft.get_peft_model``,
``PeftModel.from_pretrained`` and ``PeftConfig.from_pretrained`` handle them like any built-in method.
"""

from peft import PeftConfig, PeftModel, get_peft_model

from ._registry import extend_peft_type, register_method

for _name in ("vpt", "vfpt", "kvprompt"):
    extend_peft_type(_name)

from .attention import ExtraKeyValues, UnsupportedAttentionError  # noqa: E402
from .auto import AutoPeftModelForImageClassification  # noqa: E402
from .backbones import BACKBONES, BackboneSpec, UnsupportedModelError, find_backbone, register_backbone  # noqa: E402
from .tuners.e2vpt import (  # noqa: E402
    KVPromptConfig,
    KVPromptModel,
    PruningResult,
    effective_prompt_parameters,
    importance_scores,
    prune_prompts,
)
from .tuners.prompt import AdapterMismatchError  # noqa: E402
from .tuners.prompt.mixed import BASE_ADAPTER, split_logits  # noqa: E402
from .tuners.vfpt import FourierPromptConfig, FourierPromptModel  # noqa: E402
from .tuners.vpt import VisualPromptConfig, VisualPromptModel  # noqa: E402

register_method("vpt", VisualPromptConfig, VisualPromptModel)
register_method("vfpt", FourierPromptConfig, FourierPromptModel)
register_method("kvprompt", KVPromptConfig, KVPromptModel)

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "AdapterMismatchError",
    "BASE_ADAPTER",
    "AutoPeftModelForImageClassification",
    "BackboneSpec",
    "ExtraKeyValues",
    "FourierPromptConfig",
    "FourierPromptModel",
    "KVPromptConfig",
    "KVPromptModel",
    "PruningResult",
    "PeftConfig",
    "PeftModel",
    "UnsupportedAttentionError",
    "UnsupportedModelError",
    "VisualPromptConfig",
    "VisualPromptModel",
    "effective_prompt_parameters",
    "find_backbone",
    "get_peft_model",
    "importance_scores",
    "prune_prompts",
    "register_backbone",
    "split_logits",
]
