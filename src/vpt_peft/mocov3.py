"""MoCo v3's ViT-B/16 (one of VPT's self-supervised backbones, its Table 5) as a Hugging Face ``ViTModel``.

MoCo v3 was never published on the Hub: its authors release a PyTorch checkpoint of a timm-style
``VisionTransformer`` (``module.base_encoder.blocks.{i}.attn.qkv``, ...). The encoder is a plain pre-norm ViT
with CLS pooling, so its weights fit ``ViTModel`` exactly: the fused ``qkv`` projection splits into the query,
key and value projections, the position embedding (MoCo's fixed 2-D sin-cos table, CLS slot included) is
copied as it is, and the LayerNorms keep timm's epsilon (1e-6). The projection and prediction heads and the
momentum encoder are dropped; the converted model computes what the base encoder computes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import torch
from transformers import ViTConfig, ViTModel

from .convert import ConversionError

ENCODER_PREFIXES = ("module.base_encoder.", "base_encoder.", "module.")
"""Where the encoder's keys sit in the authors' checkpoint (pre-training file, or an already stripped one)."""

TIMM_LAYER_NORM_EPS = 1e-6
BLOCK_KEYS = tuple(
    f"{module}.{kind}"
    for module in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    for kind in ("weight", "bias")
)
"""Every tensor of a timm block (``attn.qkv.bias`` too: MoCo v3's ViT-B has query/key/value biases)."""


def _encoder_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base encoder's tensors under timm's names (``blocks.0.attn.qkv.weight``), without the heads."""
    for prefix in ENCODER_PREFIXES:
        found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if "cls_token" in found:
            return {k: v for k, v in found.items() if not k.startswith("head.")}
    if "cls_token" in state:
        return {k: v for k, v in state.items() if not k.startswith("head.")}
    raise ConversionError(
        "no MoCo v3 encoder in the checkpoint: expected 'module.base_encoder.cls_token' (or the same keys without "
        "the prefix), as the authors' vit_base checkpoint has"
    )


def mocov3_config(encoder: Mapping[str, torch.Tensor], num_attention_heads: int = 12) -> ViTConfig:
    """The ``ViTConfig`` of a MoCo v3 encoder, read from its tensor shapes (the head count is not recorded in
    them: 12 for ViT-B, the default)."""
    width = encoder["cls_token"].shape[-1]
    patch = encoder["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(encoder["pos_embed"].shape[1] - 1)
    depth = len({k.split(".")[1] for k in encoder if k.startswith("blocks.")})
    return ViTConfig(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=num_attention_heads,
        intermediate_size=encoder["blocks.0.mlp.fc1.weight"].shape[0],
        image_size=grid * patch,
        patch_size=patch,
        num_channels=encoder["patch_embed.proj.weight"].shape[1],
        qkv_bias=True,
        layer_norm_eps=TIMM_LAYER_NORM_EPS,
        hidden_act="gelu",
    )


def _hf_state(encoder: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """timm names -> ``ViTModel`` names (the layout of every transformers release vpt_peft supports)."""
    missing = [k for k in ("pos_embed", "patch_embed.proj.bias", "norm.weight", "norm.bias") if k not in encoder]
    missing += [f"blocks.{i}.{k}" for i in range(depth) for k in BLOCK_KEYS if f"blocks.{i}.{k}" not in encoder]
    if missing:
        raise ConversionError(f"the MoCo v3 encoder lacks {missing[:3]} ({len(missing)} tensors in all)")
    state = {
        "embeddings.cls_token": encoder["cls_token"],
        "embeddings.position_embeddings": encoder["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": encoder["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": encoder["patch_embed.proj.bias"],
        "layernorm.weight": encoder["norm.weight"],
        "layernorm.bias": encoder["norm.bias"],
    }
    renames = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for i in range(depth):
        block, layer = f"blocks.{i}", f"layers.{i}"
        for timm_name, hf_name in renames.items():
            for kind in ("weight", "bias"):
                state[f"{layer}.{hf_name}.{kind}"] = encoder[f"{block}.{timm_name}.{kind}"]
        for kind in ("weight", "bias"):
            fused = encoder[f"{block}.attn.qkv.{kind}"]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, dim=0)):
                state[f"{layer}.attention.{name}.{kind}"] = part
    return state


def vit_from_mocov3(checkpoint: Union[str, Path, Mapping], num_attention_heads: int = 12) -> ViTModel:
    """A ``ViTModel`` holding MoCo v3's base encoder, from the authors' checkpoint file or its state dict.

    Save it with ``save_pretrained`` and use the folder as any Hub ViT (``vpt_peft.recipes.backbone_preset
    ("mocov3-vit-b16")`` does this).
    """
    if isinstance(checkpoint, (str, Path)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    encoder = _encoder_tensors(state)
    config = mocov3_config(encoder, num_attention_heads)
    model = ViTModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(_hf_state(encoder, config.num_hidden_layers), strict=False)
    if missing or unexpected:
        raise ConversionError(f"the MoCo v3 encoder does not fill a ViTModel: missing {missing}, unused {unexpected}")
    return model.eval()
