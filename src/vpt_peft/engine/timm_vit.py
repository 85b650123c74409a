"""timm's VisionTransformer, recognised without importing timm (an optional extra).

A timm model has no HF config: :func:`timm_vit_sizes` reads the sizes the prompts are built from off the module
itself, and :func:`is_timm_vision_transformer` recognises the family by class (``VisionTransformer`` from a
``timm`` module, or a subclass such as DeiT's distilled model). The backbone table's ``"timm_vit"`` entry
(:mod:`vpt_peft.engine.backbones`) holds the paths.
"""

from __future__ import annotations

from types import SimpleNamespace

from torch import nn

TIMM_VIT_CLASS = "VisionTransformer"
TIMM_PRE_NORM_BLOCK = "Block"
"""The block whose attention reads ``norm1(x)`` (the hooks' assumption); post-norm and parallel blocks are not."""


def _is_timm_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "timm"


def is_timm_vision_transformer(module: nn.Module) -> bool:
    """Whether ``module`` is timm's ``VisionTransformer`` (or a subclass: ``vit_*``, ``deit_*``) of pre-norm blocks."""
    if not any(cls.__name__ == TIMM_VIT_CLASS and _is_timm_class(cls) for cls in type(module).__mro__):
        return False
    return all(type(block).__name__ == TIMM_PRE_NORM_BLOCK for block in getattr(module, "blocks", ()))


def unsupported_timm_hint(model: nn.Module) -> str:
    """What to say when a timm model of another class (Swin, EVA, ConvNeXt, ...) is given."""
    if not _is_timm_class(type(model)):
        return ""
    return (
        f" From timm, vpt_peft prompts {TIMM_VIT_CLASS} and its subclasses (vit_*, deit_*) built of pre-norm "
        f"{TIMM_PRE_NORM_BLOCK}s; {type(model).__module__}.{type(model).__name__} is not one."
    )


def timm_vit_sizes(model: nn.Module) -> SimpleNamespace:
    """The sizes an HF config would give: width, patch size and channels of the patch embedding, prefix tokens."""
    projection = model.patch_embed.proj
    return SimpleNamespace(
        hidden_size=model.embed_dim,
        patch_size=tuple(projection.kernel_size),
        num_channels=projection.in_channels,
        num_prefix_tokens=model.num_prefix_tokens,
    )


def prefix_tokens(sizes: SimpleNamespace) -> int:
    """timm's ``num_prefix_tokens``: CLS (unless ``class_token=False``), registers, DeiT's distillation token."""
    return sizes.num_prefix_tokens
