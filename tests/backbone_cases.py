"""The backbone x method test matrix as data: one row per backbone, one per method (peft's test style).

A new backbone family joins every generic check in tests/test_backbones.py by adding a row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import (
    BeitConfig,
    BeitForImageClassification,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    SiglipConfig,
    SiglipForImageClassification,
    SiglipVisionConfig,
    SiglipVisionModel,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from vpt_peft import VisualPromptConfig, recipes

from .helpers import NO_DROPOUT
from .helpers import SIZES as TINY

LABELS = 3


@dataclass(frozen=True)
class Layout:
    """How a ViT-like block computes, for the independent reference forward (attribute paths)."""

    norm1: str
    attention: str
    out_proj: str
    norm2: str
    activation: Callable[[torch.Tensor], torch.Tensor]
    scale1: Optional[str] = None
    scale2: Optional[str] = None
    pre_norm: Optional[str] = None  # applied to the embeddings before the first block (CLIP)
    final_norm: Optional[str] = None  # applied to every token after the last block


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / 2**0.5))


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


VIT_LAYOUT = Layout("layernorm_before", "attention", "o_proj", "layernorm_after", _gelu, final_norm="layernorm")
DINO_LAYOUT = Layout(
    "norm1",
    "attention",
    "o_proj",
    "norm2",
    _gelu,
    "layer_scale1.lambda1",
    "layer_scale2.lambda1",
    final_norm="layernorm",
)
CLIP_LAYOUT = Layout("layer_norm1", "self_attn", "out_proj", "layer_norm2", _quick_gelu, pre_norm="pre_layrnorm")
SIGLIP_LAYOUT = Layout("layer_norm1", "self_attn", "out_proj", "layer_norm2", _gelu_tanh, final_norm="post_layernorm")


@dataclass(frozen=True)
class BackboneCase:
    name: str
    build: Callable[[], torch.nn.Module]
    backbone: str  # attribute path of the backbone inside the model ("" = the model itself)
    num_special: int
    layout: Optional[Layout] = None  # None: no hand-written reference (relative biases, windows)
    classifier: bool = True


def _randomize_relative_bias(model: torch.nn.Module) -> torch.nn.Module:
    """HF initialises BEiT's bias tables to zero, which would hide a wrong padding of the bias."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "relative_position_bias_table" in name:
                parameter.normal_(0.0, 0.5)
    return model


def _beit(**extra) -> torch.nn.Module:
    config = BeitConfig(**TINY, **NO_DROPOUT, num_labels=LABELS, **extra)
    return _randomize_relative_bias(BeitForImageClassification(config))


def _swin() -> torch.nn.Module:
    config = SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=4,
        num_labels=LABELS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return SwinForImageClassification(config)


CASES = [
    BackboneCase(
        "vit",
        lambda: ViTForImageClassification(ViTConfig(**TINY, **NO_DROPOUT, num_labels=LABELS)),
        "vit",
        1,
        VIT_LAYOUT,
    ),
    BackboneCase("vit-model", lambda: ViTModel(ViTConfig(**TINY, **NO_DROPOUT)), "", 1, VIT_LAYOUT, classifier=False),
    BackboneCase(
        "deit",
        lambda: DeiTForImageClassification(DeiTConfig(**TINY, **NO_DROPOUT, num_labels=LABELS)),
        "deit",
        2,
        VIT_LAYOUT,
    ),
    BackboneCase(
        "deit-teacher",
        lambda: DeiTForImageClassificationWithTeacher(DeiTConfig(**TINY, **NO_DROPOUT, num_labels=LABELS)),
        "deit",
        2,
        VIT_LAYOUT,
        classifier=False,
    ),
    BackboneCase(
        "dinov2",
        lambda: Dinov2ForImageClassification(
            Dinov2Config(**TINY, **NO_DROPOUT, layerscale_value=0.5, num_labels=LABELS)
        ),
        "dinov2",
        1,
        DINO_LAYOUT,
    ),
    BackboneCase(
        "dinov2-model", lambda: Dinov2Model(Dinov2Config(**TINY, **NO_DROPOUT)), "", 1, DINO_LAYOUT, classifier=False
    ),
    BackboneCase(
        "dinov2-registers",
        lambda: Dinov2WithRegistersForImageClassification(
            Dinov2WithRegistersConfig(**TINY, **NO_DROPOUT, num_register_tokens=2, num_labels=LABELS)
        ),
        "dinov2_with_registers",
        3,
        DINO_LAYOUT,
    ),
    BackboneCase(
        "clip-vision", lambda: CLIPVisionModel(CLIPVisionConfig(**TINY)), "", 1, CLIP_LAYOUT, classifier=False
    ),
    BackboneCase(
        "clip-vision-projection",
        lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY, projection_dim=16)),
        "vision_model",
        1,
        CLIP_LAYOUT,
        classifier=False,
    ),
    BackboneCase(
        "siglip",
        lambda: SiglipForImageClassification(SiglipConfig(vision_config=SiglipVisionConfig(**TINY), num_labels=LABELS)),
        "vision_model",
        0,
        SIGLIP_LAYOUT,
    ),
    BackboneCase(
        "siglip-vision", lambda: SiglipVisionModel(SiglipVisionConfig(**TINY)), "", 0, SIGLIP_LAYOUT, classifier=False
    ),
    BackboneCase("beit", lambda: _beit(use_relative_position_bias=True), "beit", 1),
    BackboneCase("beit-shared-bias", lambda: _beit(use_shared_relative_position_bias=True), "beit", 1),
    BackboneCase("swin", _swin, "swin", 0),
]

TINY_OVERRIDES = {"num_prompts": 4}
"""What every registered recipe's default config gets in the matrix: a few prompts (VFPT needs floor(0.5 p) >= 1)."""

EXTRA_METHODS = {"vpt-deep-sequence": lambda: VisualPromptConfig(num_prompts=3, deep=True, prompt_path="sequence")}
"""Variants the matrix runs besides the registered recipes (the in-sequence execution of VPT-deep)."""


def matrix_methods() -> dict[str, Callable[[], object]]:
    """The matrix's methods: every registered recipe for a vision classifier (read now, so a method registered by
    its own folder joins every check without a test edit), plus :data:`EXTRA_METHODS`."""
    methods = {
        name: (lambda recipe=recipe: recipe.presets(None).make_config(**TINY_OVERRIDES))
        for name, recipe in recipes.RECIPES.items()
        if recipe.base_model == "image-classification"
    }
    return {**methods, **EXTRA_METHODS}


METHODS = matrix_methods()


def build(case: BackboneCase, seed: int = 0) -> torch.nn.Module:
    """The case's model, seeded, frozen and in eval mode (so the base reference uses frozen-weight kernels)."""
    torch.manual_seed(seed)
    return case.build().eval().requires_grad_(False)


def backbone_of(model: torch.nn.Module, case: BackboneCase) -> torch.nn.Module:
    return model.get_submodule(case.backbone) if case.backbone else model
