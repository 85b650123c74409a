"""The backbone x method test matrix as data, peft's ``TEST_CASES`` style: every generic check runs over every cell.

Rows are backbones (:data:`CASES`, one per model family and head layout). Columns are methods, read from the
registry *at call time* (:func:`method_cases`): every recipe in ``vpt_peft.recipes.RECIPES`` at tiny sizes, plus
the :data:`VARIANTS` the checks need. A method that registers itself therefore joins every check with no test
edit, and a backbone family joins by adding a row here. Recipes whose base model is a dual encoder (DPT) run on
the dual-encoder rows (a ``CLIPModel``), the vision-classifier recipes on every row.

The checks live in tests/test_backbones.py (forward contract, references, prompt paths),
tests/test_backbones_training.py (gradients, checkpointing, compile, bf16) and tests/test_backbones_adapters.py
(state dict, copies, adapter management).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Optional

import pytest
import torch
from peft import PeftConfig, get_peft_model
from transformers import (
    Aimv2VisionConfig,
    Aimv2VisionModel,
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
    DINOv3ViTConfig,
    DINOv3ViTModel,
    MetaClip2Config,
    MetaClip2Model,
    Siglip2Config,
    Siglip2ForImageClassification,
    Siglip2VisionConfig,
    SiglipConfig,
    SiglipForImageClassification,
    SiglipVisionConfig,
    SiglipVisionModel,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTMAEConfig,
    ViTMAEModel,
    ViTModel,
    ViTMSNConfig,
    ViTMSNForImageClassification,
)

from vpt_peft import find_backbone
from vpt_peft.recipes import RECIPES, Recipe

from .clip_helpers import CLASSES, shared_tokenizer, tiny_clip
from .helpers import NO_DROPOUT
from .helpers import SIZES as TINY
from .reference import AIMV2_LAYOUT, CLIP_LAYOUT, DINO_LAYOUT, DINOV3_LAYOUT, SIGLIP_LAYOUT, VIT_LAYOUT, Layout

LABELS = 3


@dataclass(frozen=True)
class BackboneCase:
    name: str
    build: Callable[[], torch.nn.Module]
    backbone: str  # attribute path of the backbone inside the model ("" = the model itself)
    num_special: int
    layout: Optional[Layout] = None  # None: no hand-written reference (relative biases, windows)
    classifier: bool = True
    dual_encoder: bool = False  # a CLIP-like model with a text tower: dual-encoder recipes run here
    reentrant_checkpointing: bool = True  # False: refused (prompts travel beside the checkpointed blocks)
    text_inputs: Optional[Callable[[], dict]] = None  # what the model's own forward needs besides pixels
    pixel_inputs: Optional[Callable[[torch.Tensor], dict]] = None  # the image inputs the model takes, from images


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


def naflex_patches(pixels: torch.Tensor, patch: int = 8) -> dict:
    """SigLIP2's NaFlex inputs for ``(B, C, H, W)`` images: flattened patches, a padding mask and each grid's size.

    Every second image keeps only the top half of its patch grid and pads the rest (zero patches, masked), as the
    image processor pads images of another aspect ratio: the rows mix real lengths, so padding is exercised.
    """
    batch, channels, height, width = pixels.shape
    rows, cols = height // patch, width // patch
    grid = pixels.unfold(2, patch, patch).unfold(3, patch, patch)  # (B, C, rows, cols, patch, patch)
    patches = grid.permute(0, 2, 3, 4, 5, 1).reshape(batch, rows * cols, patch * patch * channels).clone()
    mask = torch.ones(batch, rows * cols, dtype=torch.long)
    shapes = torch.tensor([[rows, cols]] * batch)
    for i in range(1, batch, 2):
        kept = (rows // 2) * cols
        patches[i, kept:] = 0
        mask[i, kept:] = 0
        shapes[i] = torch.tensor([rows // 2, cols])
    return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}


def mae_in_order(pixels: torch.Tensor, patch: int = 8) -> dict:
    """ViT-MAE's inputs with its shuffle made the identity, so the base model it is compared with is deterministic
    (vpt_peft passes this noise itself when the caller gives none: tests/test_backbones_families.py)."""
    count = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
    return {"pixel_values": pixels, "noise": torch.arange(count, dtype=torch.float32).expand(pixels.shape[0], -1)}


def _clip_text() -> dict:
    """The class prompts a plain CLIPModel scores images against."""
    tokenizer = shared_tokenizer()
    prompts = [f"a photo of a {name.replace('_', ' ')}." for name in CLASSES]
    return {"input_ids": tokenizer(prompts, padding=True, return_tensors="pt").input_ids}


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
        "clip",
        lambda: tiny_clip(shared_tokenizer(), vision=TINY),
        "vision_model",
        1,
        CLIP_LAYOUT,
        classifier=False,
        dual_encoder=True,
        text_inputs=_clip_text,
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
    BackboneCase(
        "dinov3",
        lambda: DINOv3ViTModel(DINOv3ViTConfig(**TINY, num_register_tokens=2, layerscale_value=0.5)),
        "",
        3,
        DINOV3_LAYOUT,
        classifier=False,
    ),
    BackboneCase(
        "siglip2",
        lambda: Siglip2ForImageClassification(
            Siglip2Config(vision_config=Siglip2VisionConfig(**TINY, num_patches=16), num_labels=LABELS)
        ),
        "vision_model",
        0,
        SIGLIP_LAYOUT,
        pixel_inputs=naflex_patches,
    ),
    BackboneCase("aimv2", lambda: Aimv2VisionModel(Aimv2VisionConfig(**TINY)), "", 0, AIMV2_LAYOUT, classifier=False),
    BackboneCase(
        "vit-mae",
        lambda: ViTMAEModel(ViTMAEConfig(**TINY, **NO_DROPOUT, mask_ratio=0.0)),
        "",
        1,
        VIT_LAYOUT,
        classifier=False,
        pixel_inputs=mae_in_order,
    ),
    BackboneCase(
        "vit-msn",
        lambda: ViTMSNForImageClassification(ViTMSNConfig(**TINY, **NO_DROPOUT, num_labels=LABELS)),
        "vit",
        1,
        VIT_LAYOUT,
    ),
    BackboneCase(
        "metaclip2",
        lambda: tiny_clip(shared_tokenizer(), vision=TINY, config_cls=MetaClip2Config, model_cls=MetaClip2Model),
        "vision_model",
        1,
        CLIP_LAYOUT,
        classifier=False,
        dual_encoder=True,
        text_inputs=_clip_text,
    ),
    BackboneCase("beit", lambda: _beit(use_relative_position_bias=True), "beit", 1),
    BackboneCase("beit-shared-bias", lambda: _beit(use_shared_relative_position_bias=True), "beit", 1),
    BackboneCase("swin", _swin, "swin", 0, reentrant_checkpointing=False),
]

# ------------------------------------------------------------------------------------------------ methods
TINY_FIELDS = {"num_prompts": 3}
"""Tiny sizes for every recipe's code-default preset (through the recipe's field aliases; fields a config lacks are
left out, so a new method needs nothing here)."""

VARIANTS = {"vpt-deep-sequence": ("vpt-deep", {"prompt_path": "sequence"})}
"""Explicit extra columns: deep prompts kept in the sequence (deep methods take the key-value path by default)."""

KNOWN_BASE_MODELS = ("image-classification", "dual-encoder")


@dataclass(frozen=True)
class MethodCase:
    """A column of the matrix: a registered recipe at tiny sizes, with a variant's overrides."""

    name: str
    recipe: Recipe
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def dual_encoder(self) -> bool:
        return self.recipe.base_model == "dual-encoder"

    def overrides_for_tests(self, **extra: Any) -> dict[str, Any]:
        """What the matrix sets on top of the recipe's code-default preset: tiny sizes, what the CLI gives a dual
        encoder (its classes, as text prompts), the variant's fields, then ``extra``."""
        recipe = self.recipe
        known = recipe.config_cls.__dataclass_fields__
        sizes = {recipe.field_aliases.get(k, k): v for k, v in TINY_FIELDS.items()}
        overrides = {k: v for k, v in sizes.items() if k in known}
        if self.dual_encoder:
            overrides.update(class_names=list(CLASSES), tokenizer=shared_tokenizer())
        return {**overrides, **self.overrides, **extra}

    def fields(self, **extra: Any) -> dict[str, Any]:
        """The config's fields as :meth:`config` sets them."""
        return {**self.recipe.presets(None).config, **self.overrides_for_tests(**extra)}

    def config(self, **extra: Any) -> PeftConfig:
        """A fresh config (get_peft_model fills in fields, so a config is never shared between models)."""
        return self.recipe.presets(None).make_config(**self.overrides_for_tests(**extra))


