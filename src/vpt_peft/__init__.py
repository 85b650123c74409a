"""vpt_peft: visual prompt tuning (VPT, VFPT, E2VPT, DPT) as peft methods for Hugging Face vision transformers.

``import vpt_peft`` registers the methods with peft, after which ``peft.get_peft_model``,
``PeftModel.from_pretrained`` and ``PeftConfig.from_pretrained`` handle them like any built-in method.
Each method registers itself from its own package (``vpt_peft/tuners/<method>``); the names below are the
convenient public spellings of what those packages define.
"""

from peft import PeftConfig, PeftModel, get_peft_model

from . import recipes
from ._version import __version__ as __version__
from .auto import AutoPeftModelForImageClassification
from .convert import ConversionError, convert_official_kv_prompts, convert_official_prompts, load_official_prompts
from .engine.attention import ExtraKeyValues, UnsupportedAttentionError
from .engine.backbones import BACKBONES, BackboneSpec, UnsupportedModelError, find_backbone, register_backbone
from .engine.heads import BASE_ADAPTER, split_logits
from .engine.registration import METHODS
from .engine.tuner import AdapterMismatchError
from .tuners import load_methods

load_methods()

from . import atomic  # noqa: E402

atomic.install()  # crash-safe adapter saves: see vpt_peft.atomic

from .official import official_adapter, official_config, official_head  # noqa: E402
from .tuners.dpt import (  # noqa: E402
    DualPromptConfig,
    DualPromptEpochCallback,
    DualPromptModel,
    DualPromptOutput,
    dual_prompt_loss,
    dual_prompt_optimizer,
    dual_prompt_parameter_groups,
    dual_prompt_scheduler,
    few_shot_subset,
    set_epoch,
)
from .tuners.e2vpt import (  # noqa: E402
    KVPromptConfig,
    KVPromptModel,
    PruningResult,
    effective_prompt_parameters,
    importance_scores,
    prune_prompts,
)
from .tuners.vfpt import FourierPromptConfig, FourierPromptModel  # noqa: E402
from .tuners.vpt import VisualPromptConfig, VisualPromptModel  # noqa: E402

__all__ = [
    "BACKBONES",
    "BASE_ADAPTER",
    "METHODS",
    "AdapterMismatchError",
    "AutoPeftModelForImageClassification",
    "BackboneSpec",
    "ConversionError",
    "DualPromptConfig",
    "DualPromptEpochCallback",
    "DualPromptModel",
    "DualPromptOutput",
    "ExtraKeyValues",
    "FourierPromptConfig",
    "FourierPromptModel",
    "KVPromptConfig",
    "KVPromptModel",
    "PeftConfig",
    "PeftModel",
    "PruningResult",
    "UnsupportedAttentionError",
    "UnsupportedModelError",
    "VisualPromptConfig",
    "VisualPromptModel",
    "convert_official_kv_prompts",
    "convert_official_prompts",
    "dual_prompt_loss",
    "dual_prompt_optimizer",
    "dual_prompt_parameter_groups",
    "dual_prompt_scheduler",
    "effective_prompt_parameters",
    "few_shot_subset",
    "find_backbone",
    "get_peft_model",
    "importance_scores",
    "load_official_prompts",
    "official_adapter",
    "official_config",
    "official_head",
    "prune_prompts",
    "recipes",
    "register_backbone",
    "set_epoch",
    "split_logits",
]
