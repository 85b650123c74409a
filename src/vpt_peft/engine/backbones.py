"""The one place that knows each backbone family.

Every method asks this table where a backbone keeps its embeddings, its list of blocks, each block's
attention (and the norm in front of it), how many special tokens (CLS, distillation, registers) come
before the patches, where the final sequence norm is, and which modules form the task head. Supporting a
new family is one :func:`register_backbone` call; no method has per-family branches.

Paths are relative to the backbone module, the ``PreTrainedModel`` whose ``config.model_type`` keys the
table (``ViTForImageClassification.vit`` for ``"vit"``), or, for a family outside transformers (timm), the
module the entry's ``detect`` recognises. Heads are attribute names on the model the user passed to
``get_peft_model`` (for a ``detect`` family wrapped in another module, as transformers' ``TimmWrapperModel`` wraps
a timm model, names on the backbone when the outer model has none).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

import torch
from torch import nn
from transformers import PreTrainedModel

from .timm_vit import is_timm_vision_transformer, prefix_tokens, timm_vit_sizes, unsupported_timm_hint


class UnsupportedModelError(ValueError):
    """The model has no backbone that vpt_peft knows how to prompt."""


# The fields of a BackboneSpec that name modules: what an older transformers release may have called differently.
PATH_FIELDS = (
    "embeddings",
    "layers",
    "attention",
    "attention_norm",
    "k_proj",
    "v_proj",
    "final_norm",
    "relative_position_bias",
)


@dataclass(frozen=True)
class WindowSpec:
    """What the official prompted Swin needs to know about a windowed family's blocks, beyond ``BackboneSpec``.

    Prompt tokens are carried beside the patch grid (spec methods.md §1.9), so the engine runs the parts of
    a block the patches get from HF's own code on the prompts itself: the residual branch after attention
    (``attention_branch``: the block's dropout modules, in order), the MLP behind its norm (``mlp_norm``,
    ``mlp``, then ``mlp_branch``) and, after each stage, the stage's patch merging (``merge`` inside every
    element of ``stages``; the merging module is called on four copies of each prompt, the official widening).
    """

    stages: str = "encoder.layers"
    merge: str = "downsample"
    mlp_norm: str = "layernorm_after"
    mlp: str = "mlp"
    attention_branch: tuple[str, ...] = ("dropout", "drop_path")
    mlp_branch: tuple[str, ...] = ("dropout",)


@dataclass(frozen=True)
class BackboneSpec:
    """Where prompts go in one backbone family (paths relative to the backbone module).

    ``layers`` names the list of blocks; a ``*`` segment flattens nested lists (Swin's stages of blocks:
    ``"encoder.layers.*.blocks"``). ``relative_position_bias`` is the path, inside a block, of a module
    whose output is an additive ``(..., S, S)`` bias for the real tokens (padded with zeros for prompts).
    ``windows`` marks windowed attention (Swin): the blocks reshape their input to the patch grid, so prompt
    tokens cannot join the blocks' token sequence; they are carried beside it and prepended to every window
    instead (:class:`WindowSpec`, :mod:`vpt_peft.engine.windows`).

    ``k_proj == v_proj`` names one fused projection whose output is ``[q; k; v]`` (timm's ``qkv``): prompt keys
    and values come from its key and value rows, and extra keys/values enter the attention through hooks on it
    (:mod:`vpt_peft.engine.fused_qkv`) instead of transformers' attention function.

    A family that is not a transformers ``PreTrainedModel`` sets ``detect`` (which modules are its backbone) and
    ``sizes`` (a config-like object with ``hidden_size``, ``patch_size``, ``num_channels`` and, where the prompts
    follow special tokens, what ``num_special_tokens`` reads); its table key is a name, not a ``model_type``.

    ``dual_encoder_tower`` marks the vision towers of CLIP-like dual encoders (text and vision towers, two
    projections, a logit scale), the models dual-encoder recipes (DPT) prompt.
    ``patch_inputs`` marks families whose ``pixel_values`` arrive already cut into flattened patches,
    ``(batch, patches, channels * patch * patch)``, with a padding mask (SigLIP2's NaFlex).
    ``config_problem`` returns why a model of the family cannot be prompted as configured (``None`` when it can),
    refused before the model is touched; ``input_defaults`` returns keyword arguments the backbone's forward
    gets when the caller leaves them out (both: ViT-MAE, whose random patch masking must be off).

    ``older_layouts`` keeps a family working across transformers releases that renamed its modules: each
    entry maps path fields to the names an older release used, and :func:`find_backbone` takes the first
    layout whose paths exist in the model it is given (it reads the module structure, never a version).
    """

    embeddings: str = "embeddings"
    layers: str = "layers"
    attention: str = "attention"
    attention_norm: str = "layernorm_before"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    num_special_tokens: Union[int, Callable[[object], int]] = 1
    final_norm: Union[str, None] = "layernorm"
    relative_position_bias: Union[str, None] = None
    windows: Optional[WindowSpec] = None
    heads: tuple[str, ...] = ("classifier",)
    description: str = ""
    older_layouts: tuple[Mapping[str, str], ...] = field(default=(), hash=False)
    detect: Optional[Callable[[nn.Module], bool]] = None
    sizes: Optional[Callable[[nn.Module], Any]] = None
    patch_inputs: bool = False
    dual_encoder_tower: bool = False
    config_problem: Optional[Callable[[object], Optional[str]]] = field(default=None, hash=False)
    input_defaults: Optional[Callable[[nn.Module, tuple, dict], dict]] = field(default=None, hash=False)

    def __post_init__(self) -> None:
        for layout in self.older_layouts:
            unknown = set(layout) - set(PATH_FIELDS)
            if unknown:
                raise ValueError(
                    f"BackboneSpec.older_layouts: {sorted(unknown)} are not path fields; accepted: {PATH_FIELDS}."
                )

    @property
    def prompts_in_sequence(self) -> bool:
        """Whether prompts ride in the blocks' own token sequence (every family but the windowed ones)."""
        return self.windows is None

    @property
    def fused_qkv(self) -> bool:
        """Whether keys and values come from one fused ``[q; k; v]`` projection (``k_proj == v_proj``)."""
        return self.k_proj == self.v_proj

    def config_of(self, module: nn.Module) -> Any:
        """The sizes the prompts are built from: the HF config, or what ``sizes`` reads off a non-HF module."""
        return self.sizes(module) if self.sizes is not None else module.config

    def special_tokens(self, config: object) -> int:
        n = self.num_special_tokens
        return n(config) if callable(n) else n

    def layouts(self) -> list[BackboneSpec]:
        """This spec, then one spec per older layout (its path fields replaced), in the order to try them."""
        return [self] + [replace(self, **dict(layout), older_layouts=()) for layout in self.older_layouts]


def cls_and_registers(config: object) -> int:
    """CLS followed by the register tokens (Dinov2 with registers, DINOv3)."""
    return 1 + config.num_register_tokens


def mae_masking_problem(config: object) -> Optional[str]:
    """ViT-MAE drops ``mask_ratio`` of the patches at random in every forward: prompt tuning sees whole images."""
    ratio = getattr(config, "mask_ratio", 0.0)
    if ratio == 0:
        return None
    return (
        f"config.mask_ratio is {ratio}: ViTMAEModel would drop {ratio:.0%} of the patches at random in every forward, "
        "but prompts are tuned on whole images (as the VPT paper's MAE runs). Load the encoder with "
        "ViTMAEModel.from_pretrained(name, mask_ratio=0.0), or set model.config.mask_ratio = 0.0 first"
    )


def mae_patches_in_order(backbone: nn.Module, args: tuple, kwargs: dict) -> dict:
    """Noise that keeps ViT-MAE's patches in image order (its masking shuffles them by ``argsort(noise)``), unless
    the caller passes ``noise``.

    With ``mask_ratio`` 0 nothing is dropped, but without ``noise`` the patches would still come back in a new
    random order at every call; an increasing noise makes the shuffle the identity.
    """
    pixels = kwargs.get("pixel_values", args[0] if args else None)
    if pixels is None or len(args) > 1 or kwargs.get("noise") is not None:
        return {}
    patch = backbone.config.patch_size
    count = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
    return {"noise": torch.arange(count, device=pixels.device, dtype=torch.float32).expand(pixels.shape[0], -1)}


# Block layouts shared by two families each (the entries below differ only in tokens and pooling).
# Dinov2 before transformers 5.18 kept its projections one level down, as attention.attention.key/value.
DINOV2_BLOCKS = BackboneSpec(
    layers="encoder.layer",
    attention_norm="norm1",
    older_layouts=({"attention": "attention.attention", "k_proj": "key", "v_proj": "value"},),
)
CLIP_BLOCKS = BackboneSpec(layers="encoder.layers", attention="self_attn", attention_norm="layer_norm1")
CLIP_VISION = replace(
    CLIP_BLOCKS,
    final_norm=None,
    dual_encoder_tower=True,
    description="CLIPVisionModel(WithProjection), CLIPModel's vision tower: prompts after pre_layrnorm, CLS pooled",
)
SIGLIP_VISION = replace(
    CLIP_BLOCKS,
    num_special_tokens=0,
    final_norm="post_layernorm",
    description="SiglipVisionModel, SiglipForImageClassification: no CLS, prompts first, stripped before pooling",
)
VIT = BackboneSpec(description="ViTModel, ViTForImageClassification: [CLS, prompts, patches]")

BACKBONES: dict[str, BackboneSpec] = {
    "vit": VIT,
    "deit": BackboneSpec(
        num_special_tokens=2,
        heads=("classifier", "cls_classifier", "distillation_classifier"),
        description="DeiTModel, DeiTForImageClassification(WithTeacher): prompts after CLS and distillation tokens",
    ),
    "beit": BackboneSpec(
        relative_position_bias="relative_position_bias",
        description="BeitModel, BeitForImageClassification: relative position biases get zero rows/columns for the "
        "prompts; the mean-pooled head never sees them",
    ),
    "swin": BackboneSpec(
        layers="encoder.layers.*.blocks",
        num_special_tokens=0,
        relative_position_bias="attention.relative_position_bias",
        windows=WindowSpec(),
        description="SwinModel, SwinForImageClassification: prompt tokens are prepended to every window (zero "
        "relative bias, never masked), averaged over the windows, widened by each patch merging and mean-pooled "
        "with the patches, as the official code (one tensor per stage width)",
    ),
    "dinov2": replace(
        DINOV2_BLOCKS,
        description="Dinov2Model, Dinov2ForImageClassification: the head's patch mean never sees the prompts",
    ),
    "dinov2_with_registers": replace(
        DINOV2_BLOCKS,
        num_special_tokens=cls_and_registers,
        description="Dinov2WithRegistersModel, ...ForImageClassification: prompts after CLS and the registers",
    ),
    "clip_vision_model": CLIP_VISION,
    "siglip_vision_model": SIGLIP_VISION,
    "dinov3_vit": replace(
        DINOV2_BLOCKS,
        layers="model.layer",
        num_special_tokens=cls_and_registers,
        final_norm="norm",
        heads=(),
        older_layouts=(),
        description="DINOv3ViTModel: prompts after CLS and the registers; RoPE rotates the patches only, so prompts "
        "(like CLS and the registers) get no position, in the sequence or as keys/values; CLS pooled",
    ),
    "siglip2_vision_model": replace(
        SIGLIP_VISION,
        patch_inputs=True,
        description="Siglip2VisionModel, Siglip2ForImageClassification: NaFlex patches; no CLS, prompts first; "
        "prompts attend to every real patch and every query attends to them (padding stays masked); stripped "
        "before the attention-pooling head or the masked mean",
    ),
    "aimv2_vision_model": replace(
        CLIP_BLOCKS,
        attention="attention",
        attention_norm="rms_norm1",
        num_special_tokens=0,
        final_norm="rms_norm",
        heads=(),
        description="Aimv2VisionModel, Aimv2Model's vision tower: no CLS, prompts first, stripped at rms_norm "
        "before the attention-pooling head",
    ),
    "vit_mae": replace(
        VIT,
        heads=(),
        config_problem=mae_masking_problem,
        input_defaults=mae_patches_in_order,
        description="ViTMAEModel (the MAE encoder): [CLS, prompts, patches]; needs mask_ratio=0 (refused otherwise); "
        "patches kept in image order while prompted",
    ),
    "vit_msn": replace(VIT, description="ViTMSNModel, ViTMSNForImageClassification: [CLS, prompts, patches]"),
    "metaclip_2_vision_model": replace(
        CLIP_VISION,
        description="MetaClip2VisionModel(WithProjection), MetaClip2Model's vision tower: the CLIP layout",
    ),
    "timm_vit": BackboneSpec(
        embeddings="norm_pre",
        layers="blocks",
        attention="attn",
        attention_norm="norm1",
        k_proj="qkv",
        v_proj="qkv",
        num_special_tokens=prefix_tokens,
        final_norm="norm",
        heads=("head", "head_dist"),
        detect=is_timm_vision_transformer,
        sizes=timm_vit_sizes,
        description="timm VisionTransformer (vit_*, deit_*; registers, no CLS, every global_pool): prompts after "
        "CLS, registers (and the distillation token), without position; stripped before pooling",
    ),
}


def register_backbone(model_type: str, spec: BackboneSpec) -> None:
    """Teach vpt_peft a new backbone family, keyed by its ``config.model_type`` (or any name, with ``detect``)."""
    BACKBONES[model_type] = spec


def get_path(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def has_path(root: nn.Module, path: str) -> bool:
    try:
        get_layers(root, path) if "*" in path else get_path(root, path)
    except AttributeError:
        return False
    return True


def get_layers(root: nn.Module, path: str) -> list[nn.Module]:
    """The blocks at ``path``, in forward order; ``*`` iterates a list and continues in each element."""
    head, star, rest = path.partition(".*")
    container = get_path(root, head)
    if not star:
        return list(container)
    return [layer for child in container for layer in get_layers(child, rest.removeprefix("."))]


@dataclass
class Backbone:
    """A backbone found inside a user's model, with the sizes the methods need."""

    path: str
    module: PreTrainedModel
    model_type: str
    spec: BackboneSpec
    hidden_size: int
    num_layers: int
    layer_widths: list[int]
    layer_head_dims: list[int]
    num_special_tokens: int
    patch_fan_in: int
    heads: list[str] = field(default_factory=list)
    config: Any = None
    """The HF config, or the sizes a non-HF family's ``BackboneSpec.sizes`` read off the module."""

    def sub(self, relative: str) -> nn.Module:
        return get_path(self.module, relative)

    def qualified(self, relative: str) -> str:
        return f"{self.path}.{relative}" if self.path else relative

    @property
    def layers(self) -> list[nn.Module]:
        return get_layers(self.module, self.spec.layers)

    def describe(self) -> dict:
        """What an adapter records about its backbone, to refuse loading onto a different one."""
        return {"model_type": self.model_type, "hidden_size": self.hidden_size, "num_layers": self.num_layers}


def supported_families() -> str:
    return ", ".join(sorted(BACKBONES))


def _unsupported(model: nn.Module) -> UnsupportedModelError:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return UnsupportedModelError(
        f"vpt_peft cannot prompt {type(model).__name__} (model_type={model_type!r}): no vision transformer backbone "
        "of a supported family was found. Supported families (config.model_type; timm_vit: timm's "
        f"VisionTransformer): {supported_families()}. "
        "To add a family with the standard ViT layout, call vpt_peft.register_backbone('<model_type>', "
        "BackboneSpec(embeddings=..., layers=..., attention=..., ...)); see docs/backbones.md."
        + unsupported_timm_hint(model)
    )


def unmet_requirements(module: nn.Module, spec: BackboneSpec, layers: list[nn.Module]) -> list[str]:
    """What the hooks silently rely on and this backbone lacks (empty when the entry fits).

    Every block needs the attention and its pre-norm at the entry's paths, separate key and value ``Linear``
    projections (prompt keys/values are made with them), and the attention module must carry the model config
    (the attention function reads the backend from it) and come from a modeling file with an
    ``eager_attention_forward`` (the eager backend vpt_peft wraps). A fused-qkv entry needs instead one
    ``Linear`` of three equal output parts and the attention's ``head_dim`` (its hooks need no backend). The
    config needs the sizes the prompts are built from.
    """
    problems = []
    config = spec.config_of(module)
    for field_name in ("hidden_size", "patch_size"):
        if not hasattr(config, field_name):
            problems.append(f"config has no {field_name}")
    if not layers:
        return problems + [f"no blocks at {spec.layers!r}"]
    block = layers[0]
    for role, path in (("attention", spec.attention), ("attention_norm", spec.attention_norm)):
        if not has_path(block, path):
            problems.append(f"a block has no {role} at {path!r}")
    if problems:
        return problems
    attention = get_path(block, spec.attention)
    if spec.fused_qkv:
        return fused_qkv_problems(attention, spec.k_proj)
    for role, name in (("k_proj", spec.k_proj), ("v_proj", spec.v_proj)):
        if not isinstance(getattr(attention, name, None), nn.Linear):
            problems.append(
                f"the attention has no separate {role} Linear named {name!r} (for a fused q/k/v Linear, set "
                "k_proj and v_proj both to its name)"
            )
    if getattr(attention, "config", None) is None:
        problems.append("the attention module has no .config (the attention backend is read from it)")
    if not hasattr(sys.modules.get(type(attention).__module__), "eager_attention_forward"):
        problems.append(f"{type(attention).__module__} defines no eager_attention_forward")
    if not hasattr(attention, "head_dim") and not hasattr(config, "num_attention_heads"):
        problems.append("neither the attention's head_dim nor config.num_attention_heads is set")
    return problems


def fused_qkv_problems(attention: nn.Module, name: str) -> list[str]:
    """What a fused-qkv attention lacks: the ``[q; k; v]`` Linear and the head size its output is split by."""
    fused = getattr(attention, name, None)
    if not isinstance(fused, nn.Linear) or fused.out_features % 3:
        return [f"the attention has no fused q/k/v Linear named {name!r} (three equal output parts)"]
    if not isinstance(getattr(attention, "head_dim", None), int):
        return ["the attention has no integer head_dim"]
    return []


def _family(module: nn.Module) -> Optional[str]:
    """The table key of ``module``: a detector's match, or a ``PreTrainedModel``'s ``config.model_type``."""
    detected = next((key for key, spec in BACKBONES.items() if spec.detect is not None and spec.detect(module)), None)
    if detected is not None or not isinstance(module, PreTrainedModel):
        return detected
    model_type = getattr(module.config, "model_type", None)
    spec = BACKBONES.get(model_type)
    return model_type if spec is not None and spec.detect is None else None


def _layout(module: nn.Module, spec: BackboneSpec) -> Optional[BackboneSpec]:
    """The first of ``spec``'s layouts that fits ``module`` (None: no layout's embeddings and blocks are there).

    When no layout fits whole, the first whose embeddings and blocks exist is returned, so that
    :func:`unmet_requirements` names what that one lacks instead of the model being called unsupported.
    """
    present = [s for s in spec.layouts() if has_path(module, s.embeddings) and has_path(module, s.layers)]
    fitting = (s for s in present if not unmet_requirements(module, s, get_layers(module, s.layers)))
    return next(fitting, present[0] if present else None)


def find_backbone(model: nn.Module) -> Backbone:
    """Locate the single prompted backbone in ``model`` (the model itself or one of its submodules)."""
    found = []
    for name, module in model.named_modules():
        model_type = _family(module)
        if model_type is None:
            continue
        spec = _layout(module, BACKBONES[model_type])
        if spec is not None:
            found.append((name, module, model_type, spec))
    if not found:
        raise _unsupported(model)
    if len(found) > 1:
        names = ", ".join(repr(name) for name, *_ in found)
        raise UnsupportedModelError(f"Found several backbones ({names}); vpt_peft prompts exactly one.")
    path, module, model_type, spec = found[0]
    config = spec.config_of(module)
    layers = get_layers(module, spec.layers)
    problems = unmet_requirements(module, spec, layers)
    if problems:
        raise UnsupportedModelError(
            f"{type(module).__name__} (model_type={model_type!r}) does not fit its backbone table entry: "
            + "; ".join(problems)
            + ". Correct the entry with vpt_peft.register_backbone (see docs/contributing.md)."
        )
    problem = spec.config_problem(config) if spec.config_problem is not None else None
    if problem:
        name = type(module).__name__
        raise UnsupportedModelError(f"{name} (model_type={model_type!r}) cannot be prompted: {problem}.")
    attentions = [get_path(layer, spec.attention) for layer in layers]
    widths = [getattr(a, spec.k_proj).in_features for a in attentions]  # the blocks' width, fused or not
    head_dims = [
        a.head_dim if hasattr(a, "head_dim") else w // config.num_attention_heads for a, w in zip(attentions, widths)
    ]
    patch = config.patch_size if isinstance(config.patch_size, int) else math.prod(config.patch_size)
    patch_area = patch * patch if isinstance(config.patch_size, int) else patch
    heads = [h for h in spec.heads if isinstance(getattr(model, h, None), nn.Module)]
    if not heads and spec.detect is not None and path:  # a non-HF backbone wrapped (transformers' TimmWrapper...)
        heads = [f"{path}.{h}" for h in spec.heads if isinstance(getattr(module, h, None), nn.Module)]
    return Backbone(
        path=path,
        module=module,
        model_type=model_type,
        spec=spec,
        hidden_size=config.hidden_size,
        num_layers=len(layers),
        layer_widths=widths,
        layer_head_dims=head_dims,
        num_special_tokens=spec.special_tokens(config),
        patch_fan_in=getattr(config, "num_channels", 3) * patch_area,
        heads=heads,
        config=config,
    )
