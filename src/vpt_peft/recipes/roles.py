"""What each trainable tensor is for (head, head bias, visual prompt, text prompt), read from the model's structure.

Optimisers need the roles (no weight decay on the head bias; DPT's separate learning rates for visual and text
prompts) and reports count them. They are declared, not guessed from names: a head is a module peft wraps in a
``ModulesToSaveWrapper`` (or, on a plain model, one the backbone table lists as a head), a prompt is a tensor of a
sidecar, which states its own role (``SidecarLayer.parameter_role``).
"""

from __future__ import annotations

from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from ..engine.backbones import UnsupportedModelError, find_backbone
from ..engine.sidecar import SidecarLayer

HEAD = "head"
HEAD_BIAS = "head_bias"
OTHER = "other"


def _head_modules(model: nn.Module) -> list[nn.Module]:
    wrappers = [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]
    if wrappers:
        return [head for wrapper in wrappers for head in wrapper.modules_to_save.values()]
    try:  # a plain model (full fine-tuning, linear probe): the heads the backbone table names
        names = find_backbone(model).heads
    except UnsupportedModelError:
        return []
    return [getattr(model, name) for name in names]


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """``{parameter name: role}`` for every parameter of ``model`` (frozen ones included)."""
    role_of: dict[int, str] = {}
    for head in _head_modules(model):
        for name, param in head.named_parameters():
            role_of[id(param)] = HEAD_BIAS if name.rpartition(".")[2] == "bias" else HEAD
    for module in model.modules():
        if isinstance(module, SidecarLayer):
            for param in module.parameters():
                role_of.setdefault(id(param), module.parameter_role)
    return {name: role_of.get(id(param), OTHER) for name, param in model.named_parameters()}
