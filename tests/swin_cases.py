"""Tiny Swin models and official-layout prompt sets shared by the Swin tests.

The model is chosen so every feature of the official function is exercised: 16x16 patches in windows of 4
(16 windows, then 4, then 1), shifted blocks with a real shift mask, three stages with two merges, random
relative-position bias tables (HF initialises them to zero, which would hide a wrong padding) and absolute
position embeddings.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import SwinConfig, SwinForImageClassification

DEPTHS = (2, 2, 2)
EMBED = 8
LABELS = 5


def tiny_swin(seed: int = 0, attn: str = "eager", absolute: bool = True) -> SwinForImageClassification:
    torch.manual_seed(seed)
    config = SwinConfig(
        image_size=32,
        patch_size=2,
        embed_dim=EMBED,
        depths=list(DEPTHS),
        num_heads=[2, 2, 4],
        window_size=4,
        num_labels=LABELS,
        use_absolute_embeddings=absolute,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    model = SwinForImageClassification(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "relative_position_bias_table" in name or "position_embeddings" in name:
                parameter.normal_(0.0, 0.5)
        model.classifier.weight.normal_(0.0, 1.0)  # logits of order 1, so that 1e-5 on them means something
    model.set_attn_implementation(attn)
    return model.eval().requires_grad_(False)


def widths(depths=DEPTHS, embed: int = EMBED) -> list[int]:
    """Each block's width C_s = C0 * 2**s, in block order."""
    return [embed * 2**stage for stage, depth in enumerate(depths) for _ in range(depth)]


def official_prompts(
    p: int, deep: bool, seed: int = 1, depths=DEPTHS, embed: int = EMBED, scale: float = 0.5
) -> tuple[torch.Tensor, Optional[list[torch.Tensor]]]:
    """Random prompts in the official layout: (1, p, C0) and, deep, [(d0-1, p, C0), (d1, p, C1), ...]."""
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * scale

    shallow = draw(1, p, embed)
    if not deep:
        return shallow, None
    rows = [depths[0] - 1, *depths[1:]]
    return shallow, [draw(r, p, embed * 2**s) for s, r in enumerate(rows)]


def kv_prompts(t: int, seed: int = 2, depths=DEPTHS, embed: int = EMBED) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One (key, value) pair of (T, C_s) per block."""
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for width in widths(depths, embed):
        key = torch.randn(t, width, generator=generator, dtype=torch.float64)
        pairs.append((key, torch.randn(t, width, generator=generator, dtype=torch.float64)))
    return pairs


def swin_pixels(batch: int = 3, seed: int = 123) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, 3, 32, 32)
