"""Prompt parameter counts on a Swin-B configuration equal the closed-form count of the official layout.

Swin-B: embed C0 = 128, depths 2-2-18-2, stage widths C_s = 128 * 2**s. Per block the official code holds p
prompts of the block's width (deep) or one (1, p, C0) tensor (shallow), so with W = sum_s d_s * C_s
= 2*128 + 2*256 + 18*512 + 2*1024 = 12032:
VPT/VFPT shallow p*C0, deep p*W (VFPT's transform adds nothing); E2VPT deep p*W visual + T*W key-value
(2*T*W unshared) + p + p*R gates. The model is built on the meta device: only shapes are counted.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import SwinConfig, SwinForImageClassification

import vpt_peft

C0, DEPTHS, LABELS = 128, (2, 2, 18, 2), 10
W = sum(d * C0 * 2**s for s, d in enumerate(DEPTHS))
P, T, R = 10, 5, 16

CASES = {
    "vpt-shallow": (lambda: vpt_peft.VisualPromptConfig(num_prompts=P), P * C0),
    "vpt-deep": (lambda: vpt_peft.VisualPromptConfig(num_prompts=P, deep=True), P * W),
    "vfpt-shallow": (lambda: vpt_peft.FourierPromptConfig(num_prompts=P, fourier_ratio=1.0), P * C0),
    "vfpt-deep": (lambda: vpt_peft.FourierPromptConfig(num_prompts=P, deep=True, fourier_ratio=1.0), P * W),
    "e2vpt-deep": (lambda: vpt_peft.KVPromptConfig(num_prompts=P, num_kv_prompts=T), P * W + T * W + P + P * R),
    "e2vpt-deep-unshared": (
        lambda: vpt_peft.KVPromptConfig(num_prompts=P, num_kv_prompts=T, share_kv=False),
        P * W + 2 * T * W + P + P * R,
    ),
    "e2vpt-no-gates": (lambda: vpt_peft.KVPromptConfig(num_prompts=P, num_kv_prompts=T, gates=False), (P + T) * W),
}


def test_swin_b_width_sum():
    assert W == 12032


@pytest.mark.parametrize("method", CASES)
def test_swin_b_prompt_parameters_equal_the_formula(method):
    make_config, want = CASES[method]
    with torch.device("meta"):
        base = SwinForImageClassification(
            SwinConfig(embed_dim=C0, depths=list(DEPTHS), num_heads=[4, 8, 16, 32], window_size=7, num_labels=LABELS)
        )
    model = get_peft_model(base, make_config())
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    prompts = sum(n for name, n in trainable.items() if "prompt_adapter" in name)
    head = sum(n for name, n in trainable.items() if "classifier" in name)
    assert prompts == want
    assert head == 1024 * LABELS + LABELS
    assert sum(trainable.values()) == want + head
