"""vpt_peft: visual prompt tuning (VPT, VFPT, E2VPT, DPT) as peft methods for Hugging Face vision transformers.

``import vpt_peft`` registers the methods with peft, after which ``peft.get_peft_model``,
``PeftModel.from_pretrained`` and ``PeftConfig.from_pretrained`` handle them like any built-in method.
"""

from peft import PeftConfig, PeftModel, get_peft_model

from ._registry import extend_peft_type, register_method
from ._version import __version__ as __version__

for _name in ("vpt", "vfpt", "kvprompt", "dpt"):
    extend_peft_type(_name)

from .attention import ExtraKeyValues, UnsupportedAttentionError  # noqa: E402
from .auto import AutoPeftModelForImageClassification  # noqa: E402
from .backbones import BACKBONES, BackboneSpec, UnsupportedModelError, find_backbone, register_backbone  # noqa: E402
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
from .tuners.prompt import AdapterMismatchError  # noqa: E402
from .tuners.prompt.mixed import BASE_ADAPTER, split_logits  # noqa: E402
from .tuners.vfpt import FourierPromptConfig, FourierPromptModel  # noqa: E402
from .tuners.vpt import VisualPromptConfig, VisualPromptModel  # noqa: E402

register_method("vpt", VisualPromptConfig, VisualPromptModel)
register_method("vfpt", FourierPromptConfig, FourierPromptModel)
register_method("kvprompt", KVPromptConfig, KVPromptModel)
register_method("dpt", DualPromptConfig, DualPromptModel)

__all__ = [
    "BACKBONES",
    "AdapterMismatchError",
    "BASE_ADAPTER",
    "AutoPeftModelForImageClassification",
    "BackboneSpec",
    "DualPromptConfig",
    "DualPromptEpochCallback",
    "DualPromptModel",
    "DualPromptOutput",
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
    "dual_prompt_loss",
    "dual_prompt_optimizer",
    "dual_prompt_parameter_groups",
    "dual_prompt_scheduler",
    "effective_prompt_parameters",
    "few_shot_subset",
    "find_backbone",
    "get_peft_model",
    "importance_scores",
    "prune_prompts",
    "register_backbone",
    "set_epoch",
    "split_logits",
]