def method_cases() -> list[MethodCase]:
    """Every registered recipe, then the variants whose recipe is registered: read now, not at import."""
    for recipe in RECIPES.values():
        if recipe.base_model not in KNOWN_BASE_MODELS:
            raise ValueError(
                f"recipe {recipe.name!r} has base_model {recipe.base_model!r}: teach tests/backbone_cases.py which "
                f"rows it runs on (known: {KNOWN_BASE_MODELS})."
            )
    methods = [MethodCase(name, recipe) for name, recipe in RECIPES.items()]
    for name, (base, overrides) in VARIANTS.items():
        if base in RECIPES:
            methods.append(MethodCase(name, RECIPES[base], MappingProxyType(overrides)))
    return methods


def method_case(name: str) -> MethodCase:
    return next(m for m in method_cases() if m.name == name)


def takes_both_paths(method: MethodCase) -> bool:
    """A registered method whose adapter can take either prompt path (``"kv"`` and ``"sequence"``)."""
    if method.overrides or "prompt_path" not in method.recipe.config_cls.__dataclass_fields__:
        return False
    try:
        method.config(prompt_path="kv")
    except ValueError:  # shallow prompts have no key-value path
        return False
    return True


def supports(case: BackboneCase, method: MethodCase) -> bool:
    """Dual-encoder recipes need a dual-encoder row; the vision-classifier recipes run on every row."""
    return case.dual_encoder or not method.dual_encoder


