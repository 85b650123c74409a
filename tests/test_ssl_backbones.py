"""VPT Table 5's self-supervised backbones: MoCo v3 converted from the authors' (timm-layout) checkpoint to a
``ViTModel``, checked against a forward written from the raw tensors, and the presets that load MAE and MoCo v3."""

from __future__ import annotations

import math

import pytest
import torch
from peft import get_peft_model
from transformers import ViTMAEConfig, ViTMAEModel

from vpt_peft import ConversionError, VisualPromptConfig, recipes
from vpt_peft.mocov3 import vit_from_mocov3

from .helpers import NO_DROPOUT, SIZES

WIDTH, DEPTH, HEADS, PATCH, MLP = 32, 2, 4, 8, 48


def mocov3_checkpoint() -> dict:
    """What the authors' pre-training file holds: base and momentum encoders (timm layout), projector, predictor."""
    generator = torch.Generator().manual_seed(3)

    def rand(*shape: int) -> torch.Tensor:
        return 0.2 * torch.randn(*shape, generator=generator)

    encoder = {
        "cls_token": rand(1, 1, WIDTH),
        "pos_embed": rand(1, 1 + 16, WIDTH),
        "patch_embed.proj.weight": rand(WIDTH, 3, PATCH, PATCH),
        "patch_embed.proj.bias": rand(WIDTH),
        "norm.weight": 1 + rand(WIDTH),
        "norm.bias": rand(WIDTH),
        "head.0.weight": rand(64, WIDTH),
    }
    for i in range(DEPTH):
        shapes = {
            "norm1": (WIDTH,),
            "attn.qkv": (3 * WIDTH, WIDTH),
            "attn.proj": (WIDTH, WIDTH),
            "norm2": (WIDTH,),
            "mlp.fc1": (MLP, WIDTH),
            "mlp.fc2": (WIDTH, MLP),
        }
        for name, shape in shapes.items():
            encoder[f"blocks.{i}.{name}.weight"] = (1 + rand(*shape)) if "norm" in name else rand(*shape)
            encoder[f"blocks.{i}.{name}.bias"] = rand(shape[0])
    state = {f"module.base_encoder.{k}": v for k, v in encoder.items()}
    state.update({f"module.momentum_encoder.{k}": v + 1 for k, v in encoder.items()})
    state["module.predictor.0.weight"] = rand(64, 64)
    return {"epoch": 300, "arch": "vit_base", "state_dict": state}


def timm_cls_feature(state: dict, pixels: torch.Tensor) -> torch.Tensor:
    """MoCo v3's encoder in float64 from the timm-layout tensors: pre-norm blocks, fused qkv, CLS after the norm."""
    w = {k.removeprefix("module.base_encoder."): v.double() for k, v in state.items() if "base_encoder" in k}

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, (WIDTH,), w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-6)

    def dense(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    x = torch.nn.functional.conv2d(pixels.double(), w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], PATCH)
    x = torch.cat([w["cls_token"].expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], 1) + w["pos_embed"]
    for i in range(DEPTH):
        q, k, v = dense(norm(x, f"blocks.{i}.norm1"), f"blocks.{i}.attn.qkv").chunk(3, dim=-1)
        q, k, v = (t.reshape(*x.shape[:2], HEADS, -1).transpose(1, 2) for t in (q, k, v))
        attended = ((q @ k.transpose(-1, -2)) / math.sqrt(WIDTH // HEADS)).softmax(-1) @ v
        x = x + dense(attended.transpose(1, 2).reshape(x.shape), f"blocks.{i}.attn.proj")
        hidden = torch.nn.functional.gelu(dense(norm(x, f"blocks.{i}.norm2"), f"blocks.{i}.mlp.fc1"))
        x = x + dense(hidden, f"blocks.{i}.mlp.fc2")
    return norm(x, "norm")[:, 0]


def test_mocov3_converts_to_a_vit_computing_the_base_encoder(pixels, tmp_path):
    checkpoint = mocov3_checkpoint()
    torch.save(checkpoint, tmp_path / "vit-b-300ep.pth.tar")
    model = recipes.backbone_preset("mocov3-vit-b16").load(str(tmp_path / "vit-b-300ep.pth.tar"), num_attention_heads=4)
    assert (model.config.num_hidden_layers, model.config.image_size, model.config.layer_norm_eps) == (2, 32, 1e-6)
    with torch.no_grad():
        got = model(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(got.double(), timm_cls_feature(checkpoint["state_dict"], pixels), atol=1e-5, rtol=0)
    prompted = get_peft_model(model, VisualPromptConfig(num_prompts=2, deep=True)).eval()
    with torch.no_grad():
        assert prompted(pixel_values=pixels).last_hidden_state.shape == (2, 17, WIDTH)


def test_mocov3_files_without_an_encoder_or_with_gaps_are_refused():
    state = mocov3_checkpoint()["state_dict"]
    with pytest.raises(ConversionError, match="no MoCo v3 encoder"):
        vit_from_mocov3({k: v for k, v in state.items() if "cls_token" not in k})
    with pytest.raises(ConversionError, match=r"lacks \['blocks.1.attn.qkv.weight'\]"):
        vit_from_mocov3({k: v for k, v in state.items() if k != "module.base_encoder.blocks.1.attn.qkv.weight"})
    with pytest.raises(ValueError, match="authors' file"):
        recipes.backbone_preset("mocov3-vit-b16").load()


def test_the_mae_preset_loads_the_encoder_with_masking_off(tmp_path):
    torch.manual_seed(0)
    ViTMAEModel(ViTMAEConfig(**SIZES, **NO_DROPOUT, mask_ratio=0.75)).save_pretrained(tmp_path)
    preset = recipes.backbone_preset("mae-vit-b16")
    model = preset.load(str(tmp_path))
    assert model.config.mask_ratio == 0.0 and preset.lr_grid == recipes.LR_GRID
    get_peft_model(model, VisualPromptConfig(num_prompts=2))  # refused with masking on (test_backbones_families.py)
    with pytest.raises(ValueError, match="backbone must be one of"):
        recipes.backbone_preset("mae")
