"""A checkpoint of the official VPT (or VFPT) code as a vpt_peft adapter on a Hugging Face model.

The official code saves its whole model: the backbone, the prompts (``enc.transformer.prompt_embeddings``,
``enc.transformer.deep_prompt_embeddings``) and the linear head on the final CLS token (``head.last_layer``).
The backbone is the public checkpoint the user loads from the Hub; what the run learnt is the prompts and the
head, which become an adapter here: :func:`official_adapter` gives a ``PeftModel`` whose ``save_pretrained``
folder ``PeftModel.from_pretrained`` loads like any adapter trained with vpt_peft (``vpt-peft convert`` does both).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from peft import PeftModel, get_peft_model
from torch import nn

from .convert import ConversionError, convert_official_prompts, load_official_prompts
from .engine.backbones import find_backbone
from .engine.bank import stacked_rows, stacked_shapes
from .engine.config import PromptConfigBase
from .engine.heads import adapter_heads
from .tuners.vfpt import FourierPromptConfig
from .tuners.vpt import VisualPromptConfig

HEAD = "last_layer"
"""The official head's module name (``head.last_layer`` in the VPT/VFPT/E2VPT ViT models)."""


def official_head(official: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The official linear head's ``(weight (C, d), bias (C,))`` (keys ending in ``last_layer.weight``/``.bias``)."""
    modules = {key.rpartition(".")[0] for key in official if key.rpartition(".")[0].endswith(HEAD)}
    found = {key.rsplit(".", 1)[-1]: tensor for key, tensor in official.items() if key.rpartition(".")[0] in modules}
    if len(modules) != 1 or set(found) != {"weight", "bias"}:
        raise ConversionError(
            f"no official linear head among the keys (expected one '<prefix>.{HEAD}.weight' and '.bias', as the VPT "
            "code's head.last_layer); a head with hidden MLP layers has no counterpart in an HF classifier"
        )
    (module,) = modules
    parent = module.rpartition(".")[0]
    hidden = sorted(k for k in official if parent and k.startswith(parent + ".") and not k.startswith(module + "."))
    if hidden:
        raise ConversionError(
            f"the official head has hidden MLP layers before {module!r} ({hidden[:3]}, ...): only a linear head "
            "(the official code's MLP_NUM=0) has a counterpart in the model's classifier"
        )
    weight, bias = found["weight"].detach().float(), found["bias"].detach().float()
    if weight.dim() != 2 or bias.shape != weight.shape[:1]:
        raise ConversionError(f"the official head's weight {tuple(weight.shape)} and bias {tuple(bias.shape)} differ")
    return weight, bias


def official_config(
    official: Mapping[str, torch.Tensor], fourier_ratio: Optional[float] = None
) -> VisualPromptConfig | FourierPromptConfig:
    """The config an official checkpoint's tensors imply: its prompt count, deep when the prompts have more than one
    row, its head's classes; a ``FourierPromptConfig`` when ``fourier_ratio`` (VFPT's alpha, which no tensor
    records) is given, ``VisualPromptConfig`` otherwise."""
    first = next(iter(convert_official_prompts(official).values()))
    fields = dict(num_prompts=first.shape[1], deep=first.shape[0] > 1, num_labels=official_head(official)[0].shape[0])
    if fourier_ratio is None:
        return VisualPromptConfig(**fields)
    return FourierPromptConfig(**fields, fourier_ratio=fourier_ratio)


def _check_fits(base_model: nn.Module, config: PromptConfigBase, prompts: dict, weight: torch.Tensor) -> None:
    """Refuse, before the model is touched, prompts or a head whose shapes the model and config do not give."""
    backbone = find_backbone(base_model)
    layers = config.prompted_layers(backbone.num_layers)
    placement = stacked_rows(layers, backbone.layer_widths, "prompt_embeddings")
    expected = {
        name: (rows, config.num_prompts, width)
        for name, (rows, width) in stacked_shapes(placement, backbone.layer_widths).items()
    }
    got = {name: tuple(tensor.shape) for name, tensor in prompts.items()}
    if got != expected:
        raise ConversionError(
            f"the official prompts {got} do not fit {type(config).__name__}(num_prompts={config.num_prompts}, "
            f"deep={config.deep}) on this {backbone.model_type} backbone, which needs {expected}"
        )
    heads = [base_model.get_submodule(name) for name in backbone.heads]
    if not heads or not all(isinstance(head, nn.Linear) for head in heads):
        raise ConversionError(
            f"{type(base_model).__name__} has no linear head for the official one: load the model "
            "with a classification head (e.g. ViTForImageClassification; a timm model with num_classes > 0)"
        )
    if any(head.in_features != weight.shape[1] for head in heads):
        raise ConversionError(f"the official head reads {weight.shape[1]} features, the model's head does not")
    labels = config.num_labels or heads[0].out_features
    if labels != weight.shape[0]:
        raise ConversionError(f"the official head has {weight.shape[0]} classes, the adapter's config gives {labels}")


def official_adapter(
    official: Mapping[str, torch.Tensor],
    base_model: nn.Module,
    config: Optional[PromptConfigBase] = None,
    adapter_name: str = "default",
) -> PeftModel:
    """``base_model`` with an adapter holding the official checkpoint's prompts and head.

    ``official`` is the official model's state dict (backbone keys are ignored: ``base_model`` must already be
    the backbone the run started from, e.g. ``google/vit-base-patch16-224-in21k``). ``config`` defaults to
    :func:`official_config` (pass ``official_config(official, fourier_ratio=...)`` for a VFPT checkpoint, or a
    config with a prompt dropout to train further). Everything is checked before ``base_model`` is touched.
    """
    prompts = convert_official_prompts(official)
    weight, bias = official_head(official)
    config = config if config is not None else official_config(official)
    _check_fits(base_model, config, prompts, weight)
    model = get_peft_model(base_model, config, adapter_name=adapter_name)
    load_official_prompts(model, prompts, adapter_name)
    with torch.no_grad():
        for _, head in adapter_heads(model, adapter_name):
            head.weight.copy_(weight.to(head.weight.dtype))
            head.bias.copy_(bias.to(head.bias.dtype))
    return model