def matrix(select: Callable[[BackboneCase, MethodCase], bool] = lambda case, method: True) -> list:
    """The cells (``case, method`` pytest params) that ``select`` keeps, built from the registry now."""
    return [
        pytest.param(case, method, id=f"{case.name}-{method.name}")
        for case in CASES
        for method in method_cases()
        if supports(case, method) and select(case, method)
    ]


@functools.cache
def family(case: BackboneCase) -> str:
    """The backbone family of a row (its ``model_type`` as the backbone table reads it)."""
    return find_backbone(build(case)).model_type


def family_representative(case: BackboneCase, method: MethodCase) -> bool:
    """The first row of its family that takes the method: for checks of how a method's prompts meet a family's
    modules (checkpointing, dtypes, copies), where the other rows of a family differ only in their heads."""
    return case is next(row for row in CASES if family(row) == family(case) and supports(row, method))


def vision_methods(case: BackboneCase, method: MethodCase) -> bool:
    """Cells whose output is the base model's own output, with prompts in the vision backbone."""
    return not method.dual_encoder


# ------------------------------------------------------------------------------------------------ running
def build(case: BackboneCase, seed: int = 0) -> torch.nn.Module:
    """The case's model, seeded, frozen and in eval mode (so the base reference uses frozen-weight kernels)."""
    torch.manual_seed(seed)
    return case.build().eval().requires_grad_(False)


def adapted(case: BackboneCase, method: MethodCase, **overrides: Any) -> torch.nn.Module:
    """``build(case)`` with the method's adapter, in eval mode; the same call gives the same prompts and heads."""
    return get_peft_model(build(case), method.config(**overrides)).eval()


def image_inputs(case: BackboneCase, pixels: torch.Tensor) -> dict:
    """What the case's vision backbone takes for the images ``pixels`` (``pixel_values``, and NaFlex's mask and grid
    sizes, or MAE's noise)."""
    return case.pixel_inputs(pixels) if case.pixel_inputs is not None else {"pixel_values": pixels}


def inputs(case: BackboneCase, method: Optional[MethodCase], pixels: torch.Tensor) -> dict:
    """The forward's keyword arguments: a dual-encoder method classifies pixels alone against its class prompts;
    everything else (and the base model, ``method=None``) calls the model as its own forward expects."""
    kwargs = image_inputs(case, pixels)
    if case.text_inputs is not None and (method is None or not method.dual_encoder):
        kwargs.update(case.text_inputs())
    return kwargs


def tensors(output: Any) -> dict[str, torch.Tensor]:
    """The tensors of an HF output, or ``{"logits": output}`` for a model that returns one tensor (timm)."""
    if isinstance(output, torch.Tensor):
        return {"logits": output}
    return {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}


def run(model: torch.nn.Module, kwargs: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return tensors(model(**kwargs))


def main_output(output: Any) -> torch.Tensor:
    """The first floating tensor a forward returns (logits, or the last hidden state of a bare backbone)."""
    return next(v for v in tensors(output).values() if v.is_floating_point())


def training_step(
    model: torch.nn.Module, forward: Callable[[torch.nn.Module], Any], seed: int = 1
) -> tuple[Any, dict[str, torch.Tensor]]:
    """One training-mode ``forward(model)`` (prompt dropout drawn from ``seed``) and the backward of its squared main
    output: (the output, the gradient of every parameter that gets one)."""
    model.train()
    torch.manual_seed(seed)
    output = forward(model)
    main_output(output).pow(2).mean().backward()
    return output, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_same(got: dict, want: dict) -> None:
    """Bit-identical outputs: only for two runs of the same ops on the same shapes."""
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def is_adapter_parameter(name: str) -> bool:
    """Prompts (and every tensor of a sidecar) or a per-adapter head copy."""
    return "prompt_adapter" in name or "modules_to_save" in name


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every trainable tensor (prompts, gates, heads) off its init, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.add_(0.3 * noise.to(parameter.dtype))


def backbone_of(model: torch.nn.Module, case: BackboneCase) -> torch.nn.Module:
    return model.get_submodule(case.backbone) if case.backbone else model
